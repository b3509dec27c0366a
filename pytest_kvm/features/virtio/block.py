"""Data through a virtio disk (virtio-blk, virtio-scsi): O_DIRECT writes read back, and a
flush that reaches the image on the host."""

from __future__ import annotations

import logging
import secrets
import shlex
from dataclasses import dataclass

from ... import remote
from ...guest import Guest
from .drivers import MIB

log = logging.getLogger("pytest_kvm.virtio")


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
