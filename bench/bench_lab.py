"""lab_suite_wall: wall time of `pytest suites/ --hosts hosts.ini` on the default lab, against
one bare micro-guest boot on L0 in the same run; beside it the per-test framework overhead
(the median of a test's setup plus teardown: most tests reuse a booted guest, so this is the
plugin's own cost per check)."""

from __future__ import annotations

import pathlib
import re
import statistics
import subprocess
import sys
import time

from bench_guest import _bare

from pytest_kvm.guest import build_micro

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run() -> list[dict]:
    bare = _bare(build_micro(), "tcg")
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "suites/", "--hosts", "hosts.ini",
                        "-q", "-p", "no:cacheprovider", "--durations=0", "--durations-min=0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError("the lab suites failed:\n" + r.stdout[-3000:])
    phases: dict[str, float] = {}
    for m in re.finditer(r"^([\d.]+)s (setup|teardown)\s+(\S+)", r.stdout, re.M):
        phases[m.group(3)] = phases.get(m.group(3), 0.0) + float(m.group(1))
    overhead = statistics.median(phases.values()) if phases else 0.0
    return [
        {"name": "lab_suite_wall", "value": round(wall, 1), "unit": "s",
         "baseline": round(bare, 3), "ratio": round(wall / bare, 1)},
        {"name": "lab_test_overhead", "value": round(overhead * 1000, 1), "unit": "ms",
         "baseline": 0.0, "ratio": 0.0},
    ]
