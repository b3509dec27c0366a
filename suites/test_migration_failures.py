"""When a migration fails: the guest lives through it where QEMU promises it does.

Per migration pair (as the migration suite), for each failure path, on a guest running the
counter, the heartbeat and memstamp: cancel (migrate_cancel mid-precopy), destination-dies
(the destination QEMU killed mid-precopy), link-lost (the link cut mid-precopy: between the
lab's nested hosts their link interface goes down, elsewhere the stream's relay is frozen;
restored once the failure is known), postcopy-recovery (the link cut in postcopy: both ends
pause, the link comes back, migrate-recover and a resumed migrate finish it), no-convergence
(a guest rewriting 6 MiB at memory speed behind an 8 MiB/s cap: the watchdog cancels it and
says why, with its figures) and destination-refuses (a destination of another machine type).
Then the same guest migrates again, and must. After each: the failure says what happened; the
guest runs where it should (the source after a precopy's failure, never paused there; the
destination after a recovered postcopy); the failed destination is gone and nothing of the
attempt is left on either host; the next migration completed; the counter kept its PID and
every number; every stamped page is intact. The time to detect the failure, to recover, the
source's pause and the guest's longest gap are figures for ``compare``.
"""

from __future__ import annotations

import json

import pytest

from pytest_kvm import reporting
from pytest_kvm.features import migration as mig
from pytest_kvm.guest import Disk, GuestSpec

pytestmark = pytest.mark.kvm_suite("migration")

SPEC = GuestSpec(name="migfail", serial=True, shell=True, disks=(Disk(size="64M"),))


@pytest.fixture(autouse=True)
def _pair_model_shown(kvm_migration_model):
    reporting.parameter("machine type", kvm_migration_model.machine)
    reporting.parameter("QEMU versions", " -> ".join(kvm_migration_model.versions))


@pytest.fixture(scope="module", params=mig.variant_names(failures=True))
def survived(request, kvm_migration):
    """The failure path's attempt, then a migration that must succeed; done once and checked
    by the tests below."""
    with kvm_migration(request.param, SPEC) as run:
        reporting.attach_text("what the failure path saw", json.dumps(
            run.attempt.__dict__, indent=1, default=str))
        yield run


def test_the_failure_says_what_happened(survived):
    problem = survived.variant.failure.problem(survived.attempt)
    assert problem is None, problem


def test_the_guest_runs_where_it_should(survived):
    """A precopy's failure leaves the guest running on the source; a recovered postcopy,
    on the destination."""
    attempt = survived.attempt
    if survived.variant.failure.ends_on == "source":
        assert attempt.source_status == "running", (
            f"after the failure the source is '{attempt.source_status}', not running")
    else:
        assert attempt.result is not None and attempt.both_paused, (
            f"the postcopy did not pause on both ends and recover: {attempt.statuses}")


def test_the_source_paused_only_where_postcopy_switches(survived):
    """No STOP on the source during a failed precopy (its guest never paused); one, the
    switch, in a postcopy."""
    attempt, expected = survived.attempt, survived.variant.failure.source_stops
    assert attempt.source_stops == expected, (
        f"the source stopped {attempt.source_stops} time(s) during the attempt, not {expected}")


def test_the_failed_destination_is_gone_and_nothing_is_left(survived):
    """The failed destination's QEMU (after a cancel, gone by itself), its run dir, a relay,
    a link taken down: none of it is left on either host."""
    attempt = survived.attempt
    assert attempt.leftovers == [], f"left behind: {attempt.leftovers}"
    if survived.variant.name == "cancel":
        assert attempt.destination_went_by_itself, (
            f"the destination did not exit by itself: {attempt.destination_gone}")


def test_the_next_migration_succeeds(survived):
    assert survived.hops and survived.hops[-1].status == "completed", survived.hops
    assert survived.guest.qmp.execute("query-status")["status"] == "running"


def test_workload_has_the_same_pid(survived):
    assert {pid for _, pid, _ in survived.counter_log()} == {survived.pid}
    assert survived.guest.run(f"kill -0 {survived.pid}", check=False)[0] == 0


def test_counter_never_reset_or_repeated(survived):
    counts = [n for n, _, _ in survived.counter_log()]
    assert counts == list(range(1, len(counts) + 1)) and len(counts) > 5, counts[-20:]


def test_guest_memory_intact(survived):
    problem = survived.memory_problem()
    assert problem is None, problem


def test_measured(survived, kvm_figure, kvm_property):
    """How long the failure took to be known, to recover from, how long the source was
    paused, the guest's longest gap between heartbeats across it all."""
    for name, value in survived.attempt.figures().items():
        unit, better = mig.FAILURE_FIGURES[name]
        kvm_figure(name, value, unit=unit, better=better)
    kvm_property("error", survived.attempt.error)
    kvm_property("statuses", ",".join(survived.attempt.statuses))
    assert survived.attempt.detect_ms > 0, survived.attempt
