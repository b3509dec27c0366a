"""Nested hosts: an L1 guest that pytest-kvm boots on a parent and then uses as a KVM host.

The L1 runs the micro guest's kernel with the parent's root filesystem (read-only over 9p,
with an in-memory overlay for writes), so it has the parent's QEMU, sshd and tools without an
image. Its CPU exposes the virtualization extension (svm and npt under TCG), it can have an
IOMMU (intel-iommu) and emulated PCI devices each behind its own PCIe root port (device i is
at 0000:0<i>:00.0 in the L1). Its sshd is forwarded to a port on the parent's loopback and
reached through the parent's transport; its host key, made at boot, is read from its serial
console and pinned. Two nested hosts of one parent can share a private link (a second NIC in
each, joined by datagram sockets on the parent), and one can serve NFS to both over it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import remote
from ..errors import KvmError
from ..features.nesting import default_cpu, default_smp
from ..guest import Guest, GuestSpec
from ..guest.cloudinit import ed25519_keypair
from ..guest.spec import qopt
from ..host import Host
from ..inventory import HostEntry

MGMT_MAC = "52:54:00:fa:ce:01"
NFS_EXPORT = "/srv/pytest-kvm-nfs"  # on the NFS server L1: a tmpfs, exported to its link
log = logging.getLogger("pytest_kvm.lab")
HOSTKEY_RE = re.compile(r"PKVM-HOSTKEY (ssh-ed25519 [A-Za-z0-9+/=]+) PKVM-END")


class NestedHostError(KvmError):
    pass


class NestedHost(Host):
    """A host that is an L1 guest of its parent, reached over its forwarded sshd; ``l1`` is
    the guest it runs in, ``stop()`` ends both."""

    def __init__(self, entry: HostEntry, parent: Host, l1: Guest, port: int, key_file: str,
                 known_hosts: str):
        super().__init__(entry, parent.forward(entry, port, key_file, known_hosts))
        self.parent = parent
        self.l1 = l1

    @classmethod
    def attach(cls, parent: Host, entry: HostEntry, l1: Guest, port: int, key_file: str,
               keydir: str) -> NestedHost:
        """The L1 as a host: its host key read from its console and pinned, connected, its
        facts probed. The L1 is stopped when that fails."""
        try:
            console = l1.read_log("console.log", 400)
            match = HOSTKEY_RE.search(console)
            if not match:
                raise NestedHostError(f"{entry.name}: no host key on the L1's console (sshd "
                                      f"did not start?)\n{console[-2000:]}")
            known_hosts = os.path.join(keydir, f"known_hosts-{entry.name}")
            with open(known_hosts, "w") as f:
                f.write(f"[127.0.0.1]:{port} {match.group(1)}\n")
            host = cls(entry, parent, l1, port, key_file, known_hosts)
            host.facts  # noqa: B018 - connects (pinned key) and probes
            return host
        except BaseException:
            l1.stop()
            raise

    def stop(self) -> None:
        self.transport.close()
        self.l1.stop()


@dataclass(frozen=True)
class Link:
    """A private link between two nested hosts of one parent: a NIC in each, joined by a pair
    of datagram sockets on the parent (QEMU ``-netdev dgram``), no bridge and no root."""

    local: str  # this L1's socket on the parent
    remote: str  # the peer's
    address: str  # this L1's IPv4 address on the link (/24)

    @property
    def mac(self) -> str:
        a, b = self.address.split(".")[2:]
        return f"52:54:00:fb:{int(a):02x}:{int(b):02x}"


@dataclass(frozen=True)
class L1Options:
    cpu: str | None = None  # default: host under kvm, max under tcg (svm+npt)
    memory: int = 3072
    smp: int | None = None  # default: default_smp()
    devices: tuple[str, ...] = ()  # emulated PCI devices: igb, e1000e, "nvme,serial=x", ...
    iommu: bool | None = None  # default: on when devices are given
    link: Link | None = None

    @classmethod
    def from_entry(cls, entry: HostEntry, link: Link | None = None) -> L1Options:
        cfg = entry.config
        return cls(cpu=cfg.l1_cpu, memory=cfg.l1_memory, smp=cfg.l1_smp, devices=cfg.l1_devices,
                   iommu=cfg.l1_iommu, link=link)


def keypair(directory: str) -> tuple[str, str]:
    """A fresh ed25519 key pair for the controller to log in to nested hosts and guests."""
    path = os.path.join(directory, "nested_ed25519")
    if not os.path.exists(path):
        private, public = ed25519_keypair()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private)
        with open(path + ".pub", "w") as f:
            f.write(public + "\n")
    return path, Path(path + ".pub").read_text().strip()


def l1_spec(name: str, parent: Host, opts: L1Options, pubkey: str, port: int) -> GuestSpec:
    cpu = opts.cpu or default_cpu(parent)
    iommu = bool(opts.devices) if opts.iommu is None else opts.iommu
    args: list[str] = []
    append = ["pkvm.hostroot=1", f"pkvm.mac={MGMT_MAC}",
              "pkvm.authkey=" + ":".join(pubkey.split()[:2])]
    if iommu:  # before any other PCI device
        args += ["-device", "intel-iommu,intremap=on,caching-mode=on"]
        append += ["intel_iommu=on", "iommu=pt"]
    args += [
        "-netdev", f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", f"virtio-net-pci,netdev=mgmt,mac={MGMT_MAC}",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                   "multidevs=remap",
    ]
    if opts.link:
        link = opts.link
        args += ["-netdev", f"dgram,id=link,local.type=unix,local.path={qopt(link.local)},"
                            f"remote.type=unix,remote.path={qopt(link.remote)}",
                 "-device", f"virtio-net-pci,netdev=link,mac={link.mac}"]
        append += [f"pkvm.linkmac={link.mac}", f"pkvm.linkaddr={link.address}/24"]
    for i, device in enumerate(opts.devices, 1):
        model = device.split(",", 1)[0]
        args += ["-device", f"pcie-root-port,id=rp{i},chassis={i},slot={i}"]
        if model in ("igb", "e1000e", "e1000", "virtio-net-pci", "igbvf"):
            args += ["-netdev", f"user,id=dn{i},restrict=on",
                     "-device", f"{device},bus=rp{i},netdev=dn{i}"]
        else:
            args += ["-device", f"{device},bus=rp{i}"]
    return GuestSpec(name=f"l1-{name}", memory=opts.memory, cpu=cpu,
                     smp=opts.smp or default_smp(parent),
                     machine="q35,kernel-irqchip=split" if iommu else "q35",
                     append=" ".join(append), args=tuple(args), boot_timeout=300)


def make_link(parent: Host, entry: HostEntry, ends: list[str], rundir: str,
              owner_line: str) -> Link:
    """The entry's end of its kvm_l1_link: the pair of sockets lives in a run dir on the
    parent (with an owner file, so a dead run's is swept like its guests' dirs)."""
    parent.run(["mkdir", "-p", rundir], timeout=30)
    parent.run(remote.argv("write", owner_line, f"{rundir}/owner"), timeout=30)
    me = sorted(ends).index(entry.name)
    log.info("%s: link %s to %s in %s", entry.name, entry.config.l1_link,
             sorted(ends)[1 - me], rundir)
    return Link(f"{rundir}/{me}.sock", f"{rundir}/{1 - me}.sock",
                entry.config.migration_address or "")


def export_nfs(server: Host) -> str:
    """Serve NFS_EXPORT (a tmpfs) over NFSv4.2 from the server's kernel to its link's /24;
    once per L1 (a second call finds it served). Returns the export's path."""
    network = ipaddress.ip_interface(f"{server.entry.config.migration_address}/24").network
    log.info("%s: exporting %s over NFS to %s", server.name, NFS_EXPORT, network)
    r = server.run(remote.argv("nfs-export", NFS_EXPORT, str(network)), check=False,
                   timeout=120)
    if not r.ok:
        raise NestedHostError(f"{server.name}: the NFS server did not start: "
                              f"{(r.stdout + r.stderr).strip()[-800:]}")
    return NFS_EXPORT


def mount_nfs(host: Host, server: Host) -> None:
    """Mount the server's export at the host's kvm_shared_storage (over the link)."""
    source = f"{server.entry.config.migration_address}:/"  # (the export is the NFSv4 root)
    path = host.entry.config.shared_storage
    log.info("%s: mounting %s at %s", host.name, source, path)
    r = host.run(remote.argv("nfs-mount", source, path), check=False, timeout=120)
    if not r.ok:
        raise NestedHostError(f"{host.name}: cannot mount {source} at {path}: "
                              f"{(r.stdout + r.stderr).strip()[-800:]}")
