"""SR-IOV: a PF's virtual functions, counted from sysfs and lspci, and the PF restored."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .. import remote
from ..host import Change, Host, HostChangeError
from .vfio import check_allowed


class SriovError(HostChangeError):
    pass


@dataclass
class PfState(Change):
    """A PF's settings before the plugin changed them."""

    pf: str
    numvfs: int
    autoprobe: str
    error = SriovError

    def undo_op(self) -> tuple[str, list[str]]:
        return "undo-sriov-pf", [self.pf, str(self.numvfs), self.autoprobe]

    def describe(self) -> str:
        return f"{self.pf} sriov_numvfs={self.numvfs} drivers_autoprobe={self.autoprobe}"


class PfInUse(SriovError):
    """The PF already has VFs that a driver (so something else) is using."""


def vfs_in_use(host: Host, pf: str) -> list[str]:
    """The PF's VFs that a driver is bound to, as ``bdf (driver)``."""
    drivers = {vf: host.pci(vf).driver for vf in vfs(host, pf)}
    return [f"{vf} ({driver})" for vf, driver in drivers.items() if driver]


def save(host: Host, pf: str, reset: bool = False) -> PfState:
    """Remember the PF's numvfs and drivers_autoprobe (check that we may touch it first).

    A PF whose VFs are in use by something else is not reset (PfInUse) unless ``reset``.
    """
    check_allowed(host, pf)
    device = host.pci(pf)
    used = vfs_in_use(host, pf) if device.numvfs else []
    if used and not reset:
        raise PfInUse(f"{host.name}: {pf} has VFs in use by something else: {', '.join(used)}; "
                      "pytest-kvm does not reset it (set kvm_sriov_reset=yes to allow it)")
    state = PfState(host, pf, device.numvfs or 0, device.autoprobe or "1")
    state.record()
    return state


def prepare(host: Host, pf: str, reset: bool = False) -> PfState:
    """The PF saved (``save``), then set so that new VFs stay unbound: they are meant for
    vfio-pci, not for the VF driver. ``restore()`` puts numvfs and autoprobe back."""
    state = save(host, pf, reset)
    host.write(f"/sys/bus/pci/devices/{pf}/sriov_drivers_autoprobe", "0")
    return state


def set_numvfs(host: Host, pf: str, count: int) -> None:
    """Write sriov_numvfs (through 0 when it changes from one non-zero count to another)."""
    r = host.run(remote.argv("sriov-set-numvfs", pf, str(count)), become=True, check=False,
                 timeout=120)
    if not r.ok:
        raise SriovError(f"{host.name}: setting sriov_numvfs of {pf} to {count} failed: "
                         f"{(r.stdout + r.stderr).strip()}")


def vfs(host: Host, pf: str) -> list[str]:
    """The PF's VFs, from its virtfn* links, in VF order."""
    out = host.run(remote.argv("sriov-vfs", pf), timeout=30).stdout
    pairs = sorted((int(i), path.rsplit("/", 1)[-1]) for i, path in
                   (line.split() for line in out.splitlines() if line.strip()))
    return [bdf for _, bdf in pairs]


def lspci_lines(host: Host, bdfs: list[str]) -> dict[str, str]:
    """lspci's line for each of these addresses (those lspci lists)."""
    out = host.run(["lspci", "-D", "-nn"], timeout=60).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    return {bdf: lines[bdf] for bdf in bdfs if bdf in lines}


def lspci_vf_ids(line: str) -> str:
    match = re.search(r"\[([0-9a-f]{4}:[0-9a-f]{4})\]", line.split("]:", 1)[-1])
    return match.group(1) if match else ""
