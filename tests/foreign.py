"""Images made by tools other than pytest-kvm's builder, for the tests that boot them: a Debian
image built by mkosi (tests/images/mkosi.conf). Built once per machine and cached beside
``make image``'s, by the content of its configuration and mkosi's version.

``python tests/foreign.py`` builds it and prints its path (for the suites by hand:
``kvm_guest_image=PATH``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from filelock import FileLock

from pytest_kvm.guest import distro
from pytest_kvm.guest.image import cache_root

MKOSI_CONF = Path(__file__).parent / "images" / "mkosi.conf"


def mkosi_image() -> str:
    """The mkosi-built image's qcow2 (built on first use: about 2 minutes)."""
    mkosi = shutil.which("mkosi")
    if mkosi is None:
        raise RuntimeError("mkosi is not installed: run make setup-report (mkosi from "
                           "bookworm-backports)")
    version = subprocess.run([mkosi, "--version"], capture_output=True, text=True,
                             check=True, timeout=60).stdout.strip()
    conf = MKOSI_CONF.read_text()
    key = hashlib.sha256(f"{version}\n{conf}".encode()).hexdigest()[:16]
    out = cache_root() / "distro" / f"mkosi-bookworm-{key}.qcow2"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock", timeout=3600):
        if not out.exists():
            with tempfile.TemporaryDirectory(dir=out.parent, prefix="mkosi-") as tmp:
                shutil.copy(MKOSI_CONF, Path(tmp) / "mkosi.conf")
                # this machine's Debian mirror, and only it (mkosi would add debian-debug
                # and security.debian.org, which a registries-only network does not reach)
                build = subprocess.run(
                    [mkosi, "--directory", tmp, f"--local-mirror={distro.debian_mirror()}",
                     "--output-dir", tmp, "--force", "build"],
                    capture_output=True, text=True, timeout=1800)
                if build.returncode != 0:
                    raise RuntimeError("mkosi build failed: "
                                       + " | ".join((build.stdout + build.stderr)
                                                    .strip().splitlines()[-12:]))
                part = Path(tmp) / "disk.qcow2"
                subprocess.run(["qemu-img", "convert", "-O", "qcow2",
                                str(Path(tmp) / "pkvm-mkosi.raw"), str(part)], check=True,
                               timeout=900)
                os.replace(part, out)
    return str(out)


if __name__ == "__main__":
    print(mkosi_image())
    sys.exit(0)
