"""The transport interface: run commands on a host, move files, open long-lived streams."""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import CommandFailed

log = logging.getLogger("pytest_kvm.transport")

Command = Sequence[str] | str

# Grace on top of a command's own timeout before the controller gives up on the channel.
KILL_GRACE = 5.0


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str
    command: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.status == 0

    def __str__(self) -> str:
        return self.stdout


def display(cmd: Command) -> str:
    """The command as a shell line (what is sent to run it)."""
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


def shown(cmd: Command) -> str:
    """The command for messages and logs: a multi-line script run as ``sh -c SCRIPT NAME
    ARGS`` (pytest_kvm/remote) shows as ``NAME.sh ARGS``."""
    if not isinstance(cmd, str):
        argv = [str(a) for a in cmd]
        if len(argv) >= 4 and argv[:2] == ["sh", "-c"] and "\n" in argv[2].strip():
            return shlex.join([f"{argv[3]}.sh", *argv[4:]])
    return display(cmd)


@dataclass(frozen=True)
class Become:
    """How privileged commands run: Ansible's become (sudo is the one method supported).

    ``enabled`` None (the inventory does not say): through sudo when the user is not root.
    False: never (privileged commands run as the user). True: always, as ``user``.
    """

    enabled: bool | None = None
    user: str = "root"
    password: Any = None  # an inventory Secret

    @classmethod
    def of(cls, config: Any) -> Become:
        return cls(config.become, config.become_user, config.become_password)

    def needed(self, is_root: bool) -> bool:
        if self.enabled is False or (is_root and self.user == "root"):
            return False
        return bool(self.enabled) or not is_root


# sudo with a password: "$@" is sudo's options (-u USER), then -- and the command. The password
# is the first line of stdin; PKVM_SUDO_PW is also the prompt, which sudo passes to its askpass
# program as the argument: `printenv PKVM_SUDO_PW`.
SUDO_ASKPASS = ('IFS= read -r PKVM_SUDO_PW || exit 1; export PKVM_SUDO_PW; '
                'SUDO_ASKPASS=$(command -v printenv) || exit 1; export SUDO_ASKPASS; '
                'exec sudo -k -A -p PKVM_SUDO_PW "$@"')


def argv_of(cmd: Command, env: Mapping[str, str] | None = None,
            sudo: Sequence[str] = ()) -> list[str]:
    """A command (argv list, or a shell script string) as one argv list; ``sudo`` is the
    privilege prefix (empty: none)."""
    if isinstance(cmd, str):
        argv = ["sh", "-c", cmd]
    else:
        argv = [str(a) for a in cmd]
        if not argv:
            raise ValueError("empty command")
    if env:
        argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
    return [*sudo, *argv]


def _short(text: str, limit: int = 300) -> str:
    """A command for the log: one line, cut (scripts are long; the name says which)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Stream(ABC):
    """A bidirectional byte stream to something on a host (a console or QMP socket)."""

    @abstractmethod
    def send(self, data: bytes) -> None: ...

    @abstractmethod
    def recv(self, size: int, timeout: float | None = None) -> bytes:
        """Up to ``size`` bytes; b"" at end of stream; TimeoutError when nothing came in time."""

    @abstractmethod
    def close(self) -> None: ...

    def as_socket(self) -> socket.socket:
        """A local socket whose peer is pumped to and from this stream (for asyncio libraries)."""
        ours, theirs = socket.socketpair()

        def down() -> None:
            try:
                while True:
                    data = self.recv(65536)
                    if not data:
                        break
                    ours.sendall(data)
            except OSError:
                pass
            finally:
                _shutdown(ours)

        def up() -> None:
            try:
                while True:
                    data = ours.recv(65536)
                    if not data:
                        break
                    self.send(data)
            except OSError:
                pass
            finally:
                self.close()

        for fn in (down, up):
            threading.Thread(target=fn, daemon=True, name=f"stream-pump-{fn.__name__}").start()
        return theirs


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class Transport(ABC):
    """Runs commands on one host. Implementations: LocalTransport, SSHTransport."""

    name: str
    workdir: str = "/var/tmp/pytest-kvm"
    is_root: bool = True
    become: Become = Become()
    # Why the host is unreachable, while the transport fails fast (None: not known down).
    down: str | None = None

    @abstractmethod
    def _exec(self, argv: list[str], timeout: float, input: bytes | None, shown: str) -> Result:
        """Run argv; ``shown`` is the command as the user wrote it (for messages)."""

    def run(
        self,
        cmd: Command,
        *,
        timeout: float = 60.0,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        input: bytes | str | None = None,
        become: bool = False,
    ) -> Result:
        """Run a command (argv list, quoted for you; or a shell script string).

        Both output streams are drained together. On timeout the remote process group is
        killed and CommandTimeout names host, command and timeout. With ``check`` a non-zero
        exit raises CommandFailed.
        """
        data = input.encode() if isinstance(input, str) else input
        prefix, secret = self.sudo() if become else ((), b"")
        argv = argv_of(cmd, env, prefix)
        if secret:
            data = secret + (data or b"")
        try:
            result = self._exec(argv, timeout, data, shown(cmd))
        except Exception as exc:
            log.debug("%s: %s -> %s", self.name, _short(shown(cmd)), type(exc).__name__)
            raise
        log.debug("%s: %s -> exit %d in %.3f s%s", self.name, _short(shown(cmd)),
                  result.status, result.duration, " (sudo)" if prefix else "")
        if check and result.status != 0:
            raise CommandFailed(self.name, result.command, result)
        return result

    def sudo(self) -> tuple[list[str], bytes]:
        """The prefix for a privileged command and what its stdin must start with.

        With a become password, the first line of stdin is the password, read by a wrapper
        shell (``read``: exactly that line, whatever sudo does) and handed to sudo only when
        sudo asks for it, through its askpass hook (``printenv`` prints it from the wrapper's
        environment, which sudo's env_reset keeps from the command). The command's stdin is
        its own either way: a command sudo lets run without a password (NOPASSWD, a policy
        that differs from another command's) never reads the password."""
        b = self.become
        if not b.needed(self.is_root):
            return [], b""
        as_user = [] if b.user == "root" else ["-u", b.user]
        if b.password is not None:
            return (["sh", "-c", SUDO_ASKPASS, "sudo", *as_user, "--"],
                    (b.password.reveal() + "\n").encode())
        return ["sudo", "-n", *as_user, "--"], b""

    def sh(self, script: str, **kw) -> str:
        """Run a shell script and return its stdout (raises on failure)."""
        return self.run(script, **kw).stdout

    @abstractmethod
    def put(self, local: str, remote: str, mode: int | None = None) -> None: ...

    @abstractmethod
    def get(self, remote: str, local: str) -> None: ...

    def put_cached(self, local: str) -> str:
        """Upload a file once per content; returns its path on the host. A cached copy is
        used only when its content hash, computed on the host, is the file's."""
        digest = file_digest(local)
        remote_dir = f"{self.workdir}/cache/{digest[:32]}"
        remote = f"{remote_dir}/{os.path.basename(local)}"
        probe = self.run(["sha256sum", "--", remote], check=False, timeout=120)
        if probe.ok and probe.stdout.split(" ", 1)[0] == digest:
            return remote
        self.run(["mkdir", "-p", remote_dir], timeout=30)
        tmp = f"{remote}.part-{os.getpid()}"
        self.put(local, tmp)
        self.run(["mv", "-f", tmp, remote], timeout=30)
        return remote

    @abstractmethod
    def open_stream(self, argv: Sequence[str]) -> Stream:
        """Start a command and return a stream to its stdin/stdout."""

    @abstractmethod
    def open_tcp(self, host: str, port: int, timeout: float = 10.0):
        """A socket-like object connected to host:port as seen from this host."""

    def close(self) -> None:  # noqa: B027 - optional for implementations
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
