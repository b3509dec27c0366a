"""Migration between two real sshd hosts in different network namespaces (the stream goes
over their veth and bridge only), a destination killed mid-way, and the timeout path."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pytest_kvm.features import migration as mig
from pytest_kvm.guest import Disk, GuestSpec, Owner, memstamp
from pytest_kvm.inventory import parse
from pytest_kvm.lab import KvmSession
from pytest_kvm.waiting import wait_until

from test_plugin import pytest_run

SPEC = GuestSpec(name="mig", serial=True, shell=True, memory=256, disks=(Disk(size="64M"),))


@pytest.fixture(scope="module")
def session(rig):
    inv = parse(rig.inventory(extra=f"kvm_shared_storage={rig.dir}/shared"))
    s = KvmSession(inv, Owner.current("migtest1"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def hosts(session, rig):
    h1, h2 = session.host("host1"), session.host("host2")
    h1.run(["mkdir", "-p", f"{rig.dir}/shared"])
    return h1, h2


OLD_QEMU = "/opt/pytest-kvm/qemu-7.2/bin/qemu-system-x86_64"  # make setup's second QEMU


def test_the_suite_migrates_both_ways_between_two_qemu_versions(rig, tmp_path):
    """A rolling upgrade and its rollback between two real sshd hosts: host1 runs the
    system's QEMU 10, host2 Debian bookworm's 7.2 (make setup's prefix), each migrates to the
    other. The guest gets the newest machine type both offer and a CPU model both run."""
    shutil.copy(Path(__file__).parent.parent / "suites" / "test_migration.py", tmp_path)
    (tmp_path / "hosts.ini").write_text(rig.inventory(
        extra=f"kvm_shared_storage={rig.dir}/shared",
        host_vars={"host1": {"kvm_migration_peer": "host2", "kvm_suites": "migration"},
                   "host2": {"kvm_migration_peer": "host1", "kvm_suites": "migration",
                             "kvm_qemu": OLD_QEMU}}))
    (Path(rig.dir) / "shared").mkdir(exist_ok=True)
    r = pytest_run(["--hosts", "hosts.ini", "-v", "-k", "shared or copy",
                    "--junitxml", str(tmp_path / "junit.xml")], tmp_path, timeout=900)
    failures = r.stdout.split("= FAILURES =")[-1]
    assert r.returncode == 0, failures[:4000] + r.stdout[-1000:]
    for pair in ("host1-to-host2", "host2-to-host1"):
        for variant in ("shared-storage", "copy-storage"):
            for check in ("test_counter_never_reset_or_repeated", "test_guest_memory_intact",
                          "test_disk_contents_moved"):
                assert f"{check}[{pair}-{variant}] PASSED" in r.stdout, r.stdout[-3000:]
    assert "warning" not in r.stdout.splitlines()[-1], r.stdout[-2000:]  # none under xunit2
    junit = (tmp_path / "junit.xml").read_text()
    for prop in ("total_time_ms", "downtime_ms", "guest_gap_ms", "transferred_bytes"):
        # a testsuite property per migration: xunit2 (the default) has no testcase properties
        assert f'name="test_migration.py::test_measured[host1-to-host2-shared-storage].{prop}"' \
            in junit, junit[-2000:]
    prefix = 'name="test_migration.py::test_measured[host2-to-host1-copy-storage].'
    assert f'{prefix}machine" value="pc-q35-7.2"' in junit, junit[-3000:]
    assert f'{prefix}source_qemu" value="7.2.' in junit, junit[-3000:]
    assert f'{prefix}destination_qemu" value="10.' in junit, junit[-3000:]
    assert f'{prefix}cpu" value="' in junit and ',enforce,-svm,-vmx"' in junit


def test_a_pair_pinned_to_a_cpu_model_one_end_lacks_is_skipped_precisely(rig, tmp_path):
    """kvm_migration_cpu names a model QEMU 7.2 does not have (EPYC-Genoa came in 8.1): every
    check of the pair is skipped with one reason naming both hosts, the version and why."""
    shutil.copy(Path(__file__).parent.parent / "suites" / "test_migration.py", tmp_path)
    (tmp_path / "hosts.ini").write_text(rig.inventory(
        extra="kvm_migration_cpu=EPYC-Genoa",
        host_vars={"host1": {"kvm_migration_peer": "host2", "kvm_suites": "migration"},
                   "host2": {"kvm_suites": "none", "kvm_qemu": OLD_QEMU}}))
    r = pytest_run(["--hosts", "hosts.ini", "-rs"], tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    skips = [line.split(": ", 1)[1] for line in r.stdout.splitlines()
             if line.startswith("SKIPPED")]
    assert len(set(skips)) == 1, r.stdout[-3000:]  # one reason for all
    assert re.search(r"^=+ \d+ skipped in", r.stdout.splitlines()[-1]), r.stdout[-500:]
    assert "kvm_migration_cpu=EPYC-Genoa" in skips[0], skips
    assert "host2 (QEMU 7.2." in skips[0] and "has no CPU model EPYC-Genoa" in skips[0], skips


def test_memory_check_names_a_page_changed_behind_the_program(session, hosts):
    """The suite's memory check after a migration QEMU 10 -> 10 (session hosts): one word of
    one stamped page rewritten in the destination guest (through /proc/PID/mem, not by the
    program) fails it with that page's address, the value seen and the value expected."""
    def start(spec, host, wait=True):
        return session.start_guest(host, spec, "mem", wait=wait)

    run = mig.Run("copy-storage", *hosts, SPEC, start).execute()
    try:
        assert run.memory_problem() is None  # the migration itself kept every page
        stamp = run.stamp
        where = stamp.addr + 5 * 4096 + 64
        run.guest.sh(f"printf XXXXXXXX | dd of=/proc/{stamp.pid}/mem bs=1 seek={where} "
                     f"conv=notrunc")
        problem = run.memory_problem()
        assert problem is not None
        assert "1 page(s) of the guest's memory changed" in problem, problem
        assert f"page=5 addr={where:#x} word=8 saw=0x5858585858585858" in problem, problem
        assert re.search(r"want=0x[0-9a-f]+00005\b", problem), problem
    finally:
        run.close()


def test_stream_goes_to_the_destination_namespace_address(hosts, rig):
    assert mig.address_of(hosts[1]) == rig.hosts[1].address


def _pair(session, hosts):
    h1, h2 = hosts
    src = session.start_guest(h1, SPEC, "mig-src")
    dst = session.start_guest(h2, SPEC.with_(incoming="defer"), "mig-dst", wait=False)
    return src, dst


def test_destination_killed_mid_migration(session, hosts):
    src, dst = _pair(session, hosts)
    try:
        mig.start_dirtying(src, 32)
        errors = []

        def run():
            try:
                mig.migrate(src, dst, mig.stream_to(hosts[0], dst, None, "migrate"), timeout=60,
                            max_bandwidth=2_000_000)
            except mig.MigrationError as exc:
                errors.append(str(exc))

        t = threading.Thread(target=run)
        t.start()
        time.sleep(2)
        hosts[1].run(["kill", "-9", str(dst.pid)])
        t.join(90)
        assert errors and "ended 'failed'" in errors[0], errors
        assert "the destination QEMU on host2 ended: QEMU was killed by SIGKILL" in errors[0]
        assert src.qmp.execute("query-status")["status"] == "running"  # the guest lives on
        assert src.sh("echo still").strip() == "still"
    finally:
        dst.stop()
        src.stop()
    assert not src.alive() and not dst.alive()


def test_a_migration_that_cannot_converge_is_cancelled_with_its_figures(session, hosts):
    """A guest rewriting 32 MiB over and over behind a 4 MB/s cap: the watchdog says it does
    not converge (no fixed deadline), with the figures and what would make it, and the
    source runs on."""
    src, dst = _pair(session, hosts)
    try:
        mig.start_dirtying(src, 32)
        started = time.monotonic()
        with pytest.raises(mig.NotConverging, match=r"does not converge: .* MiB remaining "
                           r".* pages/s .* the link carries .* MiB/s, and the 300 ms downtime "
                           r"limit .* it would converge with a downtime limit of \d+ ms"):
            mig.migrate(src, dst, mig.stream_to(hosts[0], dst, None, "migrate"),
                        max_bandwidth=4_000_000)
        assert time.monotonic() - started < 120
        assert src.qmp.execute("query-migrate").get("status") == "cancelled"
        assert src.qmp.execute("query-status")["status"] == "running"
    finally:
        dst.stop()
        src.stop()


def test_plain_tcp_only_where_both_hosts_ask_for_it(rig, tmp_path):
    """TLS is the default between hosts (the both-ways test above runs over it); with
    kvm_migration_tls=no on both, the shared- and copy-storage variants go plain, and say so."""
    shutil.copy(Path(__file__).parent.parent / "suites" / "test_migration.py", tmp_path)
    (tmp_path / "hosts.ini").write_text(rig.inventory(
        extra=f"kvm_shared_storage={rig.dir}/shared\nkvm_migration_tls=no",
        host_vars={"host1": {"kvm_migration_peer": "host2"},
                   "host2": {"kvm_suites": "virtio"}}))
    (Path(rig.dir) / "shared").mkdir(exist_ok=True)
    r = pytest_run(["--hosts", "hosts.ini", "-v", "-k", "shared or copy", "-o",
                    "log_cli=true", "-o", "log_cli_level=WARNING"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]
    for variant in ("shared-storage", "copy-storage"):
        assert (f"test_streams_are_authenticated[host1-to-host2-{variant}] PASSED"
                in r.stdout)
    assert "host1 -> host2: the nbd stream is plain TCP, unauthenticated" in r.stdout


def test_a_source_without_tls_cannot_migrate_to_a_tls_destination(session, hosts):
    """The destination requires TLS: a plain stream is refused (TLS is enforced, not offered)."""
    h1, h2 = hosts
    tls = mig.MigrationTls([mig.address_of(h2)])
    src = session.start_guest(h1, SPEC, "tls-src")
    dst = session.start_guest(h2, SPEC.with_(incoming="defer"), "tls-dst", wait=False)
    try:
        tls.creds(dst, "server")
        dst.qmp.execute("migrate-set-parameters", tls_creds="tls0")
        with pytest.raises(mig.MigrationError, match="ended 'failed'"):
            mig.migrate(src, dst, mig.stream_to(h1, dst, None, "migrate"), timeout=60)
    finally:
        for g in (src, dst):
            g.stop()
        tls.close()


def _nobody_lists(*argv: str) -> subprocess.CompletedProcess:
    """The real `nobody`, another user of the controller and the lab network, asks an NBD
    server for its exports."""
    return subprocess.run(["runuser", "-u", "nobody", "--", "qemu-nbd", "--list", *argv],
                          capture_output=True, text=True, timeout=60)


def test_another_user_cannot_reach_the_nbd_export_of_a_migration(session, hosts):
    """The copy-storage mirror's NBD server (the guest's disk, writable): between two hosts
    over TLS nobody gets past the handshake (plain TCP, kvm_migration_tls=no, lists the
    export to them: the attack); on one host a unix socket in the private run dir, which
    nobody cannot even reach while its owner can."""
    h1, h2 = hosts
    tls = mig.MigrationTls([mig.address_of(h2)])
    guests = [session.start_guest(h, SPEC.with_(incoming="defer"), f"nbd-{i}", wait=False)
              for i, h in enumerate((h2, h2, h1))]
    try:
        for guest, with_tls in ((guests[0], tls), (guests[1], None)):
            stream = mig.stream_to(h1, guest, with_tls, "nbd")
            assert stream.kind == ("tls" if with_tls else "tcp")
            export = mig.serve_nbd(guest, stream)
            seen = _nobody_lists(f"--bind={stream.address}", f"--port={stream.port}")
            if with_tls:
                assert seen.returncode != 0 and export not in seen.stdout, seen
                assert "TLS" in seen.stderr, seen.stderr
            else:
                assert seen.returncode == 0 and export in seen.stdout, seen
        stream = mig.stream_to(h1, guests[2], tls, "nbd")
        assert stream.kind == "unix" and stream.path.startswith(h1.workdir + "/")
        export = mig.serve_nbd(guests[2], stream)
        seen = _nobody_lists(f"--socket={stream.path}")
        assert seen.returncode != 0 and "Permission denied" in seen.stderr, seen
        mine = subprocess.run(["qemu-nbd", "--list", f"--socket={stream.path}"],
                              capture_output=True, text=True, timeout=60)
        assert export in mine.stdout, mine
    finally:
        for g in guests:
            g.stop()
        tls.close()


def test_another_user_cannot_reach_a_migration_socket_on_one_host(session, hosts):
    """Two QEMUs on one host migrate over a unix socket in the run dir: the real `nobody`
    cannot connect to it (a TCP port on the host would have taken their stream)."""
    h1 = hosts[0]
    dst = session.start_guest(h1, SPEC.with_(incoming="defer"), "unix-dst", wait=False)
    try:
        stream = mig.stream_to(h1, dst, None, "migrate")
        dst.qmp.execute("migrate-incoming", uri=stream.uri())
        connect = ["python3", "-c", "import socket, sys; s = socket.socket(socket.AF_UNIX); "
                   "s.connect(sys.argv[1]); s.sendall(b'QEVM')", stream.path]
        seen = subprocess.run(["runuser", "-u", "nobody", "--", *connect],
                              capture_output=True, text=True, timeout=60)
        assert seen.returncode != 0 and "PermissionError" in seen.stderr, seen
        assert h1.run(["test", "-S", stream.path]).ok  # (listening, for its owner)
        assert dst.qmp.execute("query-status")["status"] == "inmigrate"
    finally:
        dst.stop()


def test_the_counter_log_reads_on_from_a_line_and_still_shows_a_reset(session, hosts):
    """The suite reads the counter's log incrementally (only new lines over the console):
    a read from line k on is the whole log's tail, and a counter that started again (count
    1, another PID) after the lines already read is in the next read."""
    guest = session.start_guest(hosts[0], SPEC, "mig-log")
    try:
        pid = mig.start_counter(guest)
        wait_until(lambda: len(mig.counter_log(guest)) >= 5, 30, "5 counter lines", step=0.2)
        guest.sh(f"kill {pid}")
        full = mig.counter_log(guest)
        assert [n for n, _, _ in full] == list(range(1, len(full) + 1))
        assert mig.counter_log(guest, after=3) == full[3:]
        assert mig.counter_log(guest, after=len(full)) == []
        guest.sh(f"echo 'PKVM-COUNT 1 4242 9.5' >> {mig.COUNTER_LOG}; "
                 f"printf 'PKVM-COUNT 2 4242 9' >> {mig.COUNTER_LOG}")  # still being written
        assert mig.counter_log(guest, after=len(full)) == [(1, 4242, 9.5)]
    finally:
        guest.stop()


def test_the_heartbeat_gap_sees_a_pause_to_the_millisecond(session, hosts):
    """What the guest-observed gap is made of, without a migration: the guest paused for
    400 ms (QMP stop, cont) shows as one interval between heartbeats of 400 ms plus at most
    a few beats, where the counter's 200 ms lines could only say "somewhere in 200-600"."""
    guest = session.start_guest(hosts[0], SPEC, "beat")
    watch = mig.CounterWatch()
    try:
        watch.attach(guest, "source")
        memstamp.start_beacon(guest, mig.BEAT_MS)
        watch.wait_beats("source", 100, 30)
        floor = watch.jitter(time.monotonic())
        since = time.monotonic()
        guest.qmp.execute("stop")
        time.sleep(0.4)
        guest.qmp.execute("cont")
        count = len(watch.beats)
        wait_until(lambda: len(watch.beats) > count + 20, 30, "beats after cont")
        gap = watch.gap(since)
        assert floor <= 0.06, f"beats {floor * 1000:.0f} ms apart at most: not 5 ms ones"
        assert 0.4 <= gap <= 0.46, f"a 400 ms pause seen as {gap * 1000:.0f} ms"
    finally:
        watch.close()
        guest.stop()
