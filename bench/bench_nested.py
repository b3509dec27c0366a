"""l2_boot_in_l1: an L2 micro guest's start-to-shell inside a lab L1 (nested KVM under TCG),
against the same micro guest booted bare on L0 under TCG, in the same run.
l2_shell_output: 2000 lines of output (`seq 1 2000`, about 9 KB) from such an L2 over its
shell on a virtio console (GuestSpec.shell), against the same over its serial console."""

from __future__ import annotations

import statistics
import time

from pytest_kvm.guest import GuestSpec, Owner
from pytest_kvm.inventory import parse
from pytest_kvm.lab import KvmSession

ROUNDS = 3
LAB = "[l0]\nlocalhost ansible_connection=local\n[lab]\nlab1 kvm_parent=localhost\n"


def _boot(session, host, accel: str) -> float:
    start = time.perf_counter()
    guest = session.start_guest(host, GuestSpec(name="bench", accel=accel), "bench")
    guest.run("true")
    elapsed = time.perf_counter() - start
    guest.stop()
    return elapsed


def _output(session, host, shell: bool) -> float:
    guest = session.start_guest(host, GuestSpec(name="bench-out", accel="kvm", shell=shell),
                                "bench")
    try:
        start = time.perf_counter()
        out = guest.sh("seq 1 2000", timeout=300)
        elapsed = time.perf_counter() - start
    finally:
        guest.stop()
    assert out.split() == [str(n) for n in range(1, 2001)]
    return elapsed


def run() -> list[dict]:
    session = KvmSession(parse(LAB), Owner.current("benchl2" + str(int(time.time()))[-2:]))
    try:
        l0, l1 = session.host("localhost"), session.host("lab1")
        l2 = statistics.median(_boot(session, l1, "kvm") for _ in range(ROUNDS))
        bare = statistics.median(_boot(session, l0, "tcg") for _ in range(ROUNDS))
        shell, serial = _output(session, l1, True), _output(session, l1, False)
    finally:
        session.close()
    return [{"name": "l2_boot_in_l1", "value": round(l2, 3), "unit": "s",
             "baseline": round(bare, 3), "ratio": round(l2 / bare, 3)},
            {"name": "l2_shell_output", "value": round(shell, 3), "unit": "s",
             "baseline": round(serial, 3), "ratio": round(shell / serial, 3)}]
