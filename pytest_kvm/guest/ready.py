"""A guest's readiness: when its commands can go through (the micro guest's shell, a distro
image's agent, sshd or console login), and which channel they take."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import pexpect

from ..errors import TransportError
from ..waiting import WaitTimeout, first_within
from .agent import AgentUnavailable
from .cloudinit import console_login, quiet_console
from .image import READY_MARKER
from .state import GuestError

if TYPE_CHECKING:
    from .qemu import Guest


def boot_timeout(accel: str) -> float:
    return 60.0 if accel == "kvm" else 180.0


# After the console shows a login prompt, how long the guest agent or sshd may still take to
# answer before the console is taken (an image without them): they start with the getty.
GRACE = 30.0


class NoChannel(Exception):
    """No channel answered before the deadline (what each said is in the message)."""


def wait_ready(guest: Guest, timeout: float | None = None) -> float:
    """Wait until commands reach the guest; returns seconds waited. The micro guest: its boot
    marker and a shell prompt. A distro image: the first of its channels that answers (the
    guest agent, its sshd, a login on the serial console; see ``first_channel``)."""
    marker = READY_MARKER
    ci = guest.spec.cloud_init
    timeout = timeout or guest.spec.boot_timeout or (
        ci.login_timeout if ci else boot_timeout(guest.accel))
    start = time.monotonic()
    console = guest.console  # connected before looking at the log: no line is missed
    try:
        if ci is not None:
            marker = "login: "
            guest.channel = first_channel(guest, start + timeout)
            left = max(30.0, timeout - (time.monotonic() - start))
            if guest.channel == "console":
                console_login(console, ci, left)
                quiet_console(console)
            else:  # cloud-init done: its user, password and keys are in place
                guest.forget_channel("console")  # unread from now on (console.log has it)
                guest.run("cloud-init status --wait >/dev/null 2>&1; true", timeout=left)
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
    except (WaitTimeout, NoChannel) as exc:  # logins kept failing; nothing answered
        raise guest.describe_death(str(exc)) from exc
    except pexpect.TIMEOUT as exc:
        if not guest.alive():
            raise guest.describe_death("QEMU exited before the guest was ready") from exc
        raise guest.describe_death(f"no {marker!r} on the console within {timeout:g} s "
                                   f"({guest.accel})") from exc
    return time.monotonic() - start


def first_channel(guest: Guest, deadline: float) -> str:
    """Watch a distro guest's channels at once and take the first that answers: the guest
    agent (spec.agent) or its sshd (spec.ssh_key, probed in a thread of its own: a login
    can take seconds) as soon as one does, the agent first when both do; the serial console
    once its login prompt has been up for GRACE s with neither (unless the spec names its
    one channel). NoChannel at the deadline, naming what each said."""
    forced = guest.spec.channel
    agent = guest.spec.agent and forced in ("auto", "agent")
    ssh = bool(guest.spec.ssh_key) and forced in ("auto", "ssh")
    if forced == "console" or not (agent or ssh):
        return _took(guest, "console", time.monotonic())  # (its login waits for the prompt)
    said = {"agent": "no answer" if agent else "not asked for",
            "ssh": "no answer" if ssh else "not asked for (no key)",
            "console": "no 'login: ' prompt" if forced == "auto" else f"not asked for "
                       f"(channel {forced})"}
    login_seen: list[float] = []
    probe: list[Future] = []
    pool = ThreadPoolExecutor(1, thread_name_prefix=f"ssh-probe-{guest.spec.name}")
    start = time.monotonic()

    def answered() -> str:
        if not guest.alive():
            raise pexpect.EOF("QEMU exited")
        guest.console.drain()  # (else a verbose boot fills the socket and stalls)
        if agent:
            said["agent"] = _agent_answers(guest) or ""
            if not said["agent"]:
                return "agent"
        if ssh:
            if not probe:
                probe.append(pool.submit(_ssh_answers, guest))
            elif probe[0].done():
                said["ssh"] = probe.pop().result() or ""
                if not said["ssh"]:
                    return "ssh"
        if forced != "auto":
            return ""
        if not login_seen and guest.host.run(
                ["grep", "-qF", "login: ", f"{guest.rundir}/console.log"], check=False,
                timeout=30).ok:
            login_seen.append(time.monotonic())
            said["console"] = "a login prompt"
            guest.log.info("a login prompt on the console; the agent or SSH has %g s more to "
                           "answer", GRACE)
        if login_seen and time.monotonic() - login_seen[0] >= GRACE:
            return "console"
        return ""

    try:
        channel = first_within(answered, max(0.0, deadline - start),
                               f"{guest.where}: a channel that answers", step=0.5)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # (a probe in flight ends on its own)
    if channel:
        return _took(guest, channel, start)
    raise NoChannel(f"no channel answered within {deadline - start:.0f} s: "
                    + "; ".join(f"{name}: {why}" for name, why in said.items()))


def _took(guest: Guest, channel: str, start: float) -> str:
    guest.log.info("commands go through %s (it answered first, after %.1f s)",
                   {"agent": "the guest agent", "ssh": "SSH",
                    "console": "the serial console"}[channel], time.monotonic() - start)
    return channel


def _agent_answers(guest: Guest) -> str | None:
    """None when the guest agent answers now; else why not."""
    try:
        if guest.agent.sync(timeout=3):
            return None
        return "no answer to guest-sync"
    except AgentUnavailable as exc:
        guest.forget_channel("agent")  # reconnect on the next try
        return str(exc).splitlines()[0] if str(exc) else "unavailable"


def _ssh_answers(guest: Guest) -> str | None:
    """None when a login to the guest's sshd (key pinned) runs a command now; else why not
    (one line, logged once per try)."""
    try:
        guest.ssh.run(["true"], timeout=15)
        return None
    except (TransportError, GuestError) as exc:
        guest.forget_channel("ssh")
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        guest.log.debug("SSH not yet: %s", why)
        return why
