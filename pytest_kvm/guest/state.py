"""What a guest is, apart from its QEMU: where its life stands, how it can fail, and the
name its log lines carry."""

from __future__ import annotations

import enum
import logging

from ..errors import KvmError

RUN_DIR = "run"  # under a host's work dir: one dir per guest (and per link), with its owner


class Named(logging.LoggerAdapter):
    """A logger whose lines start with what they are about (``host/guest: ...``)."""

    def __init__(self, logger: logging.Logger, where: str):
        super().__init__(logger, {"where": where})

    def process(self, msg, kwargs):
        return f"{self.extra['where']}: {msg}", kwargs


class GuestError(KvmError):
    pass


class PortTaken(GuestError):
    """QEMU could not forward a host port (another process took it between our pick and its
    bind): start again with another."""


class GuestDied(GuestError):
    pass


class GuestState(enum.Enum):
    """Where a guest is in its life. starting -> running -> stopped, or -> dead (QEMU ended
    on its own, or the guest stopped answering) -> stopped."""

    STARTING = "starting"  # QEMU launched; not ready yet (or waiting for an incoming migration)
    RUNNING = "running"
    DEAD = "dead"
    STOPPED = "stopped"
