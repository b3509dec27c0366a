"""PCI passthrough (lab notes, section 2): a host device given to a guest is visible in it.

Per device named in the inventory (kvm_passthrough): its IOMMU group is known and can be
handed over whole; it binds to vfio-pci (driver_override), its original driver remembered;
a guest started with it shows its vendor:device; QMP device_add puts it into a running guest
and device_del takes it out again, both seen in the guest; the original driver is back at the
end, also when a test fails. The management NIC and unnamed devices are never touched.
"""

from __future__ import annotations

import pytest

from pytest_kvm.features import vfio
from pytest_kvm.guest import GuestSpec
from pytest_kvm.waiting import wait_until

pytestmark = [pytest.mark.kvm_suite("passthrough"), pytest.mark.kvm_devices("kvm_passthrough")]


@pytest.fixture(scope="module")
def device_id(kvm_host, kvm_pci):
    return vfio.vendor_device(kvm_host, kvm_pci)


@pytest.fixture(scope="module")
def original_driver(kvm_host, kvm_pci, kvm_device_lease):
    return vfio.driver_of(kvm_host, kvm_pci)


def test_iommu_group_is_known(kvm_host, kvm_pci):
    group, members = vfio.iommu_group(kvm_host, kvm_pci)
    assert group, f"{kvm_pci} has no IOMMU group: is the IOMMU on (intel_iommu=on)?"
    assert kvm_pci in members


@pytest.fixture(scope="module")
def binding(kvm_host, kvm_pci, original_driver, kvm_device_lease):
    """The device on vfio-pci; only when its whole IOMMU group can be handed over."""
    blocking = vfio.blocking_members(kvm_host, kvm_pci, set(kvm_host.named_devices))
    if blocking:
        pytest.skip(f"{kvm_host.name}: {kvm_pci}'s IOMMU group also holds {', '.join(blocking)}"
                    "; name them in kvm_passthrough too, or use another slot")
    b = vfio.bind_vfio(kvm_host, kvm_pci)
    yield b
    b.restore()


def test_bound_to_vfio_pci(kvm_host, kvm_pci, binding):
    assert vfio.driver_of(kvm_host, kvm_pci) == "vfio-pci"


def test_original_driver_remembered(binding, original_driver):
    assert binding.original_driver == original_driver


def test_guest_sees_the_device_at_boot(kvm_host, kvm_pci, binding, device_id, guest_factory):
    guest = guest_factory(GuestSpec(name="pt-boot", devices=(f"vfio-pci,host={kvm_pci}",)),
                          host=kvm_host)
    assert device_id in vfio.guest_pci_ids(guest)


@pytest.fixture(scope="module")
def hotplug_guest(kvm_host, binding, module_guest_factory):
    """A running guest with a free PCIe root port to plug into."""
    return module_guest_factory(GuestSpec(name="pt-hotplug", devices=(
        "pcie-root-port,id=hp0,chassis=9,slot=9",)), host=kvm_host)


def test_hotplug_adds_the_device(kvm_pci, device_id, hotplug_guest):
    assert device_id not in vfio.guest_pci_ids(hotplug_guest)
    hotplug_guest.qmp.execute("device_add", driver="vfio-pci", host=kvm_pci, id="pt0",
                              bus="hp0")
    assert wait_until(lambda: device_id in vfio.guest_pci_ids(hotplug_guest), 30,
                      f"{device_id} in the guest's lspci", step=0.5)


def test_hot_unplug_removes_the_device(device_id, hotplug_guest):
    hotplug_guest.qmp.execute("device_del", id="pt0")
    hotplug_guest.qmp.event("DEVICE_DELETED", timeout=60, device="pt0")
    assert wait_until(lambda: device_id not in vfio.guest_pci_ids(hotplug_guest), 30,
                      f"{device_id} gone from the guest's lspci", step=0.5)


def test_original_driver_restored(kvm_host, kvm_pci, binding, original_driver, hotplug_guest):
    hotplug_guest.stop()  # nothing holds the device any more
    binding.restore()
    assert vfio.driver_of(kvm_host, kvm_pci) == original_driver
