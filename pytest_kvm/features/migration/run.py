"""One variant's migration(s), done once and checked by many tests (:class:`Run`)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import replace

from ...errors import KvmError
from ...guest import Guest, GuestSpec, memstamp
from ...host import Host
from ...waiting import wait_until
from .failures import Attempt, attempt
from .job import Job, Options
from .migrate import FIGURES, Migration, finish, migrate, stream_to, wait_running
from .storage import finish_mirror, mirror_storage, shared_storage_works
from .tls import MigrationTls
from .variants import BY_NAME, Variant
from .watchdog import MigrationError
from .workload import (
    BEAT_MS,
    STAMP_MS,
    STAMP_PAGES,
    CounterWatch,
    counter_log,
    start_counter,
    start_dirtying,
    stop_dirtying,
)

log = logging.getLogger("pytest_kvm.migration")

StartGuest = Callable[..., Guest]  # start(spec, host=..., wait=...): the fixtures' factory


class Run:
    """One variant's migration(s) of a guest running the counter, done once (``execute()``)
    and checked by many tests: the variant's hops (see variants.VARIANTS), or for a failure
    path its attempt (see failures.attempt) and then a migration that must succeed. Guests
    come from ``start`` (the fixture's factory, whose scope stops every one of them, also
    when ``execute()`` fails); ``close()`` stops the last one (the guest the checks read) and
    removes the run's files on shared storage."""

    def __init__(self, variant: str | Variant, src: Host, dst: Host, spec: GuestSpec,
                 start: StartGuest, shared_dir: str | None = None,
                 tls: MigrationTls | None = None,
                 step: Callable[[str], contextlib.AbstractContextManager] | None = None,
                 samples: int = 1):
        self.variant = BY_NAME[variant] if isinstance(variant, str) else variant
        self.src, self.dst, self.start, self.tls = src, dst, start, tls
        # hops there (src -> dst), each but the last followed by one back
        self.forward = max(samples, self.variant.forward)
        self.step = step or (lambda title: contextlib.nullcontext())
        self.watch = CounterWatch()
        self.watches = [self.watch]  # watch k reads QEMU process k ("source") and k+1
        self.processes = [src.name]
        self.windows: list[tuple[float, float, str]] = []
        self.hops: list[Migration] = []
        self.source_status = ""
        self.attempt: Attempt | None = None
        self.cleanup: list[tuple[Host, str]] = []
        self._log: list[tuple[int, int, float]] = []  # counter_log(): what was read so far
        storage = self.variant.storage
        if storage == "shared" or (storage == "any" and shared_dir):
            # its first disk there (made by the source's start; on a distro image, the
            # image's overlay: the boot disk itself is shared)
            image = f"{shared_dir}/mig-{secrets.token_hex(4)}.qcow2"
            self.cleanup.append((src, image))
            spec = spec.with_(disks=(replace(spec.disks[0], shared=image), *spec.disks[1:]))
        self.spec = spec
        self.storage = "shared" if spec.disks[0].shared else "copy"  # (what the disk is)
        self.shared_dir = shared_dir

    @property
    def route(self) -> str:
        return f"{self.variant.name} {self.src.name} -> {self.dst.name}"

    def execute(self) -> Run:
        """Boot the guest, start its workload and do the hops; returns the run, to check."""
        log.info("%s migration %s -> %s (%s storage)", self.variant.name, self.src.name,
                 self.dst.name, self.storage)
        try:
            self._run()
        except BaseException as exc:
            self._release()  # (its guests are the factory's: its scope stops them at once)
            if isinstance(exc, KvmError) and self.shared_dir:
                problem = shared_storage_works(self.src, self.dst, self.shared_dir)
                if problem:  # the likelier cause, said first
                    raise MigrationError(f"the shared storage failed: {problem}; then: "
                                         f"{exc}") from exc
            raise
        return self

    def _run(self) -> None:
        src, dst, variant = self.src, self.dst, self.variant
        self.guest = self.start(self.spec, host=src)
        self.token = secrets.token_hex(8)
        self.guest.sh(f"echo {self.token} | dd of=/dev/vda bs=512 conv=fsync 2>/dev/null")
        self.watch.attach(self.guest, "source")
        self.pid = start_counter(self.guest)
        self.stamp = memstamp.start(self.guest, STAMP_PAGES, STAMP_MS)
        self.beacon = memstamp.start_beacon(self.guest, BEAT_MS)
        self.watch.wait_lines("source", 5, 30)
        self.stamped_before = memstamp.progress(self.guest).generation
        if variant.failure is not None:
            with self.step(f"{variant.name} {src.name} -> {dst.name}"):
                self.attempt = attempt(self, variant.failure, dst)
            # then a migration that must succeed, from wherever the guest is now
            self.hop(src if self.guest.host is dst and src is not dst else dst)
        else:
            dirtying = start_dirtying(self.guest, variant.dirtying) if variant.dirtying else 0
            for to_host in [dst, src] * (self.forward - 1) + [dst]:
                self.hop(to_host)
            # The load served the migration; left running, it would slow every check after
            # it (seconds per command in a nested guest).
            if dirtying:
                stop_dirtying(self.guest, dirtying)
        self.stamped_after = memstamp.progress(self.guest).generation

    def hop(self, to_host: Host) -> None:
        source = self.guest
        dest = self.start(self.spec.with_(incoming="defer"), host=to_host, wait=False)
        self.watch.attach(dest, "destination")
        if self.storage == "copy":
            mirror_storage(source, dest, stream_to(source.host, dest, self.tls, "nbd"))
        self.watch.wait_beats("source", 100, 30)  # a stretch of beats before it
        started = time.monotonic()
        # (a failure path's second migration: a plain one)
        options = self.variant.options if self.variant.failure is None else Options()
        limit = source.host.entry.config.migration_max_bandwidth
        if limit and not options.postcopy:  # (postcopy sets its own, so precopy lasts)
            options = replace(options, max_bandwidth=limit * 1024 * 1024)
        with self.step(f"migrate {source.host.name} -> {to_host.name}"):
            result = migrate(source, dest, stream_to(source.host, dest, self.tls, "migrate"),
                             options=options)
        if self.storage == "copy":
            finish_mirror(source, dest)
        self.arrived(result, started)

    def completed(self, job: Job, info: dict, started: float) -> Migration:
        """A migration that ``job`` completed outside hop() (a failure path's recovered
        postcopy): its figures, and the guest on its destination."""
        result = finish(job, info)
        self.arrived(result, started)
        return result

    def arrived(self, result: Migration, started: float) -> None:
        """The guest runs on the migration's destination: checked, measured, the source
        stopped, and the destination the source of what follows."""
        source, dest = result.job.source, result.job.destination
        self.windows.append((started, time.monotonic(), f"hop {len(self.hops) + 1}"))
        self.processes.append(dest.host.name)
        result.storage = {"copy": "copy (NBD mirror)", "shared": "shared"}[self.storage]
        wait_running(dest)
        self.watch.wait_lines("destination", 3, 30)
        self.watch.wait_beats("destination", 20, 30)
        result.guest_gap_ms = round(self.watch.gap(started) * 1000, 1)
        result.beat_jitter_ms = round(self.watch.jitter(started) * 1000, 1)
        self.hops.append(result)
        self.source_status = source.qmp.execute("query-status")["status"]
        source.stop()
        self.guest = dest
        # the next hop measures its own gap: from here on, dest is the "source" side
        watch = CounterWatch()
        watch.attach(dest, "source")
        self.watch.close()
        self.watches.append(watch)
        self.watch = watch

    def counter_log(self) -> list[tuple[int, int, float]]:
        """The counter's log in the guest now, as (count, pid, uptime). Read incrementally:
        only lines new since the last call travel over the guest's console (a nested guest
        under a dirtying load prints a few KB/s, and the whole log grows by the minute).
        Called once the hops are done: self.guest no longer changes."""
        self._log += counter_log(self.guest, after=len(self._log))
        return list(self._log)

    def memory_problem(self, timeout: float = 60.0) -> str | None:
        """None when the memory-integrity program kept running across the hops and found
        every page as it last wrote it, up to two whole passes after this call (each pass
        checks every page before it stamps the next generation); else what it saw."""
        where = f"{self.guest.host.name}/{self.guest.spec.name}"
        target = max(memstamp.progress(self.guest).generation, self.stamped_after) + 2
        now = wait_until(lambda: (p := memstamp.progress(self.guest)).generation >= target
                         and p, timeout, f"{where}: memstamp's pass {target}", step=0.3)
        if now.bad or now.reports:
            return (f"{now.bad} page(s) of the guest's memory changed behind memstamp's back "
                    f"(pid {self.stamp.pid}, {self.stamp.pages} pages at {self.stamp.addr:#x}"
                    f"): " + "; ".join(now.reports))
        if self.stamped_after <= self.stamped_before:
            return (f"memstamp did not run across the hops (generation {self.stamped_before} "
                    f"before, {self.stamped_after} after)")
        if self.guest.run(f"kill -0 {self.stamp.pid}", check=False)[0] != 0:
            return f"memstamp (pid {self.stamp.pid}) is no longer running"
        return None

    def figures(self) -> dict[str, list]:
        """Each figure's samples: one per hop there (src -> dst); the hops back, under
        ``back_<figure>``."""
        out: dict[str, list] = {}
        for i, hop in enumerate(self.hops):
            prefix = "" if i % 2 == 0 else "back_"
            for name in FIGURES:
                out.setdefault(prefix + name, []).append(getattr(hop, name))
        return out

    def counter_samples(self) -> list[tuple[float, int, str]]:
        """The guest's counter across the hops as (arrival, count, QEMU process) — a line
        read from two consoles counts once, at its first arrival."""
        first: dict[int, tuple[float, int, str]] = {}
        for k, watch in enumerate(self.watches):
            for line in watch.lines:
                proc = k if line.side == "source" else k + 1
                name = f"QEMU {proc + 1} on {self.processes[min(proc, len(self.processes) - 1)]}"
                if line.count not in first or line.arrived < first[line.count][0]:
                    first[line.count] = (line.arrived, line.count, name)
        return sorted(first.values())

    def close(self) -> None:
        """After the checks: the last guest stopped (the one the checks read; the others
        stopped as the hops went), then the run's files removed."""
        guest = getattr(self, "guest", None)
        if guest is not None:
            guest.stop()
        self._release()

    def _release(self) -> None:
        """The run's files on shared storage removed, its consoles closed."""
        self.watch.close()
        for host, path in self.cleanup:  # (storage that went away must not hide the error)
            try:
                host.run(["rm", "-f", path], check=False, timeout=60)
            except KvmError as exc:
                log.warning("%s: could not remove %s: %s", host.name, path, exc)
        self.cleanup.clear()

