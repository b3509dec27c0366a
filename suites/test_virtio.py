"""Virtio para-virtualised drivers (lab notes, section 1): loaded and bound.

One guest per host with every virtio device attached (net, blk, scsi, balloon, console, rng).
Its init loads drivers from the devices' modaliases, as a distro's udev does, so `lsmod` shows
what the hardware caused. Each check: the driver is loaded (or built into the kernel, which
lsmod does not list), and its device is bound to it.
That the devices also move data is the virtio-data suite's part (test_virtio_data.py).
"""

from __future__ import annotations

import pytest

from pytest_kvm.features.virtio import (
    DRIVERS,
    builtin_modules,
    loaded_modules,
    virtio_bindings,
    virtio_pci_drivers,
)
from pytest_kvm.guest import GuestSpec

pytestmark = pytest.mark.kvm_suite("virtio")

UNLOADABLE = "virtio_balloon"  # nothing in the guest holds it


@pytest.fixture(scope="module")
def guest_spec():
    return GuestSpec.all_virtio(name="virtio")


@pytest.fixture(scope="module")
def lsmod(guest):
    return loaded_modules(guest)


@pytest.fixture(scope="module")
def builtin(guest):
    return builtin_modules(guest)


@pytest.fixture(scope="module")
def bindings(guest):
    return virtio_bindings(guest)


@pytest.mark.parametrize("driver", DRIVERS)
def test_driver_loaded(lsmod, builtin, driver):
    assert driver in lsmod or driver in builtin, (
        f"{driver} is neither in the guest's lsmod nor built into its kernel")


@pytest.mark.parametrize("driver", DRIVERS)
def test_device_bound(bindings, driver):
    device = DRIVERS[driver]
    assert device in bindings, f"the guest has no virtio device {device} for {driver}"
    assert bindings[device] == driver


def test_virtio_pci_drives_every_virtio_pci_device(guest):
    devices = virtio_pci_drivers(guest)
    assert len(devices) >= len(DRIVERS)
    assert set(devices.values()) == {"virtio-pci"}, devices


def test_unload_and_reload_rebinds(guest):
    device = DRIVERS[UNLOADABLE]
    guest.sh(f"rmmod {UNLOADABLE}")
    assert UNLOADABLE not in loaded_modules(guest)
    assert virtio_bindings(guest)[device] == ""
    guest.sh(f"modprobe {UNLOADABLE}")
    assert UNLOADABLE in loaded_modules(guest)
    assert virtio_bindings(guest)[device] == UNLOADABLE
