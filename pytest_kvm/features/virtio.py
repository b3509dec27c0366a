"""Virtio devices at work in a guest: drivers bound, data through every device, hot-plug.

What a check needs from a guest is here; suites only compare what these return. Every
guest-side command is plain POSIX shell that runs on the micro guest (busybox) and on a
distro image (coreutils, iproute2, and python3 where busybox's nc is missing).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import shlex
from dataclasses import dataclass

from .. import remote
from ..guest import Guest
from ..guest.spec import HOTPLUG_PORTS, SERIAL_PORT, SERIAL_SOCKET, Nic
from ..waiting import first_within, wait_until

log = logging.getLogger("pytest_kvm.virtio")

# driver -> virtio device ID it drives (virtio spec, "Device Types")
DRIVERS = {
    "virtio_net": 1,
    "virtio_blk": 2,
    "virtio_console": 3,
    "virtio_rng": 4,
    "virtio_balloon": 5,
    "virtio_scsi": 8,
}

MIB = 1 << 20


# -- drivers ---------------------------------------------------------------------------------
def loaded_modules(guest: Guest) -> set[str]:
    return {line.split()[0] for line in guest.sh("lsmod").splitlines()[1:] if line.strip()}


def virtio_bindings(guest: Guest) -> dict[int, str]:
    """virtio device ID -> the driver bound to it ('' when none)."""
    out = guest.sh("for d in /sys/bus/virtio/devices/*; do "
                   "echo $(cat $d/device) $(basename \"$(readlink $d/driver)\"); done")
    return {int(dev, 16): (drv[0] if drv else "")
            for dev, *drv in (line.split() for line in out.splitlines() if line.strip())}


def virtio_pci_drivers(guest: Guest) -> dict[str, str]:
    """PCI address -> driver of every virtio PCI function (vendor 0x1af4)."""
    out = guest.sh("for d in /sys/bus/pci/devices/*; do [ $(cat $d/vendor) = 0x1af4 ] && "
                   "echo $(basename $d) $(basename \"$(readlink $d/driver)\"); done; true")
    return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


# -- net ---------------------------------------------------------------------------------------
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


# -- block -------------------------------------------------------------------------------------
@dataclass
class DiskCheck:
    device: str  # e.g. vdb, sda
    written_sha: str
    read_sha: str
    guest_bytes: int  # the disk's size in the guest
    qemu_bytes: int  # the size QEMU gives it
    pattern: int  # the byte written at FLUSH_OFFSET, then looked for in the image on the host
    in_image: str  # qemu-io's verdict on the image file
    size: int = 0  # bytes written and read back with O_DIRECT
    write_s: float = 0.0  # ... in this long, as the guest timed them (/proc/uptime: 10 ms)
    read_s: float = 0.0

    @property
    def write_mib_s(self) -> float:
        return round(self.size / MIB / max(self.write_s, 0.01), 2)

    @property
    def read_mib_s(self) -> float:
        return round(self.size / MIB / max(self.read_s, 0.01), 2)

    @property
    def pattern_in_image(self) -> bool:
        return "Pattern verification failed" not in self.in_image and \
            f"read {MIB}/{MIB} bytes" in self.in_image


FLUSH_OFFSET = 8 * MIB  # where the flush check writes its pattern (the data check: from 0)


def disk_of(guest: Guest, serial: str) -> str:
    """The guest's block device (vdb, sda, ...) with this serial number ('' when none)."""
    q = shlex.quote(serial)
    return guest.sh(f"for b in /sys/block/*; do grep -qs -- {q}'$' $b/serial "
                    f"$b/device/vpd_pg80 && echo ${{b##*/}}; done; true").strip()


def block_driver(guest: Guest, device: str) -> str:
    return guest.sh(f"basename \"$(readlink /sys/block/{device}/device/driver)\"").strip()


def disk_index(guest: Guest, interface: str) -> int:
    """The spec's first blank disk on ``interface`` (virtio or scsi)."""
    for i, disk in enumerate(guest.spec.disks):
        if disk.interface == interface and disk.image is None and not disk.shared:
            return i
    raise LookupError(f"{guest.spec.name}: no blank {interface} disk in its spec")


def node_size(guest: Guest, node: str) -> int:
    """The virtual size QEMU gives a block node."""
    for n in guest.qmp.execute("query-named-block-nodes", flat=True):
        if n["node-name"] == node:
            return n["image"]["virtual-size"]
    raise LookupError(f"{guest.spec.name}: QEMU has no block node {node!r}")


def disk_check(guest: Guest, device: str, node: str, image: str, size: int = 4 * MIB) -> DiskCheck:
    """Write random data with O_DIRECT, drop the guest's caches, read it back with O_DIRECT;
    then a byte pattern, flushed, looked for in the image file on the host."""
    dev = f"/dev/{device}"
    where = f"{guest.host.name}/{guest.spec.name}"
    log.info("%s: O_DIRECT write/read of %d bytes on %s", where, size, dev)
    up = "cut -d' ' -f1 /proc/uptime"
    written, t0, t1 = guest.sh(
        f"head -c {size} /dev/urandom > /tmp/pkvm-pat && sha256sum < /tmp/pkvm-pat | "
        f"cut -d' ' -f1 && {up} && dd if=/tmp/pkvm-pat of={dev} bs=1M oflag=direct "
        f"conv=fsync 2>/dev/null; {up}; rm -f /tmp/pkvm-pat").split()[:3]
    guest.sh("sync; echo 3 > /proc/sys/vm/drop_caches")
    t2, read, t3 = guest.sh(f"{up}; dd if={dev} bs=1M count={size // MIB} iflag=direct "
                            f"2>/dev/null | sha256sum | cut -d' ' -f1; {up}").split()[:3]
    pattern = 1 + secrets.randbelow(255)
    guest.sh(f"head -c {MIB} /dev/zero | tr '\\000' '\\{pattern:03o}' | dd of={dev} bs=1M "
             f"seek={FLUSH_OFFSET // MIB} oflag=direct conv=fsync 2>/dev/null; sync")
    verdict = guest.host.run(remote.argv("image-pattern", image, "qcow2", f"0x{pattern:02x}",
                                         str(FLUSH_OFFSET), str(MIB)), check=False, timeout=60)
    size_in_guest = int(guest.sh(f"cat /sys/block/{device}/size")) * 512
    return DiskCheck(device, written, read, size_in_guest, node_size(guest, node), pattern,
                     (verdict.stdout + verdict.stderr).strip(), size,
                     float(t1) - float(t0), float(t3) - float(t2))


# -- balloon -----------------------------------------------------------------------------------
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


# -- rng ---------------------------------------------------------------------------------------
def rng(guest: Guest, size: int = 64) -> tuple[str, str]:
    """(the guest's current hardware RNG, ``size`` bytes read from /dev/hwrng as hex)."""
    current = guest.sh("cat /sys/class/misc/hw_random/rng_current").strip()
    data = guest.sh(f"dd if=/dev/hwrng bs={size} count=1 2>/dev/null | od -An -tx1 | "
                    "tr -d ' \\n'", timeout=60).strip()
    return current, data


# -- virtio-serial -----------------------------------------------------------------------------
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


# -- hot-plug ----------------------------------------------------------------------------------
HOTPLUG_SERIAL = "pkvm-hotplug"
HOTPLUG_MAC = "52:54:00:70:6b:f0"
HOTPLUG_NET = "10.0.4.0/24"


def plugged(guest: Guest) -> set[str]:
    """The ids of the guest's devices that have one (QEMU's /machine/peripheral)."""
    return {p["name"] for p in guest.qmp.execute("qom-list", path="/machine/peripheral")
            if p["type"].startswith("child<")}


def plug_disk(guest: Guest, size: str = "32M") -> str:
    """A blank virtio-blk disk into the running guest (node and device ``hpdisk``, serial
    HOTPLUG_SERIAL, on the first free root port), unless it is there already; its image file
    on the host."""
    image = f"{guest.rundir}/hotplug-disk.qcow2"
    if "hpdisk" in plugged(guest):
        return image
    guest.host.run(["qemu-img", "create", "-q", "-f", "qcow2", image, size], timeout=60)
    guest.qmp.execute("blockdev-add", driver="qcow2", node_name="hpdisk",
                      file={"driver": "file", "filename": image})
    guest.qmp.execute("device_add", driver="virtio-blk-pci", drive="hpdisk", id="hpdisk",
                      serial=HOTPLUG_SERIAL, bus=HOTPLUG_PORTS[0])
    return image


def plug_nic(guest: Guest) -> None:
    """A virtio-net NIC (``hpnic``, MAC HOTPLUG_MAC) on new user networking (``hpnet``),
    unless it is there already."""
    if "hpnic" in plugged(guest):
        return
    guest.qmp.execute("netdev_add", type="user", id="hpnet", net=HOTPLUG_NET, restrict=True)
    guest.qmp.execute("device_add", driver="virtio-net-pci", netdev="hpnet", id="hpnic",
                      mac=HOTPLUG_MAC, bus=HOTPLUG_PORTS[1])


def unplug(guest: Guest, device: str, timeout: float = 90) -> dict:
    """device_del, and the DEVICE_DELETED event that says the guest let it go."""
    guest.qmp.execute("device_del", id=device)
    return guest.qmp.event("DEVICE_DELETED", timeout=timeout, device=device)


def unplug_disk(guest: Guest) -> dict:
    """The hot-plugged disk out again (device, then its block node); the DEVICE_DELETED."""
    event = unplug(guest, "hpdisk")
    guest.qmp.execute("blockdev-del", node_name="hpdisk")
    return event


def unplug_nic(guest: Guest) -> dict:
    """The hot-plugged NIC out again (device, then its netdev); the DEVICE_DELETED."""
    event = unplug(guest, "hpnic")
    guest.qmp.execute("netdev_del", id="hpnet")
    return event


def online_cpus(guest: Guest) -> int:
    return int(guest.sh("grep -c ^processor /proc/cpuinfo"))


def plug_cpu(guest: Guest) -> dict:
    """The next free vCPU slot filled (``device_add`` of the CPU type QEMU lists for it), and
    onlined in the guest as udev would; the slot as QEMU describes it."""
    free = [c for c in guest.qmp.execute("query-hotpluggable-cpus") if "qom-path" not in c]
    if not free:
        raise LookupError(f"{guest.spec.name}: no free vCPU slot (maxcpus)")
    slot = free[-1]
    count = "ls -d /sys/devices/system/cpu/cpu[0-9]* | wc -l"
    before = int(guest.sh(count))
    guest.qmp.execute("device_add", driver=slot["type"], id="hpcpu", **slot["props"])
    where = f"{guest.host.name}/{guest.spec.name}"
    wait_until(lambda: int(guest.sh(count)) > before, 60, f"{where}: a new CPU in sysfs")
    guest.sh("for c in /sys/devices/system/cpu/cpu[0-9]*; do [ -e $c/online ] && "
             "[ $(cat $c/online) = 0 ] && echo 1 > $c/online; done; true")
    return slot


def plug_memory(guest: Guest, size: int = 128 * MIB) -> None:
    """A pc-dimm of ``size`` bytes plugged, and its memory blocks onlined in the guest."""
    count = "ls -d /sys/devices/system/memory/memory[0-9]* | wc -l"
    before = int(guest.sh(count))
    guest.qmp.execute("object-add", qom_type="memory-backend-ram", id="hpmem", size=size)
    guest.qmp.execute("device_add", driver="pc-dimm", id="hpdimm", memdev="hpmem")
    where = f"{guest.host.name}/{guest.spec.name}"
    wait_until(lambda: int(guest.sh(count)) > before, 60,
               f"{where}: memory blocks from the DIMM in sysfs")
    guest.sh("for m in /sys/devices/system/memory/memory*; do [ $(cat $m/state) = offline ] "
             "&& echo online > $m/state; done; true")
