"""PCI passthrough: hand a host device to vfio-pci and give it back, touching nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from .. import remote
from ..host import Change, Host, HostChangeError


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
    session, and ``interfaces``), through bridges, bonds, VLANs, macvlans and teams."""
    return set(host.run(remote.argv("management-devices", *interfaces), timeout=30)
               .stdout.split())


def check_allowed(host: Host, bdf: str) -> None:
    """The plugin only touches devices the inventory names, and never the management NIC."""
    if bdf not in host.named_devices:
        raise PassthroughError(f"{host.name}: {bdf} is not named in the inventory "
                               "(kvm_passthrough or kvm_sriov_pf); pytest-kvm never touches it")
    if bdf in management_devices(host):
        raise PassthroughError(f"{host.name}: {bdf} carries the host's management connection; "
                               "refusing to unbind it")


def iommu_group(host: Host, bdf: str) -> tuple[str, list[str]]:
    """(group number, every device in the group) for a device; ('', []) without an IOMMU."""
    r = host.run(remote.argv("iommu-group", bdf), timeout=30)
    lines = r.stdout.split()
    return (lines[0], sorted(lines[1:])) if lines else ("", [])


def is_bridge(host: Host, bdf: str) -> bool:
    return host.read(f"/sys/bus/pci/devices/{bdf}/class", "").startswith("0x0604")


def blocking_members(host: Host, bdf: str, allowed: set[str]) -> list[str]:
    """Group members that stop the device from being handed over alone: anything that is not
    the device itself, a bridge, or another device the inventory lets us use."""
    _, members = iommu_group(host, bdf)
    return [m for m in members if m != bdf and m not in allowed and not is_bridge(host, m)]


def bind_vfio(host: Host, bdf: str, check: bool = True) -> Binding:
    """Bind a named device to vfio-pci via driver_override, remembering its driver."""
    if check:
        check_allowed(host, bdf)
    state = host.run(remote.argv("pci-state", bdf), check=False, timeout=30)
    if not state.ok:
        raise PassthroughError(f"{host.name}: {state.stdout.strip()}")
    values = dict(line.split("=", 1) for line in state.stdout.splitlines() if "=" in line)
    binding = Binding(host, bdf, values.get("driver", ""), values.get("override", "(null)"))
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


def driver_of(host: Host, bdf: str) -> str:
    r = host.run(["readlink", f"/sys/bus/pci/devices/{bdf}/driver"], check=False, timeout=30)
    return r.stdout.strip().rsplit("/", 1)[-1] if r.ok else ""


def vendor_device(host: Host, bdf: str) -> str:
    d = f"/sys/bus/pci/devices/{bdf}"
    v, dev = host.read(f"{d}/vendor"), host.read(f"{d}/device")
    return f"{v.removeprefix('0x')}:{dev.removeprefix('0x')}"


GUEST_PCI_IDS = ("for d in /sys/bus/pci/devices/*; do "
                 "echo $(cat $d/vendor | cut -c3-):$(cat $d/device | cut -c3-); done")


def guest_pci_ids(guest) -> list[str]:
    """vendor:device of every PCI device the guest sees."""
    return guest.sh(GUEST_PCI_IDS).split()
