"""Find and stop guests left behind by dead runs of pytest-kvm (and only those)."""

from __future__ import annotations

from ..host import Host
from .qemu import RUN_DIR, STOP, Owner

LIST = r"""
for d in "$1"/*/; do
  [ -f "$d/owner" ] || continue
  printf '%s %s\n' "${d%/}" "$(head -n1 "$d/owner")"
done
"""


def stale_runs(host: Host, current_run: str | None) -> list[str]:
    """Run dirs on the host whose owner (a pytest process on this controller) is gone."""
    r = host.run(["sh", "-c", LIST, "list", f"{host.workdir}/{RUN_DIR}"], check=False,
                 timeout=60)
    stale = []
    for line in r.stdout.splitlines():
        path, _, owner_line = line.partition(" ")
        owner = Owner.parse(owner_line)
        if owner is None or owner.run_id == current_run:
            continue
        if owner.is_dead():
            stale.append(path)
    return stale


def sweep(host: Host, current_run: str | None) -> list[str]:
    """Stop the QEMU of every stale run dir (TERM, then KILL) and remove the dirs."""
    swept = []
    for path in stale_runs(host, current_run):
        r = host.run(["sh", "-c", STOP, "sweep", path, "0", ""], check=False, timeout=60)
        if r.ok:
            swept.append(path)
    return swept
