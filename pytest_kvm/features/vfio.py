"""PCI passthrough: hand a host device to vfio-pci and give it back, touching nothing else."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from .. import remote
from ..host import Change, Host, HostChangeError
from ..waiting import first_within

log = logging.getLogger("pytest_kvm.vfio")


class PassthroughError(HostChangeError):
    pass




@dataclass
class Binding(Change):
    """A device handed to vfio-pci, and what it had before."""

    bdf: str
    original_driver: str
    original_override: str
    error = PassthroughError

    def undo_op(self) -> tuple[str, list[str]]:
        return "undo-pci-driver", [self.bdf, self.original_driver, self.original_override]

    def describe(self) -> str:
        return f"{self.bdf} back to {self.original_driver or 'no driver'}"


def management_devices(host: Host, *interfaces: str) -> set[str]:
    """PCI functions under the host's management connection (default routes, the SSH
    session, and ``interfaces``), through bridges, bonds, VLANs, macvlans and teams; the PF
    of a VF among them."""
    return set(host.run(remote.argv("management-devices", *interfaces), timeout=30)
               .stdout.split())


def check_allowed(host: Host, bdf: str) -> None:
    """The plugin only touches devices the inventory names, and never the management NIC."""
    if bdf not in host.named_devices:
        raise PassthroughError(f"{host.name}: {bdf} is not named in the inventory "
                               "(kvm_passthrough or kvm_sriov_pf); pytest-kvm never touches it")
    if bdf in management_devices(host):
        raise PassthroughError(f"{host.name}: {bdf} carries the host's management connection "
                               "(itself, or through one of its VFs); refusing to touch it")


def iommu_group(host: Host, bdf: str) -> tuple[str, list[str]]:
    """(group number, every device in the group) for a device; ('', []) without an IOMMU."""
    r = host.run(remote.argv("iommu-group", bdf), timeout=30)
    lines = r.stdout.split()
    return (lines[0], sorted(lines[1:])) if lines else ("", [])


def blocking_members(host: Host, bdf: str, allowed: set[str]) -> list[str]:
    """Group members that stop the device from being handed over alone: anything that is not
    the device itself, a bridge, or another device the inventory lets us use."""
    _, members = iommu_group(host, bdf)
    return [m for m in members if m != bdf and m not in allowed and not host.pci(m).is_bridge]


def bind_vfio(host: Host, bdf: str, check: bool = True) -> Binding:
    """Bind a named device to vfio-pci via driver_override, remembering its driver."""
    if check:
        check_allowed(host, bdf)
    device = host.pci(bdf)
    if not device.present:
        raise PassthroughError(f"{host.name}: no PCI device {bdf}")
    binding = Binding(host, bdf, device.driver, device.override or "(null)")
    binding.record()  # on the host before the change: a run that dies still gets it undone
    r = host.run(remote.argv("vfio-bind", bdf), become=True, check=False, timeout=120)
    if not r.ok:
        try:  # it may be half-way: put it back
            binding.restore()
        except PassthroughError:
            pass
        raise PassthroughError(f"{host.name}: binding {bdf} to vfio-pci failed: "
                               f"{(r.stdout + r.stderr).strip()}")
    return binding


@contextlib.contextmanager
def bound(host: Host, bdf: str, check: bool = True) -> Iterator[Binding]:
    """The device on vfio-pci for the ``with`` block, then back on its own driver."""
    binding = bind_vfio(host, bdf, check)
    try:
        yield binding
    finally:
        binding.restore()


GUEST_PCI_IDS = ("for d in /sys/bus/pci/devices/*; do "
                 "echo $(cat $d/vendor | cut -c3-):$(cat $d/device | cut -c3-); done")


def guest_pci_ids(guest) -> list[str]:
    """vendor:device of every PCI device the guest sees."""
    return guest.sh(GUEST_PCI_IDS).split()


def shows(guest, device_id: str, present: bool = True, timeout: float = 30) -> bool:
    """Whether the guest's PCI devices come to include (or no longer include) vendor:device
    ``device_id`` within ``timeout`` seconds."""
    return bool(first_within(
        lambda: (device_id in guest_pci_ids(guest)) == present, timeout,
        f"{device_id} {'in' if present else 'gone from'} the guest's PCI devices", step=0.5))


def hot_add(guest, bdf: str, dev_id: str, bus: str) -> None:
    """QMP device_add of a host device (bound to vfio-pci) into a running guest, on a free
    PCIe root port ``bus``."""
    log.info("%s/%s: device_add vfio-pci %s as %s on %s", guest.host.name, guest.spec.name,
             bdf, dev_id, bus)
    guest.qmp.execute("device_add", driver="vfio-pci", host=bdf, id=dev_id, bus=bus)


def hot_remove(guest, dev_id: str, timeout: float = 60) -> None:
    """QMP device_del, and QEMU's DEVICE_DELETED for it (the guest let it go)."""
    log.info("%s/%s: device_del %s", guest.host.name, guest.spec.name, dev_id)
    guest.qmp.execute("device_del", id=dev_id)
    guest.qmp.event("DEVICE_DELETED", timeout=timeout, device=dev_id)
