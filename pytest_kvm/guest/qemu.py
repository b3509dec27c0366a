"""A QEMU guest on a host: launch, readiness, console, QMP, stop with escalation."""

from __future__ import annotations

import logging
import shlex
import time

from .. import remote
from ..errors import HostUnreachable, KvmError
from ..host import Host, Owner, controller_id, process_start  # noqa: F401
from ..waiting import first_within
from . import ready
from .agent import Agent
from .channels import AgentChannel, Channel, ChannelLost, ConsoleChannel, SshChannel
from .console import Console, GuestCommandTimeout
from .image import PROMPT
from .qmp import Qmp
from .spec import SHELL_SOCKET, GuestSpec, disk_file
from .state import GuestDied, GuestError, GuestState, Named

log = logging.getLogger("pytest_kvm.guest")


class Guest:
    """A QEMU guest on a host; ``with start_guest(...) as guest:`` stops it at the end."""

    def __init__(self, host: Host, spec: GuestSpec, rundir: str, proc_name: str,
                 argv: list[str], accel: str):
        self.host, self.spec, self.rundir = host, spec, rundir
        self.name = proc_name
        self.argv = argv
        self.accel = accel
        self.pid: int | None = None
        self._console: Console | None = None
        self._qmp: Qmp | None = None
        self.state = GuestState.STARTING
        self.death: str | None = None  # why it died (kept once it is stopped)
        # how commands reach the guest: "agent" (qemu-guest-agent: exit code, stdout and
        # stderr apart, no console noise), "ssh", "shell" (the micro guest's shell on a virtio
        # console of its own: spec.shell) or "console" (the serial console, the fallback)
        self.channel = "console"
        self._shell: Console | None = None
        self._agent: Agent | None = None
        self.ssh_port: int | None = None  # the guest's sshd, forwarded on the host's loopback
        self.ssh_host_key: str | None = None  # its public host key (pinned)
        self._ssh = None
        self._channels: dict[str, Channel] = {}
        self.where = f"{host.name}/{spec.name}"  # how messages and log lines name it
        self.log = Named(log, self.where)

    def __repr__(self) -> str:  # stable across runs (no run id, no pid)
        return f"Guest({self.spec.name!r} on {self.host.name!r})"

    def take_over(self, fresh: Guest) -> None:
        """From now on this object is ``fresh`` (its QEMU, run dir, channels, state: one
        state shared by both): whoever holds this guest (a test, a fixture's value) meets the
        fresh one. For a dead guest replaced by a rerun (kvm_reruns)."""
        self.__dict__ = fresh.__dict__

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def stopped(self) -> bool:
        return self.state is GuestState.STOPPED

    @property
    def dead(self) -> bool:
        """It died (QEMU ended on its own, or it stopped answering), stopped since or not."""
        return self.death is not None

    def _died(self, why: str) -> None:
        if self.state is not GuestState.STOPPED:
            self.state = GuestState.DEAD
        self.death = why
        self.log.warning("dead: %s", why)

    @property
    def os_family(self) -> str:
        """micro (pytest-kvm's busybox guest) or linux (a distro image's userspace)."""
        return "linux" if self.spec.cloud_init is not None else "micro"

    @property
    def cmdline(self) -> str:
        return shlex.join(self.argv)

    # -- console ----------------------------------------------------------------------------
    @property
    def console(self) -> Console:
        self._console = self._connected(self._console, "c.sock", "")
        return self._console

    @property
    def shell(self) -> Console:
        """The shell on the spec's virtio console (SHELL_PORT)."""
        self._shell = self._connected(self._shell, SHELL_SOCKET, " (shell)")
        return self._shell

    def _connected(self, current: Console | None, socket: str, label: str) -> Console:
        """``current``, or a new connection to the run dir's ``socket`` if it has closed."""
        if current is None or current.flag_eof:
            stream = self.host.connect_unix(f"{self.rundir}/{socket}")
            current = Console(stream, f"{self.where}{label}", PROMPT)
        return current

    def expect(self, pattern, timeout: float = 30):
        return self.console.expect(pattern, timeout=timeout)

    @property
    def agent(self) -> Agent:
        if self._agent is None:
            stream = self.host.connect_unix(f"{self.rundir}/ga.sock")
            self._agent = Agent(stream, self.where)
        return self._agent

    def run(self, command: str, timeout: float = 60, check: bool = True) -> tuple[int, str]:
        """Run a shell command in the guest; (status, output). ``check``: non-zero raises.

        Through the guest's channel (``self.channel``: agent, ssh, shell or console); what a
        channel's failure means for the guest is decided here, for every channel alike: a
        timeout or a lost channel whose host is gone says so; a lost channel whose QEMU
        ended is the guest's death, with its last console lines."""
        start = time.monotonic()
        channel = self._channel()
        try:
            result = channel.run(command, timeout)
        except GuestCommandTimeout:
            self._raise_if_host_lost(command)
            if not channel.recover():
                self._died("no prompt after an interrupt: the guest hangs")
            raise
        except ChannelLost as exc:
            self._raise_if_host_lost(command)
            if exc.closed or not self.alive():
                raise self.describe_death(f"QEMU went away while running `{command}`") from exc
            raise
        shown = command if len(command) <= 160 else command[:157] + "..."
        self.log.info("`%s` -> %d (%.2f s, %s)", shown, result.status,
                      time.monotonic() - start, channel.name)
        if check and result.status != 0:
            raise GuestError(f"{self.where}: `{command}` exited {result.status}"
                             f"\n{result.output.strip()[-2000:]}")
        return result.status, result.output

    def _channel(self) -> Channel:
        """The channel ``self.channel`` names (made once per name; each reconnects through
        the properties below when its connection closed)."""
        name = self.channel
        if name not in self._channels:
            self._channels[name] = {
                "agent": lambda: AgentChannel(self.where, lambda: self.agent),
                "ssh": lambda: SshChannel(self.where, lambda: self.ssh),
                "shell": lambda: ConsoleChannel(self.where, "shell", lambda: self.shell),
                "console": lambda: ConsoleChannel(self.where, "console", lambda: self.console,
                                                  framed=self.os_family == "linux"),
            }[name]()
        return self._channels[name]

    @property
    def ssh(self):
        """SSH to the guest's own sshd, through its host, pinned to the host key its
        cloud-init seed gave it."""
        if self._ssh is None:
            ci = self.spec.cloud_init
            key = self.ssh_host_key or (ci.host_key[1] if ci and ci.host_key else None)
            if self.ssh_port is None or ci is None or key is None:
                raise GuestError(f"{self.where}: no SSH channel")
            known = f"{self.spec.ssh_key}.known_hosts-{self.ssh_port}"
            with open(known, "w") as f:
                f.write(f"[127.0.0.1]:{self.ssh_port} {key}\n")
            self._ssh = self.host.forwarded_ssh(self.where,
                                                self.ssh_port, self.spec.ssh_key, known, ci.user)
        return self._ssh

    def follow(self, source: Guest) -> None:
        """This guest is the source's continuation after a migration: its commands go the
        same way, and its SSH host key is the source's (the guest's own, which moved)."""
        self.state = GuestState.RUNNING
        self.channel = source.channel
        if source.spec.cloud_init and source.spec.cloud_init.host_key:
            self.ssh_host_key = source.ssh_host_key or source.spec.cloud_init.host_key[1]

    def _raise_if_host_lost(self, command: str) -> None:
        """A console that went silent or closed because the host itself is gone says so."""
        why = self.host.down or self.host.unreachable()
        if why:
            raise HostUnreachable(f"{self.host.name} became unreachable while "
                                  f"{self.spec.name} ran `{command}`: {why}")

    def sh(self, command: str, timeout: float = 60) -> str:
        return self.run(command, timeout)[1]

    # -- QMP --------------------------------------------------------------------------------
    @property
    def qmp_exchange(self) -> list[str]:
        """What went over QMP so far (empty when nothing used it)."""
        return self._qmp.log if self._qmp is not None else []

    @property
    def qmp(self) -> Qmp:
        return self._connect_qmp()

    def _connect_qmp(self, timeout: float = 30) -> Qmp:
        if self._qmp is None:
            self._qmp = Qmp(self.host.connect_unix(f"{self.rundir}/q.sock"),
                            self.where, connect_timeout=timeout)
        return self._qmp

    # -- host-side ends of the guest's devices ----------------------------------------------
    def forward(self, netdev: str, guest_addr: str, guest_port: int) -> int:
        """Forward a free port on the host's loopback to ``guest_addr:guest_port`` through the
        user-networking ``netdev``; the host port (the kernel picks it: no clash)."""
        rule = f"tcp:127.0.0.1:0-{guest_addr}:{guest_port}"
        out = self._hmp(f"hostfwd_add {netdev} {rule}")
        if out.strip():  # HMP says nothing when it worked
            raise GuestError(f"{self.where}: hostfwd_add {netdev} {rule}: "
                             f"{out.strip()}")
        table = self._hmp("info usernet")
        for line in table.splitlines():
            f = line.split()
            if (len(f) >= 6 and f[0] == "TCP[HOST_FORWARD]" and f[4] == guest_addr
                    and f[5] == str(guest_port)):
                self.log.info("host port %s -> %s:%d (%s)", f[3], guest_addr, guest_port, netdev)
                return int(f[3])
        raise GuestError(f"{self.where}: no forward to {guest_addr}:"
                         f"{guest_port} in QEMU's `info usernet`:\n{table}")

    def unforward(self, netdev: str, host_port: int) -> None:
        out = self._hmp(f"hostfwd_remove {netdev} tcp:127.0.0.1:{host_port}")
        if "removed" not in out:
            self.log.warning("hostfwd_remove %s %d: %s", netdev, host_port, out.strip())

    def _hmp(self, command: str) -> str:
        """An HMP command (the user-networking forwards have no QMP command); its text."""
        return self.qmp.execute("human-monitor-command", command_line=command)

    def open_port(self, socket_name: str):
        """A stream to the host side of one of the guest's character devices (a socket in
        its run dir, e.g. a virtio-serial port's)."""
        return self.host.connect_unix(f"{self.rundir}/{socket_name}")

    def disk_file(self, index: int) -> str:
        """The file on the host behind the spec's disk ``index`` (its overlay)."""
        return disk_file(self.spec.disks[index], self.rundir, index)

    # -- state ------------------------------------------------------------------------------
    def alive(self) -> bool:
        """Is this guest's QEMU running (a process whose command line names its run dir)?"""
        if self.pid is None:
            return False
        return self.host.run(remote.argv("qemu-alive", str(self.pid), self.rundir),
                             check=False, timeout=30).ok

    def read_log(self, which: str = "console.log", lines: int = 40) -> str:
        r = self.host.run(["tail", "-n", str(lines), f"{self.rundir}/{which}"], check=False,
                          timeout=30)
        return r.stdout if r.ok else ""

    def exit_status(self) -> str:
        """How QEMU ended, from its exit status (empty while it runs or when unknown)."""
        def written() -> str:  # by QEMU's parent shell just after QEMU ends
            raw = self.read_log("exit-status", 1).strip()
            return raw if raw.isdigit() else "running" if self.alive() else ""

        raw = first_within(written, 2, f"{self.where}: QEMU's exit status",
                           step=0.2) or ""
        if not raw.isdigit():
            return ""
        code = int(raw)
        if code == 0:
            return ("QEMU exited with status 0: the guest powered off, or reset or "
                    "triple-faulted (-no-reboot turns a reset into an exit)")
        if code > 128:
            sig = code - 128
            name = {9: "SIGKILL (the OOM killer, or kill -9)", 11: "SIGSEGV (QEMU crashed)",
                    6: "SIGABRT (QEMU aborted)", 15: "SIGTERM"}.get(sig, f"signal {sig}")
            return f"QEMU was killed by {name}"
        return f"QEMU exited with status {code}"

    def describe_death(self, what: str) -> GuestDied:
        self._died(what)
        console = self.read_log("console.log").strip() or "(nothing)"
        stderr = self.read_log("qemu.log").strip() or "(nothing)"
        how = self.exit_status()
        what = f"{what}; {how}" if how else what
        return GuestDied(f"{self.where}: {what}\n"
                         f"--- last console lines ---\n{console}\n"
                         f"--- QEMU stderr ---\n{stderr}")

    def wait_ready(self, timeout: float | None = None) -> float:
        """Wait until commands reach the guest (see guest.ready); returns seconds waited."""
        return ready.wait_ready(self, timeout)

    def forget_channel(self, name: str) -> None:
        """Drop the connection of a channel (agent or ssh: one that did not answer; console:
        one nobody reads, whose unread output would stall the guest's serial port, while with
        no connection QEMU writes console.log only): the next use connects afresh."""
        if name == "ssh" and self._ssh is not None:
            self._ssh.close()
        if name == "console" and self._console is not None:
            self._console.close()
            self._console = None
        self._ssh = None if name == "ssh" else self._ssh
        self._agent = None if name == "agent" else self._agent

    def stop(self, keep_dir: bool = False) -> None:
        """QMP quit, then SIGTERM, then SIGKILL, each with a timeout; confirms it is gone."""
        if self.stopped:
            return
        first = 0
        if self._qmp is not None or self.alive():
            try:
                self._connect_qmp(timeout=5).execute("quit", timeout=5)
                first = 100  # QEMU exits by itself on quit; give it 10 s
            except KvmError:
                first = 0
        for closable in (self._console, self._shell, self._qmp, self._agent, self._ssh):
            if closable is not None:
                try:
                    closable.close()
                except Exception:
                    pass
        self._console = self._shell = self._qmp = self._agent = self._ssh = None
        self.log.info("stopping QEMU (pid %s)", self.pid)
        r = self.host.run(remote.argv("qemu-stop", self.rundir, str(first),
                           "keep-dir" if keep_dir else ""), check=False, timeout=120)
        self.state = GuestState.STOPPED
        if not r.ok:
            raise GuestError(f"{self.where}: could not stop QEMU: "
                             f"{r.stdout.strip()} {r.stderr.strip()}")
