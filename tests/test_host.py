"""Host facts, probed over real SSH in one round trip."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from pytest_kvm.errors import KvmError
from pytest_kvm.host import Host, parse_facts
from pytest_kvm.inventory import parse
from pytest_kvm.transport import for_entry


def test_facts_of_a_real_host(rig):
    inv = parse(rig.inventory(host_vars={"host1": {"kvm_passthrough": "0000:7f:1f.7"}}))
    host = Host(inv.hosts["host1"], for_entry(inv.hosts["host1"], inv))
    f = host.facts
    assert f.kernel == platform.release() and f.arch == "x86_64"
    assert f.cpus >= 1 and f.mem_kb > 0
    assert f.qemu_path.endswith("qemu-system-x86_64") and f.qemu_version_tuple >= (8, 0)
    assert "virtio-net-pci" in f.qemu_devices and "igb" in f.qemu_devices
    assert f.pci["0000:7f:1f.7"].present is False  # named, but not on this machine
    assert host.require_qemu_device("virtio-rng-pci") is None
    assert "has no -device no-such-dev" in host.require_qemu_device("no-such-dev")
    # This machine kind has /dev/kvm without vmx/svm: not usable, so auto means tcg.
    if not f.virt_flag:
        assert f.hardware_kvm is False and host.accel == "tcg"
        assert "no vmx/svm" in f.why_no_kvm()
    assert host.summary().startswith("host1: kernel ")
    host.transport.close()


def test_hardware_kvm_needs_flag_module_and_device():
    base = "virt_flag=vmx\nmodules=kvm,kvm_intel,\ndev_kvm=1\nnested_kvm_intel=Y\n"
    assert parse_facts(base).hardware_kvm
    assert parse_facts(base).nested == {"kvm_intel": "Y"}
    assert not parse_facts(base.replace("dev_kvm=1", "")).hardware_kvm
    no_mod = parse_facts(base.replace("kvm_intel,", ""))
    assert not no_mod.hardware_kvm and "modprobe kvm_intel" in no_mod.why_no_kvm()
    pvm = parse_facts("virt_flag=\nmodules=kvm,kvm_pvm,\ndev_kvm=1\n")
    assert not pvm.hardware_kvm
    assert pvm.why_no_kvm() == "no vmx/svm in /proc/cpuinfo (PVM-style kvm)"


def test_pci_facts_parse():
    f = parse_facts("pci 0000:01:00.0 vendor=0x8086 device=0x10c9 driver=igb iommu_group=7 "
                    "totalvfs=7 numvfs=0\npci 0000:02:00.0 missing=1\n")
    pf = f.pci["0000:01:00.0"]
    assert (pf.vendor_device, pf.driver, pf.iommu_group, pf.totalvfs, pf.numvfs) == (
        "8086:10c9", "igb", "7", 7, 0)
    assert not f.pci["0000:02:00.0"].present


def test_pci_reads_a_device_as_sysfs_shows_it_now(rig):
    inv = parse(rig.inventory())
    host = Host(inv.hosts["host1"], for_entry(inv.hosts["host1"], inv))
    bdf = sorted(os.listdir("/sys/bus/pci/devices"))[0]  # the namespaced host shares sysfs
    sysfs = f"/sys/bus/pci/devices/{bdf}"
    dev = host.pci(bdf)
    assert dev.present and dev.vendor == Path(f"{sysfs}/vendor").read_text().strip()
    assert dev.pci_class == Path(f"{sysfs}/class").read_text().strip()
    assert dev.driver == (os.path.basename(os.readlink(f"{sysfs}/driver"))
                          if os.path.exists(f"{sysfs}/driver") else "")
    assert dev.totalvfs is None  # not a PF
    assert not host.pci("0000:7f:1f.7").present
    with pytest.raises(KvmError, match="is not a PCI address"):
        host.pci("0000:00:00.0; reboot")
