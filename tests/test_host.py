"""Host facts, probed over real SSH in one round trip."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from pytest_kvm.errors import KvmError
from pytest_kvm.host import Host, parse_facts, parse_qmp_replies
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


def test_qemu_qmp_answers_in_full_to_a_slow_reader():
    """remote/qemu-qmp.sh: 25 CPU model expansions (~260 KB of replies) read by a reader that
    starts late (a loaded host) all arrive; into a pipe, QEMU's quit once cut them at ~57 KB
    (the pytest-kvm nightly's lab job, under load, read half a reply)."""
    models = ["486-v1", "Broadwell-v1", "Cascadelake-Server-v1", "Conroe-v1", "EPYC-v1",
              "EPYC-Rome-v1", "Haswell-v1", "Icelake-Server-v1", "IvyBridge-v1", "Nehalem-v1",
              "Opteron_G1-v1", "Penryn-v1", "SandyBridge-v1", "Skylake-Client-v1",
              "Skylake-Server-v1", "Westmere-v1", "athlon-v1", "core2duo-v1", "kvm32-v1",
              "kvm64-v1", "qemu32-v1", "qemu64-v1", "max", "base", "Cooperlake-v1"]
    commands = [json.dumps({"execute": "query-cpu-model-expansion",
                            "arguments": {"type": "full", "model": {"name": m}}})
                for m in models]
    script = resources.files("pytest_kvm.remote").joinpath("qemu-qmp.sh")
    out = subprocess.run(
        ["sh", "-c", 'sh "$0" qemu-system-x86_64 tcg "$@" | { sleep 3; cat; }', str(script),
         *commands], capture_output=True, text=True, timeout=120)
    replies = parse_qmp_replies(out.stdout)
    assert len(replies) == len(models) + 2, out.stdout[-300:]  # + qmp_capabilities, quit
    assert [r["model"]["name"] for r in replies[1:-1]] == models
