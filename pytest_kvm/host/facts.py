"""What a host is: its facts (kernel, CPU, KVM, QEMU), what its QEMU offers, a PCI device."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import KvmError


@dataclass(frozen=True)
class PciDevice:
    """A PCI function on a host, as sysfs shows it: from the facts probe, or now (host.pci)."""

    bdf: str
    present: bool
    vendor: str = ""  # 0x8086
    device: str = ""
    driver: str = ""  # bound driver ('' when none)
    iommu_group: str = ""
    totalvfs: int | None = None  # SR-IOV (None: not a PF)
    numvfs: int | None = None
    override: str = ""  # driver_override
    pci_class: str = ""  # 0x020000
    vf_device: str = ""  # sriov_vf_device: the device ID of its VFs
    autoprobe: str = ""  # sriov_drivers_autoprobe

    @property
    def vendor_device(self) -> str:
        return f"{self.vendor.removeprefix('0x')}:{self.device.removeprefix('0x')}"

    @property
    def vf_vendor_device(self) -> str:
        """vendor:device of its VFs."""
        return f"{self.vendor.removeprefix('0x')}:{self.vf_device.removeprefix('0x')}"

    @property
    def is_bridge(self) -> bool:
        return self.pci_class.startswith("0x0604")


PciFacts = PciDevice  # (the facts probe's name for it)


@dataclass(frozen=True)
class Facts:
    kernel: str = ""
    arch: str = ""
    cpu_vendor: str = ""
    cpu_model: str = ""
    virt_flag: str = ""
    cpus: int = 0
    mem_kb: int = 0
    modules: frozenset[str] = frozenset()
    nested: dict[str, str] = field(default_factory=dict)
    dev_kvm: bool = False
    iommu_groups: int = 0
    socat: str = ""
    qemu_path: str = ""
    qemu_version: str = ""
    qemu_devices: frozenset[str] = frozenset()
    ovmf_code: str = ""
    ovmf_vars: str = ""
    pci: dict[str, PciFacts] = field(default_factory=dict)

    @property
    def kvm_module(self) -> str:
        return next((m for m in ("kvm_intel", "kvm_amd") if m in self.modules), "")

    @property
    def hardware_kvm(self) -> bool:
        """Usable hardware KVM: vmx/svm, kvm_intel/kvm_amd loaded and /dev/kvm.

        /dev/kvm alone is not enough (a PVM-style kvm gives /dev/kvm with no vmx/svm, and
        ordinary guests hang under it).
        """
        return bool(self.virt_flag and self.kvm_module and self.dev_kvm)

    @property
    def qemu_version_tuple(self) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in self.qemu_version.split("."))
        except ValueError:
            return ()

    def why_no_kvm(self) -> str:
        if not self.virt_flag:
            extra = " (PVM-style kvm)" if "kvm_pvm" in self.modules else ""
            return f"no vmx/svm in /proc/cpuinfo{extra}"
        if not self.kvm_module:
            mod = "kvm_intel" if self.virt_flag == "vmx" else "kvm_amd"
            return f"{mod} is not loaded (modprobe {mod})"
        if not self.dev_kvm:
            return "/dev/kvm is missing"
        return ""


@dataclass(frozen=True)
class QemuOffers:
    """What a host's QEMU offers a guest that must migrate: its version, its machine types and
    its named CPU models, each with the features it lacks under the host's accelerator
    (QMP query-machines and query-cpu-definitions)."""

    version: str
    machines: frozenset[str]
    cpus: dict[str, tuple[str, ...]]  # model -> unavailable features
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> the model it stands for


def parse_qmp_replies(text: str) -> list:
    """The ``return`` of each QMP reply in a stdio session's output, in order; an error
    reply raises KvmError with QEMU's words."""
    replies = []
    for raw in text.splitlines():
        if not raw.startswith("{"):
            continue
        reply = json.loads(raw)
        if "error" in reply:
            raise KvmError(f"QEMU: {reply['error'].get('desc', reply['error'])}")
        if "return" in reply:
            replies.append(reply["return"])
    return replies


def qemu_offers_from(version: dict, machines: list, cpus: list) -> QemuOffers:
    """QemuOffers from the replies to query-version, query-machines, query-cpu-definitions."""
    q = version["qemu"]
    return QemuOffers(
        version=f"{q['major']}.{q['minor']}.{q['micro']}",
        machines=frozenset(m["name"] for m in machines),
        cpus={c["name"]: tuple(c.get("unavailable-features") or ()) for c in cpus},
        aliases={c["name"]: c["alias-of"] for c in cpus if c.get("alias-of")})


def parse_facts(text: str) -> Facts:
    values: dict[str, str] = {}
    pci: dict[str, PciFacts] = {}
    for line in text.splitlines():
        if line.startswith("pci "):
            parts = line.split()
            bdf, kv = parts[1], dict(p.split("=", 1) for p in parts[2:] if "=" in p)
            if kv.get("missing"):
                pci[bdf] = PciFacts(bdf, False)
            else:
                pci[bdf] = PciFacts(
                    bdf, True, kv.get("vendor", ""), kv.get("device", ""), kv.get("driver", ""),
                    kv.get("iommu_group", ""),
                    int(kv["totalvfs"]) if kv.get("totalvfs") else None,
                    int(kv["numvfs"]) if kv.get("numvfs") else None)
        elif "=" in line:
            key, _, value = line.partition("=")
            values[key] = value.strip()

    def num(key: str) -> int:
        try:
            return int(values.get(key, "0") or 0)
        except ValueError:
            return 0

    return Facts(
        kernel=values.get("kernel", ""),
        arch=values.get("arch", ""),
        cpu_vendor=values.get("cpu_vendor", ""),
        cpu_model=values.get("cpu_model", ""),
        virt_flag=values.get("virt_flag", ""),
        cpus=num("cpus"),
        mem_kb=num("mem_kb"),
        modules=frozenset(m for m in values.get("modules", "").split(",") if m),
        nested={k.removeprefix("nested_"): v for k, v in values.items()
                if k.startswith("nested_")},
        dev_kvm=values.get("dev_kvm") == "1",
        iommu_groups=num("iommu_groups"),
        socat=values.get("socat", ""),
        qemu_path=values.get("qemu_path", ""),
        qemu_version=values.get("qemu_version", ""),
        qemu_devices=frozenset(d for d in values.get("qemu_devices", "").split(",") if d),
        ovmf_code=values.get("ovmf_code", ""),
        ovmf_vars=values.get("ovmf_vars", ""),
        pci=pci,
    )
