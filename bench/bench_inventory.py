"""inventory_read: ``python -m pytest_kvm inventory -i F --list`` on a 60,000-host inventory,
against ``ansible-inventory -i F --list`` (ansible-core, empty config) on the same file.

The inventory is what a large fleet's looks like: 600 racks of 100 hosts (one range line
each, with host variables), rack variables, 6 data-centre groups of racks with their own
variables, ``all`` variables and ``group_vars/`` files. Each command runs twice, the faster
run counts (interpreter start included, for both). The two outputs must be the same data,
or the figure is not written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RACKS, PER_RACK, DCS = 600, 100, 6


def write_inventory(folder: Path) -> Path:
    lines: list[str] = []
    for i in range(RACKS):
        lines += [f"[rack{i:03d}]",
                  f"node{i:03d}-[001:{PER_RACK:03d}] ansible_user=u{i % 7} kvm_suites=virtio",
                  f"[rack{i:03d}:vars]", f"rack_id={i}"]
    for j in range(DCS):
        lines += [f"[dc{j}:children]", *(f"rack{i:03d}" for i in range(j, RACKS, DCS)),
                  f"[dc{j}:vars]", f"ansible_port={2200 + j}"]
    lines += ["[all:vars]", "ansible_connection=ssh"]
    (folder / "group_vars").mkdir()
    (folder / "group_vars" / "dc1.yml").write_text("kvm_migration_tls: yes\n")
    (folder / "group_vars" / "all.yml").write_text("site: lab\n")
    path = folder / "hosts.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def _best(cmd: list[str], env: dict[str, str], runs: int = 2) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(runs):
        start = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                           check=True)
        best, out = min(best, time.perf_counter() - start), r.stdout
    return best, out


def run() -> list[dict]:
    exe = shutil.which("ansible-inventory", path=os.path.dirname(sys.executable))
    if exe is None:
        raise RuntimeError("ansible-inventory is not installed (make setup)")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp, "home")
        home.mkdir()
        (home / "ansible.cfg").write_text("")
        path = write_inventory(Path(tmp))
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "LC_ALL": "C.UTF-8",
               "ANSIBLE_CONFIG": str(home / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
        ours, ours_out = _best([sys.executable, "-m", "pytest_kvm", "inventory", "-i",
                                str(path), "--list"], {**env, **_pythonpath()})
        theirs, theirs_out = _best([exe, "-i", str(path), "--list"], env)
    if json.loads(ours_out) != json.loads(theirs_out):
        raise RuntimeError("pytest-kvm's --list differs from ansible-inventory's")
    hosts = len(json.loads(ours_out)["_meta"]["hostvars"])
    return [{"name": "inventory_read", "value": round(ours, 2), "unit": "s",
             "baseline": round(theirs, 2), "ratio": round(ours / theirs, 3),
             "hosts": hosts}]


def _pythonpath() -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
