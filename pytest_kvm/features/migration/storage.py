"""A migrating guest's storage: shared storage proved by a token, or the top layer mirrored
to the destination over NBD (as libvirt's copy-storage does)."""

from __future__ import annotations

import contextlib
import logging
import secrets

from ... import remote
from ...errors import KvmError
from ...guest import Guest
from ...host import Host
from .migrate import Stream

log = logging.getLogger("pytest_kvm.migration")


def disk_node(guest: Guest, node: str = "disk0") -> dict:
    """QEMU's view of a guest's disk: its format node, and under ``"protocol"`` the node of
    its own file (whose cache mode is the one that matters)."""
    nodes = guest.qmp.execute("query-named-block-nodes")
    top = next((n for n in nodes if n.get("node-name") == node), {})
    protocol = next((n for n in nodes if n.get("drv") == "file"
                     and n.get("file") == top.get("file") and n is not top), {})
    return {**top, "protocol": protocol}


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


def serve_nbd(destination: Guest, stream: Stream, node: str = "disk0") -> str:
    """Export the destination's disk ``node`` writable over NBD on ``stream`` (a unix socket in
    the run dir, or TLS: QEMU lists its exports to anyone who connects, so a name alone
    protects nothing); returns the export's name."""
    export = f"pytest-kvm-{secrets.token_hex(12)}"
    server = {}
    if stream.tls is not None:
        server["tls_creds"] = stream.tls.creds(destination, "server")
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
        client = {"tls_creds": stream.tls.creds(source, "client"),
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
