"""Guest layer: micro guest image, QEMU lifecycle, serial console, QMP, sweeping."""

from .cloudinit import CloudInit
from .console import Console, GuestCommandTimeout
from .image import MicroImage, build_micro
from .launch import start_guest
from .qemu import Guest, Owner
from .qmp import Qmp, QmpError, QmpTimeout
from .spec import Disk, GuestSpec, Nic
from .state import GuestDied, GuestError, GuestState, PortTaken
from .sweep import stale_runs, sweep

__all__ = [
    "CloudInit", "Console", "Disk", "Guest", "GuestCommandTimeout", "GuestDied", "GuestError",
    "GuestSpec", "GuestState", "MicroImage", "Nic", "Owner", "PortTaken", "Qmp", "QmpError",
    "QmpTimeout", "build_micro", "stale_runs", "start_guest", "sweep",
]
