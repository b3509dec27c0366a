"""Any inventory shape collects: every subset of the suites on one host (none, each alone,
every pair) and a two-host mix that shares no suite, each listed with no INTERNALERROR and no
NOTSET id; a suite that no host runs is left out, or, named on the command line, is one skip
that says which hosts were considered and why."""

from __future__ import annotations

import itertools
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pytest_kvm import registry

from test_plugin import pytest_run

SUITES = Path(__file__).parent.parent / "suites"
NAMES = registry.names()


def collect(tmp_path: Path, inventory: str, *args: str):
    path = tmp_path / f"hosts-{abs(hash(inventory))}.ini"
    path.write_text(inventory)
    return pytest_run(["--collect-only", "-q", str(SUITES), "--hosts", str(path), *args],
                      tmp_path, timeout=120)


def test_every_subset_of_the_suites_on_one_host_collects(tmp_path):
    subsets = [(), *((n,) for n in NAMES), *itertools.combinations(NAMES, 2)]
    inventories = {s: f"localhost ansible_connection=local kvm_suites={','.join(s) or 'none'}"
                   " kvm_passthrough=0000:00:03.0 kvm_sriov_pf=0000:00:04.0\n"
                   for s in subsets}
    with ThreadPoolExecutor(4) as pool:
        runs = dict(zip(inventories, pool.map(lambda inv: collect(tmp_path, inv),
                                               inventories.values()), strict=True))
    for subset, r in runs.items():
        out = r.stdout + r.stderr
        assert r.returncode in (0, 5), (subset, out[-2000:])  # 5: nothing collected (none)
        assert "INTERNALERROR" not in out and "NOTSET" not in out, (subset, out[-2000:])
        ids = [line for line in r.stdout.splitlines() if "::" in line]
        for suite in NAMES:  # a suite's checks are there exactly when the host runs it
            module = _module_of(suite)
            assert any(module in i for i in ids) == (suite in subset), (subset, suite, ids)


def test_two_hosts_that_share_no_suite_collect_each_its_own(tmp_path):
    r = collect(tmp_path, "[a]\nlocalhost ansible_connection=local kvm_suites=virtio\n"
                          "[b]\nkvm02 ansible_host=192.0.2.1 kvm_suites=migration "
                          "kvm_migration_peer=kvm02\n")
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    assert r.returncode == 0 and "NOTSET" not in r.stdout, r.stdout[-2000:]
    modules = {i.split("::")[0].rsplit("/", 1)[-1] for i in ids}
    assert modules == {"test_virtio.py", "test_migration.py", "test_migration_failures.py"}, ids
    assert all("[localhost" in i for i in ids if "virtio" in i.split("::")[0]), ids
    assert all("[kvm02-self" in i for i in ids if "migration" in i.split("::")[0]), ids


def test_a_suite_no_host_runs_named_on_the_command_line_is_one_skip_saying_why(tmp_path):
    (tmp_path / "v.ini").write_text("localhost ansible_connection=local kvm_suites=virtio\n")
    r = pytest_run([str(SUITES / "test_migration.py"), "--hosts", "v.ini", "-rs", "-q"],
                   tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    assert re.search(r"SKIPPED \[1\] .*test_migration.py: no host of .*v.ini takes part in "
                     r"suite 'migration': 1 host\(s\) considered, their kvm_suites: localhost "
                     r"\(virtio\); add migration to a host's kvm_suites", r.stdout), r.stdout
    assert "1 skipped" in r.stdout.splitlines()[-1], r.stdout[-500:]


def _module_of(suite: str) -> str:
    return {"virtio-data": "test_virtio_data.py", "virtio": "test_virtio.py::"}.get(
        suite, f"test_{suite}.py")


def test_a_modules_guests_are_one_scope_of_loadgroup():
    """--dist loadgroup keeps the checks that share a module's guests on one worker: a pair's
    check by its whole id (pair and variant), a host's by the host (the longest name that
    fits), anything else by itself or the @group xdist appends."""
    from pytest_kvm.collect import scope_of
    hosts = ["lab1", "lab10", "lab2", "localhost", "a-to-b"]
    cases = {
        "s/test_migration.py::test_measured[lab2-to-lab1-xbzrle]":
            "s/test_migration.py::lab2-to-lab1-xbzrle",
        "s/test_migration.py::test_source_is_postmigrate[lab2-to-lab1-xbzrle]":
            "s/test_migration.py::lab2-to-lab1-xbzrle",
        "s/test_migration_failures.py::test_x[localhost-self-cancel]":
            "s/test_migration_failures.py::localhost-self-cancel",
        "s/test_virtio.py::test_driver_loaded[lab10-virtio_net]": "s/test_virtio.py::lab10",
        "s/test_virtio.py::test_driver_loaded[lab1-virtio_blk]": "s/test_virtio.py::lab1",
        "s/test_sriov.py::test_vfs[lab1-0000:01:00.0-one]": "s/test_sriov.py::lab1",
        "s/test_virtio.py::test_driver_loaded[a-to-b-virtio_net]": "s/test_virtio.py::a-to-b",
        "s/test_x.py::test_plain": "s/test_x.py::test_plain",
        "s/test_x.py::test_p[other]": "s/test_x.py::test_p[other]",
        "s/test_x.py::test_p[lab1]@mine": "mine",
    }
    assert {n: scope_of(n, hosts) for n in cases} == cases
