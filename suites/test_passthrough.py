"""PCI passthrough (lab notes, section 2): a host device given to a guest is visible in it.

Per device named in the inventory (kvm_passthrough): its IOMMU group is known and can be
handed over whole; it binds to vfio-pci (driver_override), its original driver remembered;
a guest started with it shows its vendor:device; in that guest, QMP device_del takes it out
and device_add puts it back, then device_del again, each seen in the guest; the original
driver is back at the end, also when a test fails. The management NIC and unnamed devices
are never touched.
"""

from __future__ import annotations

import pytest

from pytest_kvm.features import vfio
from pytest_kvm.guest import GuestSpec

pytestmark = pytest.mark.kvm_suite("passthrough")


@pytest.fixture(scope="module")
def original(kvm_host, kvm_pci, kvm_device_lease):
    """The device before the suite touched it."""
    return kvm_host.pci(kvm_pci)


def test_iommu_group_is_known(kvm_host, kvm_pci):
    group, members = vfio.iommu_group(kvm_host, kvm_pci)
    assert group, f"{kvm_pci} has no IOMMU group: is the IOMMU on (intel_iommu=on)?"
    assert kvm_pci in members


@pytest.fixture(scope="module")
def binding(kvm_host, kvm_pci, original):
    """The device on vfio-pci; only when its whole IOMMU group can be handed over."""
    blocking = vfio.blocking_members(kvm_host, kvm_pci, set(kvm_host.named_devices))
    if blocking:
        pytest.skip(f"{kvm_host.name}: {kvm_pci}'s IOMMU group also holds {', '.join(blocking)}"
                    "; name them in kvm_passthrough too, or use another slot")
    with vfio.bound(kvm_host, kvm_pci) as b:
        yield b


def test_bound_to_vfio_pci(kvm_host, kvm_pci, binding):
    assert kvm_host.pci(kvm_pci).driver == "vfio-pci"


def test_original_driver_remembered(binding, original):
    assert binding.original_driver == original.driver


@pytest.fixture(scope="module")
def pt_guest(kvm_host, kvm_pci, binding, module_guest_factory):
    """A guest given the device at boot, on a PCIe root port (hp0) it can be unplugged from
    and plugged into again."""
    with module_guest_factory.held(GuestSpec(name="pt", shell=True, devices=(
            "pcie-root-port,id=hp0,chassis=9,slot=9",
            f"vfio-pci,host={kvm_pci},id=pt0,bus=hp0")), host=kvm_host) as guest:
        yield guest


def test_guest_sees_the_device_at_boot(pt_guest, original):
    assert original.vendor_device in vfio.guest_pci_ids(pt_guest)


@pytest.fixture(scope="module")
def hot_added(kvm_pci, original, pt_guest):
    """(in the guest before device_add, in the guest after it): the device given at boot is
    unplugged first, then added back."""
    vfio.hot_remove(pt_guest, "pt0")
    before = vfio.shows(pt_guest, original.vendor_device, present=False)
    vfio.hot_add(pt_guest, kvm_pci, "pt0", bus="hp0")
    return not before, vfio.shows(pt_guest, original.vendor_device)


@pytest.fixture(scope="module")
def hot_removed(hot_added, original, pt_guest):
    """Gone from the guest after device_del (and QEMU's DEVICE_DELETED)."""
    vfio.hot_remove(pt_guest, "pt0")
    return vfio.shows(pt_guest, original.vendor_device, present=False)


def test_hotplug_adds_the_device(hot_added, original):
    before, after = hot_added
    assert not before, f"{original.vendor_device} in the guest before device_add"
    assert after, f"{original.vendor_device} not in the guest within 30 s of device_add"


def test_hot_unplug_removes_the_device(hot_removed, original):
    assert hot_removed, f"{original.vendor_device} still in the guest 30 s after device_del"


@pytest.fixture(scope="module")
def restored(kvm_host, kvm_pci, binding, pt_guest):
    """The device after the guest let it go and the binding was undone."""
    pt_guest.stop()
    binding.restore()
    return kvm_host.pci(kvm_pci)


def test_original_driver_restored(restored, original):
    assert restored.driver == original.driver
