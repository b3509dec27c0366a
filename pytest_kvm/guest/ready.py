"""A guest's readiness: when its commands can go through (the micro guest's shell, a distro
image's agent, sshd or console login), and which channel they take."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pexpect

from ..errors import TransportError
from ..waiting import WaitTimeout, first_within
from .agent import AgentUnavailable
from .cloudinit import console_login, quiet_console
from .image import READY_MARKER

if TYPE_CHECKING:
    from .qemu import Guest


def boot_timeout(accel: str) -> float:
    return 60.0 if accel == "kvm" else 180.0


def wait_ready(guest: Guest, timeout: float | None = None) -> float:
    """Wait until commands reach the guest; returns seconds waited. The micro guest: its boot
    marker and a shell prompt. A distro image: its agent (spec.agent), else its sshd
    (spec.ssh_key), else a login on the serial console."""
    marker = READY_MARKER
    ci = guest.spec.cloud_init
    timeout = timeout or guest.spec.boot_timeout or (
        ci.login_timeout if ci else boot_timeout(guest.accel))
    start = time.monotonic()
    console = guest.console  # connected before looking at the log: no line is missed
    try:
        if ci is not None:
            marker = "login: "
            deadline = start + timeout
            if (guest.spec.agent and _agent_answers(guest, deadline)) or (
                    guest.spec.ssh_key and _ssh_answers(guest, deadline)):
                # cloud-init done: its user, password and keys are in place
                left = max(30.0, timeout - (time.monotonic() - start))
                guest.run("cloud-init status --wait >/dev/null 2>&1; true", timeout=left)
                return time.monotonic() - start
            console_login(console, ci, timeout)
            quiet_console(console)
            return time.monotonic() - start
        seen = guest.host.run(["grep", "-qF", marker, f"{guest.rundir}/console.log"],
                              check=False, timeout=30).ok
        if not seen:
            console.expect_exact(marker, timeout=timeout)
        if guest.spec.virtio_shell:  # its shell started before the marker
            console = guest.shell
            guest.channel = "shell"
        console.sendline("")
        console.wait_prompt(max(10.0, timeout - (time.monotonic() - start)))
    except pexpect.EOF as exc:
        raise guest.describe_death("QEMU exited before the guest was ready "
                                   "(crash, triple fault or -no-reboot exit)") from exc
    except WaitTimeout as exc:  # logins kept failing
        raise guest.describe_death(str(exc)) from exc
    except pexpect.TIMEOUT as exc:
        if not guest.alive():
            raise guest.describe_death("QEMU exited before the guest was ready") from exc
        raise guest.describe_death(f"no {marker!r} on the console within {timeout:g} s "
                                   f"({guest.accel})") from exc
    return time.monotonic() - start


def _agent_answers(guest: Guest, deadline: float) -> bool:
    """Wait for the guest agent to answer; False (the console is used) when the guest got
    to a login prompt and the agent still did not answer 30 s later."""
    login_seen: list[float] = []

    def answered() -> str:
        if not guest.alive():
            raise pexpect.EOF("QEMU exited")
        try:
            if guest.agent.sync(timeout=3):
                return "agent"
        except AgentUnavailable:
            guest.forget_channel("agent")  # reconnect on the next try
        if not login_seen and guest.host.run(
                ["grep", "-qF", "login: ", f"{guest.rundir}/console.log"], check=False,
                timeout=30).ok:
            login_seen.append(time.monotonic())
        if login_seen and time.monotonic() - login_seen[0] > 30:
            return "console"
        return ""

    channel = first_within(answered, max(0.0, deadline - time.monotonic()),
                           f"{guest.where}: an answer from the guest "
                           "agent", step=0.5) or "console"
    if channel == "agent":
        guest.channel = "agent"
        guest.log.info("commands go through the guest agent")
        return True
    guest.log.info("no guest agent; commands go through the serial console")
    return False


def _ssh_answers(guest: Guest, deadline: float) -> bool:
    """Wait for the guest's sshd to let us in (key pinned); False when it never does."""
    def logged_in() -> bool:
        if not guest.alive():
            raise pexpect.EOF("QEMU exited")
        try:
            guest.ssh.run(["true"], timeout=15)
            return True
        except TransportError:
            guest.forget_channel("ssh")
            return False

    if not first_within(logged_in, max(0.0, deadline - time.monotonic()),
                        f"{guest.where}: a login by SSH with the "
                        "pinned key", step=2):
        return False
    guest.channel = "ssh"
    guest.log.info("commands go through SSH")
    return True
