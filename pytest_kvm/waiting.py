"""One way to wait: poll a condition until a deadline, then fail with what was awaited."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import KvmError

T = TypeVar("T")
log = logging.getLogger("pytest_kvm.waiting")


class WaitTimeout(KvmError):
    """A condition did not come true in time; the message says what was awaited and the
    last value seen."""


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               step: float = 0.25, max_step: float | None = None) -> T:
    """The first true value of ``predicate()`` (called at least once, and once more at the
    deadline); WaitTimeout naming ``what`` when none came within ``timeout`` seconds.
    With ``max_step`` the pause starts at ``step`` and doubles up to it (quick answers
    are seen quickly, slow ones are not polled hard)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{what}: not within {timeout:g} s (last seen: {value!r})")
        time.sleep(min(step, max(0.0, deadline - time.monotonic())))
        if max_step is not None:
            step = min(step * 2, max_step)


def first_within(predicate: Callable[[], T], timeout: float, what: str,
                 step: float = 0.25, max_step: float | None = None) -> T | None:
    """As wait_until, for a wait whose timeout is an answer rather than an error: the first
    true value of ``predicate()``, or None when none came (logged, naming what was awaited)."""
    try:
        return wait_until(predicate, timeout, what, step, max_step)
    except WaitTimeout as exc:
        log.info("%s", exc)
        return None
