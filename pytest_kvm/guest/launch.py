"""Launching a guest: its run dir prepared (overlays, seed, command line), images checked
before QEMU opens them, QEMU started and waited for; a port another process took, retried."""

from __future__ import annotations

import json
import logging
import random
import re
import secrets
import shlex
import shutil
import tempfile

from .. import remote
from ..errors import printable
from ..host import Host, Owner
from .cloudinit import network_config, nocloud_seed
from .image import MicroImage
from .qemu import Guest
from .spec import SSH_MAC, GuestSpec, Nic, render
from .state import RUN_DIR, GuestError, GuestState, PortTaken

log = logging.getLogger("pytest_kvm.guest")


def safe_name(text: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:limit].strip("_") or "guest"


def start_guest(host: Host, spec: GuestSpec, image: MicroImage, owner: Owner, seq: int,
                label: str = "", wait: bool = True) -> Guest:
    """Provision and boot a guest on a host; returns once its shell is ready (``wait``)."""
    for attempt in range(4):
        port = random.randrange(20000, 60000) if spec.ssh_key else None
        try:
            return _start_guest(host, spec, image, owner, seq, label, wait, port)
        except PortTaken:
            if port is None or attempt == 3:
                raise
            log.info("%s/%s: port %d was taken; another one", host.name, spec.name, port)
    raise AssertionError("unreachable")


_CHECKED: set[tuple[str, str]] = set()  # (host, cached image) found safe in this process


class UntrustedImage(GuestError):
    """A disk image names what QEMU would open besides the image itself."""


def untrusted_image(host: Host, path: str, fmt: str, overlay: bool = False) -> None:
    """Refuse an image (a guest image, or a disk on shared storage) whose header names a
    backing file or an external data file: the guest would read a host file or device.
    Inspected with ``qemu-img info`` without following the chain (a named file is never
    opened); QEMU is given the chain explicitly anyway. ``overlay``: a run's overlay on
    shared storage, whose backing name is ours and ignored (the chain QEMU gets is explicit),
    checked at each use. A cached image (its path names its content hash) is inspected once
    per host."""
    cache = not overlay
    if cache and (host.name, path) in _CHECKED:
        return
    r = host.run(["qemu-img", "info", "-U", "--output=json", "-f", fmt, "--", path],
                 check=False, timeout=60)
    try:
        info = json.loads(r.stdout) if r.ok else None
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise UntrustedImage(f"{host.name}: {printable(path)} is not a {fmt} image qemu-img "
                             f"reads: {printable((r.stderr or r.stdout).strip()[-200:])}")
    data = (info.get("format-specific") or {}).get("data") or {}
    backing = None if overlay else info.get("backing-filename")
    named = backing or (data.get("data-file") if fmt == "qcow2" else None)
    if named:
        what = "a backing file" if backing else "an external data file"
        raise UntrustedImage(
            f"{host.name}: {printable(path)} names {what} ({printable(str(named))[:200]}), "
            f"which the guest would read; use an image without one (qemu-img convert -O "
            f"{fmt} it into a standalone image)")
    if cache:
        _CHECKED.add((host.name, path))


def _start_guest(host: Host, spec: GuestSpec, image: MicroImage, owner: Owner, seq: int,
                 label: str, wait: bool, ssh_port: int | None) -> Guest:
    accel = spec.accel or host.accel
    boot_disk = spec.cloud_init is not None and spec.kernel is None and spec.root is None
    kernel = None if boot_disk else host.put_cached(spec.kernel or image.kernel)
    initrd = spec.initrd or (image.initrd if spec.kernel is None else None)
    initrd = host.put_cached(initrd) if initrd and not boot_disk else None
    # unique even for two sessions that share a run id (mkdir below refuses an existing dir)
    rundir = f"{host.workdir}/{RUN_DIR}/{owner.run_id}-{seq}-{secrets.token_hex(3)}"
    # The cloud-init seed may hold a password: 0600 in the guest's own run dir (removed when
    # the guest stops), never in the shared upload cache.
    seed = f"{rundir}/seed.iso" if spec.cloud_init else None
    proc_name = f"pytest-kvm-{owner.run_id}-{safe_name(label or spec.name)}"
    bases = []
    prepare = [["mkdir", "-p", f"{host.workdir}/{RUN_DIR}"], ["mkdir", "-m", "0700", rundir],
               remote.argv("write", owner.line() + "\n", f"{rundir}/owner")]
    for disk in spec.disks:
        if disk.image:
            bases.append(host.put_cached(disk.image))
            untrusted_image(host, bases[-1], disk.format)
        else:
            base = f"{host.workdir}/cache/blank-{disk.size}.qcow2"
            prepare.append(remote.argv("blank-disk", base, disk.size))
            bases.append(base)
    uefi_code = None
    if spec.firmware == "uefi":
        if not host.facts.ovmf_code:
            raise GuestError(f"{host.name}/{spec.name}: no UEFI firmware (OVMF) on the host; "
                             "install it (apt-get install ovmf)")
        uefi_code = host.facts.ovmf_code
        prepare.append(["cp", "--", host.facts.ovmf_vars, f"{rundir}/efivars.fd"])
    rendered = render(spec, qemu=host.qemu, accel=accel, rundir=rundir, proc_name=proc_name,
                      kernel=kernel, initrd=initrd, disk_bases=bases, seed=seed,
                      uefi_code=uefi_code, ssh_port=ssh_port)
    shared = [o for d, (o, _, _) in zip(spec.disks, rendered.overlays, strict=True) if d.shared]
    for overlay, base, fmt in rendered.overlays:
        create = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", base, overlay]
        if overlay not in shared:
            prepare.append(create)
        elif spec.incoming is None:  # on shared storage, made by the first guest (a
            # migration's source): created exclusively (noclobber), never one found there
            prepare.append(["sh", "-c", 'set -C; f=$1; shift; : > "$f" && exec "$@"',
                            "shared-disk", overlay, *create])
    prepare.append(remote.argv("write", shlex.join(rendered.argv) + "\n", f"{rundir}/cmdline"))
    script = " && ".join(shlex.join(step) for step in prepare)
    host.run(["mkdir", "-p", f"{host.workdir}/cache"], timeout=30)
    try:
        host.run(script, timeout=120)
        for overlay in shared:  # what the source made, or the run's own disk: checked anyway
            untrusted_image(host, overlay, "qcow2", overlay=True)
    except BaseException:  # (nothing started: the run dir goes, a refused disk stays)
        host.run(["rm", "-rf", "--", rundir], check=False, timeout=60)
        raise
    if spec.cloud_init:
        local = tempfile.mkdtemp(prefix="pytest-kvm-seed-")
        try:
            network = network_config(SSH_MAC if ssh_port else None,
                                     [Nic.mac(i) for i in range(len(spec.nics))])
            host.transport.put(nocloud_seed(spec.cloud_init, local, network), seed, mode=0o600)
        finally:
            shutil.rmtree(local, ignore_errors=True)
    guest = Guest(host, spec, rundir, proc_name, rendered.argv, accel)
    guest.ssh_port = ssh_port
    guest.log.info("starting QEMU (%s, %s) in %s", accel,
                   "its own bootloader" if boot_disk else "direct kernel boot", rundir)
    r = host.run(remote.argv("qemu-launch", rundir, *rendered.argv), check=False,
                 timeout=60)
    if r.stdout.startswith("pid="):
        guest.pid = int(r.stdout.strip().split("=", 1)[1])
    else:
        err = guest.read_log("qemu.log", 20).strip()
        host.run(["rm", "-rf", rundir], check=False, timeout=30)
        guest.state = GuestState.STOPPED
        why = "did not open its sockets within 30 s" if "slow" in r.stdout else "exited at once"
        detail = err or r.stderr.strip()
        # (QEMU says so only in words: read once, here; callers retry on the type)
        kind = PortTaken if "host forwarding" in detail else GuestError
        raise kind(f"{guest.where}: QEMU {why}: {detail}")
    if wait:
        try:
            waited = guest.wait_ready()
        except BaseException:
            guest.stop(keep_dir=False)
            raise
        guest.state = GuestState.RUNNING
        guest.log.info("ready in %.1f s (commands: %s)", waited, guest.channel)
    return guest
