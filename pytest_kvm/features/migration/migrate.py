"""One migration over QMP: where its stream goes (:class:`Stream`: a unix socket, TLS or plain
TCP), the source's ``migrate`` and the destination's ``migrate-incoming``, and what it did
(:class:`Migration`, in QMP's numbers and the guest's)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, fields

from ...errors import KvmError
from ...guest import Guest
from ...host import Host
from ...waiting import first_within, wait_until
from .job import Job, OnSample, Options
from .tls import MigrationTls

log = logging.getLogger("pytest_kvm.migration")

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

    job: object = field(default=None, repr=False, compare=False)  # the Job it came from

    def properties(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("extra", "job")}

    def fill(self, info: dict, stream: str, multifd_channels: int) -> None:
        """The completed migration's figures, from the source's last query-migrate."""
        ram = info.get("ram", {})
        xbzrle = info.get("xbzrle-cache", {})
        self.status = info.get("status", "")
        self.stream = stream
        self.total_time_ms = int(info.get("total-time", 0))
        self.downtime_ms = int(info.get("downtime", 0))
        self.setup_time_ms = int(info.get("setup-time", 0))
        self.transferred_bytes = int(ram.get("transferred", 0))
        self.throughput_mbps = float(ram.get("mbps", 0.0))
        self.postcopy_requests = int(ram.get("postcopy-requests", 0))
        self.multifd_channels = multifd_channels
        self.multifd_bytes = int(ram.get("multifd-bytes", 0))
        self.xbzrle_cache_size = int(xbzrle.get("cache-size", 0))
        self.xbzrle_cache_miss = int(xbzrle.get("cache-miss", 0))
        self.xbzrle_pages = int(xbzrle.get("pages", 0))


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


def migrate(source: Guest, destination: Guest, stream: Stream, *,
            timeout: float | None = None, auto_converge: bool = False,
            max_bandwidth: int | None = None, postcopy: bool = False, multifd_channels: int = 0,
            xbzrle_cache: int = 0, postcopy_bandwidth: int = 0,
            options: Options | None = None, on_sample: OnSample | None = None) -> Migration:
    """Migrate over QMP: the destination listens (migrate-incoming on ``stream``), the source
    sends, and the :class:`~.job.Job` watches it to its end.

    ``postcopy``: start in precopy (bandwidth-limited, so it cannot finish on its own), switch
    with migrate-start-postcopy once some RAM went, then pages are pulled by the destination.
    ``multifd_channels``: RAM over that many parallel connections. ``xbzrle_cache``: re-sent
    pages as deltas against a cache of that many bytes. No fixed deadline: the job's watchdog
    fails a migration whose link stalled or that cannot converge (cancelled, naming the
    figures), or that runs past what its RAM at the measured rate allows; ``timeout`` caps
    that. ``options``: all of them at once (the keywords are then ignored). ``on_sample``:
    see Job.wait.
    """
    options = options or Options(auto_converge=auto_converge, max_bandwidth=max_bandwidth,
                      postcopy=postcopy, postcopy_bandwidth=postcopy_bandwidth,
                      multifd_channels=multifd_channels, xbzrle_cache=xbzrle_cache)
    job = Job(source, destination, stream, options,
              restream=lambda name: stream_to(source.host, destination, stream.tls, name))
    job.prepare()
    job.start()
    return finish(job, job.wait(on_sample, hard_cap_s=timeout))


def finish(job: Job, info: dict) -> Migration:
    """What a completed migration did (from the source's last query-migrate), its
    destination now the guest's continuation."""
    source, destination, options = job.source, job.destination, job.options
    result = Migration(source.host.name, destination.host.name,
                       source.host.name == destination.host.name,
                       machine=source.spec.machine, cpu=source.spec.cpu or "",
                       source_qemu=source.host.facts.qemu_version,
                       destination_qemu=destination.host.facts.qemu_version, job=job)
    result.capabilities = ",".join(c for c, on in options.capabilities().items() if on)
    if not info.get("total-time"):
        # QEMU 7.2 says "completed" a moment before it has computed total-time and downtime
        # (seen: 0 and 0 after 109 MB moved): read again, briefly, until they are there
        log.info("%s: 'completed' without total-time yet (QEMU %s); reading it again",
                 source.host.name, result.source_qemu)
        info = first_within(lambda: (i := source.qmp.execute("query-migrate")).get(
            "total-time") and i, 5, "the completed migration's total-time", step=0.05) or info
    if options.postcopy and job.switched and not job.postcopy_active_seen:
        try:  # it may have passed quickly, to completed: QEMU's events kept it
            source.qmp.event("MIGRATION", timeout=1, status="postcopy-active")
            job.postcopy_active_seen = True
        except KvmError:
            pass
    destination.follow(source)  # the guest (its agent, sshd or login) moved with it
    result.fill(info, job.stream.kind, options.multifd_channels)
    result.postcopy_active_seen = job.postcopy_active_seen
    return result


def wait_running(guest: Guest, timeout: float = 30.0) -> str:
    """Wait for the (destination) guest to run; WaitTimeout naming its last status."""
    where = f"{guest.host.name}/{guest.spec.name}"
    status = {"now": ""}

    def running() -> bool:
        status["now"] = guest.qmp.execute("query-status")["status"]
        return status["now"] == "running"

    wait_until(running, timeout, f"{where}: running after the migration", step=0.2)
    return status["now"]
