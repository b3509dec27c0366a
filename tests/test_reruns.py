"""kvm_reruns: on a host whose guests may die for reasons of the lab (nested virtualization
under emulation), a check whose guest died is rerun on a fresh guest, visibly; a check that
fails is not rerun."""

from __future__ import annotations

import re
import textwrap

from test_plugin import pytest_run

SUITE = textwrap.dedent("""
    import os, pathlib, signal
    import pytest

    def test_first(guest, qmp):
        flag = pathlib.Path("killed-once")  # in this run's directory
        if not flag.exists():  # the lab kills the guest once, in the middle of the check
            flag.write_text(str(guest.pid))
            os.kill(guest.pid, signal.SIGKILL)
        else:  # the rerun: a fresh guest object, running, its QMP the fresh QEMU's
            assert guest.state.value == "running" and not guest.dead
            assert guest.pid != int(flag.read_text())
            assert qmp is guest.qmp and qmp.execute("query-status")["status"] == "running"
        assert guest.sh("echo one").strip() == "one"

    def test_second(guest):
        assert guest.sh("echo two").strip() == "two"

    def test_wrong(guest):
        assert guest.sh("echo three").strip() == "four"
""")


def run_with_reruns(tmp_path, suite: str) -> str:
    """pytest's output for ``suite`` run on the local host with kvm_reruns=1."""
    (tmp_path / "test_it.py").write_text(suite)
    (tmp_path / "hosts.ini").write_text(
        "[l0]\nlocalhost ansible_connection=local kvm_reruns=1\n")
    r = pytest_run(["--hosts", "hosts.ini", "-rAR", "-p", "no:randomly"], tmp_path, timeout=300)
    return r.stdout


def test_a_dead_guest_is_rerun_on_a_fresh_one(tmp_path):
    out = run_with_reruns(tmp_path, SUITE)
    assert re.search(r"RERUN test_it.py::test_first\[localhost\]", out), out[-3000:]
    assert "PASSED test_it.py::test_first[localhost]" in out
    assert "PASSED test_it.py::test_second[localhost]" in out
    assert "FAILED test_it.py::test_wrong[localhost]" in out  # a failed check: no rerun
    assert "RERUN test_it.py::test_wrong" not in out
    assert re.search(r"1 failed, 2 passed, 1 rerun", out), out[-500:]
    assert "QEMU was killed by SIGKILL" in out  # the rerun's reason is shown


HUNG = textwrap.dedent("""
    import os, pathlib, signal
    import pytest

    @pytest.fixture(scope="module")
    def arranged(kvm_host, module_guest_factory):
        # what a module arranges once (a migration, say), through QMP; the first time, the
        # guest's QEMU hangs while asked (SIGSTOP: its QMP never answers)
        guest = module_guest_factory(host=kvm_host)
        flag = pathlib.Path("stopped-once")
        if not flag.exists():
            flag.write_text(str(guest.pid))
            qmp = guest.qmp  # connected
            os.kill(guest.pid, signal.SIGSTOP)
            try:
                qmp.execute("query-status", timeout=3)
            finally:
                os.kill(guest.pid, signal.SIGCONT)
        return guest

    def test_after_it(arranged):
        assert arranged.qmp.execute("query-status")["status"] == "running"
""")


def test_a_qemu_whose_qmp_hangs_is_rerun(tmp_path):
    out = run_with_reruns(tmp_path, HUNG)
    assert re.search(r"RERUN test_it.py::test_after_it\[localhost\]", out), out[-3000:]
    assert re.search(r"1 passed, 1 rerun", out), out[-1500:]
    assert re.search(r"QmpTimeout: localhost/\S+: QMP did not answer within 3 s", out), out[-2500:]
