"""The guest's virtio drivers: which are loaded, and which device each is bound to."""

from __future__ import annotations

from ...guest import Guest

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


def loaded_modules(guest: Guest) -> set[str]:
    return {line.split()[0] for line in guest.sh("lsmod").splitlines()[1:] if line.strip()}


def builtin_modules(guest: Guest) -> set[str]:
    """Drivers built into the guest's kernel (its modules.builtin; lsmod never lists them),
    e.g. virtio_console in Debian 13's kernel. Empty where the kernel has no such list."""
    out = guest.sh('cat "/lib/modules/$(uname -r)/modules.builtin" 2>/dev/null; true')
    return {line.rsplit("/", 1)[-1].removesuffix(".ko").replace("-", "_")
            for line in out.splitlines() if line.strip().endswith(".ko")}


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
