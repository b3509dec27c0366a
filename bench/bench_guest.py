"""provision_to_shell: a micro guest provisioned through the plugin until its shell answers,
against a bare qemu-system-x86_64 boot of the same kernel and initramfs to the same marker on
the same host, in the same run."""

from __future__ import annotations

import statistics
import time

import pexpect

from pytest_kvm.guest import GuestSpec, Owner
from pytest_kvm.guest.image import READY_MARKER
from pytest_kvm.guest.spec import KERNEL_ARGS
from pytest_kvm.inventory import parse
from pytest_kvm.lab import KvmSession

ROUNDS = 3


def _bare(image, accel: str) -> float:
    start = time.perf_counter()
    child = pexpect.spawn("qemu-system-x86_64", [
        "-machine", f"q35,accel={accel}", "-cpu", "max", "-m", "256", "-nodefaults",
        "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
        "-kernel", image.kernel, "-initrd", image.initrd,
        "-append", KERNEL_ARGS], timeout=180)  # the same kernel, the same command line
    child.expect_exact(READY_MARKER)
    elapsed = time.perf_counter() - start
    child.terminate(force=True)
    return elapsed


def run() -> list[dict]:
    inv = parse("[lab]\nlocalhost ansible_connection=local\n")
    session = KvmSession(inv, Owner.current("bench" + str(int(time.time()))[-3:]))
    host = session.host("localhost")
    image = session.image_for(host)
    ours, bare = [], []
    for _ in range(ROUNDS):
        bare.append(_bare(image, host.accel))
        start = time.perf_counter()
        guest = session.start_guest(host, GuestSpec(name="bench"), "bench")
        guest.run("true")  # the shell answers
        ours.append(time.perf_counter() - start)
        guest.stop()
    session.close()
    o, b = statistics.median(ours), statistics.median(bare)
    return [{"name": "provision_to_shell", "value": round(o, 3), "unit": "s",
             "baseline": round(b, 3), "ratio": round(o / b, 3)}]
