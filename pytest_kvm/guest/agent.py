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

from ..errors import KvmError
from ..transport import Stream
from ..waiting import WaitTimeout, wait_until

log = logging.getLogger("pytest_kvm.guest")


class AgentError(KvmError):
    pass


class AgentUnavailable(AgentError):
    """The agent did not answer (not installed, not started yet, or the guest is gone)."""


class Agent:
    def __init__(self, stream: Stream, name: str):
        self.stream = stream
        self.name = name
        self._buf = b""

    def close(self) -> None:
        self.stream.close()

    def _send(self, message: dict) -> None:
        try:
            self.stream.send(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise AgentUnavailable(f"{self.name}: agent channel closed ({exc})") from exc

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
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
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def sync(self, timeout: float = 5.0) -> bool:
        """True when the agent answers within ``timeout`` (anything stale is dropped)."""
        nonce = random.randrange(1, 2**31)
        self._buf = b""
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": nonce}})
        deadline = time.monotonic() + timeout
        try:
            while True:
                line = self._line(deadline)
                line = line[line.rfind(b"\xff") + 1:]  # the delimiter precedes the answer
                try:
                    if json.loads(line).get("return") == nonce:
                        return True
                except ValueError:
                    continue
        except TimeoutError:
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
            try:
                reply = json.loads(line.lstrip(b"\xff"))
            except ValueError:
                continue
            if "error" in reply:
                raise AgentError(f"{self.name}: {command}: {reply['error'].get('desc', reply)}")
            if "return" in reply:
                return reply["return"]

    def run(self, command: str, timeout: float = 60.0) -> tuple[int | None, str, str]:
        """Run a shell command; (exit status, stdout, stderr). Status None: it was still running
        at ``timeout`` (then it is killed, with its children). As on any exec channel, a job
        left in the background must not keep the command's output open (redirect it)."""
        start = time.monotonic()
        pid = self.execute("guest-exec", {"path": "/bin/sh", "arg": ["-c", command],
                                          "capture-output": True})["pid"]

        def exited() -> dict | None:
            status = self.execute("guest-exec-status", {"pid": pid},
                                  timeout=max(5.0, start + timeout - time.monotonic()))
            return status if status.get("exited") else None

        try:
            status = wait_until(exited, timeout, f"{self.name}: {command[:80]!r} to end",
                                step=0.02, max_step=0.25)
        except WaitTimeout:
            self._kill(pid)
            return None, "", ""
        out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
        err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
        code = status.get("exitcode")
        if code is None:  # ended by a signal
            code = 128 + int(status.get("signal", 0))
        log.debug("%s: agent ran %r: exit %s in %.2f s", self.name, command[:80], code,
                  time.monotonic() - start)
        return code, out, err

    def _kill(self, pid: int) -> None:
        """Kill ``pid`` and its descendants (stopped first, so none forks a new one), and wait
        until the agent has reaped it: the next command must not see it still running."""
        tree = ('k() { kill -STOP "$1" 2>/dev/null; for c in $(pgrep -P "$1"); do k "$c"; done; '
                'kill -KILL "$1" 2>/dev/null; kill -CONT "$1" 2>/dev/null; }; k "$1"')
        try:
            killer = self.execute("guest-exec", {"path": "/bin/sh", "arg": [
                "-c", tree, "kill", str(pid)]}, timeout=10)["pid"]
            for waited in (killer, pid):
                wait_until(lambda w=waited: self.execute("guest-exec-status", {"pid": w},
                                                         timeout=10).get("exited"),
                           10, f"process {waited} reaped after the kill", step=0.05)
        except (AgentError, WaitTimeout) as e:
            log.warning("%s: agent: killing process %s: %s", self.name, pid, e)
