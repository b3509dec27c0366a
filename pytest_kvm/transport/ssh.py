"""SSH transport on paramiko: one reused connection per host, TCP_NODELAY, strict host keys."""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Sequence

import paramiko

from ..errors import (
    AuthenticationFailed,
    CommandTimeout,
    HostKeyMismatch,
    HostUnreachable,
    OutputTooLong,
    TransportError,
    UnknownHostKey,
)
from ..inventory import Secret
from .base import KILL_GRACE, Become, Result, Stream, Transport, argv_of, display

KEEPALIVE = 15
# After a host could not be reached, every use fails at once for this long (then one new
# attempt): a host lost mid-run costs its remaining tests one connect timeout, not one each.
DOWN_RETRY = 30.0


class _OneLinePerFailure(logging.Filter):
    """paramiko logs a connection that failed (a guest's sshd not up yet: each try of a
    readiness probe) as "Exception (client): ..." and then its traceback, a record per line,
    at ERROR. The transport raises that failure itself, as one TransportError: keep paramiko's
    first line, at DEBUG, and drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if str(record.msg).startswith("Exception ("):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return True
        return False


logging.getLogger("paramiko.transport").addFilter(_OneLinePerFailure())


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """ssh's StrictHostKeyChecking=accept-new: record an unknown key, refuse a changed one."""

    def __init__(self, path: str):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class SSHTransport(Transport):
    def __init__(
        self,
        name: str,
        hostname: str,
        port: int = 22,
        user: str = "root",
        key_file: str | None = None,
        password: Secret | None = None,
        known_hosts: str | None = None,
        host_key_policy: str = "strict",
        connect_timeout: float = 10.0,
        proxy: Transport | None = None,
        workdir: str | None = None,
        become: Become | None = None,
    ):
        self.name = name
        self.hostname, self.port, self.user = hostname, port, user
        self.key_file = os.path.expanduser(key_file) if key_file else None
        self._password = password
        self.known_hosts = os.path.expanduser(known_hosts or "~/.ssh/known_hosts")
        self.host_key_policy = host_key_policy
        self.connect_timeout = connect_timeout
        self.max_output: int | None = None  # bytes a command may print (a guest's: bounded)
        self.proxy = proxy
        if workdir:
            self.workdir = workdir
        self.is_root = user == "root"
        self.become = become or Become()
        self.sees_controller_root = False
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()
        self._down: tuple[float, str] | None = None

    def __repr__(self) -> str:  # never shows the password
        return f"SSHTransport({self.name!r}, {self.user}@{self.hostname}:{self.port})"

    # -- connection -------------------------------------------------------------------------
    def _where(self) -> str:
        return f"{self.hostname}:{self.port}"

    def _socket(self):
        if self.proxy is not None:
            try:
                return self.proxy.open_tcp(self.hostname, self.port, self.connect_timeout)
            except TransportError:
                raise
            except Exception as exc:
                raise HostUnreachable(f"{self.name}: cannot reach {self._where()} through "
                                      f"{self.proxy.name}: {exc}") from None  # see connect
        try:
            sock = socket.create_connection((self.hostname, self.port), self.connect_timeout)
        except socket.gaierror as exc:
            raise HostUnreachable(f"{self.name}: cannot resolve {self.hostname!r} "
                                  f"({exc.strerror}); check ansible_host") from exc
        except TimeoutError as exc:
            raise HostUnreachable(f"{self.name}: no answer from {self._where()} within "
                                  f"{self.connect_timeout:g} s") from exc
        except OSError as exc:
            raise HostUnreachable(f"{self.name}: cannot connect to {self._where()} "
                                  f"({exc.strerror or exc})") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if os.path.exists(self.known_hosts):
            client.load_host_keys(self.known_hosts)
        if self.host_key_policy == "accept-new":
            client.set_missing_host_key_policy(_AcceptNew(self.known_hosts))
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = self._socket()
        try:
            client.connect(
                self.hostname,
                self.port,
                username=self.user,
                key_filename=self.key_file,
                password=self._password.reveal() if self._password is not None else None,
                sock=sock,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                allow_agent=self.key_file is None and self._password is None,
                look_for_keys=self.key_file is None and self._password is None,
            )
        # No chained cause here: paramiko's frames under connect() hold the password in
        # their locals, which a traceback with locals (pytest -l) would print.
        except paramiko.BadHostKeyException:
            sock.close()
            key_name = self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"
            raise HostKeyMismatch(
                f"{self.name}: the host key of {self._where()} does not match {self.known_hosts}"
                f" (possible man-in-the-middle); if the host was reinstalled, run "
                f"ssh-keygen -f {self.known_hosts} -R '{key_name}'") from None
        except paramiko.AuthenticationException:
            sock.close()
            raise AuthenticationFailed(f"{self.name}: authentication as {self.user!r} at "
                                       f"{self._where()} failed; check ansible_user and "
                                       "ansible_ssh_private_key_file") from None
        except paramiko.SSHException as exc:
            sock.close()
            if "not found in known_hosts" in str(exc):
                raise UnknownHostKey(
                    f"{self.name}: the host key of {self._where()} is not in {self.known_hosts};"
                    f" add it (ssh-keyscan -p {self.port} {self.hostname} >> {self.known_hosts})"
                    " or set kvm_host_key=accept-new") from None
            raise HostUnreachable(f"{self.name}: SSH to {self._where()} failed: {exc}") from None
        except (OSError, EOFError) as exc:
            sock.close()
            raise HostUnreachable(f"{self.name}: SSH to {self._where()} failed: {exc}") from None
        client.get_transport().set_keepalive(KEEPALIVE)
        return client

    @property
    def down(self) -> str | None:
        if self._down and time.monotonic() - self._down[0] < DOWN_RETRY:
            return self._down[1]
        return None

    def _mark_down(self, exc: HostUnreachable) -> HostUnreachable:
        self._down = (time.monotonic(), str(exc))
        return exc

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            if self._client is None or not self._client.get_transport().is_active():
                self._drop()
                if self.down:
                    raise HostUnreachable(f"{self.down} (not retried for {DOWN_RETRY:g} s)")
                try:
                    self._client = self.connect()
                except HostUnreachable as exc:
                    raise self._mark_down(exc) from None  # (its own cause: see connect)
                self._down = None
            return self._client.get_transport()

    def _drop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
        self._client, self._sftp = None, None

    def _channel(self, kind: str = "session", **kw) -> paramiko.Channel:
        """Open a channel; when the connection died, reconnect once."""
        for attempt in (0, 1):
            t = self._transport()
            try:
                if kind == "session":
                    return t.open_session(timeout=self.connect_timeout)
                return t.open_channel(kind, timeout=self.connect_timeout, **kw)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if kind != "session" and "Connect failed" in str(exc):
                    raise HostUnreachable(f"{self.name}: {kind} {kw}: {exc}") from exc
                if attempt:
                    raise self._mark_down(HostUnreachable(
                        f"{self.name}: lost the SSH connection to {self._where()}: "
                        f"{exc or type(exc).__name__}")) from exc
                with self._lock:
                    self._drop()
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- commands ---------------------------------------------------------------------------
    def _exec(self, argv: list[str], timeout: float, input: bytes | None, shown: str) -> Result:
        # sshd starts every session in a new session (setsid), so the shell's $$ is the
        # command's process group: it is printed first, and on timeout the controller kills
        # that whole group (a `timeout` wrapper would cost an exec per command).
        command = "echo $$; exec " + display(argv)
        start = time.monotonic()
        chan = self._channel()
        try:
            chan.exec_command(command)
            if input:
                chan.sendall(input)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = start + timeout
            while True:
                if self.max_output and len(out) + len(err) > self.max_output:
                    pgid = bytes(out).partition(b"\n")[0]
                    if pgid.isdigit():
                        self._kill_group(int(pgid))
                    raise OutputTooLong(f"{self.name}: `{shown}` printed more than "
                                        f"{self.max_output} bytes (the limit); killed")
                if chan.recv_ready():
                    out += chan.recv(1 << 16)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                elif chan.eof_received or chan.closed:
                    break
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        pgid, _, rest = bytes(out).partition(b"\n")
                        if pgid.isdigit():
                            self._kill_group(int(pgid))
                        raise CommandTimeout(self.name, shown, timeout, Result(
                            -1, rest.decode(errors="replace"), err.decode(errors="replace"),
                            shown, time.monotonic() - start))
                    select.select([chan], [], [], min(left, 1.0))
            status = chan.recv_exit_status() if chan.status_event.wait(KILL_GRACE) else -1
        finally:
            chan.close()
        elapsed = time.monotonic() - start
        _, _, out = bytes(out).partition(b"\n")  # the PID line
        return Result(status, out.decode(errors="replace"), err.decode(errors="replace"), shown,
                      elapsed)

    def _kill_group(self, pgid: int) -> None:
        try:
            chan = self._channel()
            chan.exec_command(f"kill -KILL -- -{pgid}")
            chan.status_event.wait(KILL_GRACE)
            chan.close()
        except Exception:  # best effort: the host may be gone, which is the error we report
            pass

    # -- files ------------------------------------------------------------------------------
    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None or self._sftp.sock.closed:
            self._transport()
            self._sftp = self._client.open_sftp()
        return self._sftp

    def put(self, local: str, remote: str, mode: int | None = None) -> None:
        sftp = self._sftp_client()
        sftp.put(local, remote)
        if mode is not None:
            sftp.chmod(remote, mode)

    def get(self, remote: str, local: str) -> None:
        self._sftp_client().get(remote, local)

    def put_cached(self, local: str) -> str:
        # A nested host whose root is the controller's own (read-only over 9p) already has
        # every controller file at the same path.
        # Only where the host really shows it (its /tmp, /run and /var/tmp are its own).
        if self.sees_controller_root and os.path.isfile(local):
            path = os.path.abspath(local)
            seen = self.run(["stat", "-L", "-c", "%s", path], check=False, timeout=30)
            if seen.ok and seen.stdout.strip() == str(os.path.getsize(path)):
                return path
        return super().put_cached(local)

    # -- streams ----------------------------------------------------------------------------
    def open_stream(self, argv: Sequence[str]) -> Stream:
        prefix, secret = self.sudo()
        chan = self._channel()
        chan.exec_command(display(argv_of(list(argv), sudo=prefix)))
        if secret:
            chan.sendall(secret)
        return _ChannelStream(chan)

    def open_tcp(self, host: str, port: int, timeout: float = 10.0):
        return self._channel("direct-tcpip", dest_addr=(host, port), src_addr=("127.0.0.1", 0))


class _ChannelStream(Stream):
    def __init__(self, chan: paramiko.Channel):
        self.chan = chan

    def send(self, data: bytes) -> None:
        if self.chan.closed:
            raise OSError("stream closed")
        self.chan.sendall(data)

    def recv(self, size: int, timeout: float | None = None) -> bytes:
        self.chan.settimeout(timeout)
        try:
            return self.chan.recv(size)
        except TimeoutError as exc:
            raise TimeoutError("no data") from exc

    def close(self) -> None:
        self.chan.close()
