"""One migration over QMP: where its stream goes (:class:`Stream`: a unix socket, TLS or plain
TCP), the source's ``migrate`` and the destination's ``migrate-incoming``, and what it did
(:class:`Migration`, in QMP's numbers and the guest's)."""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field

from ...errors import KvmError
from ...guest import Guest
from ...host import Host
from ...waiting import first_within, wait_until
from .tls import MigrationTls, tls_creds

log = logging.getLogger("pytest_kvm.migration")


class MigrationError(KvmError):
    pass


class MigrationUnsupported(MigrationError):
    """An end's QEMU lacks what the migration needs (a capability): a skip, naming both ends'
    versions, not a failure."""


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
            params = {"tls_creds": tls_creds(guest, stream.tls, endpoint)}
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
