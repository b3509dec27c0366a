"""Live migration (lab notes, section 4): a process running in the guest keeps running when
the guest moves to another host, and the move is measured.

Per migration pair (each host with its kvm_migration_peer, or with itself: two QEMU processes
on one host, labelled "-self"), for each variant: shared storage (the disk on
kvm_shared_storage), copy-storage (an overlay per host, contents mirrored over NBD),
ping-pong (A->B->A->B, a fresh destination each hop), dirty memory (a memory-dirtying
load in the guest, auto-converge on), postcopy (precopy first, then migrate-start-postcopy
under a dirtying load), multifd (RAM over 4 channels) and xbzrle (re-sent pages as deltas
against a 64 MiB cache, under a dirtying load). After each: the source is postmigrate, the
destination running; the counter has the same PID, every number once and in order, uptime
never went back; every page a program in the guest kept stamping is as it last wrote it;
the guest answers; the disk kept what was written before; the variant is what it says. The
guest's machine type and CPU model are ones both ends accept (the newest versioned machine
type both QEMUs offer and the richest named CPU model both run in full, or the inventory's
kvm_machine and kvm_migration_cpu): pairs of two QEMU versions migrate both ways.
Total time, downtime, setup time, bytes, throughput and the guest-observed gap (heartbeats
every 10 ms of guest time, stamped as they arrive) are recorded as figures (kvm_figure), a
sample per hop; --kvm-samples N makes N hops there (and N-1 back) per variant.
"""

from __future__ import annotations

import json

import pytest

from pytest_kvm import reporting
from pytest_kvm.features import migration as mig
from pytest_kvm.guest import Disk, GuestSpec

pytestmark = pytest.mark.kvm_suite("migration")

SPEC = GuestSpec(name="mig", serial=True, shell=True, disks=(Disk(size="64M"),))


@pytest.fixture(autouse=True)
def _pair_model_shown(kvm_migration_model):
    """The pair's choice, on every check's report."""
    reporting.parameter("machine type", kvm_migration_model.machine)
    reporting.parameter("CPU model", kvm_migration_model.cpu)
    reporting.parameter("QEMU versions", " -> ".join(kvm_migration_model.versions))


@pytest.fixture(scope="module", params=mig.variant_names())
def migrated(request, kvm_migration):
    """The variant's migration(s), done once and checked by the tests below."""
    with kvm_migration(request.param, SPEC) as run:
        yield run


def test_source_is_postmigrate(migrated):
    assert migrated.source_status == "postmigrate"


def test_destination_is_running(migrated):
    assert migrated.guest.qmp.execute("query-status")["status"] == "running"


def test_workload_has_the_same_pid(migrated):
    pids = {pid for _, pid, _ in migrated.counter_log()}
    assert pids == {migrated.pid}
    assert migrated.guest.run(f"kill -0 {migrated.pid}", check=False)[0] == 0


def test_counter_never_reset_or_repeated(migrated):
    counts = [n for n, _, _ in migrated.counter_log()]
    assert counts == list(range(1, len(counts) + 1))
    assert len(counts) > 5 * len(migrated.hops)


def test_counter_keeps_going_on_the_destination(migrated):
    before = migrated.counter_log()[-1][0]
    migrated.guest.sh("sleep 1")
    assert migrated.counter_log()[-1][0] > before


def test_uptime_never_went_back(migrated):
    uptimes = [u for _, _, u in migrated.counter_log()]
    assert uptimes == sorted(uptimes)


def test_disk_contents_moved(migrated):
    """Read from the disk itself (O_DIRECT), not from the page cache that moved with RAM."""
    assert migrated.guest.sh("dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | "
                             "head -c 16") == migrated.token


def test_disk_cache_fits_the_storage(migrated):
    """On shared storage the disk bypasses the host cache (cache=none: direct, flushes kept),
    as a safe migration needs; with copy-storage it is the destination's own overlay."""
    node = mig.disk_node(migrated.guest)
    if migrated.storage == "shared":
        assert node["protocol"].get("cache") == {"writeback": True, "direct": True,
                                                 "no-flush": False}, node
    else:
        assert node.get("file", "").startswith(migrated.guest.rundir + "/"), node


def test_guest_memory_intact(migrated):
    """A program in the guest stamped every page of a region with a generation number while
    the guest moved, and checked each page before its next stamp: none was torn or stale."""
    problem = migrated.memory_problem()
    assert problem is None, problem


def test_guest_answers(migrated):
    assert migrated.guest.sh("echo pong").strip() == "pong"


def test_measured(migrated, kvm_figure, kvm_property):
    """Each hop's figures, a sample per hop (--kvm-samples N: N hops there, N-1 back); the
    guest's gap (heartbeats every 5 ms across the switch) is there and no shorter than a
    heartbeat."""
    reporting.attach_text("migration numbers", json.dumps(
        [hop.properties() for hop in migrated.hops], indent=1))
    reporting.attach_svg("guest counter across the migration",
                         reporting.counter_chart(migrated.counter_samples(), migrated.windows))
    for name, samples in migrated.figures().items():
        unit, better = mig.FIGURES[name.removeprefix("back_")]
        kvm_figure(name, samples, unit=unit, better=better)
    first = migrated.hops[0]
    for name in ("storage", "capabilities", "machine", "cpu", "source_qemu",
                 "destination_qemu"):
        kvm_property(name, getattr(first, name))
    kvm_property("beat_jitter_ms", max(hop.beat_jitter_ms for hop in migrated.hops))
    for hop in migrated.hops:
        assert hop.total_time_ms > 0 and hop.transferred_bytes > 0
        assert hop.guest_gap_ms >= mig.BEAT_MS * 0.8, hop.properties()
        assert hop.downtime_ms > 0, hop.properties()  # (QMP says 0 before it is computed)


def test_the_variant_is_what_it_says(migrated):
    """Postcopy went through postcopy-active, multifd sent RAM over its channels, xbzrle's
    cache took re-sent pages, ping-pong made three hops, the storage is the variant's."""
    problem = migrated.variant.problem(migrated.hops)
    assert problem is None, problem


def test_streams_are_authenticated(migrated):
    """Every hop's stream (and its NBD mirror) went over a unix socket in the private run dir
    on one host, over TLS between two (the destination QEMU requires it), plain TCP only
    where both hosts' inventory says kvm_migration_tls=no."""
    plain = all(h.entry.config.migration_tls is False for h in (migrated.src, migrated.dst))
    wanted = "unix" if migrated.src is migrated.dst else "tcp" if plain else "tls"
    assert [hop.stream for hop in migrated.hops] == [wanted] * len(migrated.hops)
    creds = migrated.guest.qmp.execute("query-migrate-parameters").get("tls-creds", "")
    assert creds == ("tls0" if wanted == "tls" else "")


