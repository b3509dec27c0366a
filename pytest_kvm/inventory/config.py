"""Stage 3: the keys pytest-kvm uses, checked and typed into a frozen :class:`HostConfig`.

Every other Ansible variable is left to Ansible. A key's value may be written as Ansible types
it (a YAML bool, an INI ``yes``, a list or a comma-separated string) and may be a Jinja2
template, rendered with the host's variables. A bad value is one line naming the file and line
it was set on; a password never appears in a message (:class:`Secret`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox

from .. import registry
from . import yamlload
from .model import Origin, Value

BDF_RE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


class Secret:
    """A password: its repr and str hide it; ``reveal()`` gives it to the code that logs in."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# -- value parsers (each raises ValueError with the reason) -----------------------------------
def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"must be text, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def _secret(value: Any) -> Secret:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
        raise ValueError("must be non-empty text (the value is not shown)")
    return Secret(str(value))


def _port(value: Any) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or str(value).isdigit()):
        raise ValueError(f"must be an integer port (1-65535), got {value!r}")
    port = int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"must be a port between 1 and 65535, got {port}")
    return port


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("yes", "true", "1", "on", "y", "t"):
        return True
    if low in ("no", "false", "0", "off", "n", "f"):
        return False
    raise ValueError(f"must be yes or no, got {value!r}")


def _choice(*choices: str, aliases: dict[str, str] | None = None) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        value = str(value)
        value = (aliases or {}).get(value, value)
        if value not in choices:
            listed = (", ".join(choices[:-1]) + " or " if len(choices) > 1 else "") + choices[-1]
            raise ValueError(f"must be {listed}, got {value!r}")
        return value

    return parse


def _abspath(value: Any) -> str:
    value = _text(value)
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ValueError("must not hold control characters (a newline, a tab...)")
    return value.rstrip("/") or "/"


def _device_path(value: Any) -> str:
    """A guest disk's device path, e.g. /dev/vda or /dev/disk/by-label/root: it goes on the
    guest's kernel command line, where a space would add a parameter."""
    value = _text(value)
    if not re.fullmatch(r"/dev/[A-Za-z0-9_.:+@-]+(/[A-Za-z0-9_.:+@=-]+)*", value):
        raise ValueError(f"must be a device path such as /dev/vda, got {value!r}")
    return value


def _address(value: Any) -> str:
    """An IP address or a DNS name (it becomes part of a QEMU migration URI)."""
    import ipaddress

    value = _text(value)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    label = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    if len(value) <= 253 and re.fullmatch(rf"{label}(?:\.{label})*\.?", value):
        return value
    raise ValueError(f"must be an IP address or a DNS name, got {value!r}")


def _link_name(value: Any) -> str:
    """A nested hosts' link name (it names files on the parent)."""
    value = _text(value)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", value):
        raise ValueError(f"must be a short name of letters, digits, _ and -, got {value!r}")
    return value


def _qemu_name(value: Any) -> str:
    """A QEMU machine type or CPU model name (it goes into -machine/-cpu and QMP)."""
    value = _text(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise ValueError(f"must be a QEMU name of letters, digits, '.', '_' and '-' (e.g. "
                         f"pc-q35-7.2, EPYC-v4), got {value!r}")
    return value


def _seconds(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or number <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return number


def _whole(minimum: int, unit: str = "") -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not (isinstance(value, int) or str(value).isdigit()):
            raise ValueError(f"must be a whole number >= {minimum}{unit}, got {value!r}")
        if int(value) < minimum:
            raise ValueError(f"must be at least {minimum}{unit}, got {value}")
        return int(value)

    return parse


def _items(value: Any) -> list[str]:
    """A list, or a comma-separated string, of text items."""
    if isinstance(value, (list, tuple)):
        return [_text(v).strip() for v in value]
    return [v.strip() for v in _text(value).split(",") if v.strip()]


# Emulated PCI devices a nested host may get, and the options they may take: nothing that
# reaches the parent (a host device, a file, a socket, a ROM image read from a path).
L1_DEVICES = {
    "igb": (), "igbvf": (), "e1000e": (), "e1000": (), "rtl8139": (), "virtio-net-pci": (),
    "vmxnet3": (), "pci-testdev": (), "edu": (),
    "nvme": ("serial", "sriov_max_vfs", "sriov_vq_flexible", "sriov_vi_flexible",
             "max_ioqpairs", "msix_qsize", "num_queues"),
}


def _devices(value: Any) -> tuple[str, ...]:
    """``igb,e1000e,nvme:serial=n1`` -> ("igb", "e1000e", "nvme,serial=n1")."""
    items = tuple(v.replace(":", ",") for v in _items(value))
    for item in items:
        model, *opts = item.split(",")
        if model not in L1_DEVICES:
            raise ValueError(f"{model!r} is not an emulated device a nested host may get; "
                             f"use one of {', '.join(sorted(L1_DEVICES))}")
        for opt in opts:
            key, _, val = opt.partition("=")
            if key not in L1_DEVICES[model] or not re.fullmatch(r"[A-Za-z0-9_.-]+", val):
                allowed = ", ".join(L1_DEVICES[model]) or "none"
                raise ValueError(f"{model} option {opt!r} is not allowed (options: {allowed})")
    return items


def _suites(value: Any) -> tuple[str, ...]:
    items = tuple(_items(value))
    if items == ("none",):  # a host only other hosts use (a migration peer, an NFS server)
        return ()
    for item in items:
        if registry.get(item) is None:
            raise ValueError(f"names unknown suite {item!r}; known: "
                             f"{', '.join(registry.names())}")
    return items


def normalize_bdf(value: str) -> str:
    """``01:00.0`` -> ``0000:01:00.0``; raises ValueError for anything that is not a BDF."""
    match = BDF_RE.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a PCI address (expected e.g. 0000:01:00.0)")
    domain, bus, dev, fn = match.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"


def _bdf_list(value: Any) -> tuple[str, ...]:
    listed = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in listed):
        # YAML 1.1 reads an unquoted 0000:01:00.0 as a base-60 number (60.0)
        raise ValueError("was read as a number (YAML reads an unquoted 01:00.0 as base 60); "
                         'put each PCI address in quotes, e.g. "0000:01:00.0"')
    items = _items(value)
    if not items:
        raise ValueError("must list at least one PCI address")
    return tuple(normalize_bdf(v) for v in items)


@dataclass(frozen=True)
class Key:
    field: str
    parse: Callable[[Any], Any]
    doc: str
    aliases: tuple[str, ...] = ()  # older names Ansible also reads; the last one set wins


# Every key pytest-kvm reads; the README's table is checked against it.
KEYS: dict[str, Key] = {
    "ansible_host": Key("host", _text, "address or DNS name to connect to (default: the "
                        "host's name)", ("ansible_ssh_host",)),
    "ansible_port": Key("port", _port, "SSH port (default 22, or ~/.ssh/config)",
                        ("ansible_ssh_port",)),
    "ansible_user": Key("user", _text, "SSH user (default: ~/.ssh/config, else root)",
                        ("ansible_ssh_user",)),
    "ansible_ssh_private_key_file": Key("private_key_file", _text, "private key file for SSH",
                                        ("ansible_private_key_file",)),
    "ansible_password": Key("password", _secret, "SSH password (prefer keys; never shown)",
                            ("ansible_ssh_pass", "ansible_ssh_password")),
    "ansible_connection": Key("connection", _choice("ssh", "local", aliases={
        "paramiko": "ssh", "paramiko_ssh": "ssh", "smart": "ssh", "ansible.builtin.ssh": "ssh",
        "ansible.builtin.paramiko": "ssh", "ansible.builtin.paramiko_ssh": "ssh",
        "ansible.builtin.smart": "ssh", "ansible.builtin.local": "local"}),
        "ssh (default; also paramiko, smart) or local; a host with another connection "
        "(winrm, docker, network_cli, ...) is left out of the run with a warning"),
    "ansible_become": Key("become", _bool, "privileged commands through sudo: yes, no (never), "
                          "or unset (sudo only when the user is not root)"),
    "ansible_become_user": Key("become_user", _text, "the user sudo runs privileged commands "
                               "as (default root)", ("ansible_sudo_user",)),
    "ansible_become_password": Key("become_password", _secret, "sudo's password (never shown)",
                                   ("ansible_become_pass", "ansible_sudo_pass")),
    "ansible_become_method": Key("become_method", _choice("sudo"), "only sudo is supported"),
    "ansible_ssh_common_args": Key(
        "ssh_common_args", _text,
        "extra ssh options understood: -J/-o ProxyJump=, -o StrictHostKeyChecking=yes|accept-new,"
        " -o UserKnownHostsFile=, -o ConnectTimeout= (also read from ansible_ssh_extra_args)"),
    "ansible_ssh_extra_args": Key("ssh_extra_args", _text, "as ansible_ssh_common_args, "
                                  "appended to it"),
    "kvm_accel": Key("accel", _choice("kvm", "tcg", "auto"),
                     "accelerator for guests: kvm, tcg or auto (kvm only where hardware KVM is "
                     "usable)"),
    "kvm_qemu": Key("qemu", _text, "QEMU binary on the host (default qemu-system-x86_64)"),
    "kvm_passthrough": Key("passthrough", _bdf_list, "PCI addresses the suites may pass "
                           "through (comma-separated, or a YAML list)"),
    "kvm_sriov_pf": Key("sriov_pf", _bdf_list, "PCI addresses of SR-IOV PFs to use "
                        "(comma-separated, or a YAML list)"),
    "kvm_sriov_reset": Key("sriov_reset", _bool, "yes: the SR-IOV suite may reset a PF whose "
                           "VFs are in use by something else (default no: such a PF is "
                           "skipped)"),
    "kvm_shared_storage": Key("shared_storage", _abspath, "a directory every migration peer "
                              "sees (NFS)"),
    "kvm_parent": Key("parent", _text, "inventory host that runs this host as a nested L1 "
                      "guest"),
    "kvm_l1_cpu": Key("l1_cpu", _text, "nested host: its CPU model (default host under kvm, "
                      "max under tcg: both expose the virtualization extension)"),
    "kvm_l1_memory": Key("l1_memory", _whole(128, " (MiB)"), "nested host: memory in MiB "
                         "(default 3072)"),
    "kvm_l1_smp": Key("l1_smp", _whole(1), "nested host: vCPUs (default 2; 1 under TCG)"),
    "kvm_l1_devices": Key("l1_devices", _devices, "nested host: emulated PCI devices, each "
                          "behind its own PCIe root port, device i at 0000:0i:00.0 (e.g. "
                          "igb,e1000e)"),
    "kvm_l1_iommu": Key("l1_iommu", _bool, "nested host: an intel-iommu (default: yes when it "
                        "has devices)"),
    "kvm_l1_link": Key("l1_link", _link_name, "nested host: a private link (a second NIC) to "
                       "the one other nested host of the same parent with this link name; its "
                       "address is kvm_migration_address/24"),
    "kvm_l1_nfs_server": Key("l1_nfs_server", _text, "nested host: mount kvm_shared_storage "
                             "over NFS (v4.2) from this nested host on the same link (itself "
                             "too), which exports a directory with the kernel's NFS server"),
    "kvm_reruns": Key("reruns", _whole(0), "rerun a check up to N times when a guest on this "
                      "host died or hung (an emulated lab's unreliable nested virtualization; "
                      "default 0)"),
    "kvm_suites": Key("suites", _suites, "the suites this host takes part in (default: all; "
                      "none: only as another host's migration peer)"),
    "kvm_migration_peer": Key("migration_peer", _text, "inventory host this host migrates "
                              "guests to (default: itself, two QEMU processes)"),
    "kvm_migration_address": Key("migration_address", _address, "address peers send migration "
                                 "streams to (default: ansible_host, or 127.0.0.1 for a local "
                                 "host)"),
    "kvm_machine": Key("machine", _qemu_name, "machine type of migrating guests, pinned "
                       "(default: the newest versioned pc-q35-X.Y both QEMUs of a pair offer)"),
    "kvm_migration_cpu": Key("migration_cpu", _qemu_name, "CPU model of migrating guests, "
                             "pinned (default: the named model both QEMUs of a pair run with "
                             "every feature that has the most features)"),
    "kvm_migration_tls": Key("migration_tls", _bool, "migrations between two hosts, and their "
                             "NBD storage mirror, go over TLS (QEMU tls-creds-x509, a per-run "
                             "CA and certificates, peers verified; default yes); no on both "
                             "hosts of a pair: plain TCP, UNSAFE (anyone reaching the port can "
                             "feed the destination a stream or write into the disk)"),
    "kvm_migration_max_bandwidth": Key("migration_max_bandwidth", _whole(1, " (MiB/s)"),
                                       "caps the bandwidth of migrations from this host, in "
                                       "MiB/s (QEMU max-bandwidth; default: QEMU's own)"),
    "kvm_known_hosts": Key("known_hosts", _text, "known_hosts file for host keys (default "
                           "~/.ssh/known_hosts)"),
    "kvm_host_key": Key("host_key", _choice("strict", "accept-new"),
                        "strict (default: unknown or changed keys are refused) or accept-new"),
    "kvm_connect_timeout": Key("connect_timeout", _seconds, "seconds to wait for the SSH "
                               "connection (default 10)"),
    "kvm_guest_kernel": Key("guest_kernel", _text, "vmlinuz on the controller for the micro "
                            "guest (with kvm_guest_modules; default: Debian's linux-image "
                            "package)"),
    "kvm_guest_modules": Key("guest_modules", _text, "that kernel's modules directory "
                             "(.../lib/modules/VERSION)"),
    "kvm_guest_image": Key("guest_image", _text, "a distro qcow2 (cloud image) on the "
                           "controller: guests on this host boot it with a cloud-init NoCloud "
                           "seed"),
    "kvm_guest_root": Key("guest_root", _device_path, "boot kvm_guest_image with the micro kernel "
                          "and switch_root to this disk (for an image without a bootloader), "
                          "e.g. /dev/vda"),
    "kvm_guest_firmware": Key("guest_firmware", _choice("auto", "bios", "uefi"),
                              "how kvm_guest_image guests boot: bios (SeaBIOS), uefi (OVMF), "
                              "or auto (default: uefi for an image only UEFI can boot)"),
    "kvm_guest_user": Key("guest_user", _text, "user cloud-init creates in kvm_guest_image "
                          "guests (default root)"),
    "kvm_workdir": Key("workdir", _abspath, "run dirs and cached files (default "
                       "/var/tmp/pytest-kvm)"),
}
ALIASES: dict[str, str] = {alias: key for key, spec in KEYS.items() for alias in spec.aliases}
SECRET_KEYS = frozenset(name for key, spec in KEYS.items() if spec.parse is _secret
                        for name in (key, *spec.aliases))


@dataclass(frozen=True)
class HostConfig:
    """What pytest-kvm knows about one host; each default is defined here, once."""

    connection: str = "ssh"
    host: str | None = None
    port: int | None = None
    user: str | None = None
    private_key_file: str | None = None
    password: Secret | None = None
    become: bool | None = None
    become_user: str = "root"
    become_password: Secret | None = None
    become_method: str = "sudo"
    ssh_common_args: str | None = None
    ssh_extra_args: str | None = None
    proxy_jump: str | None = None
    host_key: str | None = None
    known_hosts: str | None = None
    connect_timeout: float = 10.0
    accel: str = "auto"
    qemu: str = "qemu-system-x86_64"
    passthrough: tuple[str, ...] = ()
    sriov_pf: tuple[str, ...] = ()
    sriov_reset: bool = False
    shared_storage: str | None = None
    parent: str | None = None
    l1_cpu: str | None = None
    l1_memory: int = 3072
    l1_smp: int | None = None
    l1_devices: tuple[str, ...] = ()
    l1_iommu: bool | None = None
    l1_link: str | None = None
    l1_nfs_server: str | None = None
    reruns: int = 0
    suites: tuple[str, ...] | None = None  # None: every declared suite (registry)
    migration_peer: str | None = None
    migration_address: str | None = None
    migration_tls: bool | None = None  # None: not said (TLS)
    machine: str | None = None
    migration_cpu: str | None = None
    migration_max_bandwidth: int | None = None
    guest_kernel: str | None = None
    guest_modules: str | None = None
    guest_image: str | None = None
    guest_root: str | None = None
    guest_firmware: str = "auto"
    guest_user: str = "root"
    workdir: str | None = None

    def takes_part(self, suite: str) -> bool:
        return self.suites is None or suite in self.suites

    def __repr__(self) -> str:  # only what was set, secrets hidden by their own repr
        fields = (f for f in dataclasses.fields(self) if getattr(self, f.name) != f.default)
        return "HostConfig(" + ", ".join(f"{f.name}={getattr(self, f.name)!r}"
                                         for f in fields) + ")"


# -- building a HostConfig from a host's resolved variables -----------------------------------
# The connections pytest-kvm can use. A host with another one (a switch, a Windows box, a
# container in a lab's inventory) is not a KVM host: left out with a warning, not an error.
CONNECTIONS = ("ssh", "local", "paramiko", "paramiko_ssh", "smart")


class NotAKvmHost(Exception):
    """A host whose ansible_connection pytest-kvm cannot use."""


def build(name: str, values: Mapping[str, Value], groups: tuple[str, ...],
          warnings: list[str]) -> tuple[HostConfig, dict[str, Origin]]:
    """Check and type the keys pytest-kvm uses; warn about unknown ``kvm_*`` keys.

    Returns the config and, for each field set, where its value came from.
    """
    for key, value in values.items():
        if not key:
            raise value.origin.error("a variable has an empty name; give it a name or "
                                     "remove it")
        if key not in KEYS and key not in ALIASES:
            _warn_unknown(key, value.origin, warnings)
    connection = values.get("ansible_connection")
    if connection is not None and isinstance(connection.value, str) and \
            connection.value.removeprefix("ansible.builtin.") not in CONNECTIONS:
        close = difflib.get_close_matches(connection.value, CONNECTIONS, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise NotAKvmHost(f"{connection.origin}: host {name!r} uses ansible_connection="
                          f"{connection.value}{hint}, which pytest-kvm cannot use; it is left "
                          "out")
    renderer = _Renderer(name, values, groups)
    secret = secret_names(values)
    fields: dict[str, Any] = {}
    origins: dict[str, Origin] = {}
    for key, spec in KEYS.items():
        chosen = [n for n in (key, *spec.aliases) if n in values]
        if not chosen:
            continue
        source = chosen[-1]  # Ansible: the last name in its list wins
        value = values[source]
        if source in secret and source not in SECRET_KEYS:
            raise value.origin.error(
                f"{source} is made from a secret (a password, or a variable a password is "
                f"made from); it would be shown in paths, logs and reports: keep secrets out "
                f"of it")
        if isinstance(value.value, yamlload.Vaulted):
            raise value.origin.error(f"{source} is encrypted with Ansible Vault, which "
                                     "pytest-kvm cannot decrypt; give it in plain text "
                                     "(or, for a password, use an SSH key)")
        raw = renderer.render(source, value)
        if isinstance(raw, str) and yamlload.not_utf8(raw):
            raise value.origin.error(f"{source} is not UTF-8 text; save the file as UTF-8")
        try:
            fields[spec.field] = spec.parse(raw)
        except ValueError as exc:
            raise value.origin.error(f"{source} {exc}") from None
        origins[spec.field] = value.origin
    ssh_args = " ".join(fields[f] for f in ("ssh_common_args", "ssh_extra_args") if f in fields)
    if ssh_args:
        key = "ansible_ssh_common_args" if "ssh_common_args" in fields else \
            "ansible_ssh_extra_args"
        for field, value in _ssh_args(ssh_args, values[key].origin).items():
            if field not in fields:  # an explicit kvm_* key wins
                fields[field], origins[field] = value, values[key].origin
    _check_host_keys(fields, origins)
    return HostConfig(**fields), origins


def _check_host_keys(fields: dict[str, Any], origins: dict[str, Origin]) -> None:
    """accept-new only where the accepted key is kept: with a known_hosts that does not
    persist, every connection would accept any key."""
    known = fields.get("known_hosts")
    if fields.get("host_key") == "accept-new" and known is not None and keeps_nothing(known):
        origin = origins.get("known_hosts") or origins["host_key"]
        raise origin.error(ACCEPT_ANY.format(known=known))


ACCEPT_ANY = ("accept-new with known_hosts {known} would accept any host key on every "
              "connection; give a known_hosts file that keeps the keys (or use strict with a "
              "known_hosts you filled)")


def keeps_nothing(known_hosts: str) -> bool:
    """Whether a known_hosts setting keeps no key (none, or /dev/null by any name)."""
    import os

    if known_hosts.lower() == "none":
        return True
    return os.path.realpath(os.path.expanduser(known_hosts)) == os.devnull


def _warn_unknown(key: str, origin: Origin, warnings: list[str]) -> None:
    if key.startswith("ansible_"):
        return  # Ansible's own variables are not ours to judge
    close = _close_keys(key)
    if key.startswith("kvm_") or close:
        more = f"; did you mean {close[0]!r}?" if close else " (ignored)"
        message = f"{origin}: unknown key {key!r}{more}"
        if message not in warnings:
            warnings.append(message)


@functools.lru_cache(maxsize=4096)
def _close_keys(key: str) -> list[str]:
    """pytest-kvm's key a name is close to (asked once per name, not once per host)."""
    return difflib.get_close_matches(key, list(KEYS), n=1, cutoff=0.75)


def _ssh_args(value: str, origin: Origin) -> dict[str, Any]:
    """The ssh options pytest-kvm can honour; the rest refused with a reason."""
    out: dict[str, Any] = {}
    try:
        args = shlex.split(value)
    except ValueError as exc:
        raise origin.error(f"ansible_ssh_common_args: {exc}") from None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-J", "-o") and i + 1 < len(args):
            opt = ("ProxyJump=" + args[i + 1]) if arg == "-J" else args[i + 1]
            i += 2
        elif arg.startswith("-o") and len(arg) > 2:
            opt, i = arg[2:], i + 1
        elif arg.startswith("-J") and len(arg) > 2:
            opt, i = "ProxyJump=" + arg[2:], i + 1
        else:
            raise origin.error(f"ansible_ssh_common_args: option {arg!r} is not supported; "
                               "use -J, -o ProxyJump=, -o StrictHostKeyChecking=, "
                               "-o UserKnownHostsFile= or -o ConnectTimeout=")
        key, _, val = opt.replace(" ", "=", 1).partition("=")
        low = key.lower()
        if low == "proxyjump":
            out["proxy_jump"] = val
        elif low == "stricthostkeychecking":
            if val.lower() in ("yes", "true"):
                out["host_key"] = "strict"
            elif val.lower() == "accept-new":
                out["host_key"] = "accept-new"
            else:
                raise origin.error(f"StrictHostKeyChecking={val} is not supported: pytest-kvm "
                                   "verifies host keys; use yes or accept-new")
        elif low == "userknownhostsfile":
            out["known_hosts"] = val
        elif low == "connecttimeout":
            try:
                out["connect_timeout"] = _seconds(val)
            except ValueError as exc:
                raise origin.error(f"ConnectTimeout {exc}") from None
        else:
            raise origin.error(f"ansible_ssh_common_args: -o {key} is not supported; use "
                               "ProxyJump, StrictHostKeyChecking, UserKnownHostsFile or "
                               "ConnectTimeout")
    return out


def _references(value: Any) -> frozenset[str]:
    """The variables a template refers to (none for a plain value or a broken template,
    whose error rendering reports)."""
    if not _Renderer.is_template(value):
        return frozenset()
    try:
        return frozenset(jinja2.meta.find_undeclared_variables(_Renderer.env.parse(value)))
    except jinja2.TemplateError:
        return frozenset()


def secret_names(values: Mapping[str, Value]) -> frozenset[str]:
    """The host's variables that are secrets: the password keys, every variable their
    templates are made from (``ansible_password: "{{ vault_pw }}"`` makes vault_pw one), and
    every variable whose template uses one of those."""
    refs = {k: _references(v.value) for k, v in values.items()}
    secret = {k for k in values if k in SECRET_KEYS}
    stack = list(secret)
    while stack:  # what a secret is made from
        for ref in refs.get(stack.pop(), ()):
            if ref in values and ref not in secret:
                secret.add(ref)
                stack.append(ref)
    changed = True
    while changed:  # what is made from a secret
        changed = False
        for key, used in refs.items():
            if key not in secret and used & secret:
                secret.add(key)
                changed = True
    return frozenset(secret)


class _Renderer:
    """Jinja2 templates in the values of pytest-kvm's keys, rendered with the host's variables
    (and Ansible's magic ones: inventory_hostname, inventory_hostname_short, group_names)."""

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined,
                                                       autoescape=False)
    env.filters["bool"] = lambda v: _bool(v) if not isinstance(v, bool) else v
    env.filters["ternary"] = lambda v, yes, no=None: yes if v else no

    def __init__(self, name: str, values: Mapping[str, Value], groups: tuple[str, ...]):
        self.values = values
        self.magic = {"inventory_hostname": name,
                      "inventory_hostname_short": name.split(".")[0],
                      "group_names": sorted(g for g in groups if g != "all")}
        self.done: dict[str, Any] = {}

    @staticmethod
    def is_template(value: Any) -> bool:
        return (isinstance(value, str) and not isinstance(value, yamlload.Unsafe)
                and ("{{" in value or "{%" in value))

    def render(self, key: str, value: Value, stack: tuple[str, ...] = ()) -> Any:
        if not self.is_template(value.value):
            return value.value
        if key in self.done:
            return self.done[key]
        if key in stack:
            raise value.origin.error(f"{stack[0]}: the template refers to itself through "
                                     + " -> ".join((*stack, key)))
        try:
            template = self.env.from_string(value.value)
            names = jinja2.meta.find_undeclared_variables(self.env.parse(value.value))
            context = dict(self.magic)
            for ref in names:
                if ref in self.values:
                    context[ref] = self.render(ref, self.values[ref], (*stack, key))
            result = template.render(context)
        except jinja2.TemplateError as exc:
            first = stack[0] if stack else key
            raise value.origin.error(f"{first}: cannot render {key}'s template "
                                     f"({exc.message or type(exc).__name__}); pytest-kvm "
                                     "renders templates from the host's inventory variables "
                                     "only") from None
        self.done[key] = result
        return result
