"""A bootable, cloud-style Debian image (12 "bookworm" by default, 13 "trixie" with
``--release trixie``) for labs that have none (``make image``).

What a cloud image has: a GPT disk with a BIOS boot partition, an EFI system partition and an
ext4 root (Debian's and Ubuntu's cloud images' layout), a real bootloader both ways (GRUB for
UEFI, started by the firmware from ``\\EFI\\BOOT\\BOOTX64.EFI``; GRUB for BIOS, its boot code
in the protective MBR and its core in the BIOS boot partition; either loads the distro's own
kernel and initramfs from the root), cloud-init (NoCloud), qemu-guest-agent and sshd, no root
password and no SSH host keys (cloud-init makes both per instance). Built as root without loop
devices or mounts: debootstrap into a directory, ``mkfs.ext4 -d`` for the root, ``mkfs.vfat``
+ mtools for the ESP, the partition table written by ``sfdisk``, GRUB's BIOS boot code by
``grub-bios-setup``. Cached by the content of its recipe.

Guests boot it through its own bootloader, never with ``-kernel``: SeaBIOS by default (it
starts faster; ``firmware_of``), OVMF with ``firmware="uefi"``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from ..files import copy_atomic
from .image import cache_root

log = logging.getLogger("pytest_kvm.guest")

SUITE = "bookworm"  # the default release
RELEASES = ("bookworm", "trixie")  # Debian 12 (kernel 6.1), Debian 13 (kernel 6.12)
PACKAGES = ("systemd-sysv,udev,kmod,linux-image-amd64,initramfs-tools,openssh-server,"
            "cloud-init,python3-cffi-backend,qemu-guest-agent,ifupdown,isc-dhcp-client,"
            "netbase,ca-certificates,sudo")
RECIPE_VERSION = "2"  # 2: GPT (BIOS boot + ESP + root), GRUB for BIOS too
ROOT_SIZE = "2G"
ESP_MIB = 64
BIOS_BOOT_MIB = 1  # GRUB's core image (about 140 KiB) for BIOS, embedded here

CLOUD_CFG = """\
# Only the NoCloud seed: never probe a metadata server over the network.
datasource_list: [ NoCloud, None ]
# minbase has no locales package: nothing to configure
locale: false
"""

# GRUB's own configuration, embedded in its EFI binary: find the root by its label, boot the
# distro's kernel and initramfs through the symlinks Debian keeps current.
GRUB_CFG = """\
set timeout=0
search --no-floppy --label root --set=root
linux /vmlinuz root=LABEL=root ro console=tty0 console=ttyS0,115200 net.ifnames=0 quiet
initrd /initrd.img
boot
"""
GRUB_MODULES = "part_msdos part_gpt fat ext2 search search_label normal linux echo"
GRUB_BIOS_MODULES = "biosdisk part_gpt ext2 search search_label normal linux echo"
GRUB_BIOS_DIR = "/usr/lib/grub/i386-pc"  # its modules, boot.img and grub-bios-setup

TOOLS = {"debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs", "mkfs.vfat": "dosfstools",
         "mcopy": "mtools", "grub-mkstandalone": "grub-efi-amd64-bin",
         "grub-mkimage": "grub-common", f"{GRUB_BIOS_DIR}/grub-bios-setup": "grub-pc-bin",
         "sfdisk": "fdisk", "unshare": "util-linux", "qemu-img": "qemu-utils"}


class ImageBuildError(Exception):
    pass


def debian_mirror(suite: str = SUITE) -> str:
    """The Debian mirror this machine's apt already uses."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            if re.search(rf"^Suites:.*\b{suite}\b", stanza, re.M) and "debian-archive" in stanza:
                match = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                if match:
                    return match.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[0] == "deb" and parts[2] == suite:
                return parts[1]
    raise ImageBuildError(f"no Debian {suite} mirror in /etc/apt; cannot debootstrap")


def recipe_key(release: str = SUITE) -> str:
    text = "\n".join((RECIPE_VERSION, release, PACKAGES, CLOUD_CFG, GRUB_CFG, GRUB_MODULES,
                      GRUB_BIOS_MODULES, ROOT_SIZE, str(ESP_MIB), str(BIOS_BOOT_MIB)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_path(release: str = SUITE) -> Path:
    return cache_root() / "distro" / f"debian-{release}-{recipe_key(release)}.qcow2"


def _run(argv: list[str], timeout: float, **kw) -> None:
    start = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    log.debug("image build: %s (%.1f s, exit %d)", argv[0], time.monotonic() - start,
              r.returncode)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-8:]
        raise ImageBuildError(f"{argv[0]} failed (exit {r.returncode}): " + " | ".join(tail))


def build(out: str | Path | None = None, release: str = SUITE) -> Path:
    """Build the image of a Debian ``release`` (or return the cached one); returns its path."""
    if release not in RELEASES:
        raise ImageBuildError(f"unknown release {release!r}: one of {', '.join(RELEASES)}")
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise ImageBuildError("missing tools: " + ", ".join(missing) + "; run make setup")
    if os.geteuid() != 0:
        raise ImageBuildError("building the image needs root (debootstrap)")
    cached = default_path(release)
    target = Path(out) if out else cached
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cached) + ".lock", timeout=3600):
            if not cached.exists():
                _build(cached, release)
    if target != cached:
        target.parent.mkdir(parents=True, exist_ok=True)
        copy_atomic(cached, target)  # (a link planted at --out is replaced, not followed)
    return target


def _build(out: Path, release: str) -> None:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix="build-") as tmp:
        work = Path(tmp)
        root = work / "root"
        log.info("image build: debootstrap %s into %s", release, root)
        _run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", release, str(root),
              debian_mirror()], timeout=1800)
        _configure(root)
        root_img, esp_img = work / "root.img", work / "esp.img"
        _run(["mkfs.ext4", "-q", "-L", "root", "-d", str(root), str(root_img), ROOT_SIZE],
             timeout=900)
        _esp(work, esp_img)
        disk = work / "disk.raw"
        _assemble(disk, esp_img, root_img)
        _grub_bios(work, disk)
        part = work / "disk.qcow2"
        _run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(part)], timeout=900)
        os.replace(part, out)
    log.info("image build: %s in %.0f s, %.0f MiB", out, time.monotonic() - start,
             out.stat().st_size / 2**20)


def _configure(root: Path) -> None:
    (root / "etc" / "fstab").write_text("LABEL=root / ext4 defaults,errors=remount-ro 0 1\n")
    (root / "etc" / "hostname").write_text("localhost\n")  # cloud-init names it
    cfg = root / "etc" / "cloud" / "cloud.cfg.d" / "99-pytest-kvm.cfg"
    cfg.write_text(CLOUD_CFG)
    (root / "etc" / "network" / "interfaces").write_text(
        "auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n")
    for name in ("etc/machine-id", "var/lib/dbus/machine-id"):
        if (root / name).exists():
            (root / name).write_text("")  # each instance gets its own
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()  # cloud-init makes the instance's host keys
    subprocess.run(["chroot", str(root), "passwd", "-l", "root"], capture_output=True,
                   check=False)
    shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    (root / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)
    for kernel in ("vmlinuz", "initrd.img"):
        if not (root / kernel).exists():
            raise ImageBuildError(f"the root has no /{kernel} (linux-image did not install)")


def _esp(work: Path, esp: Path) -> None:
    cfg = work / "grub.cfg"
    cfg.write_text(GRUB_CFG)
    efi = work / "BOOTX64.EFI"
    _run(["grub-mkstandalone", "-O", "x86_64-efi", f"--modules={GRUB_MODULES}",
          "--locales=", "--fonts=", "-o", str(efi), f"boot/grub/grub.cfg={cfg}"], timeout=300)
    _run(["mkfs.vfat", "-C", "-n", "ESP", str(esp), str(ESP_MIB * 1024)], timeout=60)
    _run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], timeout=60)
    _run(["mcopy", "-i", str(esp), str(efi), "::/EFI/BOOT/BOOTX64.EFI"], timeout=60)


def _assemble(disk: Path, esp: Path, root: Path) -> None:
    """A GPT disk, as sfdisk writes it: the BIOS boot partition at 1 MiB, the ESP and the
    root after it; each file system copied in (sparse)."""
    sector, mib = 512, 2048
    bios_start = mib
    esp_start = bios_start + BIOS_BOOT_MIB * mib
    esp_sectors = esp.stat().st_size // sector
    root_start = esp_start + esp_sectors
    root_sectors = root.stat().st_size // sector
    with open(disk, "wb") as f:  # and 33 sectors for the backup GPT at the end
        f.truncate((root_start + root_sectors + 33) * sector)
    table = (f"label: gpt\nunit: sectors\n"
             f"start={bios_start}, size={BIOS_BOOT_MIB * mib}, type={BIOS_BOOT_GUID}, name=bios\n"
             f"start={esp_start}, size={esp_sectors}, type={ESP_GUID}, name=esp\n"
             f"start={root_start}, size={root_sectors}, type={LINUX_FS_GUID}, name=root\n")
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)], timeout=60,
         input=table)
    for start, part in ((esp_start, esp), (root_start, root)):
        _run(["dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={start * sector}",
              "oflag=seek_bytes", "conv=notrunc,sparse", "status=none"], timeout=600)


def _grub_bios(work: Path, disk: Path) -> None:
    """GRUB for BIOS: its core image (the boot config embedded) into the BIOS boot partition
    and its boot code into the protective MBR, by grub-bios-setup. That tool insists on
    opening the device its ``--directory`` lives on; as mkosi does (``grub_bios_setup``), it
    is shown a mountinfo, in a mount namespace of its own, where that device is the image."""
    cfg = work / "grub-bios.cfg"
    cfg.write_text(GRUB_CFG)
    boot = work / "grub-bios"
    boot.mkdir()
    shutil.copy(f"{GRUB_BIOS_DIR}/boot.img", boot / "boot.img")
    _run(["grub-mkimage", "-O", "i386-pc", "-o", str(boot / "core.img"), "-c", str(cfg),
          "-p", "/boot/grub", *GRUB_BIOS_MODULES.split()], timeout=300)
    device_map = work / "device.map"
    device_map.write_text(f"(hd0) {disk}\n")
    mountinfo = work / "mountinfo"
    mountinfo.write_text(f"1 0 1:1 / / - fat {str(disk).replace(' ', chr(92) + '040')}\n")
    _run(["unshare", "--mount", "sh", "-c",
          'm=$1; shift; mount --bind "$m" /proc/$$/mountinfo && exec "$@"', "sh",
          str(mountinfo), f"{GRUB_BIOS_DIR}/grub-bios-setup", "--directory", str(boot),
          "--device-map", str(device_map), str(disk)], timeout=300)


ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"
LINUX_FS_GUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"


def firmware_of(image: str) -> str:
    """``uefi`` for an image that only a UEFI firmware can boot (an EFI system partition, and
    no BIOS boot code or BIOS boot partition), else ``bios``. Cloud images that boot either
    way get ``bios`` (SeaBIOS starts faster)."""
    import uuid

    with tempfile.TemporaryDirectory(prefix="pytest-kvm-fw-") as tmp:
        head = os.path.join(tmp, "head")
        r = subprocess.run(["qemu-img", "dd", "-O", "raw", f"if={image}", f"of={head}",
                            "bs=512", "count=34"], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise ImageBuildError(f"{image}: cannot read its partition table: "
                                  f"{r.stderr.strip()}")
        data = Path(head).read_bytes()
    if len(data) < 512 or data[510:512] != b"\x55\xaa":
        return "bios"
    boot_code = any(data[:440])
    types = [data[446 + 16 * i + 4] for i in range(4)]
    if 0xEE in types and len(data) >= 34 * 512:  # GPT: read its partition entries
        entries = data[1024:1024 + 128 * 128]
        guids = {str(uuid.UUID(bytes_le=entries[i:i + 16])) for i in range(0, len(entries), 128)}
        has_esp, has_bios = ESP_GUID in guids, BIOS_BOOT_GUID in guids
    else:
        has_esp, has_bios = 0xEF in types, False
    return "uefi" if has_esp and not (has_bios or boot_code) else "bios"
