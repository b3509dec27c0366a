"""A migration in flight (:class:`Job`): both ends prepared, the source sending, and its
progress watched until it ends, as a management layer watches it (libvirt, KubeVirt).

QEMU itself gives up on nothing: a precopy that cannot converge stays 'active' for ever, and
a lost link stalls a TCP stream for as long as TCP retries (a quarter of an hour). So the
:class:`Watchdog` decides from what the link carries, sample by sample: no byte moved for
STALL_S seconds is a lost link; remaining bytes that make no new low for a window of passes,
while the guest dirties memory faster than the link carries it and nothing is left to slow
the guest (auto-converge off, or at its ceiling), is a migration that will not converge. A
precopy that fails so is cancelled (the source runs on: precopy never stops it before the
end); a postcopy cannot be cancelled (the guest's memory is split between the two ends), so
it is paused on both ends (``migrate-pause``) and recovered over a new stream
(``migrate-recover``, then ``migrate`` with ``resume``) once one can be made, as QEMU's own
migration tests do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import KvmError
from ...guest import Guest
from ...waiting import first_within
from .tls import MigrationTls

log = logging.getLogger("pytest_kvm.migration")

ENDED = ("completed", "failed", "cancelled")
POSTCOPY_AFTER = 4 * 1024 * 1024  # precopy bytes sent before the switch to postcopy
POSTCOPY_PRECOPY_BANDWIDTH = 16 * 1024 * 1024  # bytes/s: precopy cannot finish first
MIB = 1024 * 1024


class MigrationError(KvmError):
    """A migration failed; ``figures`` holds what was measured when it did (for reports)."""

    def __init__(self, message: str, figures: dict | None = None):
        super().__init__(message)
        self.figures = figures or {}


class MigrationUnsupported(MigrationError):
    """An end's QEMU lacks what the migration needs (a capability): a skip, naming both ends'
    versions, not a failure."""


class NotConverging(MigrationError):
    """The guest dirties memory faster than the link carries it (the figures say by how much,
    and what would make it converge)."""


class LinkStalled(MigrationError):
    """No byte of the migration stream moved for the watchdog's stall time."""


@dataclass(frozen=True)
class Options:
    """How a migration goes (QEMU's capabilities and parameters)."""

    auto_converge: bool = False
    max_bandwidth: int | None = None  # bytes/s of precopy (None: QEMU's default)
    postcopy: bool = False
    postcopy_bandwidth: int = 0  # bytes/s of postcopy's background transfer (0: unlimited)
    multifd_channels: int = 0
    xbzrle_cache: int = 0  # bytes

    def capabilities(self) -> dict[str, bool]:
        """The source's capabilities (the destination takes those marked both())."""
        return {"events": True, "auto-converge": self.auto_converge,
                "xbzrle": self.xbzrle_cache > 0, **self.both()}

    def both(self) -> dict[str, bool]:
        return {"postcopy-ram": self.postcopy, "multifd": self.multifd_channels > 0}


@dataclass(frozen=True)
class Sample:
    """One ``query-migrate`` of the source."""

    at: float  # the controller's monotonic clock
    status: str
    transferred: int = 0
    remaining: int = 0
    total: int = 0
    dirty_rate: int = 0  # pages/s, as QEMU measured it at its last dirty-bitmap sync
    syncs: int = 0  # dirty-bitmap syncs: 1 when the bulk pass starts, +1 a pass
    throttle: int = 0  # auto-converge's vCPU throttle, in %
    page_size: int = 4096
    multifd: int = 0  # bytes sent over multifd channels (QEMU 7.2 counts them apart)
    info: dict | None = None

    @property
    def moved(self) -> int:
        return self.transferred + self.multifd

    @classmethod
    def of(cls, info: dict, at: float) -> Sample:
        ram = info.get("ram", {})
        return cls(at, info.get("status", ""), int(ram.get("transferred", 0)),
                   int(ram.get("remaining", 0)), int(ram.get("total", 0)),
                   int(ram.get("dirty-pages-rate", 0)), int(ram.get("dirty-sync-count", 0)),
                   int(info.get("cpu-throttle-percentage", 0)),
                   int(ram.get("page-size", 4096)) or 4096, int(ram.get("multifd-bytes", 0)),
                   info)


def _mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


class Watchdog:
    """Says when a migration QEMU still calls active (or postcopy-active) has failed.

    * **stalled**: no byte moved for ``stall_s`` seconds (the link is gone);
    * **not converging** (precopy): the guest dirties memory at least as fast as the link
      carries it (QEMU's dirty rate against the bytes the link carried) and the bytes
      remaining made no new low (a tenth below the last) for ``max(window_s, 3 passes)``
      after the bulk pass, while auto-converge is off or at its ceiling (a migration that is
      slow but whose guest dirties less than the link carries converges, in time: the
      deadline below bounds it);
    * **too slow**: past a deadline from the RAM to send at the rate the link carried
      (``slack`` times that, plus ``grace_s``), renewed with every sample.
    Rates are the controller's own (transferred bytes over the last samples), not QEMU's
    one-pass estimates."""

    STALL_S = 10.0
    WINDOW_S = 8.0
    SLACK = 4.0
    GRACE_S = 60.0
    THROTTLE_CEILING = 99

    def __init__(self, downtime_limit_ms: int, auto_converge: bool, stall_s: float | None = None,
                 hard_cap_s: float | None = None):
        self.downtime_limit_ms = downtime_limit_ms
        self.auto_converge = auto_converge
        self.stall_s = stall_s or self.STALL_S
        self.hard_cap_s = hard_cap_s
        self.started: float | None = None
        self.samples: list[Sample] = []
        self._moved_at = 0.0  # when transferred last grew
        self._pass = (0, 0)  # (syncs, remaining) at the start of the pass under way
        self._low: int | None = None  # the least a pass started with, after the bulk pass
        self._low_at = 0.0
        self._bulk_end: tuple[float, int] | None = None  # (at, syncs) when the bulk pass ended

    def rate(self, span: float = 3.0) -> float:
        """Bytes/s the link carried over the last ``span`` seconds (0 before two samples)."""
        if len(self.samples) < 2:
            return 0.0
        last = self.samples[-1]
        first = next((s for s in self.samples if s.at >= last.at - span), self.samples[0])
        if first is last:
            first = self.samples[-2]
        return max(0, last.transferred - first.transferred) / max(last.at - first.at, 1e-3)

    def judge(self, s: Sample) -> MigrationError | None:
        """None while the migration may still end on its own; else the failure (not raised)."""
        if self.started is None:
            self.started = self._moved_at = s.at
        if self.samples and s.moved > self.samples[-1].moved:
            self._moved_at = s.at
        self.samples.append(s)
        del self.samples[:-200]
        if s.status in ENDED or s.status in ("setup", "postcopy-paused", "postcopy-recover",
                                             "pre-switchover", "device", "cancelling"):
            self._moved_at = s.at  # (nothing is expected to move in these)
            return None
        if s.at - self._moved_at >= self.stall_s:
            return LinkStalled(f"no byte moved for {s.at - self._moved_at:.0f} s "
                               f"(status '{s.status}', {_mib(s.transferred)} sent, "
                               f"{_mib(s.remaining)} remaining): the link is lost",
                               self.figures(s))
        if s.status == "active":
            problem = self._not_converging(s)
            if problem is not None:
                return problem
        deadline = self.deadline(s)
        if s.at > deadline:
            return MigrationError(
                f"too slow: {s.at - self.started:.0f} s, past the {deadline - self.started:.0f}"
                f" s that {_mib(s.total)} of RAM at the {_mib(self.rate())}/s the link carried "
                f"allow ({self.SLACK:g} times that, plus {self.GRACE_S:g} s); "
                f"{_mib(s.remaining)} remaining", self.figures(s))
        return None

    def deadline(self, s: Sample) -> float:
        """When a migration still under way counts as too slow: the RAM to send at the rate
        the link carries, ``SLACK`` times over, plus ``GRACE_S``; never past the hard cap."""
        rate = max(self.rate(), 1 * MIB)
        deadline = self.started + self.GRACE_S + self.SLACK * max(s.total, s.remaining) / rate
        if self.hard_cap_s is not None:
            deadline = min(deadline, self.started + self.hard_cap_s)
        return deadline

    def _not_converging(self, s: Sample) -> NotConverging | None:
        """Judged on what each pass starts with (the bytes remaining at the first sample
        after a dirty-bitmap sync: what the guest dirtied during the last pass, which QEMU
        weighs against its downtime limit); within a pass the remaining bytes only fall."""
        if s.syncs < 2:  # the bulk pass: every page once
            return None
        if self._bulk_end is None:
            self._bulk_end = (s.at, s.syncs)
        if s.syncs != self._pass[0]:
            self._pass = (s.syncs, s.remaining)
            if self._low is None or s.remaining < 0.9 * self._low:
                self._low, self._low_at = s.remaining, s.at
        passes = s.syncs - self._bulk_end[1]
        per_pass = (s.at - self._bulk_end[0]) / passes if passes else 0.0
        window = max(self.WINDOW_S, 3 * per_pass)
        if passes < 2 or s.at - self._low_at < window:
            return None
        if self.auto_converge and s.throttle < self.THROTTLE_CEILING:
            return None  # it is still slowing the guest down
        if s.dirty_rate * s.page_size < 0.9 * self.rate(max(window, 3.0)):
            return None  # the link outruns the guest: slow, but converging
        return NotConverging(self.explain(s, window), self.figures(s))

    def explain(self, s: Sample, window: float) -> str:
        rate = self.rate(max(window, 3.0))
        dirty = s.dirty_rate * s.page_size
        can_leave = rate * self.downtime_limit_ms / 1000
        again = self._pass[1]  # what the last pass started with
        needed_ms = 1000 * again / rate if rate else float("inf")
        what = [f"a downtime limit of {needed_ms:.0f} ms or more" if rate else None,
                f"a link faster than {_mib(dirty)}/s" if dirty > rate else None,
                "auto-converge (throttles the guest's vCPUs)" if not self.auto_converge
                else None,
                "postcopy (the guest runs on the destination while the rest is pulled)"]
        return (f"does not converge: {_mib(again)} remaining at the start of the last of "
                f"{s.syncs - 1} passes in {s.at - self.started:.0f} s (no new low for "
                f"{window:.0f} s); the guest dirties {s.dirty_rate} pages/s "
                f"({_mib(dirty)}/s), the link carries {_mib(rate)}/s, and the "
                f"{self.downtime_limit_ms} ms downtime limit lets it finish with at most "
                f"{_mib(can_leave)} left"
                + (f" (auto-converge throttle {s.throttle} %)" if self.auto_converge else "")
                + "; it would converge with " + ", or ".join(w for w in what if w))

    def figures(self, s: Sample) -> dict:
        return {"remaining_bytes": self._pass[1] or s.remaining, "dirty_pages_rate": s.dirty_rate,
                "throughput_bytes_s": round(self.rate()), "downtime_limit_ms":
                self.downtime_limit_ms, "elapsed_s": round(s.at - (self.started or s.at), 1)}


# Runs at every sample; True when it acted on the migration (then it is sampled again).
OnSample = Callable[["Job", Sample], bool]


class Job:
    """One migration from ``source`` to ``destination`` (which listens with ``-incoming
    defer``) over a stream, with ``options``. ``prepare()``, ``start()``, then ``wait()``;
    ``cancel()``, ``pause()`` and ``recover()`` for the failures a management layer handles.
    ``statuses`` keeps each status the source went through, with when it was first seen."""

    POLL_S = 0.2
    RECOVER_EVERY_S = 5.0  # a paused postcopy tries a new stream this often...
    RECOVER_WITHIN_S = 120.0  # ...for this long

    def __init__(self, source: Guest, destination: Guest, stream, options: Options,
                 restream: Callable[[str], object] | None = None, via=None):
        self.source, self.destination, self.stream = source, destination, stream
        self.via = via or stream  # where the source connects (a relay in between, or none)
        self.options = options
        self.restream = restream  # a new stream (for a postcopy's recovery), by name
        self.statuses: list[tuple[float, str]] = []
        self.switched = False  # migrate-start-postcopy was sent
        self.postcopy_active_seen = False
        self.paused_at: float | None = None  # since when a postcopy is paused (None: not)
        self.recovered_at: float | None = None  # when it last recovered
        self.verdict: MigrationError | None = None  # what the watchdog said
        self.verdict_at: float | None = None
        self.downtime_limit_ms = 300
        self.watchdog: Watchdog | None = None
        self.changed: dict = {}  # the source's parameters prepare() changed, as they were

    @property
    def route(self) -> str:
        return f"{self.source.host.name} -> {self.destination.host.name}"

    # -- before: both ends ----------------------------------------------------------------
    def prepare(self) -> None:
        """TLS on both ends (or none), capabilities checked then set, the destination
        listening; MigrationUnsupported when an end's QEMU lacks a capability."""
        src, dst, opts = self.source, self.destination, self.options
        for guest, endpoint in ((dst, "server"), (src, "client")):
            self._tls(guest, endpoint)
        incoming = {"events": True, **opts.both()}  # (its status, by events: see below)
        for guest, wanted in ((src, opts.capabilities()), (dst, incoming)):
            offered = {c["capability"] for c in guest.qmp.execute("query-migrate-capabilities")}
            missing = [c for c, on in wanted.items() if on and c not in offered]
            if missing:
                raise MigrationUnsupported(
                    f"{guest.host.name}'s QEMU {guest.host.facts.qemu_version} has no "
                    f"migration capability {', '.join(missing)} ({src.host.name}, QEMU "
                    f"{src.host.facts.qemu_version} -> {dst.host.name}, QEMU "
                    f"{dst.host.facts.qemu_version})")
        dst.qmp.execute("migrate-set-capabilities", capabilities=[  # before it listens
            {"capability": c, "state": True} for c, on in incoming.items() if on])
        src.qmp.execute("migrate-set-capabilities", capabilities=[
            {"capability": c, "state": on} for c, on in opts.capabilities().items()])
        if opts.multifd_channels:
            for guest in (dst, src):
                guest.qmp.execute("migrate-set-parameters",
                                  multifd_channels=opts.multifd_channels)
        dst.qmp.execute("migrate-incoming", uri=self.stream.uri())
        params = {}
        bandwidth = opts.max_bandwidth or (POSTCOPY_PRECOPY_BANDWIDTH if opts.postcopy
                                           else None)
        if bandwidth:
            params["max_bandwidth"] = bandwidth
        if opts.xbzrle_cache:
            params["xbzrle_cache_size"] = opts.xbzrle_cache
        if opts.postcopy:
            params["max_postcopy_bandwidth"] = opts.postcopy_bandwidth
        before = src.qmp.execute("query-migrate-parameters")
        self.changed = {k: before[k.replace("_", "-")] for k in params
                        if k.replace("_", "-") in before}
        if params:
            src.qmp.execute("migrate-set-parameters", **params)
        self.downtime_limit_ms = int(before.get("downtime-limit", 300))

    def restore(self) -> None:
        """The source's parameters as they were before prepare() (a guest that stays on the
        source after a failure migrates later as if this job had never been)."""
        if self.changed:
            self.source.qmp.execute("migrate-set-parameters", **self.changed)

    def _tls(self, guest: Guest, endpoint: str) -> None:
        """Both ends must agree: the stream's credentials on both, or none (a guest keeps
        the endpoint of the pair it migrates in: its streams are all TLS or none)."""
        tls: MigrationTls | None = self.stream.tls
        if tls is not None:
            params = {"tls_creds": tls.creds(guest, endpoint)}
            if endpoint == "client":
                params["tls_hostname"] = self.stream.address
            guest.qmp.execute("migrate-set-parameters", **params)

    # -- during ---------------------------------------------------------------------------
    def start(self) -> None:
        log.info("migrate %s over %s (%s)", self.route, self.via.uri(),
                 ",".join(c for c, on in self.options.capabilities().items() if on))
        self.source.qmp.execute("migrate", uri=self.via.uri())

    def sample(self) -> Sample:
        s = Sample.of(self.source.qmp.execute("query-migrate"), time.monotonic())
        if not self.statuses or self.statuses[-1][1] != s.status:
            self.statuses.append((s.at, s.status))
            log.info("%s: %s (%s sent, %s remaining)", self.route, s.status,
                     _mib(s.transferred), _mib(s.remaining))
        if s.status == "postcopy-active":
            self.postcopy_active_seen = True
        return s

    def seen(self, status: str) -> bool:
        return any(seen == status for _, seen in self.statuses)

    def cancel(self) -> None:
        """migrate_cancel (the source runs on), then its end awaited (bounded)."""
        try:
            self.source.qmp.execute("migrate_cancel")
        except KvmError as exc:
            log.warning("%s: migrate_cancel: %s", self.route, exc)
        first_within(lambda: self.sample().status in ENDED, 30, f"{self.route}: the cancel",
                     step=0.1)

    def pause(self) -> None:
        """A postcopy whose stream broke: both ends paused (``migrate-pause``), each shutting
        its end of the stream down; then both say postcopy-paused."""
        for guest in (self.source, self.destination):
            try:
                guest.qmp.execute("migrate-pause", oob=True)
            except KvmError as exc:  # (one end may have seen the break and paused itself)
                log.info("%s: migrate-pause on %s: %s", self.route, guest.host.name, exc)

    def incoming_status(self) -> str:
        """The destination's migration status, from its MIGRATION events: a postcopy
        destination whose guest waits for a page the broken stream did not bring cannot
        answer an in-band query (its main loop waits too), but its events still come."""
        seen = [e.get("data", {}).get("status", "") for e in self.destination.qmp.history()
                if e.get("event") == "MIGRATION"]
        return seen[-1] if seen else ""

    def destination_resumed(self) -> bool:
        """The guest runs on the destination (its RESUME event came)."""
        return any(e.get("event") == "RESUME" for e in self.destination.qmp.history())

    def recover(self, stream) -> None:
        """A new stream for a paused postcopy: the destination listens on it
        (``migrate-recover``), the source resumes over it (``migrate`` with ``resume``)."""
        log.info("%s: recovering the postcopy over %s", self.route, stream.uri())
        self.destination.qmp.execute("migrate-recover", oob=True, uri=stream.uri())
        self.source.qmp.execute("migrate", uri=stream.uri(), resume=True)
        self.stream = self.via = stream

    def wait(self, on_sample: OnSample | None = None, hard_cap_s: float | None = None) -> dict:
        """Poll until the migration ends; its last ``query-migrate``. A watchdog verdict on a
        precopy cancels it and raises the verdict (NotConverging, LinkStalled, ...); on a
        postcopy it pauses both ends and recovers (every RECOVER_EVERY_S, for
        RECOVER_WITHIN_S). ``on_sample(job, sample)`` runs at every sample (the failure
        paths strike from there). Failed or cancelled: MigrationError naming why, and what
        became of the destination."""
        self.watchdog = dog = Watchdog(self.downtime_limit_ms, self.options.auto_converge,
                                       hard_cap_s=hard_cap_s)
        next_recovery = 0.0
        while True:
            s = self.sample()
            if on_sample is not None and on_sample(self, s):
                s = self.sample()
            if s.status in ENDED:
                break
            if self._postcopy_step(s):
                continue
            if s.status in ("postcopy-paused", "postcopy-recover"):
                self.paused_at = self.paused_at or s.at
                self._give_up_after_recover_within(s)
                if s.status == "postcopy-paused" and s.at >= next_recovery:
                    next_recovery = s.at + self.RECOVER_EVERY_S
                    self._try_recovery()
                time.sleep(self.POLL_S)
                continue
            if self.paused_at is not None:  # back to postcopy-active: recovered
                self.recovered_at, self.paused_at = s.at, None
                log.info("%s: postcopy recovered", self.route)
            verdict = dog.judge(s)
            if verdict is not None:
                self.verdict, self.verdict_at = verdict, s.at
                log.warning("%s: %s", self.route, verdict)
                if s.status.startswith("postcopy"):
                    self.pause()  # (a postcopy cannot be cancelled: both ends hold the guest)
                    dog = self.watchdog = Watchdog(self.downtime_limit_ms,
                                                   self.options.auto_converge)
                    continue
                self.cancel()
                raise verdict
            time.sleep(self.POLL_S)
        info = s.info or {}
        if s.status != "completed":
            raise MigrationError(f"migration {self.route} ended '{s.status}': "
                                 f"{info.get('error-desc', 'no reason given')}"
                                 + self.destination_fate(wait=5))
        return info

    def _postcopy_step(self, s: Sample) -> bool:
        """The switch to postcopy once POSTCOPY_AFTER went in precopy; True when it was sent
        now."""
        if (self.options.postcopy and not self.switched and s.status == "active"
                and s.transferred >= POSTCOPY_AFTER):
            self.source.qmp.execute("migrate-start-postcopy")
            self.switched = True
            return True
        return False

    def _give_up_after_recover_within(self, s: Sample) -> None:
        if s.at - self.paused_at > self.RECOVER_WITHIN_S:
            raise MigrationError(
                f"migration {self.route}: postcopy paused for {s.at - self.paused_at:.0f} s "
                "and no new stream could be made: the guest's memory is split between "
                "the two hosts and neither can run it alone; recover it with migrate-recover "
                "on the destination and migrate with resume on the source once the link is "
                "back (both QEMUs are left as they are)")

    def _try_recovery(self) -> None:
        """A new stream for a paused postcopy: the destination, when paused too, listens on
        a new one; one still listening (its last recovery's source never connected) is
        connected to again. The loop in wait() sees whether it took (postcopy-active), and
        tries again RECOVER_EVERY_S later if the source fell back to postcopy-paused."""
        incoming = self.incoming_status()
        try:
            if incoming == "postcopy-paused" and self.restream is not None:
                self.recover(self.restream(f"recover{len(self.statuses)}"))
            elif incoming == "postcopy-recover":
                log.info("%s: resuming over %s again", self.route, self.via.uri())
                self.source.qmp.execute("migrate", uri=self.via.uri(), resume=True)
        except KvmError as exc:
            log.info("%s: recovery not yet: %s", self.route, exc)

    def destination_fate(self, wait: float = 0) -> str:
        """What became of the destination QEMU, for a failure's message ("" while it runs):
        a destination whose stream broke exits on its own, given ``wait`` seconds."""
        dst = self.destination
        try:
            gone = first_within(lambda: not dst.alive(), wait, f"{dst.where}: its end",
                                step=0.2)
        except KvmError:
            return ""
        if not gone:
            return ""
        how = dst.exit_status() or "QEMU is gone"
        said = [line for line in dst.read_log("qemu.log", 20).splitlines() if line.strip()]
        return (f"; the destination QEMU on {dst.host.name} ended: {how}"
                + (f" (it said: {' / '.join(said[-3:])})" if said else ""))
