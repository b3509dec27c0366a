"""A guest's serial console as a pexpect object, over a transport stream."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
import uuid

import pexpect
from pexpect.spawnbase import SpawnBase

from ..errors import GUEST_MAX_LINE, GUEST_MAX_REPLY, KvmError, OutputTooLong
from ..transport import Stream

log = logging.getLogger("pytest_kvm.guest")


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


class GuestCommandTimeout(KvmError):
    pass


class ConsoleClosed(KvmError):
    pass


class ConsoleGarbled(KvmError):
    """A command's output, fetched again and again, never came back whole."""


class Console(SpawnBase):
    """pexpect on a stream (``fdpexpect`` cannot work: a paramiko channel's fd is only a
    readiness pipe). ``expect``/``send``/``sendline`` as usual; ``run`` for commands."""

    def __init__(self, stream: Stream, name: str, prompt: str, timeout: float = 30,
                 logfile=None):
        super().__init__(timeout=timeout, maxread=65536, encoding="utf-8",
                         codec_errors="replace", logfile=logfile)
        self.stream = stream
        self.name = name
        self.prompt = prompt
        self.closed = False
        self.max_reply, self.max_line = GUEST_MAX_REPLY, GUEST_MAX_LINE
        self._read = 0  # characters read by the current expect (a command's output)
        self._line = 0  # characters read since the last newline

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> str:
        if timeout == -1:
            timeout = self.timeout
        try:
            data = self.stream.recv(size, timeout)
        except TimeoutError as exc:
            raise pexpect.TIMEOUT(f"{self.name}: console silent for {timeout} s") from exc
        except OSError as exc:
            data = b""
            self.closed = bool(exc)
        if not data:
            self.flag_eof = True
            raise pexpect.EOF(f"{self.name}: console closed (the guest is gone)")
        text = self._decoder.decode(data, final=False)
        self._read += len(text)
        newline = text.rfind("\n")
        self._line = len(text) - newline - 1 if newline >= 0 else self._line + len(text)
        if self._read > self.max_reply or self._line > self.max_line:
            what = (f"a line longer than {self.max_line}" if self._line > self.max_line
                    else f"more than {self.max_reply}")
            self._read = self._line = 0
            raise OutputTooLong(f"{self.name}: the guest printed {what} characters (the "
                                f"limit) on its console")
        self._log(text, "read")
        return text

    # pexpect's waits (expect, expect_exact), with what one wait may read bounded (max_reply):
    # a guest that floods its console while we wait for a marker is an error, not a buffer
    # that grows until the deadline.
    def expect_list(self, *args, **kw):
        self._read = 0
        return super().expect_list(*args, **kw)

    def expect_exact(self, *args, **kw):
        self._read = 0
        return super().expect_exact(*args, **kw)

    def send(self, s: str) -> int:
        data = s.encode() if isinstance(s, str) else s
        self._log(s, "send")
        try:
            self.stream.send(data)
        except OSError as exc:  # the channel is gone (QEMU exited, or the host's connection)
            self.flag_eof = True
            raise pexpect.EOF(f"{self.name}: console closed") from exc
        return len(data)

    def sendline(self, s: str = "") -> int:
        return self.send(s + "\n")

    def sendcontrol(self, char: str) -> int:
        return self.send(chr(ord(char.lower()) - ord("a") + 1))

    def isalive(self) -> bool:
        return not self.flag_eof

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.stream.close()

    def drain(self) -> int:
        """Read and drop what the guest has written so far, without waiting (console.log has
        it); returns how many bytes. A console connection nobody reads fills its socket, and
        then QEMU holds the guest's serial port, and a guest that prints much (a verbose boot)
        stalls in the middle of a line."""
        dropped = 0
        while True:
            try:
                data = self.stream.recv(65536, 0)
            except (TimeoutError, OSError):
                return dropped
            if not data:
                self.flag_eof = True
                return dropped
            dropped += len(data)

    def wait_prompt(self, timeout: float = 30) -> None:
        self.expect_exact(self.prompt, timeout=timeout)

    def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run a shell command in the guest; returns (exit status, output with \\n endings).

        Unique markers delimit the output; the typed line itself cannot match them because
        the marker is split by an empty quote there. Each marker is searched as a string in
        what came since the last read plus the marker's length (pexpect's lookback: linear in
        the output, and wherever in a read it lands), then the rest of its line from where it
        ended.
        """
        tag = uuid.uuid4().hex[:10]
        begin, end = f"__PKVM_B{tag}", f"__PKVM_E{tag}"
        command = command.strip().rstrip(";").rstrip()  # `cmd;; echo` is a syntax error too
        sep = " " if command.endswith("&") else "; "  # `cmd & ;` is a syntax error
        deadline = time.monotonic() + timeout
        try:
            self.sendline(f"echo {begin[:4]}''{begin[4:]}; {command}{sep}"
                          f"echo {end[:4]}''{end[4:]} $?")
            self.expect_exact(begin, timeout=_left(deadline))
            # (the rest of the marker's line: empty, unless another writer's text landed there)
            self.expect(r"\A[^\n]*\n", timeout=_left(deadline))
            self.expect_exact(f"{end} ", timeout=_left(deadline))
            output = self.before
            self.expect(r"\A(\d+)\r?\n", timeout=_left(deadline))
        except OutputTooLong as exc:
            self.interrupt()
            raise OutputTooLong(f"{exc} while running `{command}` (interrupted)") from exc
        except pexpect.TIMEOUT as exc:
            self.interrupt()  # so the console is usable again
            raise GuestCommandTimeout(f"{self.name}: `{command}` did not finish within "
                                      f"{timeout:g} s (interrupted)") from exc
        except pexpect.EOF as exc:
            raise ConsoleClosed(f"{self.name}: the guest went away while running "
                                f"`{command}`") from exc
        status = int(self.match.group(1))
        return status, output.replace("\r\n", "\n").replace("\r", "")

    def interrupt(self, tries: int = 5, wait: float = 3) -> None:
        """^C, then a no-op line typed until its output is seen (``tries`` times, ``wait`` s
        each): at bash's prompt, readline throws away a line typed before it has handled the
        signal, with the line it interrupted; a line typed after it runs."""
        log.info("%s: ^C", self.name)
        self.sendcontrol("c")
        sync = f"__PKVM_S{uuid.uuid4().hex[:10]}"
        for n in range(tries):
            self.sendline(f"echo {sync[:4]}''{sync[4:]}")
            try:
                self.expect_exact(sync, timeout=wait)
                return
            except (pexpect.TIMEOUT, OutputTooLong):
                log.info("%s: no answer %g s after ^C (try %d of %d)", self.name, wait,
                         n + 1, tries)
            except pexpect.EOF:
                return  # the next command says so (ConsoleClosed)

    def run_framed(self, command: str, timeout: float = 60, rounds: int = 8) -> tuple[int, str]:
        """As ``run``, on a console that other writers share (a distro's serial console: the
        kernel, systemd and cloud-init write there at any moment, even mid-line): the command
        runs in a subshell with its output in a file in the guest, whose status, size and MD5
        come back first, then the file base64 encoded, each line tagged with its number. A
        line another writer broke (a wrong length, a character outside base64) is asked for
        again, alone (up to ``rounds`` times); the whole is checked against size and MD5."""
        tag = uuid.uuid4().hex[:10]
        out = f"/tmp/.pkvm-{tag}"
        try:
            self.run(f"( {command}\n) >{out} 2>&1 </dev/null; echo $? >{out}.s", timeout)
        except GuestCommandTimeout:  # or another writer broke the end marker's line: the
            # status file says whether the command ended (the console was interrupted anyway)
            if not self._framed_ended(tag, out):
                raise
        status, size, digest = self._framed_meta(tag, out)
        if size > self.max_reply:
            self._framed_remove(out)
            raise OutputTooLong(f"{self.name}: `{command}` printed {size} bytes, more than "
                                f"{self.max_reply} (the limit)")
        encoded = 4 * -(-size // 3)
        count = -(-encoded // 76)
        want = {n: 76 if n < count else encoded - 76 * (count - 1) for n in range(1, count + 1)}
        line = re.compile(rf"^{tag}:(\d+):([A-Za-z0-9+/=]+)$")
        got: dict[int, str] = {}
        for _ in range(rounds):
            missing = [n for n in want if n not in got]
            if not missing:
                break
            pick = ("" if len(missing) == count or len(missing) > 200 else
                    'BEGIN { split("' + " ".join(map(str, missing)) +
                    '", w); for (k in w) want[w[k]] } !(NR in want) { next } ')
            # (a round that times out costs its wait: bounded by what it asks for)
            reply = self._ask(f"base64 {out} | awk '{pick}{{ print \"{tag}:\" NR \":\" "
                              f"$0 }}'", min(120, 30 + encoded / 4000))
            for m in map(line.match, reply.splitlines()):
                if m and int(m[1]) in want and len(m[2]) == want[int(m[1])]:
                    got.setdefault(int(m[1]), m[2])
        data = b""
        if len(got) == count:
            data = base64.b64decode("".join(got[n] for n in sorted(got)))
        if len(data) != size or hashlib.md5(data).hexdigest() != digest:  # noqa: S324
            raise ConsoleGarbled(f"{self.name}: `{command}`'s output did not come back whole "
                                 f"in {rounds} rounds ({len(got)} of {count} lines): something "
                                 f"else writes on the console too much")
        self._framed_remove(out)
        return status, data.decode("utf-8", errors="replace")

    def _ask(self, command: str, timeout: float = 30) -> str:
        """One step of the framed protocol: its output, or "" when it timed out (another
        writer broke a marker's line; the caller asks again or does without)."""
        try:
            return self.run(command, timeout)[1]
        except GuestCommandTimeout:
            return ""

    def _framed_ended(self, tag: str, out: str, tries: int = 3) -> bool:
        """Whether a framed command's status file is there (it ended), asked up to ``tries``
        times: another writer can break this reply's line or markers too."""
        return any(f"{tag}-done" in self._ask(f"test -s {out}.s && echo {tag}-''done")
                   for _ in range(tries))

    def _framed_remove(self, out: str) -> None:
        # (on a timeout its files stay in the guest's /tmp; the output came back whole)
        self._ask(f"rm -f {out} {out}.s")

    def _framed_meta(self, tag: str, out: str, tries: int = 5) -> tuple[int, int, str]:
        """(exit status, size, MD5) of a framed command's output file."""
        meta = re.compile(rf"{tag}-S (\d+) (\d+) ([0-9a-f]{{32}})$", re.M)
        for _ in range(tries):
            found = meta.search(self._ask(f"echo {tag}-S $(cat {out}.s) $(wc -c <{out}) "
                                          f"$(md5sum <{out} | cut -c1-32)"))
            if found:
                return int(found[1]), int(found[2]), found[3]
        raise ConsoleGarbled(f"{self.name}: no status line for {out} in {tries} tries: "
                             f"something else writes on the console too much")
