"""qemu-guest-agent over its virtio-serial port: a command channel console noise cannot break.

``guest-exec`` starts a command, ``guest-exec-status`` returns its exit code with stdout and
stderr apart (base64). The agent's protocol is JSON lines; ``guest-sync-delimited`` (a 0xFF
byte, then the echoed id) resynchronises after anything stale. The same channel is the one a
Windows guest with the virtio-win agent offers.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time

from ..errors import GUEST_MAX_REPLY, KvmError, OutputTooLong
from ..transport import Stream
from ..waiting import WaitTimeout, wait_until

log = logging.getLogger("pytest_kvm.guest")


class AgentError(KvmError):
    pass


class AgentUnavailable(AgentError):
    """The agent did not answer (not installed, not started yet, or the guest is gone)."""


def _parse(line: bytes) -> dict | None:
    """One JSON reply of the agent, or None when the line is not a JSON object (a guest's
    agent is untrusted: anything it sends is checked before it is used)."""
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return reply if isinstance(reply, dict) else None


class Agent:
    def __init__(self, stream: Stream, name: str, max_line: int = GUEST_MAX_REPLY):
        self.stream = stream
        self.name = name
        self.max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline

    def close(self) -> None:
        self.stream.close()

    def _send(self, message: dict) -> None:
        try:
            self.stream.send(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise AgentUnavailable(f"{self.name}: agent channel closed ({exc})") from exc

    def _line(self, deadline: float) -> bytes:
        """The next line, in time linear in its length; a line longer than ``max_line`` is
        an error (and dropped)."""
        while True:
            end = self._buf.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[:end + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buf)
            if self._scanned > self.max_line:
                self._buf.clear()
                self._scanned = 0
                raise OutputTooLong(f"{self.name}: the guest agent sent a reply longer than "
                                    f"{self.max_line} bytes (the limit); dropped")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                data = self.stream.recv(65536, min(left, 1.0))
            except TimeoutError:
                continue
            if not data:
                raise AgentUnavailable(f"{self.name}: agent channel closed (the guest is gone)")
            self._buf += data

    def sync(self, timeout: float = 5.0) -> bool:
        """True when the agent answers within ``timeout`` (anything stale is dropped)."""
        nonce = random.randrange(1, 2**31)
        self._buf.clear()
        self._scanned = 0
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": nonce}})
        deadline = time.monotonic() + timeout
        try:
            while True:
                line = self._line(deadline)
                line = line[line.rfind(b"\xff") + 1:]  # the delimiter precedes the answer
                reply = _parse(line)
                if reply is not None and reply.get("return") == nonce:
                    return True
        except (TimeoutError, OutputTooLong):
            return False

    def execute(self, command: str, arguments: dict | None = None, timeout: float = 30.0):
        message: dict = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._send(message)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._line(deadline)
            except TimeoutError as exc:
                raise AgentUnavailable(f"{self.name}: no answer to {command} within "
                                       f"{timeout:g} s") from exc
            reply = _parse(line.lstrip(b"\xff"))
            if reply is None:
                continue
            if "error" in reply:
                error = reply["error"]
                desc = error.get("desc") if isinstance(error, dict) else None
                raise AgentError(f"{self.name}: {command}: "
                                 f"{desc if isinstance(desc, str) else 'malformed error'}"[:500])
            if "return" in reply:
                return reply["return"]

    def run(self, command: str, timeout: float = 60.0) -> tuple[int | None, str, str]:
        """Run a shell command; (exit status, stdout, stderr). Status None: it was still running
        at ``timeout`` (then it is killed, with its children). As on any exec channel, a job
        left in the background must not keep the command's output open (redirect it)."""
        start = time.monotonic()
        pid = self._expect(self.execute("guest-exec", {"path": "/bin/sh", "arg": [
            "-c", command], "capture-output": True}), "pid", int)

        def exited() -> dict | None:
            status = self.execute("guest-exec-status", {"pid": pid},
                                  timeout=max(5.0, start + timeout - time.monotonic()))
            return status if self._expect(status, "exited", bool) else None

        try:
            status = wait_until(exited, timeout, f"{self.name}: {command[:80]!r} to end",
                                step=0.02, max_step=0.25)
        except WaitTimeout:
            self._kill(pid)
            return None, "", ""
        out, err = (self._decoded(status, key) for key in ("out-data", "err-data"))
        code = status.get("exitcode")
        if code is None:  # ended by a signal
            code = 128 + self._expect(status, "signal", int)
        elif type(code) is not int:
            raise AgentError(f"{self.name}: guest-exec-status: malformed reply (exitcode)")
        log.debug("%s: agent ran %r: exit %s in %.2f s", self.name, command[:80], code,
                  time.monotonic() - start)
        return code, out, err

    def _expect(self, reply, key: str, kind: type):
        """``reply[key]``, which must be a ``kind``: else the agent's malformed reply is an
        AgentError (never a KeyError or TypeError of ours)."""
        value = reply.get(key) if isinstance(reply, dict) else None
        if type(value) is not kind:
            raise AgentError(f"{self.name}: malformed reply from the guest agent ({key!r} is "
                             f"not {kind.__name__})")
        return value

    def _decoded(self, status: dict, key: str) -> str:
        data = status.get(key, "")
        try:
            if not isinstance(data, str):
                raise ValueError(type(data).__name__)
            return base64.b64decode(data, validate=True).decode(errors="replace")
        except ValueError as exc:  # (binascii.Error is one)
            raise AgentError(f"{self.name}: malformed reply from the guest agent ({key!r} is "
                             f"not base64: {exc})") from exc

    def _kill(self, pid: int) -> None:
        """Kill ``pid`` and its descendants (stopped first, so none forks a new one), and wait
        until the agent has reaped it: the next command must not see it still running."""
        tree = ('k() { kill -STOP "$1" 2>/dev/null; for c in $(pgrep -P "$1"); do k "$c"; done; '
                'kill -KILL "$1" 2>/dev/null; kill -CONT "$1" 2>/dev/null; }; k "$1"')
        try:
            killer = self._expect(self.execute("guest-exec", {"path": "/bin/sh", "arg": [
                "-c", tree, "kill", str(pid)]}, timeout=10), "pid", int)
            for waited in (killer, pid):
                wait_until(lambda w=waited: self._expect(self.execute(
                    "guest-exec-status", {"pid": w}, timeout=10), "exited", bool),
                           10, f"process {waited} reaped after the kill", step=0.05)
        except (AgentError, WaitTimeout) as e:
            log.warning("%s: agent: killing process %s: %s", self.name, pid, e)
