"""The guest's workload during a migration: the counter (its numbers on a console and in a
file in guest memory), the heartbeat's console reader (:class:`CounterWatch`, which measures the
gap the guest lived through), and the memory-dirtying load some variants run."""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass

from ...errors import GUEST_MAX_LINE
from ...guest import Guest, memstamp
from ...waiting import wait_until

log = logging.getLogger("pytest_kvm.migration")

COUNTER_LOG = "/tmp/counter.log"
COUNTER_MS = 200  # the counter's period
LINE_RE = re.compile(r"PKVM-COUNT (\d+) (\d+) ([\d.]+)")
BEAT_RE = re.compile(r"PKVM-BEAT (\d+)")
BEAT_MS = 10  # the heartbeat's period: the guest-observed gap's resolution
# memstamp's region and pace: every page is rewritten each pass, so the region is memory the
# migration sends again every pass it spans (256 pages every 100 ms made a nested guest's
# precopy miss its downtime limit on a slow link)
STAMP_PAGES = 64
STAMP_MS = 200
# In the background with its output elsewhere: a job that kept the command's output open would
# keep an exec channel (the guest agent, SSH) waiting for its end.
DIRTY_FILE = "/dev/shm/dirty"
DIRTY = ("sh -c 'mkdir -p /dev/shm; while true; do dd if=/dev/urandom of=" + DIRTY_FILE + " "
         "bs=1M count={mib} 2>/dev/null; done' </dev/null >/dev/null 2>&1 &")


@dataclass
class CounterLine:
    count: int
    pid: int
    uptime: float
    arrived: float
    side: str


class CounterWatch:
    """Reads counter lines from a guest's virtio console (source and destination)."""

    def __init__(self) -> None:
        self.lines: list[CounterLine] = []
        self.beats: list[tuple[float, int, str]] = []  # (arrival, beat number, side)
        self._lock = threading.Lock()
        self._streams = []

    def attach(self, guest: Guest, side: str) -> None:
        stream = guest.host.connect_unix(f"{guest.rundir}/vc.sock")
        self._streams.append(stream)

        def pump() -> None:
            # Lines in time linear in their length; one longer than GUEST_MAX_LINE (no
            # counter line is) is dropped, not kept growing: the guest is untrusted.
            pending: list[bytes] = []
            size, dropping = 0, False
            while True:
                try:
                    data = stream.recv(4096, timeout=None)
                except (OSError, TimeoutError):
                    return
                if not data:
                    return
                now = time.monotonic()
                *complete, rest = data.split(b"\n")
                if complete:
                    head = b"".join([*pending, complete[0]])
                    complete[0] = b"" if dropping else head
                    pending, size, dropping = [], 0, False
                pending.append(rest)
                size += len(rest)
                if size > GUEST_MAX_LINE:
                    if not dropping:
                        log.warning("%s/%s: a console line longer than %d bytes: dropped",
                                    guest.host.name, guest.spec.name, GUEST_MAX_LINE)
                    pending, size, dropping = [], 0, True
                for raw in complete:
                    text = raw.decode(errors="replace")
                    beat = BEAT_RE.search(text)
                    if beat:
                        with self._lock:
                            self.beats.append((now, int(beat.group(1)), side))
                        continue
                    m = LINE_RE.search(text)
                    if m:
                        with self._lock:
                            self.lines.append(CounterLine(int(m.group(1)), int(m.group(2)),
                                                          float(m.group(3)), now, side))

        threading.Thread(target=pump, daemon=True, name=f"counter-{side}").start()

    def _count(self, beats: bool, side: str) -> int:
        with self._lock:  # (the pump appends meanwhile)
            if beats:
                return sum(1 for beat in self.beats if beat[2] == side)
            return sum(1 for line in self.lines if line.side == side)

    def wait_lines(self, side: str, count: int, timeout: float) -> None:
        """WaitTimeout when the guest's counter did not print ``count`` lines on the console
        of this side in time."""
        wait_until(lambda: self._count(False, side) >= count,
                   timeout, f"{count} counter lines on the {side} console", step=0.1)

    def gap(self, since: float) -> float:
        """Largest interval (s) between consecutive heartbeats (each counted at its first
        arrival, from either console) from ``since`` on: the switch and what followed it."""
        return _largest_interval(self._beats(), since, float("inf"))

    def jitter(self, until: float, span: float = 2.0) -> float:
        """The same, over the ``span`` seconds before ``until`` (before the migration): how
        finely this lab and this guest resolve the gap at all."""
        return _largest_interval(self._beats(), until - span, until)

    def _beats(self) -> list[float]:
        with self._lock:
            first: dict[int, float] = {}
            for arrived, number, _ in self.beats:
                if number not in first or arrived < first[number]:
                    first[number] = arrived
        return [first[n] for n in sorted(first)]

    def wait_beats(self, side: str, count: int, timeout: float) -> None:
        wait_until(lambda: self._count(True, side) >= count,
                   timeout, f"{count} heartbeats on the {side} console", step=0.05)

    def close(self) -> None:
        for stream in self._streams:
            try:
                stream.close()
            except OSError:
                pass


def _largest_interval(arrivals: list[float], start: float, end: float) -> float:
    """Largest interval between consecutive arrivals (in beat order) whose later one falls in
    [start, end]."""
    return max((b - a for a, b in zip(arrivals, arrivals[1:], strict=False)
                if start <= b <= end), default=0.0)


def start_counter(guest: Guest) -> int:
    """Start the workload (beacon.c in its counter mode: a line every COUNTER_MS to the
    guest's virtio console and to COUNTER_LOG, no fork); returns its PID in the guest."""
    guest.sh(f"rm -f {COUNTER_LOG}")
    memstamp.start_beacon(guest, COUNTER_MS, count_to=COUNTER_LOG)
    line = wait_until(lambda: LINE_RE.search(guest.sh(f"tail -n1 {COUNTER_LOG} 2>/dev/null; "
                                                      "true")),
                      20, f"{guest!r}: the counter workload's first line", step=0.2)
    return int(line.group(2))


def counter_log(guest: Guest, after: int = 0) -> list[tuple[int, int, float]]:
    """The counter's log in the guest as (count, pid, uptime), from line ``after + 1`` on;
    complete lines only (a line being written is left for the next read)."""
    out = guest.sh(f"head -n $(($(wc -l < {COUNTER_LOG}))) {COUNTER_LOG} | "
                   f"tail -n +{after + 1}", timeout=60)
    return [(int(m.group(1)), int(m.group(2)), float(m.group(3)))
            for m in LINE_RE.finditer(out)]


def start_dirtying(guest: Guest, mib: int = 64, fast: bool = False) -> int:
    """Keep rewriting a tmpfs file: memory the migration has to send again and again; or
    (``fast``) ``mib`` MiB rewritten as fast as the guest writes memory, by memstamp with no
    pause between its passes (a nested guest's /dev/urandom, and even its cp, are slower
    than the lab's link; its memory writes are not), every word non-zero. Returns the
    load's PID."""
    if fast:
        return memstamp.start(guest, mib * 256, 0, files=".dirty").pid
    out = guest.sh(DIRTY.format(mib=mib) + " echo PKVM-DIRTY $!")
    return int(re.search(r"PKVM-DIRTY (\d+)", out).group(1))


def stop_dirtying(guest: Guest, pid: int) -> None:
    """End the dirtying loop and its dd (stopped first, so it starts no other) and free its
    file; the counter runs on."""
    children = (f"for f in /proc/[0-9]*/stat; do read -r p c s pp r < \"$f\" 2>/dev/null && "
                f"[ \"$pp\" = {pid} ] && kill -KILL \"$p\"; done")  # (no pkill in busybox)
    guest.sh(f"kill -STOP {pid}; {children}; kill -KILL {pid}; sleep 0.2; "
             f"rm -f {DIRTY_FILE}; ! kill -0 {pid} 2>/dev/null")
