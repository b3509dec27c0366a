"""The guest's own small programs (C files beside this one), built on the controller with its
``cc``, sent into a guest through its command channel and run there in the background:
memstamp.c, the memory-integrity program, and beacon.c, the millisecond heartbeat a migration's
guest-observed gap is measured with.

memstamp stamps every page of a locked region with a generation number, a pass at a time, and checks
each page still holds the last generation before it writes the next: a page a migration lost,
tore or that something else changed is reported with its address and the values seen (see
memstamp.c). Freestanding (no libc): about 2 KB, so it reaches any x86-64 Linux guest with a
shell and base64, our micro guest and a distro image alike.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from filelock import FileLock

from ..errors import KvmError
from ..waiting import wait_until
from .image import cache_root
from .qemu import Guest

log = logging.getLogger("pytest_kvm.guest")

CFLAGS = ("-Os", "-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector", "-fno-pie",
          "-no-pie", "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none", "-Wl,-N",
          "-Wl,--no-warn-rwx-segments", "-s", "-Wall", "-Wextra", "-Werror")
GUEST_DIR = "/tmp"
LOG = "/tmp/pkvm-memstamp.log"
STATUS = "/tmp/pkvm-memstamp.status"
START_RE = re.compile(r"PKVM-MEM START pid=(\d+) addr=(0x[0-9a-f]+) pages=(\d+)")
STATUS_RE = re.compile(r"PKVM-MEM GEN (\d+) BAD (\d+)")
REPORT_RE = re.compile(r"PKVM-MEM (?:BAD|ERROR) .*")  # a bad page; the program's own error
CHUNK = 1024  # base64 characters per command (a tty reads at most 4095 per line)
PROGRAMS = ("memstamp", "beacon")  # (the micro guest carries them: see image.build_micro)


def binary(name: str = "memstamp") -> bytes:
    """Program ``name`` (``name``.c), compiled with the controller's cc (cached by the
    source's hash)."""
    source = resources.files(__package__).joinpath(f"{name}.c").read_bytes()
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    out = cache_root() / f"{name}-{digest}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock", timeout=120):
        if not out.exists():
            src = out.with_suffix(".c")
            src.write_bytes(source)
            try:
                subprocess.run(["cc", *CFLAGS, "-o", f"{out}.tmp", str(src)], check=True,
                               capture_output=True, text=True, timeout=120)
            except FileNotFoundError as exc:
                raise KvmError(f"the guest program {name} needs a C compiler on the "
                               "controller: apt-get install gcc (make setup does)") from exc
            except subprocess.CalledProcessError as exc:
                raise KvmError(f"cc could not build {name}.c: {exc.stderr.strip()[-500:]}"
                               ) from exc
            Path(f"{out}.tmp").rename(out)
            log.info("%s: built %s (%d bytes)", name, out, out.stat().st_size)
    return out.read_bytes()


@dataclass
class MemStamp:
    """The program running in a guest: its PID and its region."""

    pid: int
    addr: int
    pages: int


@dataclass
class MemProgress:
    generation: int  # passes completed (each one checked the whole region first)
    bad: int  # pages found changed, over the program's life
    reports: list[str]  # the first bad pages' lines: address, generation, values seen


def install(guest: Guest, name: str = "memstamp") -> str:
    """Send program ``name`` into the guest (base64 through its command channel), checked by
    its SHA-256 there; its path in the guest."""
    data = binary(name)
    path = f"{GUEST_DIR}/pkvm-{name}"
    digest = hashlib.sha256(data).hexdigest()
    status, out = guest.run(f"sha256sum {path} 2>/dev/null", check=False)
    if status == 0 and out.split()[:1] == [digest]:
        return path  # (there already: a second copy of a program running is text-busy)
    text = base64.b64encode(data).decode()
    guest.sh(f"rm -f {path}.b64")
    for i in range(0, len(text), CHUNK):
        guest.sh(f"printf %s '{text[i:i + CHUNK]}' >> {path}.b64")
    guest.sh(f"base64 -d {path}.b64 > {path} && chmod 755 {path} && rm -f {path}.b64")
    seen = guest.sh(f"sha256sum {path}").split()[0]
    if seen != digest:
        raise KvmError(f"{guest.host.name}/{guest.spec.name}: {path} arrived damaged "
                       f"(sha256 {seen})")
    return path


def start(guest: Guest, pages: int = 256, interval_ms: int = 100, files: str = "") -> MemStamp:
    """Install and start the program over ``pages`` pages, a pass every ``interval_ms`` (0:
    one pass after the other, as fast as the guest writes memory: a dirtying load).
    ``files``: a suffix for its log and status files (another instance beside the first)."""
    path = install(guest)
    log_, status = LOG + files, STATUS + files
    guest.sh(f"rm -f {log_} {status}; {path} {pages} {interval_ms} {status} "
             f"</dev/null >{log_} 2>&1 &")
    match = wait_until(lambda: START_RE.search(guest.sh(f"cat {log_}; true")), 30,
                       f"{guest!r}: memstamp's start line", step=0.2)
    stamp = MemStamp(int(match.group(1)), int(match.group(2), 16), int(match.group(3)))
    log.info("%s/%s: memstamp pid %d stamps %d pages at %#x", guest.host.name,
             guest.spec.name, stamp.pid, stamp.pages, stamp.addr)
    return stamp


def progress(guest: Guest) -> MemProgress:
    """Where the program stands now (KvmError when it never wrote a status)."""
    out = guest.sh(f"cat {STATUS} 2>/dev/null; grep 'PKVM-MEM BAD\\|PKVM-MEM ERROR' {LOG}; true")
    status = STATUS_RE.search(out)
    if not status:
        raise KvmError(f"{guest.host.name}/{guest.spec.name}: memstamp wrote no status: "
                       f"{out.strip()[-300:]!r}")
    return MemProgress(int(status.group(1)), int(status.group(2)), REPORT_RE.findall(out))


def start_beacon(guest: Guest, interval_ms: int, device: str = "/dev/hvc0",
                 count_to: str | None = None) -> int:
    """Install and start beacon.c: "PKVM-BEAT n" to ``device`` every ``interval_ms`` of guest
    time; with ``count_to``, the counter "PKVM-COUNT n pid uptime" to ``device``, each line
    also appended to the file ``count_to``. Its PID."""
    path = install(guest, "beacon")
    extra = f" {count_to}" if count_to else ""
    pid = int(guest.sh(f"{path} {interval_ms} {device}{extra} </dev/null >/dev/null 2>&1 & "
                       "echo $!"))
    log.info("%s/%s: beacon pid %d %s every %d ms on %s", guest.host.name, guest.spec.name,
             pid, f"counts (to {count_to})" if count_to else "beats", interval_ms, device)
    return pid
