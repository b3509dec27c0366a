"""l2_boot_in_l1: an L2 micro guest's start-to-shell inside a lab L1 (nested KVM under TCG),
against the same micro guest booted bare on L0 under TCG, in the same run."""

from __future__ import annotations

import statistics
import time

from pytest_kvm.fixtures import KvmSession
from pytest_kvm.guest import GuestSpec, Owner
from pytest_kvm.inventory import parse

ROUNDS = 3
LAB = "[l0]\nlocalhost ansible_connection=local\n[lab]\nlab1 kvm_parent=localhost\n"


def _boot(session, host, accel: str) -> float:
    start = time.perf_counter()
    guest = session.start_guest(host, GuestSpec(name="bench", accel=accel), "bench")
    guest.run("true")
    elapsed = time.perf_counter() - start
    guest.stop()
    return elapsed


def run() -> list[dict]:
    session = KvmSession(parse(LAB), Owner.current("benchl2" + str(int(time.time()))[-2:]))
    try:
        l0, l1 = session.host("localhost"), session.host("lab1")
        l2 = statistics.median(_boot(session, l1, "kvm") for _ in range(ROUNDS))
        bare = statistics.median(_boot(session, l0, "tcg") for _ in range(ROUNDS))
    finally:
        session.close()
    return [{"name": "l2_boot_in_l1", "value": round(l2, 3), "unit": "s",
             "baseline": round(bare, 3), "ratio": round(l2 / bare, 3)}]
