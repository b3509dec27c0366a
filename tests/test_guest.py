"""Guests on real sshd hosts over SSH: boot, commands, QMP, crash at boot, overlays, stop."""

from __future__ import annotations

import pytest

from pytest_kvm.errors import KvmError
from pytest_kvm.guest import (
    Disk,
    GuestCommandTimeout,
    GuestDied,
    GuestSpec,
    GuestState,
    Owner,
    stale_runs,
)
from pytest_kvm.guest.qemu import controller_id
from pytest_kvm.guest.qmp import QmpEventTimeout
from pytest_kvm.lab import KvmSession
from pytest_kvm.waiting import WaitTimeout, first_within, wait_until


@pytest.fixture(scope="module")
def session(rig_inventory):
    s = KvmSession(rig_inventory, Owner.current("t" + controller_id()[:7]))
    yield s
    s.close()


@pytest.fixture(scope="module")
def host(session):
    return session.host("host1")


@pytest.fixture(scope="module")
def booted(session, host):
    """One micro guest on rig host1, over SSH, shared by the checks that do not change it."""
    g = session.start_guest(host, GuestSpec(name="shared"), "test_guest")
    yield g
    g.stop()


def test_boots_over_ssh_to_a_shell(booted):
    status, out = booted.run("uname -r; cat /proc/cmdline")
    assert status == 0
    assert "console=ttyS0" in out
    assert booted.accel == "tcg"  # this machine kind: no usable hardware KVM


def test_exit_status_and_output(booted):
    assert booted.run("echo hello; false", check=False) == (1, "hello\n")
    assert booted.run("printf 'a\\nb\\n'") == (0, "a\nb\n")


def test_a_running_qemu_has_no_exit_status_and_it_is_not_awaited(booted, monkeypatch):
    reads = []
    read_log = booted.read_log
    monkeypatch.setattr(booted, "read_log", lambda *a: reads.append(a) or read_log(*a))
    assert booted.exit_status() == ""
    assert reads == [("exit-status", 1)]  # read once: QEMU runs, nothing to wait for


def test_command_timeout_is_interrupted_and_console_recovers(booted):
    with pytest.raises(GuestCommandTimeout, match="`sleep 30` did not finish within 1 s"):
        booted.run("sleep 30", timeout=1)
    assert booted.run("echo still here") == (0, "still here\n")


def test_qmp_answers(booted):
    assert booted.qmp.execute("query-status")["status"] == "running"
    ids = {(d["id"]["vendor"], d["id"]["device"])
           for d in booted.qmp.execute("query-pci")[0]["devices"]}
    assert (0x8086, 0x29C0) in ids, ids  # q35's host bridge (the spec's machine) is there


def test_qmp_events_are_kept_until_a_wait_consumes_them(booted):
    qmp = booted.qmp
    qmp.execute("stop")
    qmp.execute("cont")
    resumed = qmp.event("RESUME", timeout=10)  # STOP came first: kept, not dropped
    assert qmp.event("STOP", timeout=10)["timestamp"]["seconds"] <= \
        resumed["timestamp"]["seconds"]
    with pytest.raises(QmpEventTimeout, match="no STOP event within 1 s"):
        qmp.event("STOP", timeout=1)  # each event is consumed once


def test_a_wait_names_what_it_waited_for():
    with pytest.raises(WaitTimeout, match=r"the answer: not within 0.2 s \(last seen: ''\)"):
        wait_until(lambda: "", 0.2, "the answer", step=0.05)
    assert wait_until(iter([0, "", "yes"]).__next__, 5, "a value", step=0) == "yes"


def test_a_wait_with_backoff_polls_less_and_less():
    calls = []
    with pytest.raises(WaitTimeout):
        wait_until(lambda: calls.append(1), 0.6, "nothing", step=0.01, max_step=0.1)
    # 0.01 + 0.02 + 0.04 + 0.08, then 0.1 s apart: about 10 calls (60 at a fixed 0.01 s)
    assert 5 <= len(calls) <= 12, len(calls)


def test_a_wait_whose_timeout_is_an_answer_gives_none_and_logs_what_it_awaited(caplog):
    caplog.set_level("INFO", logger="pytest_kvm.waiting")
    assert first_within(lambda: 0, 0.1, "a late answer", step=0.05) is None
    assert "a late answer: not within 0.1 s (last seen: 0)" in caplog.text
    assert first_within(iter(["", "now"]).__next__, 5, "an answer", step=0) == "now"


def test_run_dir_holds_sockets_logs_and_owner(booted, host):
    listing = host.run(["ls", booted.rundir]).stdout.split()
    assert {"c.sock", "q.sock", "console.log", "qemu.log", "qemu.pid", "owner",
            "cmdline"} <= set(listing)
    assert booted.name.startswith("pytest-kvm-") and booted.name.endswith("test_guest")
    ps = host.run(["ps", "-o", "args=", "-p", str(booted.pid)]).stdout
    assert booted.name in ps


def test_overlay_disks_on_a_cached_base(session, host):
    disks = (Disk(size="32M"), Disk(size="32M", interface="scsi"))
    g = session.start_guest(host, GuestSpec(name="disks", disks=disks))
    try:
        info = host.run(["qemu-img", "info", "-U", f"{g.rundir}/disk0.qcow2"]).stdout
        assert f"backing file: {host.workdir}/cache/blank-32M.qcow2" in info
        out = g.sh("cat /sys/block/vda/size /sys/block/sda/size")
        assert out.split() == [str(32 * 2048)] * 2  # 512-byte sectors
        g.sh("echo data > /dev/vda; sync")
    finally:
        g.stop()
    base = host.run(["qemu-img", "info", "-U", f"{host.workdir}/cache/blank-32M.qcow2"]).stdout
    assert "backing file" not in base  # the base itself was never written


def test_crash_at_boot_is_detected_with_the_console_tail(session, host):
    with pytest.raises(GuestDied) as exc:
        session.start_guest(host, GuestSpec(name="crash", append="rdinit=/no/such/init"))
    msg = str(exc.value)
    assert "QEMU exited before the guest was ready" in msg
    assert "Kernel panic" in msg or "No working init" in msg
    # panic=-1 reboots at once, and -no-reboot turns that into QEMU exiting 0
    assert "QEMU exited with status 0: the guest powered off, or reset" in msg


def test_a_killed_qemu_says_by_what(session, host):
    with session.start_guest(host, GuestSpec(name="killed")) as g:
        assert g.state is GuestState.RUNNING
        host.run(["kill", "-SEGV", str(g.pid)])
        with pytest.raises(GuestDied) as exc:
            g.sh("sleep 5")
        assert "QEMU was killed by SIGSEGV (QEMU crashed)" in str(exc.value)
        assert g.state is GuestState.DEAD and "QEMU went away" in g.death
    assert g.state is GuestState.STOPPED and g.dead  # stopped by the with; why it died kept
    assert host.run(["sh", "-c", f"ls {host.workdir}/run | grep -c . || true"]).stdout.strip() \
        in ("0", "1")  # only the shared guest's dir can remain


def test_bad_qemu_option_is_reported_with_stderr(session, host):
    with pytest.raises(KvmError, match="QEMU exited at once: .*no-such-device"):
        session.start_guest(host, GuestSpec(name="bad", devices=("no-such-device",)))


def test_stop_leaves_nothing(session, host):
    with session.start_guest(host, GuestSpec(name="stopme")) as g:
        pid, rundir = g.pid, g.rundir
    assert not g.alive() and g.state is GuestState.STOPPED and not g.dead
    assert host.run(["test", "-e", rundir], check=False).status == 1
    state = host.run(["ps", "-o", "stat=", "-p", str(pid)], check=False).stdout.strip()
    assert state[:1] in ("", "Z"), f"QEMU {pid} is still there: {state}"  # gone, or being reaped


def test_stop_escalates_when_qmp_quit_is_ignored(session, host):
    g = session.start_guest(host, GuestSpec(name="stubborn"))
    host.run(["kill", "-STOP", str(g.pid)])  # a hung QEMU: QMP quit is never processed
    g.stop()  # QMP times out, then SIGTERM (pending while stopped), then SIGKILL
    assert not g.alive()


def test_sweep_finds_only_dead_owners(session, host):
    g = session.start_guest(host, GuestSpec(name="mine"))
    try:
        assert g.rundir not in stale_runs(host, None)  # this process is alive: not stale
    finally:
        g.stop()
