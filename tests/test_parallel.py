"""Parallel runs: leases held across processes, taken in a fixed order, and the same results
with and without pytest-xdist."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pytest_kvm.host import Leases, LeaseTimeout

from test_plugin import pytest_run

HOLDER = textwrap.dedent("""
    import sys, time
    from pytest_kvm.host import Leases
    with Leases(sys.argv[1]).hold("lab1-0000:01:00.0"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def test_a_lease_held_by_another_process_waits(tmp_path):
    run = f"t{time.monotonic_ns()}"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, run, "2"], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    with Leases(run).hold("lab1-0000:01:00.0"):
        waited = time.monotonic() - start
    holder.wait(10)
    Leases(run).remove()
    assert waited > 1.0  # it had to wait for the other process


def test_timeout_names_the_lease(tmp_path):
    run = f"t{time.monotonic_ns()}"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, run, "5"], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LeaseTimeout, match="lab1-0000:01:00.0 stayed leased"):
        with Leases(run, timeout=0.5).hold("lab1-0000:01:00.0"):
            pass
    holder.kill()
    holder.wait(10)
    Leases(run).remove()


def test_opposite_orders_never_deadlock():
    leases = Leases(f"t{time.monotonic_ns()}", timeout=30)
    done = []

    def worker(names):
        for _ in range(30):
            with leases.hold(*names):
                time.sleep(0.002)
        done.append(names)

    threads = [threading.Thread(target=worker, args=(n,)) for n in
               (("a-migration", "b-migration"), ("b-migration", "a-migration"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    leases.remove()
    assert len(done) == 2


def outcomes(stdout: str) -> dict[str, str]:
    return dict((m.group(2), m.group(1)) for m in
                re.finditer(r"^(PASSED|FAILED|SKIPPED|ERROR) (\S+)", stdout, re.M))


def figure_ids(path: Path) -> set[tuple[str, str]]:
    return {(test, name) for test, entry in json.loads(path.read_text())["tests"].items()
            for name in entry["figures"]}


def test_same_results_with_and_without_xdist(tmp_path):
    suites = Path(__file__).parent.parent / "suites"
    (tmp_path / "hosts.ini").write_text(
        "[l0]\nlocalhost ansible_connection=local kvm_suites=virtio,migration\n")
    args = ["--hosts", "hosts.ini", "-rA", str(suites / "test_virtio.py"),
            str(suites / "test_migration.py"), "-k", "virtio or shared or ping"]
    lease_dirs = set(glob.glob(os.path.join(tempfile.gettempdir(), "pytest-kvm-leases-*")))
    serial = pytest_run([*args, "-n", "0", "--kvm-figures", "serial.json"], tmp_path,
                        timeout=600)
    # (as .ci/run runs the suites: a variant's checks on one worker, its migration done once)
    parallel = pytest_run([*args, "-n", "2", "--dist", "loadgroup", "-v", "--kvm-figures",
                           "parallel.json"], tmp_path, timeout=600)
    assert serial.returncode == 0, serial.stdout[-2000:]
    assert parallel.returncode == 0, parallel.stdout[-2000:]
    assert outcomes(serial.stdout) == outcomes(parallel.stdout)
    assert len(outcomes(serial.stdout)) > 20
    # each migration variant ran on one worker (its migration once)
    workers = {}
    for gw, variant in re.findall(r"^\[(gw\d)\].*PASSED \S+test_migration\.py::\w+\[(\S+)\]",
                                  parallel.stdout, re.M):
        workers.setdefault(variant, set()).add(gw)
    assert len(workers) >= 2 and all(len(w) == 1 for w in workers.values()), workers
    # the figures are keyed alike (compare matches a serial night against a parallel one)
    ids = figure_ids(tmp_path / "serial.json")
    assert ids and ids == figure_ids(tmp_path / "parallel.json")
    # the runs' lock files are gone with them
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "pytest-kvm-leases-*"))) \
        <= lease_dirs
