"""Virtio devices at work in a guest: drivers bound, data through every device, hot-plug.

What a check needs from a guest is here; suites only compare what these return. Every
guest-side command is plain POSIX shell that runs on the micro guest (busybox) and on a
distro image (coreutils, iproute2, and python3 where busybox's nc is missing). One module
per job: drivers, net, block, devices (balloon, RNG, virtio-serial), hotplug.
"""

from ...guest.spec import SERIAL_PORT  # the port serial_exchange uses, by name
from .block import (
    FLUSH_OFFSET,
    DiskCheck,
    block_driver,
    disk_check,
    disk_index,
    disk_of,
    node_size,
)
from .devices import (
    balloon,
    mem_total,
    rng,
    serial_exchange,
    serial_port_device,
)
from .drivers import (
    DRIVERS,
    MIB,
    builtin_modules,
    loaded_modules,
    virtio_bindings,
    virtio_pci_drivers,
)
from .hotplug import (
    HOTPLUG_MAC,
    HOTPLUG_NET,
    HOTPLUG_SERIAL,
    cpus_to_come,
    online_cpus,
    plug_cpu,
    plug_disk,
    plug_memory,
    plug_nic,
    plugged,
    unplug,
    unplug_disk,
    unplug_nic,
)
from .net import (
    COUNTERS,
    VIRTIO_NET_F_MQ,
    NetExchange,
    Queues,
    Transfer,
    counters,
    data_nic,
    iface_of,
    net_exchange,
    nic_queues,
    nic_state,
)

__all__ = [
    "SERIAL_PORT",
    "COUNTERS",
    "DRIVERS",
    "DiskCheck",
    "FLUSH_OFFSET",
    "HOTPLUG_MAC",
    "HOTPLUG_NET",
    "HOTPLUG_SERIAL",
    "MIB",
    "NetExchange",
    "Queues",
    "Transfer",
    "VIRTIO_NET_F_MQ",
    "balloon",
    "block_driver",
    "builtin_modules",
    "counters",
    "cpus_to_come",
    "data_nic",
    "disk_check",
    "disk_index",
    "disk_of",
    "iface_of",
    "loaded_modules",
    "mem_total",
    "net_exchange",
    "nic_queues",
    "nic_state",
    "node_size",
    "online_cpus",
    "plug_cpu",
    "plug_disk",
    "plug_memory",
    "plug_nic",
    "plugged",
    "rng",
    "serial_exchange",
    "serial_port_device",
    "unplug",
    "unplug_disk",
    "unplug_nic",
    "virtio_bindings",
    "virtio_pci_drivers",
]
