"""The built-in micro guest: a distro kernel plus a busybox initramfs, built on the controller.

The kernel comes from Debian's ``linux-image-<version>-amd64`` package (one exact package,
resolved through ``linux-image-amd64``), or from a vmlinuz and a modules directory given in
the inventory. The initramfs holds a static busybox, the kernel modules the suites need (with
their dependencies) and an init that behaves like a distro's: it loads drivers for the
devices present from their modaliases, prints a ready marker and runs a root shell on the
serial console. Results are cached by content hash under the user's cache directory.
"""

from __future__ import annotations

import functools
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from filelock import FileLock

from ..errors import KvmError
from ..files import private_dir

BUILDER_VERSION = "4"
READY_MARKER = "PYTEST-KVM-READY"
PROMPT = "[pytest-kvm]# "
SHELL_PORT = "org.pytest-kvm.shell"  # the virtio console of the shell (GuestSpec.shell)
BUSYBOX = "/bin/busybox"

# What the suites need in a guest; dependencies are added from modules.dep.
MODULES = (
    "virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "virtio_balloon", "virtio_console",
    "virtio_rng", "9p", "9pnet_virtio", "kvm", "kvm_intel", "kvm_amd", "vfio", "vfio_pci",
    "vfio_iommu_type1", "igb", "igbvf", "nvme", "e1000e", "sd_mod", "crc32c_generic", "ext4",
    "isofs", "overlay",
    # stacked network devices (a nested host's management NIC under a bridge, bond or VLAN)
    "bonding", "8021q", "bridge", "macvlan",
    "tun",  # a nested host's guests with tap NICs (multiqueue virtio-net)
    "nfsd", "nfsv4",  # the two-host lab's shared storage (NFS between nested hosts)
)

# The initramfs's init (a distro-like boot, then a root shell) and what it runs to become a
# nested host (pkvm.hostroot=1): shell in files of their own, checked by shellcheck.
INIT = resources.files(__package__).joinpath("micro-init.sh").read_text()
HOSTROOT = resources.files(__package__).joinpath("micro-hostroot.sh").read_text()

PROFILE = f"""export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
PS1='{PROMPT}'
# No echo on a console's shell: busybox's line editing echoes every typed character with a
# write of its own, a VM exit each (most of a command's time in a nested guest); with echo
# off the shell reads whole lines (`stty echo` to type at it by hand).
[ -t 0 ] && stty -echo 2>/dev/null
# With echo off busybox reads a line with fgets, and a background job's end (SIGCHLD) while
# the shell waits at its prompt interrupts that read, which busybox takes for end of input:
# the shell exited and was started again, and a command typed meanwhile was lost.
set -o ignoreeof
"""


@dataclass(frozen=True)
class MicroImage:
    kernel: str  # path on the controller
    initrd: str
    kernel_version: str

    @property
    def marker(self) -> str:
        return READY_MARKER


def cache_root() -> Path:
    """The controller's cache ($XDG_CACHE_HOME/pytest-kvm, or ~/.cache/pytest-kvm), made 0700
    and checked, with everything in it, before its first use in this process: a kernel or
    image another user could have planted is never booted."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return _checked_cache(str(Path(base) / "pytest-kvm"))


@functools.cache
def _checked_cache(path: str) -> Path:
    return private_dir(path, "the controller's cache")


def _sh(*argv: str, cwd: str | None = None) -> str:
    try:
        return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True,
                              timeout=600).stdout
    except FileNotFoundError as exc:
        raise KvmError(f"{argv[0]} not found on the controller (needed to build the micro "
                       "guest); on Debian: apt-get install dpkg kmod busybox-static") from exc
    except subprocess.CalledProcessError as exc:
        raise KvmError(f"`{' '.join(argv)}` failed: {exc.stderr.strip()[-500:]}") from exc


def debian_kernel_package() -> str:
    """The exact linux-image package behind linux-image-amd64 (never a glob)."""
    out = _sh("apt-cache", "depends", "linux-image-amd64")
    match = re.search(r"Depends:\s*(linux-image-\d\S*)", out)
    if not match:
        raise KvmError("cannot resolve linux-image-amd64 to a kernel package (run apt-get "
                       "update), or give kvm_guest_kernel and kvm_guest_modules")
    return match.group(1)


def fetch_debian_kernel(package: str | None = None) -> tuple[Path, Path]:
    """Download and unpack one kernel package; returns (vmlinuz, modules dir)."""
    package = package or debian_kernel_package()
    root = cache_root() / "kernels" / package
    done = root / ".done"
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock", timeout=900):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            _sh("apt-get", "download", package, cwd=str(root))
            deb = next(root.glob("*.deb"))
            _sh("dpkg-deb", "-x", str(deb), str(root / "x"))
            deb.unlink()
            version = next((root / "x" / "lib" / "modules").iterdir()).name
            _sh("depmod", "-b", str(root / "x"), version)
            done.write_text(package)
    version = next((root / "x" / "lib" / "modules").iterdir()).name
    return root / "x" / "boot" / f"vmlinuz-{version}", root / "x" / "lib" / "modules" / version


def _norm(name: str) -> str:
    return name.replace("-", "_")


def module_closure(modules_dir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Relative paths of the wanted modules and everything they depend on."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[_norm(Path(mod).name.split(".ko")[0])] = mod
    builtin = {_norm(Path(x).name.split(".ko")[0])
               for x in (modules_dir / "modules.builtin").read_text().split()}
    out: set[str] = set()
    todo = []
    for name in wanted:
        if _norm(name) in by_name:
            todo.append(by_name[_norm(name)])
        elif _norm(name) not in builtin:
            raise KvmError(f"kernel module {name!r} is neither in {modules_dir} nor built in")
    while todo:
        mod = todo.pop()
        if mod not in out:
            out.add(mod)
            todo += deps.get(mod, [])
    return sorted(out)


class _Cpio:
    """A newc cpio archive (the initramfs format), written without external tools."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self.buf.write(b"\0" * (-(110 + len(encoded)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:24]


def build_micro(kernel: str | None = None, modules_dir: str | None = None,
                package: str | None = None) -> MicroImage:
    """Build (or take from the cache) the micro guest for a kernel."""
    if bool(kernel) != bool(modules_dir):
        raise KvmError("give both kvm_guest_kernel and kvm_guest_modules, or neither")
    if kernel:
        kpath, mdir = Path(kernel), Path(modules_dir)
        for p in (kpath, mdir):
            if not p.exists():
                raise KvmError(f"guest kernel input {p} does not exist")
        if not (mdir / "modules.dep").exists():
            _sh("depmod", "-b", str(mdir.parent.parent.parent), mdir.name)
    else:
        kpath, mdir = fetch_debian_kernel(package)
    if not os.path.exists(BUSYBOX) or not _is_static(BUSYBOX):
        raise KvmError(f"{BUSYBOX} is missing or not static; apt-get install busybox-static")
    version = mdir.name
    init = INIT.replace("@READY@", READY_MARKER).replace("@SHELL@", SHELL_PORT).encode()
    mods = module_closure(mdir, MODULES)
    from . import memstamp  # (it builds the guest's programs; it needs this module's cache)

    # the guest's own programs, where memstamp.install looks first: no base64 round trips
    programs = {f"{memstamp.GUEST_DIR}/pkvm-{name}".lstrip("/"): memstamp.binary(name)
                for name in memstamp.PROGRAMS}
    key = _digest(BUILDER_VERSION.encode(), kpath.read_bytes(), Path(BUSYBOX).read_bytes(),
                  init, PROFILE.encode(), HOSTROOT.encode(), "\n".join(mods).encode(),
                  *programs.values())
    out = cache_root() / "images" / key
    image = MicroImage(str(out / "vmlinuz"), str(out / "initrd.cpio"), version)
    if (out / ".done").exists():
        return image
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock", timeout=600):
        if (out / ".done").exists():
            return image
        with tempfile.TemporaryDirectory() as tmp:
            stage = Path(tmp) / "lib" / "modules" / version
            for mod in mods:
                (stage / mod).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(mdir / mod, stage / mod)
            for extra in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
                if (mdir / extra).exists():
                    shutil.copyfile(mdir / extra, stage / extra)
            _sh("depmod", "-b", tmp, version)
            cpio = _Cpio()
            for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "root", "tmp"):
                cpio.dir(d)
            cpio.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
            cpio.symlink("bin/sh", "busybox")
            cpio.file("init", init, 0o755)
            cpio.file("etc/profile", PROFILE.encode())
            cpio.file("etc/pkvm-hostroot.sh", HOSTROOT.encode())
            cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
            cpio.file("etc/group", b"root:x:0:\n")
            for path, data in programs.items():
                cpio.file(path, data, 0o755)
            for path in sorted(Path(tmp, "lib").rglob("*")):
                rel = str(path.relative_to(tmp))
                if path.is_dir():
                    cpio.dir(rel)
                else:
                    cpio.file(rel, path.read_bytes())
            (out / "initrd.cpio.part").write_bytes(cpio.finish())
            os.replace(out / "initrd.cpio.part", out / "initrd.cpio")
        vmlinux = _pvh_vmlinux(kpath)
        if vmlinux is not None:  # boots in half the time under TCG (PVH entry, no unpacking)
            (out / "vmlinuz").write_bytes(vmlinux)
        else:
            shutil.copyfile(kpath, out / "vmlinuz")
        (out / ".done").write_text(version)
    return image


def _is_static(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    return b"/lib64/ld-linux" not in head and b"/lib/ld-linux" not in head


def _pvh_vmlinux(vmlinuz: Path) -> bytes | None:
    """The uncompressed ELF kernel inside a bzImage, when the kernel has a PVH entry point."""
    config = vmlinuz.parent / vmlinuz.name.replace("vmlinuz", "config")
    if not config.exists() or "CONFIG_PVH=y" not in config.read_text(errors="replace"):
        return None
    data = vmlinuz.read_bytes()
    for magic, make in ((b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor()),
                        (b"\x1f\x8b\x08", lambda: zlib.decompressobj(31))):
        at = data.find(magic)
        if at < 0:
            continue
        try:
            elf = make().decompress(data[at:])
        except (lzma.LZMAError, zlib.error):
            continue
        if elf[:4] == b"\x7fELF":
            return elf
    return None
