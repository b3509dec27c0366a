"""A typed guest description that renders QEMU's command line."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from .cloudinit import CloudInit
from .image import SHELL_PORT


@dataclass(frozen=True)
class Disk:
    """A guest disk: always a qcow2 overlay in the guest's run dir, on a cached base.

    ``image``: a base image on the controller (uploaded once per host); without it, a blank
    base of ``size``. ``interface``: virtio (virtio-blk) or scsi (virtio-scsi).
    """

    image: str | None = None
    size: str = "64M"
    # the disk's own file on shared storage (kvm_shared_storage), seen by both ends of a
    # migration: made there by the first guest (the source), opened as it is by the next
    shared: str | None = None
    interface: str = "virtio"
    format: str = "qcow2"

    def __post_init__(self):
        if self.interface not in ("virtio", "scsi"):
            raise ValueError(f"disk interface must be virtio or scsi, got {self.interface!r}")


@dataclass(frozen=True)
class Nic:
    """A NIC: a model (virtio-net-pci, e1000e, ...) on user networking, or a tap/bridge."""

    model: str = "virtio-net-pci"
    netdev: str = "user"  # user | tap,ifname=... | bridge,br=...
    net: str | None = None  # user networking's subnet (e.g. 10.0.3.0/24); QEMU's default
    # queue pairs (multiqueue virtio-net: mq=on with a vector per queue). More than one needs
    # a tap netdev (netdev="tap": a tap device of the guest's own, made and removed by QEMU).
    queues: int = 1

    @staticmethod
    def mac(index: int) -> str:
        """The MAC of the guest's NIC ``index`` (the guest finds its NICs by it)."""
        return f"52:54:00:70:6b:{index:02x}"


@dataclass(frozen=True)
class GuestSpec:
    name: str = "guest"
    memory: int = 256  # MiB; Debian's kernel needs ~96 at least
    smp: int = 1
    machine: str = "q35"
    cpu: str | None = None  # default: host under kvm, max under tcg; both without svm/vmx
    accel: str | None = None  # default: the host's (kvm only where hardware KVM is usable)
    kernel: str | None = None  # default: the built-in micro guest
    initrd: str | None = None
    append: str = ""
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    balloon: bool = False
    rng: bool = False
    serial: bool = False  # virtio-serial with a virtconsole port
    agent: bool = False  # a virtio-serial port for qemu-guest-agent (commands go through it)
    # the micro guest's commands on a virtio console of their own (SHELL_PORT, /dev/hvcN in
    # the guest) instead of the serial console: a UART costs several VM exits per byte, which
    # a guest nested in an emulated host pays dearly (about 200 bytes/s); a virtio console
    # moves up to a page per exit (bench: l2_shell_output). No kernel message lands in the
    # output either. The serial console still shows the boot. Ignored for a distro guest (its
    # own init and login).
    shell: bool = False
    firmware: str = "bios"  # bios (SeaBIOS) or uefi (OVMF: an image with an EFI partition)
    # commands over SSH (when there is no agent): the controller's private key for the
    # guest's sshd, reached through a port forwarded on the host (a NIC of its own)
    ssh_key: str | None = None
    # a distro guest's one channel for commands (agent, ssh or console; the agent and SSH
    # still need agent and ssh_key); auto: the first that answers (guest/ready.py)
    channel: str = "auto"
    devices: tuple[str, ...] = ()  # extra -device values, e.g. "vfio-pci,host=0000:01:00.0"
    args: tuple[str, ...] = ()  # extra raw arguments
    incoming: str | None = None  # e.g. "defer" or "tcp:0:4444"
    cloud_init: CloudInit | None = None  # a distro guest: NoCloud seed + console login
    root: str | None = None  # boot the micro kernel, then switch_root to this disk (/dev/vda)
    boot_timeout: float | None = None  # default scales with the accelerator
    # room to hot-plug into: free PCIe root ports (HOTPLUG_PORTS), a second vCPU socket and
    # memory slots (maxmem)
    hotplug: bool = False

    def with_(self, **changes) -> GuestSpec:
        return replace(self, **changes)

    @property
    def virtio_shell(self) -> bool:
        """Commands go over SHELL_PORT: asked for, and the micro guest's own init runs."""
        return self.shell and self.kernel is None and self.root is None and (
            self.cloud_init is None)

    @classmethod
    def all_virtio(cls, **kw) -> GuestSpec:
        """Every virtio device the virtio suite checks."""
        base = dict(disks=(Disk(interface="virtio"), Disk(interface="scsi")),
                    nics=(Nic(net=DATA_NET),), balloon=True, rng=True, serial=True)
        base.update(kw)
        return cls(**base)


DATA_NET = "10.0.3.0/24"  # all_virtio's NIC: apart from a distro guest's SSH NIC (10.0.2.0/24)
HOTPLUG_PORTS = ("hp0", "hp1", "hp2")  # free PCIe root ports of a hotplug guest
HOTPLUG_MAXCPUS = 2
HOTPLUG_MAXMEM = "2G"
SERIAL_PORT = "org.pytest-kvm.port0"  # a virtio-serial port next to the virtconsole
SERIAL_SOCKET = "vp.sock"  # its host side, in the run dir
# The MAC of a distro guest's SSH NIC (its management NIC: DHCP, by cloud-init's network
# config, whatever the order of its NICs)
SSH_MAC = "52:54:00:fa:ce:22"
SHELL_SOCKET = "sh.sock"


def disk_file(disk: Disk, rundir: str, index: int) -> str:
    """The file on the host behind a spec's disk ``index``: its overlay in the run dir, or
    the shared-storage file it names."""
    return disk.shared or f"{rundir}/disk{index}.qcow2"


def disk_serial(index: int) -> str:
    """The serial number of the spec's disk ``index`` (the guest finds its disks by it)."""
    return f"pkvm-disk{index}"


def qopt(value: str) -> str:
    """A value placed in a QEMU option string (``key=value,...``): commas doubled, as QEMU
    reads them, so a value can never add or override an option."""
    return value.replace(",", ",,")


FIRMWARES = ("bios", "uefi")


@dataclass
class Rendered:
    argv: list[str]
    overlays: list[tuple[str, str, str]] = field(default_factory=list)  # (overlay, base, fmt)


# The micro kernel's command line. pci=lastbus=0: no probe of all 256 buses for peer host
# bridges (8192 config-space reads, a VM exit each: 1.6 s of a nested guest's boot under a
# TCG L1; ACPI still finds every bus behind the root bridge). The crypto self-tests off
# (0.3-0.7 s there): cryptomgr's, and the KDF108 one its initcall runs itself. Not
# init_on_free=1: it would send a migration 80 MB instead of 108 (the freed initramfs as zero
# pages), but zeroing every freed page made lab1's migrations slower (3 variants: 145 s ->
# 192 s), the L1s' boots most.
KERNEL_ARGS = ("console=ttyS0 quiet panic=-1 pci=lastbus=0 cryptomgr.notests "
               "initcall_blacklist=crypto_kdf108_init")


def render(spec: GuestSpec, *, qemu: str, accel: str, rundir: str, proc_name: str,
           kernel: str | None, initrd: str | None, disk_bases: list[str],
           seed: str | None = None, uefi_code: str | None = None,
           ssh_port: int | None = None) -> Rendered:
    """QEMU's argv for a spec; disk_bases are the bases (on the host) of spec.disks."""
    # Guests get the virtualization extension only when their spec asks for a CPU model
    # (nested hosts do): a guest that loads kvm_amd/kvm_intel itself is one level deeper.
    cpu = spec.cpu or ("host" if accel == "kvm" else "max") + ",-svm,-vmx"
    root = f"pkvm.root={spec.root}" if spec.root else ""
    shell = "pkvm.shell=1" if spec.virtio_shell else ""
    append = " ".join(x for x in (KERNEL_ARGS, root, shell, spec.append) if x)
    argv = [
        qemu, "-name", f"{proc_name},process={proc_name[:15]}",
        "-machine", f"{spec.machine},accel={accel}", "-cpu", cpu,
        "-m", str(spec.memory) + (f",slots=2,maxmem={HOTPLUG_MAXMEM}" if spec.hotplug else ""),
        "-smp", str(spec.smp) + (f",maxcpus={max(spec.smp, HOTPLUG_MAXCPUS)}"
                                 if spec.hotplug else ""),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-chardev", f"socket,id=con0,path={qopt(rundir)}/c.sock,server=on,wait=off,"
                    f"logfile={qopt(rundir)}/console.log,logappend=on",
        "-serial", "chardev:con0",
        "-chardev", f"socket,id=qmp0,path={qopt(rundir)}/q.sock,server=on,wait=off",
        "-mon", "chardev=qmp0,mode=control",
        "-pidfile", f"{rundir}/qemu.pid",
    ]
    if spec.firmware not in FIRMWARES:
        raise ValueError(f"firmware must be bios or uefi, got {spec.firmware!r}")
    if spec.firmware == "uefi":  # OVMF, with this guest's own copy of the variable store
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={qopt(uefi_code)}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={qopt(rundir)}/efivars.fd"]
    if kernel:  # else the disk's own bootloader
        argv += ["-kernel", kernel, "-append", append]
        if initrd:
            argv += ["-initrd", initrd]
    out = Rendered(argv)
    if any(d.interface == "scsi" for d in spec.disks):
        argv += ["-device", "virtio-scsi-pci,id=scsi0"]
    for i, (disk, base) in enumerate(zip(spec.disks, disk_bases, strict=True)):
        overlay = disk_file(disk, rundir, i)  # (on shared storage: made by the first guest)
        out.overlays.append((overlay, base, disk.format))
        # A disk on shared storage bypasses the host's page cache (libvirt's cache=none, which
        # it requires for migration: the destination must read what the source wrote). Only
        # its own file: its base in the host's cache may be on a file system without O_DIRECT.
        cache = "file.cache.direct=on," if disk.shared else ""
        # The chain is explicit: the base is opened as itself with no backing file of its
        # own (whatever its header names: a host file or device would reach the guest), and
        # the overlay's backing is that node, not the name written in the overlay.
        base_node: dict = {"driver": disk.format, "node-name": f"base{i}", "read-only": True,
                           "file": {"driver": "file", "filename": base}}
        if disk.format == "qcow2":
            base_node["backing"] = None
        argv += ["-blockdev", json.dumps(base_node, separators=(",", ":")),
                 "-blockdev", f"driver=qcow2,node-name=disk{i},file.driver=file,{cache}"
                              f"file.filename={qopt(overlay)},backing=base{i}"]
        # booting the disk's own bootloader: the first disk is the one the firmware boots
        # (SeaBIOS tries disks in its own order otherwise, and stops at a blank one)
        serial = disk_serial(i) + (",bootindex=0" if i == 0 and not kernel else "")
        if disk.interface == "virtio":
            argv += ["-device", f"virtio-blk-pci,drive=disk{i},id=vd{i},serial={serial}"]
        else:
            argv += ["-device", f"scsi-hd,drive=disk{i},bus=scsi0.0,id=sd{i},serial={serial}"]
    if seed:
        argv += ["-drive", f"if=none,id=seed,file={qopt(seed)},format=raw,readonly=on",
                 "-device", "virtio-blk-pci,drive=seed,id=seed"]
    for i, nic in enumerate(spec.nics):
        # user networking with no restrictions would let a guest reach the outside network
        netdev = f"{nic.netdev},restrict=on" if nic.netdev == "user" else nic.netdev
        device = f"{nic.model},netdev=net{i},mac={Nic.mac(i)}"
        if nic.net:
            netdev += f",net={qopt(nic.net)}"
        if netdev == "tap":  # a tap device of this guest's own: no script, gone with QEMU
            ifname = "pk" + hashlib.sha256(rundir.encode()).hexdigest()[:10] + str(i)
            netdev = f"tap,ifname={ifname},script=no,downscript=no,vhost=off"
        if nic.queues > 1:
            netdev += f",queues={nic.queues}"
            device += f",mq=on,vectors={2 * nic.queues + 2}"
        argv += ["-netdev", f"{netdev},id=net{i}", "-device", device]
    if ssh_port:  # the guest's sshd on the host's loopback only
        argv += ["-netdev", f"user,id=ssh0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
                 "-device", f"virtio-net-pci,netdev=ssh0,mac={SSH_MAC}"]
    if spec.balloon:
        argv += ["-device", "virtio-balloon-pci,id=balloon0"]
    if spec.rng:
        argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom",
                 "-device", "virtio-rng-pci,rng=rng0"]
    # One virtio-serial device for all ports: the guest adds one device's ports in order, so
    # the serial spec's virtconsole is /dev/hvc0 (the shell's console comes after it)
    if spec.serial or spec.agent or spec.virtio_shell:
        argv += ["-device", "virtio-serial-pci,id=vser0"]
    if spec.serial:
        argv += ["-chardev", f"socket,id=vcon0,path={qopt(rundir)}/vc.sock,server=on,wait=off",
                 "-device", "virtconsole,bus=vser0.0,chardev=vcon0,name=org.pytest-kvm.0",
                 "-chardev", f"socket,id=vport0,path={qopt(rundir)}/{SERIAL_SOCKET},"
                             "server=on,wait=off",
                 "-device", f"virtserialport,bus=vser0.0,chardev=vport0,name={SERIAL_PORT}"]
    if spec.agent:
        argv += ["-chardev", f"socket,id=qga0,path={qopt(rundir)}/ga.sock,server=on,wait=off",
                 "-device", "virtserialport,bus=vser0.0,chardev=qga0,"
                            "name=org.qemu.guest_agent.0"]
    if spec.virtio_shell:
        argv += ["-chardev", f"socket,id=sh0,path={qopt(rundir)}/{SHELL_SOCKET},server=on,"
                             "wait=off",
                 "-device", f"virtconsole,bus=vser0.0,chardev=sh0,name={SHELL_PORT}"]
    if spec.hotplug:
        for n, port in enumerate(HOTPLUG_PORTS):
            argv += ["-device", f"pcie-root-port,id={port},chassis={20 + n},slot={20 + n}"]
    for dev in spec.devices:
        argv += ["-device", dev]
    if spec.incoming:
        argv += ["-incoming", spec.incoming]
    argv += list(spec.args)
    return out
