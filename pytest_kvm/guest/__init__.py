"""Guest layer: micro guest image, QEMU lifecycle, serial console, QMP, sweeping."""

from .cloudinit import CloudInit
from .console import Console, GuestCommandTimeout
from .image import MicroImage, build_micro
from .qemu import Guest, GuestDied, GuestError, GuestState, Owner, start_guest
from .qmp import Qmp, QmpError
from .spec import Disk, GuestSpec, Nic
from .sweep import stale_runs, sweep

__all__ = [
    "CloudInit", "Console", "Disk", "Guest", "GuestCommandTimeout", "GuestDied", "GuestError",
    "GuestSpec", "GuestState", "MicroImage", "Nic", "Owner", "Qmp", "QmpError", "build_micro",
    "stale_runs", "start_guest", "sweep",
]
