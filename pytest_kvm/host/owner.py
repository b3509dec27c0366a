"""Who owns a change on a host: this controller's pytest process, by host name, PID and the
PID's start time (so a reused PID is never taken for a live owner)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


# -- who owns a change: this controller's pytest process --------------------------------------
def controller_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            return Path(path).read_text().strip() or socket.gethostname()
        except OSError:
            continue
    return socket.gethostname()


def process_start(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass(frozen=True)
class Owner:
    """Who started a guest: this controller's pytest process (to find leftovers of dead runs)."""

    run_id: str
    controller: str
    pid: int
    start: str

    @classmethod
    def current(cls, run_id: str) -> Owner:
        pid = int(os.environ.get("PYTEST_KVM_OWNER_PID", os.getpid()))
        return cls(run_id, controller_id(), pid, process_start(pid))

    def line(self) -> str:
        return f"{self.run_id} {self.controller} {self.pid} {self.start}"

    @classmethod
    def parse(cls, line: str) -> Owner | None:
        parts = line.split()
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])

    def is_dead(self) -> bool:
        """Only for owners on this controller: is that pytest process gone?"""
        return self.controller == controller_id() and process_start(self.pid) != self.start
