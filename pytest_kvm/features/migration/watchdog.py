"""What a migration's watchdog reads and says: one ``query-migrate`` of the source
(:class:`Sample`), the :class:`Watchdog` that decides from them when a migration QEMU still
calls active has failed, and the failures (:class:`MigrationError` and its kinds).

QEMU itself gives up on nothing: a precopy that cannot converge stays 'active' for ever, and
a lost link stalls a TCP stream for as long as TCP retries (a quarter of an hour). So the
watchdog decides from what the link carries, sample by sample (see Watchdog); the job
(job.py) acts on its verdict."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import KvmError

ENDED = ("completed", "failed", "cancelled")
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


def mib(n: float) -> str:
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
                               f"(status '{s.status}', {mib(s.transferred)} sent, "
                               f"{mib(s.remaining)} remaining): the link is lost",
                               self.figures(s))
        if s.status == "active":
            problem = self._not_converging(s)
            if problem is not None:
                return problem
        deadline = self.deadline(s)
        if s.at > deadline:
            return MigrationError(
                f"too slow: {s.at - self.started:.0f} s, past the {deadline - self.started:.0f}"
                f" s that {mib(s.total)} of RAM at the {mib(self.rate())}/s the link carried "
                f"allow ({self.SLACK:g} times that, plus {self.GRACE_S:g} s); "
                f"{mib(s.remaining)} remaining", self.figures(s))
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
                f"a link faster than {mib(dirty)}/s" if dirty > rate else None,
                "auto-converge (throttles the guest's vCPUs)" if not self.auto_converge
                else None,
                "postcopy (the guest runs on the destination while the rest is pulled)"]
        return (f"does not converge: {mib(again)} remaining at the start of the last of "
                f"{s.syncs - 1} passes in {s.at - self.started:.0f} s (no new low for "
                f"{window:.0f} s); the guest dirties {s.dirty_rate} pages/s "
                f"({mib(dirty)}/s), the link carries {mib(rate)}/s, and the "
                f"{self.downtime_limit_ms} ms downtime limit lets it finish with at most "
                f"{mib(can_leave)} left"
                + (f" (auto-converge throttle {s.throttle} %)" if self.auto_converge else "")
                + "; it would converge with " + ", or ".join(w for w in what if w))

    def figures(self, s: Sample) -> dict:
        return {"remaining_bytes": self._pass[1] or s.remaining, "dirty_pages_rate": s.dirty_rate,
                "throughput_bytes_s": round(self.rate()), "downtime_limit_ms":
                self.downtime_limit_ms, "elapsed_s": round(s.at - (self.started or s.at), 1)}
