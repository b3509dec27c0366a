"""Live migration (lab notes, section 4): a process running in the guest keeps running when
the guest moves to another host, and the move is measured.

Per migration pair (each host with its kvm_migration_peer, or with itself: two QEMU processes
on one host, labelled "-self"), for each variant: shared storage (the disk on
kvm_shared_storage), copy-storage (an overlay per host, contents mirrored over NBD),
ping-pong (A->B->A->B, a fresh destination each hop), and dirty memory (a memory-dirtying
load in the guest, auto-converge on). After each: the source is postmigrate, the destination
running; the counter has the same PID, every number once and in order, uptime never went
back; the guest answers; the disk kept what was written before. Total time, downtime,
setup time, bytes, throughput and the guest-observed gap are recorded as test properties.
"""

from __future__ import annotations

import json
import random
import secrets
import time

import pytest

from pytest_kvm import reporting
from pytest_kvm.features import migration as mig
from pytest_kvm.fixtures import migration_address
from pytest_kvm.guest import Disk, GuestSpec

pytestmark = pytest.mark.kvm_suite("migration")

SPEC = GuestSpec(name="mig", serial=True, disks=(Disk(size="64M"),))
VARIANTS = ["shared-storage", "copy-storage", "ping-pong", "dirty-memory"]


def port() -> int:
    return random.randrange(40000, 60000)


@pytest.fixture(scope="module")
def shared_dir(kvm_pair):
    src, dst = kvm_pair
    path = src.entry.config.shared_storage or dst.entry.config.shared_storage
    if path is None and src is dst:
        path = f"{src.workdir}/shared"  # one host: its own disk is shared with itself
        src.run(["mkdir", "-p", path])
    if path is None:
        pytest.skip(f"{src.name}, {dst.name}: no kvm_shared_storage in the inventory")
    problem = mig.shared_storage_works(src, dst, path)
    if problem:
        pytest.skip(problem)
    return path


class Run:
    """One variant's migration(s), done once and checked by many tests."""

    def __init__(self, variant, src, dst, factory, shared_dir_path=None, tls=None):
        self.variant, self.src, self.dst, self.factory = variant, src, dst, factory
        self.tls = tls
        self.watch = mig.CounterWatch()
        self.watches = [self.watch]  # watch k reads QEMU process k ("source") and k+1
        self.processes = [src.name]
        self.windows: list[tuple[float, float, str]] = []
        self.hops: list[mig.Migration] = []
        self.sources = []
        # ping-pong and dirty-memory: shared storage where there is some, else a copy
        self.storage = "copy" if variant == "copy-storage" or (
            variant != "shared-storage" and shared_dir_path is None) else "shared"
        spec = SPEC
        if self.storage == "shared":
            image = f"{shared_dir_path}/mig-{secrets.token_hex(4)}.qcow2"
            src.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "64M"])
            self.cleanup = [(src, image)]
            spec = SPEC.with_(disks=(Disk(path=image),))
        else:
            self.cleanup = []
        self.spec = spec
        self.guest = factory(spec, host=src)
        self.token = secrets.token_hex(8)
        self.guest.sh(f"echo {self.token} | dd of=/dev/vda bs=512 conv=fsync 2>/dev/null")
        self.watch.attach(self.guest, "source")
        self.pid = mig.start_counter(self.guest)
        self.watch.wait_lines("source", 5, 30)
        if variant == "dirty-memory":
            mig.start_dirtying(self.guest)
        # ping-pong: A->B->A->B; each hop goes to a fresh destination process
        for to_host in ([dst, src, dst] if variant == "ping-pong" else [dst]):
            self.hop(to_host)

    def hop(self, to_host):
        source = self.guest
        dest = self.factory(self.spec.with_(incoming="defer"), host=to_host, wait=False)
        self.watch.attach(dest, "destination")
        address = migration_address(to_host)
        if self.storage == "copy":
            mig.mirror_storage(source, dest, address, port(), tls=self.tls)
        started = time.monotonic()
        with reporting.step(f"migrate {source.host.name} -> {to_host.name}"):
            result = mig.migrate(source, dest, address, port(), tls=self.tls,
                                 auto_converge=self.variant == "dirty-memory")
        self.windows.append((started, time.monotonic(), f"hop {len(self.hops) + 1}"))
        self.processes.append(to_host.name)
        if self.storage == "copy":
            mig.finish_mirror(source, dest)
        result.storage = {"copy": "copy (NBD mirror)", "shared": "shared"}[self.storage]
        mig.wait_running(dest)
        self.watch.wait_lines("destination", 3, 30)
        result.guest_gap_ms = int(self.watch.gap() * 1000)
        self.hops.append(result)
        self.sources.append(source)
        self.source_status = source.qmp.execute("query-status")["status"]
        source.stop()
        self.guest = dest
        self.watch = self._rewatch(dest)

    def _rewatch(self, dest):
        # the next hop measures its own gap: from here on, dest is the "source" side
        watch = mig.CounterWatch()
        watch.attach(dest, "source")
        self.watch.close()
        self.watches.append(watch)
        return watch

    def chart(self) -> str:
        """The guest's counter across the hops, each dot coloured by the QEMU process whose
        console gave it (a line read twice counts once, at its first arrival)."""
        first: dict[int, tuple[float, int, str]] = {}
        for k, watch in enumerate(self.watches):
            for line in watch.lines:
                proc = k if line.side == "source" else k + 1
                name = f"QEMU {proc + 1} on {self.processes[proc]}"
                if line.count not in first or line.arrived < first[line.count][0]:
                    first[line.count] = (line.arrived, line.count, name)
        return reporting.counter_chart(sorted(first.values()), self.windows)


@pytest.fixture(scope="module", params=VARIANTS)
def migrated(request, kvm_pair, module_guest_factory, kvm_migration_tls):
    src, dst = kvm_pair
    shared = None
    if request.param != "copy-storage":
        try:
            shared = request.getfixturevalue("shared_dir")
        except pytest.skip.Exception:
            if request.param == "shared-storage":
                raise
    run = Run(request.param, src, dst, module_guest_factory, shared, kvm_migration_tls)
    yield run
    run.watch.close()
    for host, path in run.cleanup:
        host.run(["rm", "-f", path], check=False)


def test_source_is_postmigrate(migrated):
    assert migrated.source_status == "postmigrate"


def test_destination_is_running(migrated):
    assert migrated.guest.qmp.execute("query-status")["status"] == "running"


def test_workload_has_the_same_pid(migrated):
    pids = {pid for _, pid, _ in mig.counter_log(migrated.guest)}
    assert pids == {migrated.pid}
    assert migrated.guest.run(f"kill -0 {migrated.pid}", check=False)[0] == 0


def test_counter_never_reset_or_repeated(migrated):
    counts = [n for n, _, _ in mig.counter_log(migrated.guest)]
    assert counts == list(range(1, len(counts) + 1))
    assert len(counts) > 5 * len(migrated.hops)


def test_counter_keeps_going_on_the_destination(migrated):
    before = mig.counter_log(migrated.guest)[-1][0]
    migrated.guest.sh("sleep 1")
    assert mig.counter_log(migrated.guest)[-1][0] > before


def test_uptime_never_went_back(migrated):
    uptimes = [u for _, _, u in mig.counter_log(migrated.guest)]
    assert uptimes == sorted(uptimes)


def test_disk_contents_moved(migrated):
    assert migrated.guest.sh("head -c 16 /dev/vda") == migrated.token


def test_guest_answers(migrated):
    assert migrated.guest.sh("echo pong").strip() == "pong"


def test_measured(migrated, kvm_figure):
    reporting.attach_text("migration numbers", json.dumps(
        [hop.properties() for hop in migrated.hops], indent=1))
    reporting.attach_svg("guest counter across the migration", migrated.chart())
    for i, hop in enumerate(migrated.hops):
        for key, value in hop.properties().items():
            kvm_figure(f"hop{i}_{key}" if len(migrated.hops) > 1 else key, value)
    for hop in migrated.hops:
        assert hop.total_time_ms > 0 and hop.transferred_bytes > 0
        assert hop.guest_gap_ms > 0
        assert hop.downtime_ms >= 0


def test_tls_where_the_inventory_asks(migrated):
    """kvm_migration_tls=yes: every hop went over TLS, and the destination QEMU requires it."""
    wanted = migrated.tls is not None
    assert [hop.tls for hop in migrated.hops] == [wanted] * len(migrated.hops)
    creds = migrated.guest.qmp.execute("query-migrate-parameters").get("tls-creds", "")
    assert creds == ("tls0" if wanted else "")
