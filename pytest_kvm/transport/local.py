"""The local machine as a host (``ansible_connection=local``)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

from ..errors import CommandTimeout
from .base import KILL_GRACE, Become, Result, Stream, Transport


def _killpg(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(KILL_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue


class LocalTransport(Transport):
    def __init__(self, name: str = "localhost", workdir: str | None = None,
                 become: Become | None = None):
        self.name = name
        if workdir:
            self.workdir = workdir
        self.is_root = os.geteuid() == 0
        self.become = become or Become()

    def _exec(self, argv: list[str], timeout: float, input: bytes | None, shown: str) -> Result:
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed whole on timeout
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _killpg(proc)
            out, err = proc.communicate()
            partial = Result(-9, out.decode(errors="replace"), err.decode(errors="replace"),
                             shown, time.monotonic() - start)
            raise CommandTimeout(self.name, shown, timeout, partial) from exc
        return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                      shown, time.monotonic() - start)

    def put(self, local: str, remote: str, mode: int | None = None) -> None:
        os.makedirs(os.path.dirname(remote) or ".", exist_ok=True)
        shutil.copyfile(local, remote)
        if mode is not None:
            os.chmod(remote, mode)

    def get(self, remote: str, local: str) -> None:
        shutil.copyfile(remote, local)

    def put_cached(self, local: str) -> str:
        return os.path.abspath(local)  # already on this host

    def open_stream(self, argv: Sequence[str]) -> Stream:
        prefix, secret = self.sudo()
        stream = _ProcStream(subprocess.Popen([*prefix, *argv], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, bufsize=0,
                                              stderr=subprocess.DEVNULL, start_new_session=True))
        if secret:
            stream.send(secret)
        return stream

    def open_tcp(self, host: str, port: int, timeout: float = 10.0):
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        return sock


class _ProcStream(Stream):
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
        except (BrokenPipeError, ValueError) as exc:
            raise OSError("stream closed") from exc

    def recv(self, size: int, timeout: float | None = None) -> bytes:
        import select

        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TimeoutError("no data")
        return os.read(fd, size)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            _killpg(self.proc)
