"""Hot-plug and unplug through QMP (a disk, a NIC, a vCPU, memory), as the guest sees it."""

from __future__ import annotations

import logging

from ...guest import Guest
from ...guest.spec import HOTPLUG_PORTS
from ...waiting import wait_until
from .drivers import MIB

log = logging.getLogger("pytest_kvm.virtio")


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


def _cpus(guest: Guest, which: str) -> int:
    """How many CPUs /sys/devices/system/cpu/<which> lists (ranges such as 0-1,3)."""
    ranges = guest.sh(f"cat /sys/devices/system/cpu/{which}").strip()
    return sum(int(b) - int(a) + 1 for a, _, b in
               (r.partition("-") if "-" in r else (r, "", r) for r in ranges.split(",")))


def present_cpus(guest: Guest) -> int:
    return _cpus(guest, "present")


def cpus_to_come(guest: Guest) -> int:
    """CPUs the guest's kernel can still take (possible - present): 0 means a hot-plugged vCPU
    has no place, whatever QEMU does. Linux >= 6.9 counts QEMU's disabled MADT entries only
    in a guest that knows its hypervisor; under TCG it sees no signature it knows, takes
    itself for bare metal, and counts none (Debian 13's 6.12; Debian 12's 6.1 counts them)."""
    return _cpus(guest, "possible") - present_cpus(guest)


def plug_cpu(guest: Guest) -> dict:
    """The next free vCPU slot filled (``device_add`` of the CPU type QEMU lists for it), and
    onlined in the guest as udev would; the slot as QEMU describes it."""
    free = [c for c in guest.qmp.execute("query-hotpluggable-cpus") if "qom-path" not in c]
    if not free:
        raise LookupError(f"{guest.spec.name}: no free vCPU slot (maxcpus)")
    slot = free[-1]
    before = present_cpus(guest)
    guest.qmp.execute("device_add", driver=slot["type"], id="hpcpu", **slot["props"])
    where = f"{guest.host.name}/{guest.spec.name}"
    wait_until(lambda: present_cpus(guest) > before, 60, f"{where}: a new present CPU")
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
