"""Virtio para-virtualised drivers (lab notes, section 1).

One guest per host with every virtio device attached (net, blk, scsi, balloon, console, rng).
Its init loads drivers from the devices' modaliases, as a distro's udev does, so `lsmod` shows
what the hardware caused. Each check: the driver is loaded, and its device is bound to it.
"""

from __future__ import annotations

import pytest

from pytest_kvm.guest import GuestSpec

# driver -> virtio device ID it drives (virtio spec, "Device Types")
DRIVERS = {
    "virtio_net": 1,
    "virtio_blk": 2,
    "virtio_console": 3,
    "virtio_rng": 4,
    "virtio_balloon": 5,
    "virtio_scsi": 8,
}
UNLOADABLE = "virtio_balloon"  # nothing in the guest holds it


@pytest.fixture(scope="module")
def guest_spec():
    return GuestSpec.all_virtio(name="virtio")


def loaded_modules(guest) -> set[str]:
    return {line.split()[0] for line in guest.sh("lsmod").splitlines()[1:] if line.strip()}


def virtio_bindings(guest) -> dict[int, str]:
    """virtio device ID -> the driver bound to it ('' when none)."""
    out = guest.sh("for d in /sys/bus/virtio/devices/*; do "
                   "echo $(cat $d/device) $(basename \"$(readlink $d/driver)\"); done")
    return {int(dev, 16): (drv[0] if drv else "")
            for dev, *drv in (line.split() for line in out.splitlines() if line.strip())}


@pytest.fixture(scope="module")
def lsmod(guest):
    return loaded_modules(guest)


@pytest.fixture(scope="module")
def bindings(guest):
    return virtio_bindings(guest)


@pytest.mark.parametrize("driver", DRIVERS)
def test_driver_loaded(lsmod, driver):
    assert driver in lsmod, f"{driver} is not in the guest's lsmod"


@pytest.mark.parametrize("driver", DRIVERS)
def test_device_bound(bindings, driver):
    device = DRIVERS[driver]
    assert device in bindings, f"the guest has no virtio device {device} for {driver}"
    assert bindings[device] == driver


def test_virtio_pci_drives_every_virtio_pci_device(guest):
    out = guest.sh("for d in /sys/bus/pci/devices/*; do [ $(cat $d/vendor) = 0x1af4 ] && "
                   "echo $(basename $d) $(basename \"$(readlink $d/driver)\"); done; true")
    devices = dict(line.split() for line in out.splitlines() if line.strip())
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
