"""Virtio devices at work (lab notes, section 1, beyond `lsmod`): data through each device.

The virtio suite proves the drivers are loaded and bound; this one that the devices move data,
on a guest with every virtio device (net, blk, scsi, balloon, a serial port, rng): bytes
through the NIC both ways with checksums and its counters; O_DIRECT I/O on both disks, read
back and found in the image file on the host after a flush; the balloon down and up; the RNG;
lines both ways through a virtio-serial port. Last, as they change it, the same guest (free
PCIe root ports, a vCPU slot and memory slots) gets a disk, a NIC, a vCPU and memory
hot-plugged through QMP (the seed's monitor commands) and uses them; the disk and NIC are
unplugged again.
"""

from __future__ import annotations

import pytest

from pytest_kvm.features import virtio
from pytest_kvm.features.virtio import MIB
from pytest_kvm.guest import GuestSpec
from pytest_kvm.guest.spec import Nic, disk_serial
from pytest_kvm.waiting import wait_until

pytestmark = pytest.mark.kvm_suite("virtio-data")

BALLOON_STEP = 64 * MIB
QUEUES = 4


@pytest.fixture(scope="module")
def guest_spec():
    """Every virtio device, a second NIC with QUEUES queue pairs (on a tap device), and free
    root ports, a vCPU slot and memory slots for the hot-plug checks."""
    base = GuestSpec.all_virtio(name="virtio-data", shell=True, hotplug=True)
    return base.with_(nics=(*base.nics, Nic(netdev="tap", queues=QUEUES)))


# -- virtio-net --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nets(guest, kvm_samples):
    """The exchange, once per sample (--kvm-samples)."""
    return [virtio.net_exchange(guest, *virtio.data_nic(guest)) for _ in range(kvm_samples)]


@pytest.fixture(scope="module")
def net(nets):
    return nets[0]


def test_net_host_to_guest(nets, kvm_figure):
    kvm_figure("net_host_to_guest_mib_s", [round(n.to_guest.mib_per_s, 2) for n in nets],
               unit="MiB/s", better="higher")
    for net in nets:
        assert net.to_guest.intact, f"{net.to_guest}\n{net.state}"


def test_net_guest_to_host(nets, kvm_figure):
    kvm_figure("net_guest_to_host_mib_s", [round(n.from_guest.mib_per_s, 2) for n in nets],
               unit="MiB/s", better="higher")
    for net in nets:
        assert net.from_guest.intact, f"{net.from_guest}\n{net.state}"


@pytest.mark.parametrize("counter", ["rx_bytes", "tx_bytes"])
def test_net_counters_moved(net, counter):
    least = net.to_guest.sent if counter == "rx_bytes" else net.from_guest.sent
    assert net.moved(counter) >= least, (
        f"{net.iface}'s {counter} moved by {net.moved(counter)}, less than the {least} bytes "
        f"that went through it\n{net.state}")


def test_multiqueue_nic_has_its_queues(guest):
    mac = Nic.mac(len(guest.spec.nics) - 1)
    queues = virtio.nic_queues(guest, mac)
    assert queues.mq_feature, f"VIRTIO_NET_F_MQ not negotiated: {queues.state}"
    assert (queues.rx, queues.tx) == (QUEUES, QUEUES), (
        f"{queues.iface}: {queues.rx} rx and {queues.tx} tx queues for mq=on with {QUEUES} "
        f"queue pairs: {queues.state}")


# -- virtio-blk, virtio-scsi -------------------------------------------------------------------
@pytest.fixture(scope="module")
def disk_checks(guest):
    """Each disk's I/O checks, made once per guest (and per sample, --kvm-samples):
    (guest, bus) -> [virtio.DiskCheck]."""
    return {}


# The bus is a parameter of each test, not of a module fixture: module parameters would split
# each host's tests into several runs, and its guest would boot again for each.
@pytest.fixture(params=["virtio", "scsi"])
def disks(request, guest, disk_checks, kvm_samples):
    if (guest, request.param) not in disk_checks:
        index = virtio.disk_index(guest, request.param)
        device = virtio.disk_of(guest, disk_serial(index))
        assert device, f"no disk with serial {disk_serial(index)} in the guest"
        disk_checks[guest, request.param] = [
            virtio.disk_check(guest, device, f"disk{index}", guest.disk_file(index))
            for _ in range(kvm_samples)]
    return disk_checks[guest, request.param]


@pytest.fixture
def disk(disks):
    return disks[0]


def test_disk_reads_back_what_was_written(disks, kvm_figure):
    kvm_figure("disk_write_mib_s", [d.write_mib_s for d in disks], unit="MiB/s",
               better="higher")
    kvm_figure("disk_read_mib_s", [d.read_mib_s for d in disks], unit="MiB/s", better="higher")
    for disk in disks:
        assert disk.read_sha == disk.written_sha, (
            f"/dev/{disk.device}: wrote sha256 {disk.written_sha}, read back {disk.read_sha} "
            "(O_DIRECT both ways, caches dropped between)")


def test_disk_size_is_what_qemu_gave(disk):
    assert disk.guest_bytes == disk.qemu_bytes, (
        f"/dev/{disk.device}: {disk.guest_bytes} bytes in the guest, QEMU gave "
        f"{disk.qemu_bytes}")


def test_disk_flush_reaches_the_image(disk):
    assert disk.pattern_in_image, (
        f"/dev/{disk.device}: byte 0x{disk.pattern:02x} written at {virtio.FLUSH_OFFSET} and "
        f"flushed, not found in the image file on the host: {disk.in_image}")


# -- rng, serial port --------------------------------------------------------------------------
def test_rng_is_the_virtio_device_and_gives_data(guest):
    current, data = virtio.rng(guest)
    assert current.startswith("virtio_rng"), f"the guest's hw_random is {current!r}"
    assert len(data) == 128 and data.strip("0"), f"/dev/hwrng gave {data!r}"


def test_serial_port_carries_lines_both_ways(guest):
    assert virtio.serial_port_device(guest), (
        f"no virtio-serial port {virtio.SERIAL_PORT!r} in the guest (virtio_console "
        f"{'loaded' if 'virtio_console' in virtio.loaded_modules(guest) else 'not loaded'})")
    down, got_down, up, got_up = virtio.serial_exchange(guest)
    assert got_down == down, f"host sent {down!r}, the guest read {got_down!r}"
    assert got_up == up, f"the guest wrote {up!r}, the host read {got_up!r}"


# -- virtio-balloon ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_memory(guest):
    return virtio.mem_total(guest)


def test_balloon_inflates(guest, full_memory):
    target = guest.spec.memory * MIB - BALLOON_STEP
    actual, total = virtio.balloon(guest, target)
    assert actual == target, f"QEMU's balloon says {actual}, asked for {target}"
    dropped = full_memory - total
    assert BALLOON_STEP * 0.9 <= dropped <= BALLOON_STEP * 1.1, (
        f"MemTotal dropped by {dropped // 1024} KiB for a {BALLOON_STEP // MIB} MiB balloon")


def test_balloon_deflates(guest, full_memory):
    target = guest.spec.memory * MIB
    actual, total = virtio.balloon(guest, target)
    assert actual == target, f"QEMU's balloon says {actual}, asked for {target}"
    assert total == full_memory, f"MemTotal {total} after deflating, {full_memory} before"


# -- hot-plug (last: these checks change the guest) --------------------------------------
# The plugged devices are fixtures of each test (plugged when not there): a test rerun on a
# fresh guest (kvm_reruns) plugs them into that one.
@pytest.fixture
def plugged_disk(guest):
    image = virtio.plug_disk(guest)
    device = wait_until(lambda: virtio.disk_of(guest, virtio.HOTPLUG_SERIAL), 60,
                        "the hot-plugged disk in the guest")
    return device, image


def test_hotplugged_disk_is_bound_and_works(guest, plugged_disk):
    device, image = plugged_disk
    assert virtio.block_driver(guest, device) == "virtio_blk"
    check = virtio.disk_check(guest, device, "hpdisk", image)
    assert check.read_sha == check.written_sha and check.pattern_in_image, check


def test_hot_unplugged_disk_is_gone(guest, plugged_disk):
    event = virtio.unplug_disk(guest)
    assert event["data"]["device"] == "hpdisk"
    assert wait_until(lambda: not virtio.disk_of(guest, virtio.HOTPLUG_SERIAL), 30,
                      "the unplugged disk gone from the guest")


@pytest.fixture
def plugged_nic(guest):
    virtio.plug_nic(guest)
    return wait_until(lambda: virtio.iface_of(guest, virtio.HOTPLUG_MAC), 60,
                      "the hot-plugged NIC in the guest")


def test_hotplugged_nic_is_bound_and_passes_traffic(guest, plugged_nic):
    exchange = virtio.net_exchange(guest, virtio.HOTPLUG_MAC, "hpnet", virtio.HOTPLUG_NET,
                                   size=256 * 1024)
    assert "driver=virtio_net" in exchange.state and "operstate=up" in exchange.state, \
        exchange.state
    assert exchange.to_guest.intact and exchange.from_guest.intact, \
        f"{exchange.to_guest}\n{exchange.from_guest}\n{exchange.state}"


def test_hot_unplugged_nic_is_gone(guest, plugged_nic):
    assert virtio.unplug_nic(guest)["data"]["device"] == "hpnic"
    assert wait_until(lambda: not virtio.iface_of(guest, virtio.HOTPLUG_MAC), 30,
                      "the unplugged NIC gone from the guest")


def test_hotplugged_vcpu_comes_online(guest):
    if not virtio.cpus_to_come(guest):
        why = ("the guest's kernel counts no CPU to come (possible = present), so a "
               "hot-plugged vCPU has no place")
        if guest.accel == "tcg":  # (a kernel >= 6.9 under TCG: see cpus_to_come)
            pytest.skip(f"{why}: under TCG a Linux >= 6.9 guest sees no hypervisor it knows "
                        f"and ignores QEMU's disabled MADT CPU entries")
        pytest.fail(why)
    before = virtio.online_cpus(guest)
    virtio.plug_cpu(guest)
    assert virtio.online_cpus(guest) == before + 1


def test_hotplugged_memory_comes_online(guest):
    before = virtio.mem_total(guest)
    virtio.plug_memory(guest, 128 * MIB)
    grown = virtio.mem_total(guest) - before
    assert grown == 128 * MIB, f"MemTotal grew by {grown // 1024} KiB for a 128 MiB DIMM"
