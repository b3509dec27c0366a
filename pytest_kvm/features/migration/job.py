"""A migration in flight (:class:`Job`): both ends prepared, the source sending, and its
progress watched until it ends, as a management layer watches it (libvirt, KubeVirt).

The watchdog (watchdog.py) says when a migration QEMU still calls active has failed. A
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
from .watchdog import (
    ENDED,
    MigrationError,
    MigrationUnsupported,
    Sample,
    Watchdog,
    mib,
)

log = logging.getLogger("pytest_kvm.migration")

POSTCOPY_AFTER = 4 * 1024 * 1024  # precopy bytes sent before the switch to postcopy
POSTCOPY_PRECOPY_BANDWIDTH = 16 * 1024 * 1024  # bytes/s: precopy cannot finish first


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
                     mib(s.transferred), mib(s.remaining))
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
