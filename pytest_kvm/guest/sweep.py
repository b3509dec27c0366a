"""Find and stop guests left behind by dead runs of pytest-kvm (and only those)."""

from __future__ import annotations

import logging

from .. import remote
from ..host import Host, list_owned
from .state import RUN_DIR

log = logging.getLogger("pytest_kvm.guest")


def stale_runs(host: Host, current_run: str | None) -> list[str]:
    """Run dirs on the host whose owner (a pytest process on this controller) is gone: only
    direct children of the work dir's run/ with names pytest-kvm gives."""
    return [path for path, owner in list_owned(host, RUN_DIR, "dir")
            if owner.run_id != current_run and owner.is_dead()]


def sweep(host: Host, current_run: str | None) -> list[str]:
    """Stop the QEMU of every stale run dir (TERM, then KILL) and remove the dirs."""
    swept = []
    for path in stale_runs(host, current_run):
        r = host.run(remote.argv("qemu-stop", path, "0", ""), check=False, timeout=60)
        if r.ok:
            log.info("%s: stopped a dead run's guest and removed %s", host.name, path)
            swept.append(path)
    return swept
