"""The balloon, the RNG and the virtio-serial port at work in a guest."""

from __future__ import annotations

import logging
import secrets
import shlex

from ...guest import Guest
from ...guest.spec import SERIAL_PORT, SERIAL_SOCKET
from ...waiting import wait_until
from .drivers import MIB

log = logging.getLogger("pytest_kvm.virtio")


def mem_total(guest: Guest) -> int:
    """The guest's MemTotal, bytes."""
    return int(guest.sh("sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo")) * 1024


def balloon(guest: Guest, target: int, timeout: float = 90) -> tuple[int, int]:
    """Set the balloon to leave the guest ``target`` bytes; wait until QEMU reports it and the
    guest's MemTotal stops moving. (QEMU's ``actual``, the guest's MemTotal), bytes."""
    where = f"{guest.host.name}/{guest.spec.name}"
    log.info("%s: balloon to %d MiB", where, target // MIB)
    guest.qmp.execute("balloon", value=target)
    wait_until(lambda: guest.qmp.execute("query-balloon")["actual"] == target, timeout,
               f"{where}: QEMU's balloon at {target // MIB} MiB", step=0.5)
    last = [mem_total(guest)]

    def settled():
        now = mem_total(guest)
        same, last[0] = now == last[0], now
        return same
    wait_until(settled, 30, f"{where}: MemTotal to settle", step=1.0)
    return guest.qmp.execute("query-balloon")["actual"], last[0]


def rng(guest: Guest, size: int = 64) -> tuple[str, str]:
    """(the guest's current hardware RNG, ``size`` bytes read from /dev/hwrng as hex)."""
    current = guest.sh("cat /sys/class/misc/hw_random/rng_current").strip()
    data = guest.sh(f"dd if=/dev/hwrng bs={size} count=1 2>/dev/null | od -An -tx1 | "
                    "tr -d ' \\n'", timeout=60).strip()
    return current, data


def serial_port_device(guest: Guest, name: str = SERIAL_PORT) -> str:
    """The guest's /dev node of the virtio-serial port called ``name`` ('' when none)."""
    q = shlex.quote(name)
    return guest.sh(f"for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name 2>/dev/null)\" "
                    f"= {q} ] && echo /dev/${{p##*/}}; done; true").strip()


def serial_exchange(guest: Guest, timeout: float = 30) -> tuple[str, str, str, str]:
    """A line from the host side of the virtio-serial port to the guest and another back:
    (sent to the guest, what the guest read, sent by the guest, what the host read)."""
    where = f"{guest.host.name}/{guest.spec.name}"
    dev = serial_port_device(guest)
    if not dev:
        raise LookupError(f"{where}: no virtio-serial port {SERIAL_PORT!r} in the guest")
    down, up = f"host-{secrets.token_hex(6)}", f"guest-{secrets.token_hex(6)}"
    stream = guest.open_port(SERIAL_SOCKET)
    try:
        def start_reader() -> str:
            return guest.sh(f"head -n1 {dev} > /tmp/pkvm-port-in 2>/dev/null < /dev/null & "
                            "echo $!").strip()
        pid = start_reader()

        def reading() -> bool:
            """The reader has the port open; one that read end-of-file (the host side's open
            had not reached the guest yet: a port without its host reads as closed) is
            started again."""
            nonlocal pid
            state = guest.sh(f"if ls -l /proc/{pid}/fd 2>/dev/null | grep -q {dev}; then "
                             f"echo reading; elif kill -0 {pid} 2>/dev/null; then echo starting;"
                             " else echo ended; fi").strip()
            if state == "ended":
                pid = start_reader()
            return state == "reading"
        wait_until(reading, 30, f"{where}: a reader on {dev}")
        stream.send(down.encode() + b"\n")
        got_down = wait_until(
            lambda: guest.sh("cat /tmp/pkvm-port-in 2>/dev/null; true").strip(), timeout,
            f"{where}: the line sent into {dev}")
        guest.sh(f"echo {up} > {dev}")
        received = b""

        def host_got() -> bool:
            nonlocal received
            try:
                received += stream.recv(4096, timeout=1)
            except TimeoutError:
                pass
            return up.encode() in received
        wait_until(host_got, timeout, f"{where}: the line the guest wrote to {dev}", step=0)
        got_up = next((line for line in received.decode(errors="replace").splitlines()
                       if up in line), "")
    finally:
        stream.close()
        guest.run("rm -f /tmp/pkvm-port-in", check=False)
    return down, got_down, up, got_up.strip()
