"""The migration watchdog's verdicts, from QEMU's own numbers as query-migrate gives them: a
lost link, a migration that cannot converge (with the figures and what would make it), one
that auto-converge is still slowing, one too slow for what the link carries, and the
migrations that must be left alone (converging, in the bulk pass, postcopy paused). The lab's
real failures are in the failure-path suite (suites/test_migration_failures.py)."""

from __future__ import annotations

import re

from pytest_kvm.features.migration.watchdog import (
    MIB,
    LinkStalled,
    MigrationError,
    NotConverging,
    Sample,
    Watchdog,
)

RAM = 256 * MIB


def feed(dog: Watchdog, samples: list[Sample]):
    """The first verdict, with the sample it came at (None, None: none)."""
    for s in samples:
        verdict = dog.judge(s)
        if verdict is not None:
            return verdict, s
    return None, None


def timeline(seconds: float, rate: float, *, bulk: float | None = None, remaining=None,
             dirty: int = 0, status: str = "active", throttle: int = 0, step: float = 0.2,
             moving_until: float | None = None, pass_s: float = 2.0) -> list[Sample]:
    """Samples every ``step`` s: ``rate`` bytes/s sent (until ``moving_until``), the bulk pass
    (one sync) for ``bulk`` s (default: never over), then a sync every ``pass_s`` s;
    ``remaining(t)`` bytes left."""
    out, sent = [], 0.0
    for i in range(int(seconds / step) + 1):
        t = i * step
        if moving_until is None or t <= moving_until:
            sent = rate * t
        left = remaining(t) if remaining else max(RAM - sent, 0)
        syncs = 1 if bulk is None or t < bulk else 2 + int((t - bulk) / pass_s)
        out.append(Sample(t, status, int(sent), int(left), RAM, dirty, syncs, throttle))
    return out


def test_a_link_that_carries_nothing_is_lost_after_the_stall_time():
    verdict, at = feed(Watchdog(300, False), timeline(60, 8 * MIB, moving_until=5.0))
    assert isinstance(verdict, LinkStalled), verdict
    assert Watchdog.STALL_S <= at.at - 5.0 <= Watchdog.STALL_S + 0.5
    assert re.match(r"no byte moved for 10 s \(status 'active', ", str(verdict)), verdict


def test_a_guest_dirtying_faster_than_the_link_does_not_converge_and_the_figures_say_so():
    """20 MiB stays to send pass after pass, 3000 pages/s dirtied, 8 MiB/s carried."""
    samples = timeline(120, 8 * MIB, bulk=8, remaining=lambda t: RAM - 8 * MIB * t if t < 8
                       else 20 * MIB, dirty=3000)
    verdict, at = feed(Watchdog(300, False), samples)
    assert isinstance(verdict, NotConverging), verdict
    assert at.at < 30, at  # two passes after the bulk one, then a window of no new low
    text = str(verdict)
    for part in (r"20\.0 MiB remaining at the start of the last of \d+ passes",
                 r"3000 pages/s \(11\.7 MiB/s\)", r"carries 8\.0 MiB/s",
                 r"300 ms downtime limit lets it finish with at most 2\.4 MiB left",
                 r"a downtime limit of 2500 ms or more", r"a link faster than 11\.7 MiB/s",
                 r"auto-converge", r"postcopy"):
        assert re.search(part, text), (part, text)
    assert verdict.figures["remaining_bytes"] == 20 * MIB
    assert verdict.figures["dirty_pages_rate"] == 3000


def test_auto_converge_is_given_until_its_throttle_is_at_the_ceiling():
    flat = dict(bulk=8, remaining=lambda t: RAM - 8 * MIB * t if t < 8 else 20 * MIB,
                dirty=3000)
    verdict, _ = feed(Watchdog(300, True), timeline(120, 8 * MIB, throttle=60, **flat))
    assert verdict is None or not isinstance(verdict, NotConverging), verdict
    verdict, _ = feed(Watchdog(300, True), timeline(120, 8 * MIB, throttle=99, **flat))
    assert isinstance(verdict, NotConverging) and "throttle 99 %" in str(verdict), verdict


def test_a_slow_migration_that_the_link_outruns_is_left_alone():
    """2 MiB/s with 1.5 MiB left pass after pass: the guest dirties 100 pages/s (0.4 MiB/s),
    less than the link carries, so it converges in time (QEMU's estimate of its bandwidth
    decides when); no verdict for as long as the deadline allows."""
    verdict, _ = feed(Watchdog(300, False), timeline(
        200, 2 * MIB, bulk=20, remaining=lambda t: max(RAM - 2 * MIB * t, 1.5 * MIB),
        dirty=100))
    assert verdict is None, verdict


def test_too_slow_for_what_the_link_carries():
    """1 MiB/s for 256 MiB: past 60 s + 4 times the ~256 s it needs, it is too slow."""
    dog = Watchdog(300, False)
    verdict, at = feed(dog, timeline(2000, 1 * MIB, step=1.0))
    assert type(verdict) is MigrationError and str(verdict).startswith("too slow"), verdict
    assert 60 + 4 * 256 - 5 <= at.at <= 60 + 4 * 256 + 5, at.at


def test_a_hard_cap_bounds_the_deadline():
    verdict, at = feed(Watchdog(300, False, hard_cap_s=30), timeline(100, 1 * MIB))
    assert str(verdict).startswith("too slow: 30 s") and at.at <= 30.5, verdict


def test_nothing_is_judged_while_paused_or_switching():
    dog = Watchdog(300, False)
    paused = timeline(60, 0, status="postcopy-paused")
    assert feed(dog, paused) == (None, None)
