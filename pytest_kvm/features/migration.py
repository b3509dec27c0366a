"""Live migration: a running guest moves to another QEMU (on another host, or the same one),
its workload keeps running, and the move is measured.

The workload is a counter in the guest that writes "PKVM-COUNT <n> <pid> <uptime>" five times a
second to a virtio-serial console and to a file in guest memory. The file, which migrates with
the guest, proves continuity: one PID, every number once, in order. Beside it a heartbeat
(guest/beacon.c) writes "PKVM-BEAT <n>" to the same console every BEAT_MS milliseconds of guest
time. The controller reads the console of the source and of the destination at once, both
connected before the switch, and stamps each line on its own monotonic clock as it arrives:
the largest interval between consecutive beats around the switch is the gap the guest lived
through (its clock stops while it is paused), resolved to BEAT_MS, next to QMP's downtime.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from .. import remote
from ..errors import GUEST_MAX_LINE, KvmError
from ..guest import Guest, GuestSpec, memstamp
from ..host import Host
from ..waiting import first_within, wait_until

log = logging.getLogger("pytest_kvm.migration")

COUNTER_LOG = "/tmp/counter.log"
COUNTER = ("sh -c 'i=0; while true; do i=$((i+1)); "
           "echo \"PKVM-COUNT $i $$ $(cut -d\" \" -f1 /proc/uptime)\" | tee -a " + COUNTER_LOG + "; "
           "sleep 0.2; done' > /dev/hvc0 2>/dev/null &")
LINE_RE = re.compile(r"PKVM-COUNT (\d+) (\d+) ([\d.]+)")
BEAT_RE = re.compile(r"PKVM-BEAT (\d+)")
BEAT_MS = 5  # the heartbeat's period: the guest-observed gap's resolution
# In the background with its output elsewhere: a job that kept the command's output open would
# keep an exec channel (the guest agent, SSH) waiting for its end.
DIRTY_FILE = "/dev/shm/dirty"
DIRTY = ("sh -c 'mkdir -p /dev/shm; while true; do dd if=/dev/urandom of=" + DIRTY_FILE + " "
         "bs=1M count={mib} 2>/dev/null; done' </dev/null >/dev/null 2>&1 &")


class MigrationError(KvmError):
    pass


class MigrationUnsupported(MigrationError):
    """An end's QEMU lacks what the migration needs (a capability): a skip, naming both ends'
    versions, not a failure."""


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


@dataclass
class Migration:
    """What a migration did, in QMP's numbers and the guest's."""

    source: str
    destination: str
    same_host: bool
    status: str = ""
    total_time_ms: int = 0
    downtime_ms: int = 0
    setup_time_ms: int = 0
    transferred_bytes: int = 0
    throughput_mbps: float = 0.0
    guest_gap_ms: float = 0.0  # the longest interval between heartbeats across the switch
    beat_jitter_ms: float = 0.0  # the same in the 2 s before the migration: the resolution
    storage: str = "none"
    stream: str = ""  # how the stream went: "unix" (same host), "tls" or "tcp" (unauthenticated)
    capabilities: str = ""  # the migration capabilities that were on, e.g. "events,multifd"
    postcopy_active_seen: bool = False  # the source went through postcopy-active
    postcopy_requests: int = 0  # pages the destination faulted in from the source
    multifd_channels: int = 0
    multifd_bytes: int = 0
    xbzrle_cache_size: int = 0
    xbzrle_cache_miss: int = 0  # re-sent pages not yet in the cache (then cached)
    xbzrle_pages: int = 0  # re-sent pages sent as deltas
    machine: str = ""  # the guest's machine type and CPU model (what both ends accepted)
    cpu: str = ""
    source_qemu: str = ""  # QEMU versions, source and destination
    destination_qemu: str = ""
    extra: dict = field(default_factory=dict)

    def properties(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "extra"}


# The figures of a migration (a sample per hop), with their unit and which way is better; the
# rest of Migration describes it.
FIGURES: dict[str, tuple[str, str]] = {
    "total_time_ms": ("ms", "lower"),
    "downtime_ms": ("ms", "lower"),
    "setup_time_ms": ("ms", "lower"),
    "guest_gap_ms": ("ms", "lower"),
    "transferred_bytes": ("B", "lower"),
    "throughput_mbps": ("Mbit/s", "higher"),
}


def start_counter(guest: Guest) -> int:
    """Start the workload; returns its PID in the guest."""
    guest.sh(f"rm -f {COUNTER_LOG}; " + COUNTER)
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


def start_dirtying(guest: Guest, mib: int = 64) -> int:
    """Keep rewriting a tmpfs file: memory the migration has to send again and again.
    Returns the loop's PID."""
    out = guest.sh(DIRTY.format(mib=mib) + " echo PKVM-DIRTY $!")
    return int(re.search(r"PKVM-DIRTY (\d+)", out).group(1))


def stop_dirtying(guest: Guest, pid: int) -> None:
    """End the dirtying loop and its dd (stopped first, so it starts no other) and free its
    file; the counter runs on."""
    children = (f"for f in /proc/[0-9]*/stat; do read -r p c s pp r < \"$f\" 2>/dev/null && "
                f"[ \"$pp\" = {pid} ] && kill -KILL \"$p\"; done")  # (no pkill in busybox)
    guest.sh(f"kill -STOP {pid}; {children}; kill -KILL {pid}; sleep 0.2; "
             f"rm -f {DIRTY_FILE}; ! kill -0 {pid} 2>/dev/null")


@dataclass(frozen=True)
class Stream:
    """Where a migration (or NBD) stream goes, and how it is authenticated.

    ``unix``: a socket in the destination guest's run dir (the private work dir: only the
    connecting user and root can reach it), for two QEMUs on one host. ``tls``: TCP on the
    destination's migration address with the run's x509 credentials, peers verified both ways.
    ``tcp``: plain TCP, unauthenticated (anyone who reaches the port can feed the destination a
    stream): only when both hosts' inventory says ``kvm_migration_tls=no``."""

    kind: str
    address: str = ""
    port: int = 0
    path: str = ""
    tls: MigrationTls | None = None

    def uri(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.address}:{self.port}"

    def socket(self) -> dict:
        """QMP's SocketAddress (flat form) of the listening end."""
        if self.kind == "unix":
            return {"type": "unix", "path": self.path}
        return {"type": "inet", "host": self.address, "port": str(self.port)}


def stream_to(source: Host, destination: Guest, tls: MigrationTls | None, name: str) -> Stream:
    """The stream from ``source`` to the ``destination`` guest's QEMU: a unix socket named
    ``name`` in its run dir on one host; else TLS with ``tls``, or plain TCP without."""
    if source.name == destination.host.name:
        return Stream("unix", path=f"{destination.rundir}/{name}.sock")
    kind = "tls" if tls is not None else "tcp"
    if tls is None:
        log.warning("%s -> %s: the %s stream is plain TCP, unauthenticated "
                    "(kvm_migration_tls=no on both)", source.name, destination.host.name, name)
    return Stream(kind, address=address_of(destination.host), port=port(), tls=tls)


POSTCOPY_AFTER = 4 * 1024 * 1024  # precopy bytes sent before the switch to postcopy
POSTCOPY_PRECOPY_BANDWIDTH = 16 * 1024 * 1024  # bytes/s: precopy cannot finish first


def migrate(source: Guest, destination: Guest, stream: Stream, *,
            timeout: float = 120.0, auto_converge: bool = False,
            max_bandwidth: int | None = None, postcopy: bool = False, multifd_channels: int = 0,
            xbzrle_cache: int = 0) -> Migration:
    """Migrate over QMP: the destination listens (migrate-incoming on ``stream``), the source
    sends.

    ``postcopy``: start in precopy (bandwidth-limited, so it cannot finish on its own), switch
    with migrate-start-postcopy once some RAM went, then pages are pulled by the destination.
    ``multifd_channels``: RAM over that many parallel connections. ``xbzrle_cache``: re-sent
    pages as deltas against a cache of that many bytes. Waits for completion with a timeout;
    on timeout the migration is cancelled and the error names the last status
    (non-convergence says so).
    """
    result = Migration(source.host.name, destination.host.name,
                       source.host.name == destination.host.name,
                       machine=source.spec.machine, cpu=source.spec.cpu or "",
                       source_qemu=source.host.facts.qemu_version,
                       destination_qemu=destination.host.facts.qemu_version)
    uri = stream.uri()
    for guest, endpoint in ((destination, "server"), (source, "client")):
        # both ends must agree, or the migration fails
        if stream.tls is not None:
            params = {"tls_creds": _tls_creds(guest, stream.tls, endpoint)}
            if endpoint == "client":
                params["tls_hostname"] = stream.address
            guest.qmp.execute("migrate-set-parameters", **params)
        elif endpoint == "client" and getattr(guest, "_tls_endpoint", None) is not None:
            # a source that came over TLS (its last hop) sends plain now; a destination that
            # requires TLS is left requiring it
            guest.qmp.execute("migrate-set-parameters", tls_creds="")
    both = {"postcopy-ram": postcopy, "multifd": multifd_channels > 0}  # on both ends
    caps = {"events": True, "auto-converge": auto_converge, "xbzrle": xbzrle_cache > 0, **both}
    for guest, wanted in ((source, caps), (destination, both)):
        offered = {c["capability"] for c in guest.qmp.execute("query-migrate-capabilities")}
        missing = [c for c, on in wanted.items() if on and c not in offered]
        if missing:
            raise MigrationUnsupported(
                f"{guest.host.name}'s QEMU {guest.host.facts.qemu_version} has no migration "
                f"capability {', '.join(missing)} ({source.host.name}, QEMU "
                f"{result.source_qemu} -> {destination.host.name}, QEMU "
                f"{result.destination_qemu})")
    if any(both.values()):  # the destination's before it listens
        destination.qmp.execute("migrate-set-capabilities", capabilities=[
            {"capability": c, "state": True} for c, on in both.items() if on])
    source.qmp.execute("migrate-set-capabilities", capabilities=[
        {"capability": c, "state": on} for c, on in caps.items()])
    if multifd_channels:
        for guest in (destination, source):
            guest.qmp.execute("migrate-set-parameters", multifd_channels=multifd_channels)
    destination.qmp.execute("migrate-incoming", uri=uri)
    result.capabilities = ",".join(c for c, on in caps.items() if on)
    if postcopy and not max_bandwidth:
        max_bandwidth = POSTCOPY_PRECOPY_BANDWIDTH
    if max_bandwidth:
        source.qmp.execute("migrate-set-parameters", max_bandwidth=max_bandwidth)
    if xbzrle_cache:
        source.qmp.execute("migrate-set-parameters", xbzrle_cache_size=xbzrle_cache)
    log.info("migrate %s -> %s over %s (%s)", source.host.name, destination.host.name, uri,
             result.capabilities)
    source.qmp.execute("migrate", uri=uri)
    if postcopy:
        result.postcopy_active_seen = _switch_to_postcopy(source, timeout)

    def ended() -> dict | None:
        info = source.qmp.execute("query-migrate")
        return info if info.get("status") in ("completed", "failed", "cancelled") else None

    # (not ended in time: cancelled below, with what QEMU says now)
    info = (first_within(ended, timeout, "the migration's end", step=0.2)
            or source.qmp.execute("query-migrate"))
    status = info.get("status", "unknown")
    if status == "completed" and not info.get("total-time"):
        # QEMU 7.2 says "completed" a moment before it has computed total-time and downtime
        # (seen: 0 and 0 after 109 MB moved): read again, briefly, until they are there
        log.info("%s: 'completed' without total-time yet (QEMU %s); reading it again",
                 source.host.name, result.source_qemu)
        info = first_within(lambda: (i := source.qmp.execute("query-migrate")).get(
            "total-time") and i, 5, "the completed migration's total-time", step=0.05) or info
    if status != "completed":
        ram = info.get("ram", {})
        if status not in ("failed", "cancelled"):
            try:
                source.qmp.execute("migrate_cancel")
            except KvmError:
                pass
            detail = (f"did not converge within {timeout:g} s: still '{status}', "
                      f"{ram.get('remaining', '?')} bytes remaining, dirty rate "
                      f"{ram.get('dirty-pages-rate', '?')} pages/s (try auto_converge)")
        else:
            detail = f"ended '{status}': {info.get('error-desc', 'no reason given')}"
        raise MigrationError(f"migration {source.host.name} -> {destination.host.name} {detail}")
    ram = info.get("ram", {})
    destination.follow(source)  # the guest (its agent, sshd or login) moved with it
    result.status = status
    result.stream = stream.kind
    result.total_time_ms = int(info.get("total-time", 0))
    result.downtime_ms = int(info.get("downtime", 0))
    result.setup_time_ms = int(info.get("setup-time", 0))
    result.transferred_bytes = int(ram.get("transferred", 0))
    result.throughput_mbps = float(ram.get("mbps", 0.0))
    result.postcopy_requests = int(ram.get("postcopy-requests", 0))
    result.multifd_channels = multifd_channels
    result.multifd_bytes = int(ram.get("multifd-bytes", 0))
    xbzrle = info.get("xbzrle-cache", {})
    result.xbzrle_cache_size = int(xbzrle.get("cache-size", 0))
    result.xbzrle_cache_miss = int(xbzrle.get("cache-miss", 0))
    result.xbzrle_pages = int(xbzrle.get("pages", 0))
    return result


def _switch_to_postcopy(source: Guest, timeout: float) -> bool:
    """Once POSTCOPY_AFTER bytes went in precopy, migrate-start-postcopy; True when the source
    then reports postcopy-active (a migration that ended first never was in postcopy)."""
    def precopied() -> str:  # the status once enough went in precopy, or the migration ended
        info = source.qmp.execute("query-migrate")
        status = info.get("status", "")  # (setup, then active)
        enough = info.get("ram", {}).get("transferred", 0) >= POSTCOPY_AFTER
        return status if status in ("completed", "failed", "cancelled") or (
            status == "active" and enough) else ""

    if wait_until(precopied, timeout, f"{POSTCOPY_AFTER} bytes sent in precopy",
                  step=0.1) != "active":
        return False
    source.qmp.execute("migrate-start-postcopy")

    def switched() -> str:  # the first status after active
        status = source.qmp.execute("query-migrate").get("status", "")
        return "" if status == "active" else status

    if wait_until(switched, timeout, "the switch to postcopy", step=0.05) == "postcopy-active":
        return True
    try:  # it may have passed quickly, to completed: QEMU's events kept it
        source.qmp.event("MIGRATION", timeout=1, status="postcopy-active")
        return True
    except KvmError:
        return False


def wait_running(guest: Guest, timeout: float = 30.0) -> str:
    """Wait for the (destination) guest to run; WaitTimeout naming its last status."""
    where = f"{guest.host.name}/{guest.spec.name}"
    status = {"now": ""}

    def running() -> bool:
        status["now"] = guest.qmp.execute("query-status")["status"]
        return status["now"] == "running"

    wait_until(running, timeout, f"{where}: running after the migration", step=0.2)
    return status["now"]


# -- storage ---------------------------------------------------------------------------------
def disk_node(guest: Guest, node: str = "disk0") -> dict:
    """QEMU's view of a guest's disk: its format node, and under ``"protocol"`` the node of
    its own file (whose cache mode is the one that matters)."""
    nodes = guest.qmp.execute("query-named-block-nodes")
    top = next((n for n in nodes if n.get("node-name") == node), {})
    protocol = next((n for n in nodes if n.get("drv") == "file"
                     and n.get("file") == top.get("file") and n is not top), {})
    return {**top, "protocol": protocol}


def address_of(host: Host) -> str:
    """Where peers send migration (and NBD) streams for this host."""
    cfg = host.entry.config
    if cfg.migration_address:
        return cfg.migration_address
    if cfg.connection == "local" or cfg.parent:
        return "127.0.0.1"
    return cfg.host or host.name


def port() -> int:
    return random.randrange(40000, 60000)


def shared_storage(src: Host, dst: Host) -> tuple[str | None, str | None]:
    """(the directory both hosts share, None) or (None, why there is none): the inventory's
    kvm_shared_storage, proved by a token written on one and read on the other; one host
    shares its own work dir with itself."""
    path = src.entry.config.shared_storage or dst.entry.config.shared_storage
    if path is None and src is dst:
        path = f"{src.workdir}/shared"
        src.run(["mkdir", "-p", path])
    if path is None:
        return None, f"{src.name}, {dst.name}: no kvm_shared_storage in the inventory"
    problem = src.shared_dir_problem(path) or dst.shared_dir_problem(path)
    if problem:
        return None, problem
    problem = shared_storage_works(src, dst, path)
    return (None, problem) if problem else (path, None)


def shared_storage_works(src: Host, dst: Host, path: str) -> str | None:
    """None when a token written on the source is read on the destination; else why not."""
    token = secrets.token_hex(8)
    probe = f"{path}/.pytest-kvm-probe-{token}"
    try:
        src.run(remote.argv("write", token, probe), timeout=30)
        seen = dst.run(["cat", probe], check=False, timeout=30).stdout
    except KvmError as exc:
        return f"{src.name}: cannot write to {path}: {exc}"
    finally:
        with contextlib.suppress(KvmError):  # (storage that went away: said above)
            src.run(["rm", "-f", probe], check=False, timeout=30)
    if seen != token:
        return f"{dst.name} does not see what {src.name} wrote to {path}: not shared storage"
    return None


def _tls_creds(guest: Guest, tls: MigrationTls, endpoint: str) -> str:
    """The guest's TLS credentials object for ``endpoint``, added once (a destination that
    becomes a source, as in ping-pong, trades its server credentials for client ones)."""
    held = getattr(guest, "_tls_endpoint", None)
    if held != endpoint:
        if held is not None:
            guest.qmp.execute("object-del", id=MigrationTls.CREDS)
        tls.install(guest, endpoint)
        guest._tls_endpoint = endpoint  # noqa: SLF001 - remembered on the guest it belongs to
    return MigrationTls.CREDS


def serve_nbd(destination: Guest, stream: Stream, node: str = "disk0") -> str:
    """Export the destination's disk ``node`` writable over NBD on ``stream`` (a unix socket in
    the run dir, or TLS: QEMU lists its exports to anyone who connects, so a name alone
    protects nothing); returns the export's name."""
    export = f"pytest-kvm-{secrets.token_hex(12)}"
    server = {}
    if stream.tls is not None:
        server["tls_creds"] = _tls_creds(destination, stream.tls, "server")
    addr = stream.socket()
    destination.qmp.execute("nbd-server-start", addr={
        "type": addr["type"], "data": {k: v for k, v in addr.items() if k != "type"}}, **server)
    destination.qmp.execute("block-export-add", type="nbd", id="mig-" + node, node_name=node,
                            name=export, writable=True)
    log.info("%s: NBD export of %s on %s", destination.host.name, node, stream.uri())
    return export


def mirror_storage(source: Guest, destination: Guest, stream: Stream,
                   node: str = "disk0", timeout: float = 300.0) -> None:
    """Copy the source's top disk layer into the destination's disk over NBD (as libvirt's
    copy-storage does); returns once the mirror is ready (in sync)."""
    export = serve_nbd(destination, stream, node)
    client: dict = {}
    if stream.tls is not None:
        client = {"tls_creds": _tls_creds(source, stream.tls, "client"),
                  "tls_hostname": stream.address}
    source.qmp.execute("blockdev-add", driver="nbd", node_name="mirror-" + node,
                       server=stream.socket(), export=export, **client)
    source.qmp.execute("blockdev-mirror", job_id="mirror-" + node, device=node,
                       target="mirror-" + node, sync="top")
    source.qmp.event("BLOCK_JOB_READY", timeout=timeout)


def finish_mirror(source: Guest, destination: Guest, node: str = "disk0") -> None:
    """After the migration: stop the (in sync) mirror without pivoting, and the NBD server."""
    source.qmp.execute("block-job-cancel", device="mirror-" + node)
    source.qmp.event("BLOCK_JOB_COMPLETED", timeout=60)
    destination.qmp.execute("nbd-server-stop")


# -- TLS (kvm_migration_tls) ------------------------------------------------------------------
class MigrationTls:
    """A per-run CA and certificates for QEMU's ``tls-creds-x509``: the destination's server
    certificate names its migration address, both sides verify the peer. Migration streams and
    the NBD storage mirror then go encrypted and authenticated. Keys stay 0600 in a private
    temp dir on the controller and in each guest's run dir on the hosts."""

    CREDS = "tls0"

    def __init__(self, addresses: list[str]):
        import datetime
        import ipaddress
        import tempfile

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.dir = tempfile.mkdtemp(prefix="pytest-kvm-tls-")
        now = datetime.datetime.now(datetime.UTC)
        day = datetime.timedelta(days=1)

        def name(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def write(filename: str, data: bytes) -> None:
            fd = os.open(os.path.join(self.dir, filename), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(name("pytest-kvm run CA"))
              .issuer_name(name("pytest-kvm run CA")).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - day).not_valid_after(now + day)
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                           False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        write("ca-cert.pem", ca.public_bytes(serialization.Encoding.PEM))
        sans: list[x509.GeneralName] = []
        for address in addresses:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(address)))
            except ValueError:
                sans.append(x509.DNSName(address))
        for endpoint, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                                ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (x509.CertificateBuilder().subject_name(name(f"pytest-kvm {endpoint}"))
                       .issuer_name(ca.subject).public_key(key.public_key())
                       .serial_number(x509.random_serial_number())
                       .not_valid_before(now - day).not_valid_after(now + day)
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                      critical=True)
                       .add_extension(x509.KeyUsage(True, False, True, False, False, False,
                                                    False, False, False), critical=True)
                       .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
            if endpoint == "server":
                builder = builder.add_extension(x509.SubjectAlternativeName(sans),
                                                critical=False)
            cert = builder.sign(ca_key, hashes.SHA256())
            write(f"{endpoint}-cert.pem", cert.public_bytes(serialization.Encoding.PEM))
            write(f"{endpoint}-key.pem", key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        log.info("migration TLS: a run CA and certificates for %s", ", ".join(addresses))

    def install(self, guest: Guest, endpoint: str) -> str:
        """Give the guest's QEMU the credentials of one endpoint (server: the destination);
        returns the credentials' object id."""
        folder = f"{guest.rundir}/tls"
        guest.host.run(["mkdir", "-p", "-m", "0700", folder], timeout=30)
        for filename in ("ca-cert.pem", f"{endpoint}-cert.pem", f"{endpoint}-key.pem"):
            guest.host.transport.put(os.path.join(self.dir, filename), f"{folder}/{filename}",
                                     mode=0o600)
        guest.qmp.execute("object-add", qom_type="tls-creds-x509", id=self.CREDS, dir=folder,
                          endpoint=endpoint, verify_peer=True)
        return self.CREDS

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


# -- a migration run, as the suite checks it ----------------------------------------------------
VARIANTS = ("shared-storage", "copy-storage", "ping-pong", "dirty-memory", "postcopy",
            "multifd", "xbzrle")
# How each variant migrates (migrate()'s options), and which run a memory-dirtying load.
VARIANT_OPTIONS: dict[str, dict] = {
    "dirty-memory": {"auto_converge": True},
    "postcopy": {"postcopy": True},
    "multifd": {"multifd_channels": 4},
    "xbzrle": {"xbzrle_cache": 64 * 1024 * 1024, "auto_converge": True},
}
# MiB a memory-dirtying loop in the guest rewrites, per variant that runs one: dirty-memory's
# is what auto-converge must overcome; postcopy's and xbzrle's only need pages sent again.
DIRTYING = {"dirty-memory": 64, "postcopy": 16, "xbzrle": 16}


def variant_problem(variant: str, hops: list[Migration]) -> str | None:
    """None when the variant's migrations show what makes the variant; else what is missing."""
    last = hops[-1]
    checks = {
        "shared-storage": (last.storage == "shared", f"storage was {last.storage}"),
        "copy-storage": (last.storage.startswith("copy"), f"storage was {last.storage}"),
        "ping-pong": (len(hops) >= 3 and len(hops) % 2, f"{len(hops)} hops, not 3 or more "
                      "ending on the peer"),
        "dirty-memory": ("auto-converge" in last.capabilities,
                         f"auto-converge was off ({last.capabilities})"),
        "postcopy": (last.postcopy_active_seen, "the source never reported postcopy-active"),
        "multifd": (last.multifd_bytes > 0 and "multifd" in last.capabilities,
                    f"multifd-bytes {last.multifd_bytes} over {last.multifd_channels} channels"),
        "xbzrle": (last.xbzrle_cache_size > 0
                   and last.xbzrle_cache_miss + last.xbzrle_pages > 0,
                   f"xbzrle cache {last.xbzrle_cache_size} bytes, {last.xbzrle_cache_miss} "
                   f"misses, {last.xbzrle_pages} delta pages: no page went through it"),
    }
    ok, problem = checks[variant]
    return None if ok else f"{variant}: {problem}"
StartGuest = Callable[..., Guest]  # start(spec, host=..., wait=...): the fixtures' factory


class Run:
    """One variant's migration(s) of a guest running the counter, done once and checked by
    many tests: shared-storage, copy-storage (an overlay per host, mirrored over NBD),
    ping-pong (A->B->A->B, a fresh destination each hop), dirty-memory (a memory-dirtying
    load, auto-converge on), postcopy (switched from precopy under a lighter dirtying load),
    multifd (4 channels), xbzrle (a 64 MiB cache, under a lighter dirtying load). A dirtying
    load ends once the hops are done (the counter runs on). All but copy-storage use shared
    storage where there is some. Guests come from ``start`` (whose owner stops them at the
    end); ``close()`` stops the last one (the guest the checks read: left running, it would
    slow every later variant) and removes the rest."""

    def __init__(self, variant: str, src: Host, dst: Host, spec: GuestSpec, start: StartGuest,
                 shared_dir: str | None = None, tls: MigrationTls | None = None,
                 step: Callable[[str], contextlib.AbstractContextManager] | None = None,
                 samples: int = 1):
        self.variant, self.src, self.dst, self.start, self.tls = variant, src, dst, start, tls
        # hops there (src -> dst), each but the last followed by one back: ping-pong's two
        # there and one back at least
        self.forward = max(samples, 2 if variant == "ping-pong" else 1)
        self.step = step or (lambda title: contextlib.nullcontext())
        self.watch = CounterWatch()
        self.watches = [self.watch]  # watch k reads QEMU process k ("source") and k+1
        self.processes = [src.name]
        self.windows: list[tuple[float, float, str]] = []
        self.hops: list[Migration] = []
        self.sources: list[Guest] = []
        self.source_status = ""
        self.cleanup: list[tuple[Host, str]] = []
        self._log: list[tuple[int, int, float]] = []  # counter_log(): what was read so far
        self.storage = "copy" if variant == "copy-storage" or (
            variant != "shared-storage" and shared_dir is None) else "shared"
        if self.storage == "shared":  # its first disk there (made by the source's start;
            # on a distro image, the image's overlay: the boot disk itself is shared)
            image = f"{shared_dir}/mig-{secrets.token_hex(4)}.qcow2"
            self.cleanup.append((src, image))
            spec = spec.with_(disks=(replace(spec.disks[0], path=image), *spec.disks[1:]))
        self.spec = spec
        log.info("%s migration %s -> %s (%s storage)", variant, src.name,
                 dst.name, self.storage)
        try:
            self._run()
        except BaseException as exc:
            self._release()  # (its guests stay for the failure's diagnostics; the factory
            # stops them)
            if isinstance(exc, KvmError) and shared_dir:
                problem = shared_storage_works(src, dst, shared_dir)
                if problem:  # the likelier cause, said first
                    raise MigrationError(f"the shared storage failed: {problem}; then: "
                                         f"{exc}") from exc
            raise

    def _run(self) -> None:
        src, dst, variant = self.src, self.dst, self.variant
        self.guest = self.start(self.spec, host=src)
        self.token = secrets.token_hex(8)
        self.guest.sh(f"echo {self.token} | dd of=/dev/vda bs=512 conv=fsync 2>/dev/null")
        self.watch.attach(self.guest, "source")
        self.pid = start_counter(self.guest)
        self.stamp = memstamp.start(self.guest)
        self.beacon = memstamp.start_beacon(self.guest, BEAT_MS)
        self.watch.wait_lines("source", 5, 30)
        self.stamped_before = memstamp.progress(self.guest).generation
        if variant in DIRTYING:
            self.dirtying = start_dirtying(self.guest, DIRTYING[variant])
        for to_host in [dst, src] * (self.forward - 1) + [dst]:
            self.hop(to_host)
        # The load served the migration; left running, it would slow every check after it
        # (seconds per command in a nested guest).
        if variant in DIRTYING:
            stop_dirtying(self.guest, self.dirtying)
        self.stamped_after = memstamp.progress(self.guest).generation

    def hop(self, to_host: Host) -> None:
        source = self.guest
        dest = self.start(self.spec.with_(incoming="defer"), host=to_host, wait=False)
        self.watch.attach(dest, "destination")
        if self.storage == "copy":
            mirror_storage(source, dest, stream_to(source.host, dest, self.tls, "nbd"))
        self.watch.wait_beats("source", 100, 30)  # a stretch of beats before it
        started = time.monotonic()
        options = dict(VARIANT_OPTIONS.get(self.variant, {}))
        limit = source.host.entry.config.migration_max_bandwidth
        if limit and "postcopy" not in options:  # (postcopy sets its own, so precopy lasts)
            options["max_bandwidth"] = limit * 1024 * 1024
        with self.step(f"migrate {source.host.name} -> {to_host.name}"):
            result = migrate(source, dest, stream_to(source.host, dest, self.tls, "migrate"),
                             **options)
        self.windows.append((started, time.monotonic(), f"hop {len(self.hops) + 1}"))
        self.processes.append(to_host.name)
        if self.storage == "copy":
            finish_mirror(source, dest)
        result.storage = {"copy": "copy (NBD mirror)", "shared": "shared"}[self.storage]
        wait_running(dest)
        self.watch.wait_lines("destination", 3, 30)
        self.watch.wait_beats("destination", 20, 30)
        result.guest_gap_ms = round(self.watch.gap(started) * 1000, 1)
        result.beat_jitter_ms = round(self.watch.jitter(started) * 1000, 1)
        self.hops.append(result)
        self.sources.append(source)
        self.source_status = source.qmp.execute("query-status")["status"]
        source.stop()
        self.guest = dest
        # the next hop measures its own gap: from here on, dest is the "source" side
        watch = CounterWatch()
        watch.attach(dest, "source")
        self.watch.close()
        self.watches.append(watch)
        self.watch = watch

    def counter_log(self) -> list[tuple[int, int, float]]:
        """The counter's log in the guest now, as (count, pid, uptime). Read incrementally:
        only lines new since the last call travel over the guest's console (a nested guest
        under a dirtying load prints a few KB/s, and the whole log grows by the minute).
        Called once the hops are done: self.guest no longer changes."""
        self._log += counter_log(self.guest, after=len(self._log))
        return list(self._log)

    def memory_problem(self, timeout: float = 60.0) -> str | None:
        """None when the memory-integrity program kept running across the hops and found
        every page as it last wrote it, up to two whole passes after this call (each pass
        checks every page before it stamps the next generation); else what it saw."""
        where = f"{self.guest.host.name}/{self.guest.spec.name}"
        target = max(memstamp.progress(self.guest).generation, self.stamped_after) + 2
        now = wait_until(lambda: (p := memstamp.progress(self.guest)).generation >= target
                         and p, timeout, f"{where}: memstamp's pass {target}", step=0.3)
        if now.bad or now.reports:
            return (f"{now.bad} page(s) of the guest's memory changed behind memstamp's back "
                    f"(pid {self.stamp.pid}, {self.stamp.pages} pages at {self.stamp.addr:#x}"
                    f"): " + "; ".join(now.reports))
        if self.stamped_after <= self.stamped_before:
            return (f"memstamp did not run across the hops (generation {self.stamped_before} "
                    f"before, {self.stamped_after} after)")
        if self.guest.run(f"kill -0 {self.stamp.pid}", check=False)[0] != 0:
            return f"memstamp (pid {self.stamp.pid}) is no longer running"
        return None

    def figures(self) -> dict[str, list]:
        """Each figure's samples: one per hop there (src -> dst); the hops back, under
        ``back_<figure>``."""
        out: dict[str, list] = {}
        for i, hop in enumerate(self.hops):
            prefix = "" if i % 2 == 0 else "back_"
            for name in FIGURES:
                out.setdefault(prefix + name, []).append(getattr(hop, name))
        return out

    def counter_samples(self) -> list[tuple[float, int, str]]:
        """The guest's counter across the hops as (arrival, count, QEMU process) — a line
        read from two consoles counts once, at its first arrival."""
        first: dict[int, tuple[float, int, str]] = {}
        for k, watch in enumerate(self.watches):
            for line in watch.lines:
                proc = k if line.side == "source" else k + 1
                name = f"QEMU {proc + 1} on {self.processes[proc]}"
                if line.count not in first or line.arrived < first[line.count][0]:
                    first[line.count] = (line.arrived, line.count, name)
        return sorted(first.values())

    def close(self) -> None:
        """After the checks: the last guest stopped, then its files removed."""
        self.guest.stop()
        self._release()

    def _release(self) -> None:
        self.watch.close()
        for host, path in self.cleanup:  # (storage that went away must not hide the error)
            try:
                host.run(["rm", "-f", path], check=False, timeout=60)
            except KvmError as exc:
                log.warning("%s: could not remove %s: %s", host.name, path, exc)
