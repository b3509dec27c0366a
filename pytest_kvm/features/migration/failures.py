"""The failure paths of a migration: a fault made on purpose, and what the guest must live
through, as operators rely on it (QEMU's and libvirt's promise, what KubeVirt's and tp-qemu's
migration tests check): a precopy that fails or is cancelled leaves the guest running on the
source, never paused; a postcopy whose link breaks pauses on both ends and is recovered.

Each :class:`Failure` is declared once (:data:`FAILURES`): how its attempt migrates, the fault
it strikes (at a sample of the running migration, see Job.wait), where the guest must run
afterwards, how often the source may stop, and what the failure's message must name.
:func:`attempt` makes the attempt on a :class:`~.run.Run`'s guest and returns what it saw
(:class:`Attempt`); everything the attempt started (the destination, a relay, a cut link) is
gone or restored before it returns, and what is not is listed in ``leftovers``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import KvmError
from ...guest import Guest
from ...host import Host
from ...waiting import first_within
from ..compat import another_machine
from .job import Job, Options
from .link import Cut, cuttable
from .migrate import Migration, stream_to
from .watchdog import MIB, MigrationError, Sample
from .workload import start_dirtying, stop_dirtying

if TYPE_CHECKING:
    from .run import Run

log = logging.getLogger("pytest_kvm.migration")

MID = 1 * MIB  # "mid-precopy": this much sent, far from done (the attempt's bandwidth is capped)
CAPPED = 4 * MIB  # bytes/s: a precopy that takes long enough to be struck in the middle
GONE_WITHIN_S = 15.0  # a destination whose stream broke exits by itself within this


@dataclass
class Fault:
    """The state of one attempt's fault, as its strike sees it."""

    run: Run
    destination: Guest
    cut: Cut | None = None
    struck_at: float | None = None  # when the fault came (the controller's monotonic clock)
    both_paused: bool = False  # a postcopy: both ends said postcopy-paused
    restored_at: float | None = None  # when the cut link came back
    unthrottled: bool = False

    def strike(self, what: str) -> None:
        self.struck_at = time.monotonic()
        log.info("%s: %s", self.run.route, what)


Strike = Callable[[Fault, Job, Sample], bool]  # True when it acted on the migration


def _mid_precopy(f: Fault, s: Sample) -> bool:
    return f.struck_at is None and s.status == "active" and s.transferred >= MID


def _cancel(f: Fault, job: Job, s: Sample) -> bool:
    if not _mid_precopy(f, s):
        return False
    f.strike(f"migrate_cancel with {s.transferred} bytes sent")
    job.cancel()
    return True


def _kill_destination(f: Fault, job: Job, s: Sample) -> bool:
    if not _mid_precopy(f, s):
        return False
    f.strike(f"killing the destination QEMU (pid {f.destination.pid}) with {s.transferred} "
             "bytes sent")
    f.destination.host.run(["kill", "-KILL", str(f.destination.pid)], timeout=30)
    return True


def _cut_precopy(f: Fault, job: Job, s: Sample) -> bool:
    if not _mid_precopy(f, s):
        return False
    f.strike(f"cutting the link ({f.cut.what}) with {s.transferred} bytes sent")
    f.cut.cut()
    return True


def _cut_postcopy(f: Fault, job: Job, s: Sample) -> bool:
    """Cut once the guest runs on the destination (its RESUME event: a destination still
    loading the devices' state, postcopy-active already, takes a broken stream for a failure
    and exits, as QEMU documents: only a running postcopy pauses); when both ends say
    postcopy-paused, restore the link (the job then recovers over a new stream); once
    recovered, postcopy at full speed."""
    if (f.struck_at is None and s.status == "postcopy-active"
            and job.destination_resumed()):
        f.strike(f"cutting the link ({f.cut.what}) in postcopy, {s.transferred} bytes sent")
        f.cut.cut()
        return True
    if (f.struck_at is not None and f.restored_at is None and s.status == "postcopy-paused"
            and job.incoming_status() == "postcopy-paused"):
        f.both_paused = True
        f.cut.restore()
        f.restored_at = time.monotonic()
        return True
    if job.recovered_at is not None and not f.unthrottled:
        job.source.qmp.execute("migrate-set-parameters", max_postcopy_bandwidth=0)
        f.unthrottled = True
    return False


@dataclass(frozen=True)
class Failure:
    """A failure path: how its attempt migrates (``options``, a ``dirtying`` load in MiB, a
    destination of another machine type), the fault (``strike``; none: the attempt fails by
    itself), a link that can be cut (``cut``), where the guest runs afterwards (``ends_on``),
    how many times the source may stop (``source_stops``: never, but for a postcopy's
    switch), and what the failure's message names (``says``, a regex)."""

    name: str
    options: Options
    strike: Strike | None = None
    dirtying: int = 0
    other_machine: bool = False
    cut: bool = False
    ends_on: str = "source"
    source_stops: int = 0
    says: str = ""

    def problem(self, attempt: Attempt) -> str | None:
        """None when the attempt went the way this failure path promises; else what did not."""
        if self.says and not re.search(self.says, attempt.error):
            return (f"the failure's message does not name what happened ({self.says!r}): "
                    f"{attempt.error or '(it did not fail)'}")
        if self.ends_on == "destination" and attempt.result is None:
            return f"it did not recover and complete: {attempt.error}"
        if self.strike is not None and attempt.struck_at is None:
            return "the fault never struck (the migration ended before it)"
        return None


FAILURES: tuple[Failure, ...] = (
    # migrate_cancel mid-precopy: the source runs on, the destination QEMU exits by itself
    Failure("cancel", Options(max_bandwidth=CAPPED), _cancel, says=r"ended 'cancelled'"),
    # the destination QEMU killed mid-precopy: the source runs on, the failure says so
    Failure("destination-dies", Options(max_bandwidth=CAPPED), _kill_destination,
            says=r"destination QEMU on \S+ ended: QEMU was killed by SIGKILL"),
    # the link cut mid-precopy: nothing moves, the watchdog cancels within its stall time
    Failure("link-lost", Options(max_bandwidth=CAPPED), _cut_precopy, cut=True,
            says=r"no byte moved for \d+ s"),
    # the link cut in postcopy: both ends pause, the link comes back, the job recovers
    Failure("postcopy-recovery", Options(postcopy=True, postcopy_bandwidth=1 * MIB),
            _cut_postcopy, cut=True, ends_on="destination", source_stops=1),
    # a guest that dirties memory faster than a capped link carries (6 MiB rewritten over and
    # over at memory speed; within the default 8 MiB a user may lock): cancelled with its
    # figures
    Failure("no-convergence", Options(max_bandwidth=8 * MIB), dirtying=6,
            says=r"does not converge: .* remaining .* pages/s .* carries .* downtime limit"),
    # a destination of another machine type: it refuses the stream at once, never pausing
    # the source, and says which machine types differ
    Failure("destination-refuses", Options(), other_machine=True,
            says=r"Machine type received is '[^']+' and local is '[^']+'"),
)


@dataclass
class Attempt:
    """What a failure path saw (times on the controller's monotonic clock, as ms figures)."""

    failure: str
    error: str = ""  # the failure's message ("" when it recovered and completed)
    struck_at: float | None = None
    detect_ms: float = 0.0  # from the fault (or the start) to the failure known
    recover_ms: float = 0.0  # postcopy: link back -> completed; else: failure -> source runs
    source_status: str = ""  # the source's run state right after the failure
    source_stops: int = 0  # STOP events of the source during the attempt
    source_paused_ms: float = 0.0  # the source's time stopped (to its RESUME or the end)
    guest_gap_ms: float = 0.0  # the longest interval between heartbeats from the start on
    statuses: list[str] = field(default_factory=list)  # the source's migration statuses
    both_paused: bool = False  # postcopy: both ends said postcopy-paused
    destination_gone: str = ""  # how the failed destination ended
    destination_said: str = ""  # the end of its QEMU's stderr
    destination_went_by_itself: bool = False
    leftovers: list[str] = field(default_factory=list)
    result: Migration | None = None  # the migration, when it recovered and completed

    def figures(self) -> dict[str, float]:
        return {"detect_ms": round(self.detect_ms, 1), "recover_ms": round(self.recover_ms, 1),
                "source_paused_ms": round(self.source_paused_ms, 1),
                "guest_gap_ms": round(self.guest_gap_ms, 1)}


def _stops(events: list[dict]) -> tuple[int, float]:
    """(STOP events, ms stopped until RESUME) of a QEMU's events (a STOP never resumed, a
    postcopy's switch, counts as a stop but not in the time: its host's clock is not ours)."""
    stops, paused, since = 0, 0.0, None
    for event in events:
        stamp = event.get("timestamp", {})
        at = stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
        if event.get("event") == "STOP":
            stops += 1
            since = at if since is None else since
        elif event.get("event") == "RESUME" and since is not None:
            paused += at - since
            since = None
    return stops, paused * 1000


def attempt(run: Run, failure: Failure, to_host: Host) -> Attempt:
    """Make the failure path's attempt from the run's guest to ``to_host``; what it saw."""
    source = run.guest
    spec = run.spec.with_(incoming="defer")
    if failure.other_machine:
        spec = spec.with_(machine=another_machine(to_host, spec.machine))
    dest = run.start(spec, host=to_host, wait=False)
    run.watch.attach(dest, "destination")
    stream = stream_to(source.host, dest, run.tls, "migrate")
    fault = Fault(run, dest)
    seen = Attempt(failure.name)
    dirtying = (start_dirtying(source, failure.dirtying, fast=True) if failure.dirtying
                else None)
    events_before = len(source.qmp.history())
    started = time.monotonic()
    job = None
    try:
        via = stream
        if failure.cut:
            via, fault.cut = cuttable(source.host, dest, stream)
        job = Job(source, dest, stream, failure.options, via=via,
                  restream=lambda name: stream_to(source.host, dest, run.tls, name))
        job.prepare()
        job.start()
        info = None
        try:
            strike = failure.strike
            info = job.wait(None if strike is None else lambda j, s: strike(fault, j, s))
        except MigrationError as exc:
            seen.error = f"{type(exc).__name__}: {exc}"
        known = job.verdict_at or time.monotonic()
        seen.detect_ms = (known - (fault.struck_at or started)) * 1000
        seen.guest_gap_ms = run.watch.gap(started) * 1000
        seen.source_stops, seen.source_paused_ms = _stops(source.qmp.history()[events_before:])
        if info is None:
            seen.source_status = source.qmp.execute("query-status")["status"]
            seen.recover_ms = (time.monotonic() - known) * 1000
            job.restore()
        else:  # (recovered: from the link's return to the end)
            seen.recover_ms = (time.monotonic() - (fault.restored_at or known)) * 1000
            seen.result = run.completed(job, info, started)
    finally:
        if fault.cut is not None:
            fault.cut.close()
        if dirtying is not None:  # (wherever the guest runs now: a migration that should
            stop_dirtying(run.guest, dirtying)  # have failed may have completed)
    seen.struck_at, seen.both_paused = fault.struck_at, fault.both_paused
    seen.statuses = [status for _, status in job.statuses]
    if seen.result is None:
        _gone(seen, dest)
    seen.leftovers += (fault.cut.leftovers() if fault.cut else []) + _left_of(
        dest if seen.result is None else source)
    log.info("%s: %s: %s", run.route, failure.name, seen)
    if seen.result is None and seen.source_status not in ("running", "paused"):
        raise MigrationError(f"{run.route}: the guest was lost: after {failure.name} it runs "
                             f"neither on the source (its status: '{seen.source_status}') nor "
                             f"on the destination ({seen.destination_gone}); {seen.error}")
    return seen


def _gone(seen: Attempt, dest: Guest) -> None:
    """The failed destination ended by itself (within GONE_WITHIN_S), or is stopped now."""
    seen.destination_said = dest.read_log("qemu.log", 10).strip()
    if first_within(lambda: not dest.alive(), GONE_WITHIN_S, f"{dest.where}: its end",
                    step=0.3):
        seen.destination_went_by_itself = True
        seen.destination_gone = f"by itself: {dest.exit_status() or 'gone'}"
    else:
        seen.destination_gone = "stopped by pytest-kvm (it did not exit by itself)"
    try:
        dest.stop()
    except KvmError as exc:
        seen.leftovers.append(f"{dest.where}: {exc}")


def _left_of(dest: Guest) -> list[str]:
    """The failed destination's QEMU or run dir, if either is still there."""
    if dest.stopped and not dest.alive():
        r = dest.host.run(["test", "-e", dest.rundir], check=False, timeout=30)
        return [f"{dest.where}: its run dir {dest.rundir}"] if r.ok else []
    return [] if not dest.alive() else [f"{dest.where}: its QEMU (pid {dest.pid})"]
