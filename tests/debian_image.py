"""A small real Debian guest image for the distro-image test, built with debootstrap.

debootstrap (minbase + systemd, openssh-server, cloud-init), the micro guest's kernel modules
copied in, `mkfs.ext4 -d` (no loop mounts), then a qcow2. Cached under the user's cache dir.
It boots with the micro guest's kernel and initramfs, which switch_root to /dev/vda.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from filelock import FileLock

from pytest_kvm.guest.image import MODULES, cache_root, fetch_debian_kernel, module_closure

SUITE = "bookworm"
PACKAGES = ("systemd-sysv,openssh-server,cloud-init,python3-cffi-backend,ifupdown,"
            "isc-dhcp-client,udev,kmod")
VERSION = "1"

CLOUD_CFG = """\
# Only the NoCloud seed: never probe a metadata server over the network.
datasource_list: [ NoCloud, None ]
# minbase has no locales package: nothing to configure
locale: false
"""


def debian_mirror() -> str:
    """The Debian mirror this machine's apt already uses."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            if re.search(rf"^Suites:.*\b{SUITE}\b", stanza, re.M) and "debian-archive" in stanza:
                match = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                if match:
                    return match.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    raise RuntimeError("no Debian bookworm mirror in /etc/apt; cannot debootstrap")


def build() -> str:
    vmlinuz, modules = fetch_debian_kernel()
    key = hashlib.sha256(f"{VERSION} {SUITE} {PACKAGES} {modules.name} {CLOUD_CFG} "
                         f"{MODULES}".encode())
    out = cache_root() / "debian" / f"{SUITE}-{key.hexdigest()[:16]}.qcow2"
    if out.exists():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock", timeout=1800):
        if out.exists():
            return str(out)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            root = Path(tmp) / "root"
            subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE,
                            str(root), debian_mirror()], check=True, capture_output=True,
                           timeout=1200)
            dest = root / "lib" / "modules" / modules.name
            for mod in module_closure(modules, MODULES):
                (dest / mod).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(modules / mod, dest / mod)
            for extra in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
                shutil.copyfile(modules / extra, dest / extra)
            subprocess.run(["depmod", "-b", str(root), modules.name], check=True)
            (root / "etc" / "fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
            (root / "etc" / "hostname").write_text("localhost\n")  # cloud-init names it
            (root / "etc" / "cloud" / "cloud.cfg.d" / "99-pytest-kvm.cfg").write_text(CLOUD_CFG)
            lo = "auto lo\niface lo inet loopback\n"
            (root / "etc" / "network" / "interfaces").write_text(lo)
            for f in ("etc/machine-id", "var/lib/dbus/machine-id"):
                if (root / f).exists():
                    (root / f).write_text("")  # each boot gets its own
            raw = Path(tmp) / "image.raw"
            subprocess.run(["mkfs.ext4", "-q", "-L", "root", "-d", str(root), str(raw), "1536M"],
                           check=True, timeout=600)
            part = f"{out}.{os.getpid()}"
            subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), part], check=True,
                           timeout=600)
            os.replace(part, out)
    return str(out)
