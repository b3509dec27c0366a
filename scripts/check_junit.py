#!/usr/bin/env python3
"""Checks that a run's JUnit XML (pytest's default family, xunit2) holds every migration's
figures: for each migration check that ran (``test_measured[...]``), the testsuite
properties ``<test id>.downtime_ms`` (``.detect_ms`` for a failure path) and
``<test id>.guest_gap_ms``, each a figure (JSON:
unit, direction, a sample per hop), and that pytest's summary line (from the run's output,
when given) names no warning.

    python3 scripts/check_junit.py JUNIT_XML [RUN_OUTPUT]

Prints one line per migration and exits 0 when all is there, 1 (naming what is missing)
when not.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET

# each suite's figures a migration must carry: a migration's downtime, a failure path's time
# to detect the failure; the guest's longest heartbeat gap for both
FIGURES = {"test_migration": ("downtime_ms", "guest_gap_ms"),
           "test_migration_failures": ("detect_ms", "guest_gap_ms")}


def problems(junit: str, output: str | None) -> list[str]:
    root = ET.parse(junit).getroot()
    props = {p.get("name", ""): p.get("value") for p in root.iter("property")}
    found = []
    for case in root.iter("testcase"):
        if not case.get("name", "").startswith("test_measured["):
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            found.append(f"{case.get('name')}: did not pass")
            continue
        test_id = case.get("name")
        module = case.get("classname", "").rsplit(".", 1)[-1]
        shown = []
        for figure in FIGURES.get(module, FIGURES["test_migration"]):
            names = [n for n in props if n.split("::")[0].endswith(f"{module}.py")
                     and n.split("::")[-1] == f"{test_id}.{figure}"]
            try:
                samples = json.loads(props[names[0]])["samples"] if names else None
            except (ValueError, KeyError, TypeError):
                samples = None
            if not samples:
                found.append(f"{test_id}: no {figure} figure with samples")
            else:
                shown.append(f"{figure}={samples}")
        if shown:
            print(f"{test_id}: " + ", ".join(shown))
    if not any(c.get("name", "").startswith("test_measured[") for c in root.iter("testcase")):
        found.append("no migration (test_measured) in the run")
    if output is not None:
        lines = [line for line in open(output).read().splitlines() if line.strip()]
        summary = next((line for line in reversed(lines) if re.search(r" in [\d.]+s", line)), "")
        if "warning" in summary:
            found.append(f"the run warned: {summary.strip('= ')}")
    return found


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: check_junit.py JUNIT_XML [RUN_OUTPUT]", file=sys.stderr)
        return 2
    found = problems(argv[0], argv[1] if len(argv) == 2 else None)
    if found:
        print("JUnit figures missing: " + "; ".join(found))
        return 1
    print(f"{argv[0]}: every migration has its figures ("
          + "; ".join(f"{m}: {', '.join(f)}" for m, f in FIGURES.items()) + "), no warning")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
