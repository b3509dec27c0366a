"""How commands reach a guest: one interface, four channels.

Each channel runs a shell command and gives a :class:`Result`; each turns its own failures
into two exception types only: :class:`GuestCommandTimeout` (the command did not finish in
time) and :class:`ChannelLost` (the channel went away: QEMU, the host or the connection). What
those mean for the guest (dead, or its host gone) is decided in one place, ``Guest.run``.
Errors about the command's output itself (OutputTooLong; ConsoleGarbled: a console's output
that never came back whole) are not about the guest, and pass through as they are.

- ``agent``: qemu-guest-agent's guest-exec (exit code, stdout then stderr, no console noise);
- ``ssh``: the guest's own sshd, forwarded on its host's loopback, host key pinned;
- ``shell``: the micro guest's shell on a virtio console of its own;
- ``console``: the serial console, the fallback (framed on a distro guest: see
  ``Console.run_framed``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pexpect

from ..errors import CommandTimeout, KvmError, TransportError
from .agent import Agent, AgentUnavailable
from .console import Console, ConsoleClosed, GuestCommandTimeout

log = logging.getLogger("pytest_kvm.guest")


class ChannelLost(KvmError):
    """The channel went away while a command ran; ``closed``: it can only mean QEMU ended
    (a console's socket closes with QEMU)."""

    def __init__(self, message: str, closed: bool = False):
        super().__init__(message)
        self.closed = closed


@dataclass(frozen=True)
class Result:
    status: int
    output: str


class Channel:
    """A way to run a command in the guest."""

    name = ""

    def __init__(self, where: str):
        self.where = where  # host/guest, for messages

    def run(self, command: str, timeout: float) -> Result:
        raise NotImplementedError

    def recover(self) -> bool:
        """After a timeout: ready for the next command? (False: the guest hangs.)"""
        return True

    def _timed_out(self, command: str, timeout: float) -> GuestCommandTimeout:
        return GuestCommandTimeout(f"{self.where}: `{command}` did not finish within "
                                   f"{timeout:g} s (killed)")


class AgentChannel(Channel):
    name = "agent"

    def __init__(self, where: str, agent: Callable[[], Agent]):
        super().__init__(where)
        self.agent = agent

    def run(self, command: str, timeout: float) -> Result:
        try:
            status, out, err = self.agent().run(command, timeout)
        except AgentUnavailable as exc:
            raise ChannelLost(f"{self.where}: the guest agent went away while running "
                              f"`{command}`: {exc}") from exc
        if status is None:
            raise self._timed_out(command, timeout)
        return Result(status, out + err)


class SshChannel(Channel):
    name = "ssh"

    def __init__(self, where: str, ssh: Callable[[], Any]):
        super().__init__(where)
        self.ssh = ssh

    def run(self, command: str, timeout: float) -> Result:
        try:
            r = self.ssh().run(command, timeout=timeout, check=False)
        except CommandTimeout as exc:
            raise self._timed_out(command, timeout) from exc
        except TransportError as exc:
            raise ChannelLost(f"{self.where}: SSH went away while running `{command}`: "
                              f"{exc}") from exc
        return Result(r.status, r.stdout + r.stderr)


class ConsoleChannel(Channel):
    """The serial console, or the micro guest's shell console (``name`` says which)."""

    def __init__(self, where: str, name: str, console: Callable[[], Console],
                 framed: bool = False):
        super().__init__(where)
        self.name, self.console = name, console
        self.framed = framed  # a console others write on too (a distro's): Console.run_framed

    def run(self, command: str, timeout: float) -> Result:
        try:
            if self.framed:
                return Result(*self.console().run_framed(command, timeout))
            return Result(*self.console().run(command, timeout))
        except ConsoleClosed as exc:
            raise ChannelLost(f"{self.where}: the {self.name} closed while running "
                              f"`{command}`", closed=True) from exc

    def recover(self) -> bool:
        try:
            console = self.console()
            console.sendline("")
            console.wait_prompt(10)
            return True
        except (pexpect.TIMEOUT, pexpect.EOF):
            return False
