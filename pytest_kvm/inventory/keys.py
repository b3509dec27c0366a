"""Every inventory key pytest-kvm reads, declared once: a field of :class:`HostConfig` with the
key's name, its parser, what it means (the README's table is checked against these) and its
default; ``KEYS`` and the aliases are read off the fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .values import (
    Secret,
    _abspath,
    _address,
    _bdf_list,
    _bool,
    _choice,
    _commands,
    _device_path,
    _devices,
    _link_name,
    _port,
    _qemu_name,
    _seconds,
    _secret,
    _suites,
    _text,
    _whole,
)


@dataclass(frozen=True)
class Key:
    field: str
    parse: Callable[[Any], Any]
    doc: str
    aliases: tuple[str, ...] = ()  # older names Ansible also reads; the last one set wins


def key(name: str, parse: Callable[[Any], Any], doc: str, default: Any = None,
        aliases: tuple[str, ...] = ()) -> Any:
    """A HostConfig field that an inventory key sets."""
    return dataclasses.field(default=default, metadata={"key": (name, parse, doc, aliases)})


@dataclass(frozen=True)
class HostConfig:
    """What pytest-kvm knows about one host: each key and its default, defined here, once
    (fields without a key are set from ansible_ssh_common_args)."""

    connection: str = key("ansible_connection", _choice("ssh", "local", aliases={
        "paramiko": "ssh", "paramiko_ssh": "ssh", "smart": "ssh", "ansible.builtin.ssh": "ssh",
        "ansible.builtin.paramiko": "ssh", "ansible.builtin.paramiko_ssh": "ssh",
        "ansible.builtin.smart": "ssh", "ansible.builtin.local": "local"}),
        "ssh (default; also paramiko, smart) or local; a host with another connection "
        "(winrm, docker, network_cli, ...) is left out of the run with a warning", default="ssh")
    host: str | None = key("ansible_host", _text,
        "address or DNS name to connect to (default: the host's name)",
        aliases=("ansible_ssh_host",))
    port: int | None = key("ansible_port", _port,
        "SSH port (default 22, or ~/.ssh/config)", aliases=("ansible_ssh_port",))
    user: str | None = key("ansible_user", _text,
        "SSH user (default: ~/.ssh/config, else root)", aliases=("ansible_ssh_user",))
    private_key_file: str | None = key("ansible_ssh_private_key_file", _text,
        "private key file for SSH", aliases=("ansible_private_key_file",))
    password: Secret | None = key("ansible_password", _secret,
        "SSH password (prefer keys; never shown)",
        aliases=("ansible_ssh_pass", "ansible_ssh_password"))
    become: bool | None = key("ansible_become", _bool,
        "privileged commands through sudo: yes, no (never), or unset (sudo only when the "
        "user is not root)")
    become_user: str = key("ansible_become_user", _text,
        "the user sudo runs privileged commands as (default root)",
        default="root", aliases=("ansible_sudo_user",))
    become_password: Secret | None = key("ansible_become_password", _secret,
        "sudo's password (never shown)", aliases=("ansible_become_pass", "ansible_sudo_pass"))
    become_method: str = key("ansible_become_method", _choice("sudo"),
        "only sudo is supported", default="sudo")
    ssh_common_args: str | None = key("ansible_ssh_common_args", _text,
        "extra ssh options understood: -J/-o ProxyJump=, -o "
        "StrictHostKeyChecking=yes|accept-new, -o UserKnownHostsFile=, -o ConnectTimeout= "
        "(also read from ansible_ssh_extra_args)")
    ssh_extra_args: str | None = key("ansible_ssh_extra_args", _text,
        "as ansible_ssh_common_args, appended to it")
    proxy_jump: str | None = None
    host_key: str | None = key("kvm_host_key", _choice("strict", "accept-new"),
        "strict (default: unknown or changed keys are refused) or accept-new")
    known_hosts: str | None = key("kvm_known_hosts", _text,
        "known_hosts file for host keys (default ~/.ssh/known_hosts)")
    connect_timeout: float = key("kvm_connect_timeout", _seconds,
        "seconds to wait for the SSH connection (default 10)", default=10.0)
    accel: str = key("kvm_accel", _choice("kvm", "tcg", "auto"),
        "accelerator for guests: kvm, tcg or auto (kvm only where hardware KVM is usable)",
        default="auto")
    qemu: str = key("kvm_qemu", _text,
        "QEMU binary on the host (default qemu-system-x86_64)", default="qemu-system-x86_64")
    passthrough: tuple[str, ...] = key("kvm_passthrough", _bdf_list,
        "PCI addresses the suites may pass through (comma-separated, or a YAML list)", default=())
    sriov_pf: tuple[str, ...] = key("kvm_sriov_pf", _bdf_list,
        "PCI addresses of SR-IOV PFs to use (comma-separated, or a YAML list)", default=())
    sriov_reset: bool = key("kvm_sriov_reset", _bool,
        "yes: the SR-IOV suite may reset a PF whose VFs are in use by something else "
        "(default no: such a PF is skipped)", default=False)
    shared_storage: str | None = key("kvm_shared_storage", _abspath,
        "a directory every migration peer sees (NFS)")
    parent: str | None = key("kvm_parent", _text,
        "inventory host that runs this host as a nested L1 guest")
    l1_cpu: str | None = key("kvm_l1_cpu", _text,
        "nested host: its CPU model (default host under kvm, max under tcg: both expose "
        "the virtualization extension)")
    l1_memory: int = key("kvm_l1_memory", _whole(128, " (MiB)"),
        "nested host: memory in MiB (default 3072)", default=3072)
    l1_smp: int | None = key("kvm_l1_smp", _whole(1),
        "nested host: vCPUs (default 2; 1 under TCG)")
    l1_devices: tuple[str, ...] = key("kvm_l1_devices", _devices,
        "nested host: emulated PCI devices, each behind its own PCIe root port, device i "
        "at 0000:0i:00.0 (e.g. igb,e1000e)", default=())
    l1_iommu: bool | None = key("kvm_l1_iommu", _bool,
        "nested host: an intel-iommu (default: yes when it has devices)")
    l1_link: str | None = key("kvm_l1_link", _link_name,
        "nested host: a private link (a second NIC) to the one other nested host of the "
        "same parent with this link name; its address is kvm_migration_address/24")
    l1_nfs_server: str | None = key("kvm_l1_nfs_server", _text,
        "nested host: mount kvm_shared_storage over NFS (v4.2) from this nested host on "
        "the same link (itself too), which exports a directory with the kernel's NFS "
        "server")
    reruns: int = key("kvm_reruns", _whole(0),
        "rerun a check up to N times when a guest on this host died or hung (an emulated "
        "lab's unreliable nested virtualization; default 0)", default=0)
    suites: tuple[str, ...] | None = key("kvm_suites", _suites,  # None: every declared suite
        "the suites this host takes part in (default: all; none: only as another host's "
        "migration peer)")
    migration_peer: str | None = key("kvm_migration_peer", _text,
        "inventory host this host migrates guests to (default: itself, two QEMU processes)")
    migration_address: str | None = key("kvm_migration_address", _address,
        "address peers send migration streams to (default: ansible_host, or 127.0.0.1 for "
        "a local host)")
    migration_tls: bool | None = key("kvm_migration_tls", _bool,  # None: not said (TLS)
        "migrations between two hosts, and their NBD storage mirror, go over TLS (QEMU "
        "tls-creds-x509, a per-run CA and certificates, peers verified; default yes); no "
        "on both hosts of a pair: plain TCP, UNSAFE (anyone reaching the port can feed the"
        " destination a stream or write into the disk)")
    machine: str | None = key("kvm_machine", _qemu_name,
        "machine type of migrating guests, pinned (default: the newest versioned "
        "pc-q35-X.Y both QEMUs of a pair offer)")
    migration_cpu: str | None = key("kvm_migration_cpu", _qemu_name,
        "CPU model of migrating guests, pinned (default: the named model both QEMUs of a "
        "pair run with every feature that has the most features)")
    migration_max_bandwidth: int | None = key("kvm_migration_max_bandwidth", _whole(1, " (MiB/s)"),
        "caps the bandwidth of migrations from this host, in MiB/s (QEMU max-bandwidth; "
        "default: QEMU's own)")
    guest_kernel: str | None = key("kvm_guest_kernel", _text,
        "vmlinuz on the controller for the micro guest (with kvm_guest_modules; default: "
        "Debian's linux-image package)")
    guest_modules: str | None = key("kvm_guest_modules", _text,
        "that kernel's modules directory (.../lib/modules/VERSION)")
    guest_image: str | None = key("kvm_guest_image", _text,
        "a distro qcow2 (cloud image) on the controller: guests on this host boot it with "
        "a cloud-init NoCloud seed")
    guest_root: str | None = key("kvm_guest_root", _device_path,
        "boot kvm_guest_image with the micro kernel and switch_root to this disk (for an "
        "image without a bootloader), e.g. /dev/vda")
    guest_firmware: str = key("kvm_guest_firmware", _choice("auto", "bios", "uefi"),
        "how kvm_guest_image guests boot: bios (SeaBIOS), uefi (OVMF), or auto (default: "
        "uefi for an image only UEFI can boot)", default="auto")
    guest_user: str = key("kvm_guest_user", _text,
        "user cloud-init creates in kvm_guest_image guests (default root)", default="root")
    guest_channel: str = key("kvm_guest_channel", _choice("auto", "agent", "ssh", "console"),
        "what kvm_guest_image guests' commands go through: agent (qemu-guest-agent), ssh "
        "(the image's sshd; no agent port), console (the serial console; neither), or auto "
        "(default: the first that answers)", default="auto")
    guest_bootcmd: tuple[str, ...] = key("kvm_guest_bootcmd", _commands,
        "shell commands cloud-init runs as root early in each boot of kvm_guest_image "
        "guests (one, or a list), e.g. systemctl mask --now qemu-guest-agent", default=())
    workdir: str | None = key("kvm_workdir", _abspath,
        "run dirs and cached files (default /var/tmp/pytest-kvm)")

    def takes_part(self, suite: str) -> bool:
        return self.suites is None or suite in self.suites

    def __repr__(self) -> str:  # only what was set, secrets hidden by their own repr
        fields = (f for f in dataclasses.fields(self) if getattr(self, f.name) != f.default)
        return "HostConfig(" + ", ".join(f"{f.name}={getattr(self, f.name)!r}"
                                         for f in fields) + ")"


KEYS: dict[str, Key] = {f.metadata["key"][0]: Key(f.name, *f.metadata["key"][1:])
                        for f in dataclasses.fields(HostConfig) if "key" in f.metadata}
ALIASES: dict[str, str] = {alias: key for key, spec in KEYS.items() for alias in spec.aliases}
SECRET_KEYS = frozenset(name for key, spec in KEYS.items() if spec.parse is _secret
                        for name in (key, *spec.aliases))
