#!/usr/bin/env python3
"""Checks that a rendered Allure report shows what the results say, in a real browser.

Serves the report on loopback, loads its overview page in headless Chromium, takes a
screenshot and reads the rendered page: the total of test cases and the status counts must be
those of the results (the newest result per test, as Allure counts them).

    python3 scripts/check_report.py [RESULTS_DIR] [REPORT_DIR] [SCREENSHOT]

Prints one line and exits 0 when the overview is right, 1 (naming what differs) when not.
"""

from __future__ import annotations

import functools
import glob
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter

STATUSES = ("passed", "failed", "broken", "skipped", "unknown")
# Flags Chromium needs as root on a machine with a closed network (no background fetches).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--window-size=1400,1100", "--virtual-time-budget=15000"]
TIMEOUT = 90


def expected_counts(results_dir: str) -> Counter:
    """Status counts as Allure shows them: retries (same historyId) count once, the newest."""
    newest: dict[str, dict] = {}
    for path in glob.glob(os.path.join(results_dir, "*-result.json")):
        with open(path) as f:
            result = json.load(f)
        key = result.get("historyId") or result["uuid"]
        if key not in newest or result.get("stop", 0) > newest[key].get("stop", 0):
            newest[key] = result
    return Counter(r.get("status", "unknown") for r in newest.values())


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("check_report: no Chromium; install it (Debian: apt-get install chromium)")


def browse(url: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory(prefix="pytest-kvm-chromium-") as profile:
        out = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra,
                              url], capture_output=True, text=True, timeout=TIMEOUT)
    if out.returncode != 0:
        sys.exit(f"check_report: chromium exited {out.returncode}: {out.stderr.strip()[-300:]}")
    return out.stdout


def shown_counts(dom: str) -> tuple[int | None, set[str], Counter, bool]:
    """From the rendered overview: the total, the statuses drawn in the summary chart, the
    per-status sums of the Suites widget's bars, and whether that widget lists every row."""
    total = re.search(r'class="splash__title">(\d+)<', dom)
    arcs = set(re.findall(r'class="chart__arc chart__arc_status_(\w+)"', dom))
    suites = re.search(r'data-id="suites".*?(?=data-id=|$)', dom, re.S)
    bars: Counter = Counter()
    complete = False
    if suites:
        block = suites.group(0)
        for status, n in re.findall(r'bar__fill_status_(\w+)"[^>]*>(\d+)<', block):
            bars[status] += int(n)
        rows = len(re.findall(r'class="table__row" href="#suites/', block))
        listed = re.search(r"(\d+) items? total", block)
        complete = bool(listed) and int(listed.group(1)) == rows
    return (int(total.group(1)) if total else None), arcs, bars, complete


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def main() -> int:
    results = sys.argv[1] if len(sys.argv) > 1 else "reports/allure-results"
    report = sys.argv[2] if len(sys.argv) > 2 else "reports/allure-report"
    shot = os.path.abspath(sys.argv[3] if len(sys.argv) > 3 else "reports/allure-overview.png")
    if not os.path.isfile(os.path.join(report, "index.html")):
        print(f"check_report: no {report}/index.html: run make report first")
        return 1
    want = expected_counts(results)
    want_total = sum(want.values())
    if not want_total:
        print(f"check_report: no results in {results}")
        return 1

    handler = functools.partial(QuietHandler, directory=report)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html#"
    try:
        for _ in range(3):  # a loaded machine can run out of virtual time before the
            dom = browse(url, "--dump-dom")  # charts are drawn: read the page again
            total, arcs, _bars, _complete = shown_counts(dom)
            if total is not None and arcs:
                break
        browse(url, f"--screenshot={shot}")
    finally:
        server.shutdown()

    total, arcs, bars, complete = shown_counts(dom)
    problems = []
    if total != want_total:
        problems.append(f"overview shows {total} test cases, results have {want_total}")
    if arcs != {s for s, n in want.items() if n}:
        problems.append(f"summary chart draws {sorted(arcs)}, results have {dict(want)}")
    if complete and {s: n for s, n in bars.items() if n} != {s: n for s, n in want.items() if n}:
        problems.append(f"Suites widget counts {dict(bars)}, results have {dict(want)}")
    if not os.path.isfile(shot) or os.path.getsize(shot) < 10_000:
        problems.append(f"no usable screenshot at {shot}")
    counts = ", ".join(f"{want[s]} {s}" for s in STATUSES if want[s])
    if problems:
        print("check_report: the rendered report is wrong: " + "; ".join(problems))
        return 1
    print(f"check_report: overview renders {want_total} test cases ({counts}); screenshot {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
