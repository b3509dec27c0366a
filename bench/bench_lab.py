"""lab_suite_wall: wall time of `pytest suites/ --hosts hosts.ini` on the default lab, against
one bare micro-guest boot on L0 in the same run (the run's output: reports/bench-lab.log),
and that ratio per check the run ran (ratio_per_check: bare boots per check);
beside it the per-test framework overhead
(the median of a test's setup plus teardown: most tests reuse a booted guest, so this is the
plugin's own cost per check)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from bench_guest import _bare

from pytest_kvm.guest import build_micro

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def run() -> list[dict]:
    bare = _bare(build_micro(), "tcg")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "durations.json")
        env = dict(os.environ, PYTEST_KVM_DURATIONS=out,
                   PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        start = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pytest", "suites/", "--hosts", "hosts.ini",
                            "-q", "-p", "no:cacheprovider", "-p", "durations_plugin"],
                           cwd=ROOT, capture_output=True, text=True, timeout=3600, env=env)
        wall = time.perf_counter() - start
        (ROOT / "reports").mkdir(exist_ok=True)
        (ROOT / "reports" / "bench-lab.log").write_text(r.stdout + r.stderr)  # the whole run
        if r.returncode != 0:
            raise RuntimeError("the lab suites failed:\n" + r.stdout[-3000:])
        phases = json.load(open(out))
    overhead = statistics.median(phases.values()) if phases else 0.0
    # the speed of the lab per check: bare boots per check (adding checks is no reason to skip
    # one)
    checks = sum(int(n) for n in re.findall(r"(\d+) (?:passed|failed)", r.stdout.splitlines()[-1]))
    return [
        {"name": "lab_suite_wall", "value": round(wall, 1), "unit": "s",
         "baseline": round(bare, 3), "ratio": round(wall / bare, 1), "checks": checks,
         "ratio_per_check": round(wall / bare / max(checks, 1), 3)},
        {"name": "lab_test_overhead", "value": round(overhead * 1000, 3), "unit": "ms",
         "baseline": 0.0, "ratio": 0.0},  # no baseline: reported beside the wall time
    ]
