"""Data through a virtio NIC: bytes each way over TCP with the host, checksummed and
counted; its queues (multiqueue); the NIC a spec gave the suite."""

from __future__ import annotations

import ipaddress
import logging
import shlex
from dataclasses import dataclass

from ... import remote
from ...guest import Guest
from ...guest.spec import Nic
from ...waiting import first_within, wait_until
from .drivers import MIB

log = logging.getLogger("pytest_kvm.virtio")


@dataclass
class Transfer:
    """Bytes moved one way over TCP, with their SHA-256 at both ends."""

    direction: str  # "host->guest" or "guest->host"
    sent_sha: str
    sent: int
    received_sha: str
    received: int
    seconds: float

    @property
    def intact(self) -> bool:
        return self.sent == self.received and self.sent_sha == self.received_sha

    @property
    def mib_per_s(self) -> float:
        return self.received / MIB / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.direction}: sent {self.sent} bytes (sha256 {self.sent_sha[:16]}), "
                f"received {self.received} bytes (sha256 {self.received_sha[:16]}) "
                f"in {self.seconds:.2f} s")


@dataclass
class NetExchange:
    iface: str
    to_guest: Transfer
    from_guest: Transfer
    before: dict[str, int]
    after: dict[str, int]
    state: str  # the NIC as the guest saw it afterwards (for failure messages)

    def moved(self, counter: str) -> int:
        return self.after[counter] - self.before[counter]


def iface_of(guest: Guest, mac: str) -> str:
    """The guest's network interface with this MAC ('' when it has none)."""
    out = guest.sh("for i in /sys/class/net/*; do echo ${i##*/} $(cat $i/address); done")
    return next((f[0] for f in map(str.split, out.splitlines()) if f[1:] == [mac]), "")


COUNTERS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")


def counters(guest: Guest, iface: str) -> dict[str, int]:
    out = guest.sh("; ".join(f"cat /sys/class/net/{iface}/statistics/{c}" for c in COUNTERS))
    return dict(zip(COUNTERS, map(int, out.split()), strict=True))


def nic_state(guest: Guest, iface: str) -> str:
    """What the guest says about a NIC: driver, link, addresses, counters."""
    q = shlex.quote(iface)
    return guest.run(f"d=/sys/class/net/{q}; echo driver=$(basename \"$(readlink $d/device/"
                     f"driver)\") operstate=$(cat $d/operstate) carrier=$(cat $d/carrier "
                     f"2>/dev/null); ip addr show dev {q}; "
                     f"for c in {' '.join(COUNTERS)}; do echo $c=$(cat $d/statistics/$c); done",
                     check=False)[1].strip()


def _listener(guest: Guest, port: int, mode: str, path: str) -> str:
    """A one-connection TCP listener in the guest, in the background: it receives into (or
    sends) ``path``; its PID."""
    if guest.os_family == "micro":  # busybox nc
        io = f"< /dev/null > {path}" if mode == "recv" else f"< {path} > /dev/null"
        job = f"nc -l -p {port} {io}"
    else:  # a distro image: python3 is there (cloud-init needs it), nc may not be
        py = ("import socket,sys\n"
              "s=socket.create_server(('',int(sys.argv[1])))\n"
              "c,_=s.accept()\n"
              "if sys.argv[2]=='recv':\n"
              " f=open(sys.argv[3],'wb')\n"
              " while (b:=c.recv(65536)): f.write(b)\n"
              "else:\n"
              " c.sendall(open(sys.argv[3],'rb').read())\n"
              "c.close()\n")
        job = shlex.join(["python3", "-c", py, str(port), mode, path]) + " < /dev/null > /dev/null"
    pid = guest.sh(f"{job} 2>/dev/null & echo $!").strip()
    hexport = f"{port:04X}"
    wait_until(lambda: guest.run(f"grep -qiE ':{hexport} 0+:0000 0A' /proc/net/tcp "
                                 f"/proc/net/tcp6 2>/dev/null", check=False)[0] == 0,
               30, f"{guest.host.name}/{guest.spec.name}: a listener on port {port}", step=0.2)
    return pid


def _guest_sha(guest: Guest, path: str) -> tuple[str, int]:
    sha, size = guest.sh(f"sha256sum < {path} | cut -d' ' -f1; wc -c < {path}").split()
    return sha, int(size)


def net_exchange(guest: Guest, mac: str, netdev: str, net: str, size: int = 2 * MIB,
                 timeout: float = 120) -> NetExchange:
    """``size`` random bytes from the host into the guest and others back, over TCP through
    the NIC with ``mac`` on the user-networking ``netdev`` (subnet ``net``), each way
    checksummed at both ends; the NIC's counters before and after."""
    where = f"{guest.host.name}/{guest.spec.name}"
    iface = wait_until(lambda: iface_of(guest, mac), 30, f"{where}: a NIC with MAC {mac}")
    addr = str(ipaddress.ip_network(net)[15])
    guest.sh(f"ip link set {iface} up; ip addr add {addr}/{ipaddress.ip_network(net).prefixlen}"
             f" dev {iface} 2>/dev/null; true")
    # The kernel sets operstate after the link comes up, asynchronously (linkwatch): a NIC
    # just hot-plugged into a guest on a loaded host took seconds. Bounded; the state the
    # exchange returns says what it became.
    first_within(lambda: guest.sh(f"cat /sys/class/net/{shlex.quote(iface)}/operstate").strip()
                 == "up", 30, f"{where}: {iface}'s operstate up", step=0.5)
    before = counters(guest, iface)
    log.info("%s: %d bytes each way through %s (%s, %s)", where, size, iface, mac, addr)
    files = f"{guest.rundir}/net-"
    ports = [guest.forward(netdev, addr, p) for p in (5000, 5001)]
    try:
        pid = _listener(guest, 5000, "recv", "/tmp/pkvm-net-rx")
        out = guest.host.run(remote.argv("tcp-transfer", "send", str(ports[0]), files + "tx",
                                         str(size)), timeout=timeout).stdout.split()
        wait_until(lambda: guest.run(f"kill -0 {pid} 2>/dev/null", check=False)[0] != 0, 30,
                   f"{where}: the guest's receiver to see the end of the stream", step=0.2)
        to_guest = Transfer("host->guest", out[0], int(out[1]),
                            *_guest_sha(guest, "/tmp/pkvm-net-rx"), float(out[2]))
        guest.sh(f"head -c {size} /dev/urandom > /tmp/pkvm-net-tx")
        sent = _guest_sha(guest, "/tmp/pkvm-net-tx")
        _listener(guest, 5001, "send", "/tmp/pkvm-net-tx")
        out = guest.host.run(remote.argv("tcp-transfer", "recv", str(ports[1]), files + "rx"),
                             timeout=timeout).stdout.split()
        from_guest = Transfer("guest->host", *sent, out[0], int(out[1]), float(out[2]))
    finally:
        for port in ports:
            guest.unforward(netdev, port)
        guest.run("rm -f /tmp/pkvm-net-rx /tmp/pkvm-net-tx", check=False)
        guest.host.run(["rm", "-f", files + "tx", files + "rx"], check=False)
    for t in (to_guest, from_guest):
        log.info("%s: %s (%.1f MiB/s)", where, t, t.mib_per_s)
    return NetExchange(iface, to_guest, from_guest, before, counters(guest, iface),
                       nic_state(guest, iface))


@dataclass
class Queues:
    iface: str
    rx: int  # receive virtqueues with an interrupt of their own (/proc/interrupts)
    tx: int
    mq_feature: bool  # VIRTIO_NET_F_MQ negotiated (bit 22 of the device's features)
    state: str


VIRTIO_NET_F_MQ = 22


def nic_queues(guest: Guest, mac: str) -> Queues:
    """The virtqueues the guest's driver set up for the NIC with ``mac``."""
    where = f"{guest.host.name}/{guest.spec.name}"
    iface = wait_until(lambda: iface_of(guest, mac), 30, f"{where}: a NIC with MAC {mac}")
    dev = guest.sh(f"basename \"$(readlink /sys/class/net/{iface}/device)\"").strip()
    irqs = guest.sh(f"grep -o '{dev}-[a-z]*\\.[0-9]*' /proc/interrupts; true").split()
    features = guest.sh(f"cat /sys/bus/virtio/devices/{dev}/features").strip()
    return Queues(iface, sum(q.startswith(f"{dev}-input.") for q in irqs),
                  sum(q.startswith(f"{dev}-output.") for q in irqs),
                  len(features) > VIRTIO_NET_F_MQ and features[VIRTIO_NET_F_MQ] == "1",
                  f"{dev} interrupts: {' '.join(irqs) or '(none)'}; features {features}")


def data_nic(guest: Guest) -> tuple[str, str, str]:
    """(MAC, netdev, subnet) of the guest's first user-networking NIC with a subnet."""
    for i, nic in enumerate(guest.spec.nics):
        if nic.netdev == "user" and nic.net:
            return Nic.mac(i), f"net{i}", nic.net
    raise LookupError(f"{guest.spec.name}: no user-networking NIC with a subnet (Nic(net=...))")
