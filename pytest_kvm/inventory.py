"""Ansible-style INI inventory of KVM hosts.

The supported subset: ``[group]`` sections with one host per line and ``key=value`` host
variables, ``[group:vars]``, ``[group:children]``, hosts before any section (group
``ungrouped``), ``#``/``;`` comments. Variables resolve as in Ansible: ``all`` first, then groups
from the shallowest to the deepest, then the host's own line.

Every error is an :class:`InventoryError` whose text is one line, ``file:line: what to fix``.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InventoryError

BDF_RE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _str(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"must be an integer port (1-65535), got {value!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"must be a port between 1 and 65535, got {port}")
    return port


def _bool(value: str) -> bool:
    low = value.lower()
    if low in ("yes", "true", "1", "on"):
        return True
    if low in ("no", "false", "0", "off"):
        return False
    raise ValueError(f"must be yes or no, got {value!r}")


def _choice(*choices: str, aliases: dict[str, str] | None = None) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = (aliases or {}).get(value, value)
        if value not in choices:
            listed = ", ".join(choices[:-1]) + " or " + choices[-1]
            raise ValueError(f"must be {listed}, got {value!r}")
        return value

    return parse


def _abspath(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    return value.rstrip("/") or "/"


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return number


def _mib(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"must be a whole number of MiB, got {value!r}") from None
    if number < 128:
        raise ValueError(f"must be at least 128 (MiB), got {number}")
    return number


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"must be a whole number >= 1, got {value!r}")
    return int(value)


def _times(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"must be a whole number >= 0, got {value!r}")
    return int(value)


def _devices(value: str) -> tuple[str, ...]:
    """``igb,e1000e,nvme:serial=n1`` -> ("igb", "e1000e", "nvme,serial=n1")."""
    items = tuple(v.strip().replace(":", ",") for v in value.split(",") if v.strip())
    for item in items:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*(,[A-Za-z0-9_-]+=[A-Za-z0-9_.-]+)*", item):
            raise ValueError(f"{item!r} is not a QEMU device (e.g. igb or nvme:serial=n1)")
    return items


SUITES = ("virtio", "passthrough", "sriov", "migration", "nested")


def _suites(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    for item in items:
        if item not in SUITES:
            raise ValueError(f"names unknown suite {item!r}; known: {', '.join(SUITES)}")
    return items


def normalize_bdf(value: str) -> str:
    """``01:00.0`` -> ``0000:01:00.0``; raises ValueError for anything that is not a BDF."""
    match = BDF_RE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a PCI address (expected e.g. 0000:01:00.0)")
    domain, bus, dev, fn = match.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"


def _bdf_list(value: str) -> tuple[str, ...]:
    items = [v for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError("must list at least one PCI address")
    return tuple(normalize_bdf(v) for v in items)


@dataclass(frozen=True)
class Key:
    parse: Callable[[str], Any]
    doc: str


# Every key the inventory understands; the README's table is written from this.
KEYS: dict[str, Key] = {
    "ansible_host": Key(_str, "address or DNS name to connect to (default: the host's name)"),
    "ansible_port": Key(_port, "SSH port (default 22, or ~/.ssh/config)"),
    "ansible_user": Key(_str, "SSH user (default: ~/.ssh/config, else root)"),
    "ansible_ssh_private_key_file": Key(_str, "private key file for SSH"),
    "ansible_password": Key(_str, "SSH password (prefer keys; never logged)"),
    "ansible_connection": Key(
        _choice("ssh", "local", aliases={"paramiko": "ssh"}), "ssh (default) or local"
    ),
    "ansible_become": Key(_bool, "run privileged commands through `sudo -n` (yes/no)"),
    "ansible_ssh_common_args": Key(
        _str,
        "extra ssh options understood: -J/-o ProxyJump=, -o StrictHostKeyChecking=yes|accept-new,"
        " -o UserKnownHostsFile=, -o ConnectTimeout=",
    ),
    "kvm_accel": Key(
        _choice("kvm", "tcg", "auto"),
        "accelerator for guests: kvm, tcg or auto (kvm only where hardware KVM is usable)",
    ),
    "kvm_qemu": Key(_str, "QEMU binary on the host (default qemu-system-x86_64)"),
    "kvm_passthrough": Key(_bdf_list, "comma-separated PCI addresses the suites may pass through"),
    "kvm_sriov_pf": Key(_bdf_list, "comma-separated PCI addresses of SR-IOV PFs to use"),
    "kvm_shared_storage": Key(_abspath, "a directory every migration peer sees (NFS)"),
    "kvm_parent": Key(_str, "inventory host that runs this host as a nested L1 guest"),
    "kvm_l1_cpu": Key(_str, "nested host: its CPU model (default host under kvm, max under "
                      "tcg: both expose the virtualization extension)"),
    "kvm_l1_memory": Key(_mib, "nested host: memory in MiB (default 3072)"),
    "kvm_l1_smp": Key(_count, "nested host: vCPUs (default 2)"),
    "kvm_l1_devices": Key(_devices, "nested host: emulated PCI devices, each behind its own "
                          "PCIe root port, device i at 0000:0i:00.0 (e.g. igb,e1000e)"),
    "kvm_l1_iommu": Key(_bool, "nested host: an intel-iommu (default: yes when it has devices)"),
    "kvm_reruns": Key(_times, "rerun a check up to N times when a guest on this host died or "
                      "hung (an emulated lab's unreliable nested virtualization; default 0)"),
    "kvm_suites": Key(_suites, "the suites this host takes part in (default: all)"),
    "kvm_migration_peer": Key(_str, "inventory host this host migrates guests to (default: "
                              "itself, two QEMU processes)"),
    "kvm_migration_address": Key(_str, "address peers send migration streams to (default: "
                                 "ansible_host, or 127.0.0.1 for a local host)"),
    "kvm_known_hosts": Key(_str, "known_hosts file for host keys (default ~/.ssh/known_hosts)"),
    "kvm_host_key": Key(
        _choice("strict", "accept-new"),
        "strict (default: unknown or changed keys are refused) or accept-new",
    ),
    "kvm_connect_timeout": Key(_positive, "seconds to wait for the SSH connection (default 10)"),
    "kvm_guest_kernel": Key(_str, "vmlinuz on the controller for the micro guest (with "
                            "kvm_guest_modules; default: Debian's linux-image package)"),
    "kvm_guest_modules": Key(_str, "that kernel's modules directory (.../lib/modules/VERSION)"),
    "kvm_guest_image": Key(_str, "a distro qcow2 (cloud image) on the controller: guests on this "
                           "host boot it with a cloud-init NoCloud seed"),
    "kvm_guest_root": Key(_abspath, "boot kvm_guest_image with the micro kernel and switch_root "
                          "to this disk (for an image without a bootloader), e.g. /dev/vda"),
    "kvm_guest_user": Key(_str, "user cloud-init creates in kvm_guest_image guests (default root)"),
    "kvm_workdir": Key(_abspath, "run dirs and cached files (default /var/tmp/pytest-kvm)"),
}


@dataclass(frozen=True)
class HostEntry:
    """One host of the inventory with its resolved, typed variables."""

    name: str
    vars: dict[str, Any]
    groups: tuple[str, ...]
    path: str
    line: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.vars.get(key, default)

    @property
    def connection(self) -> str:
        return self.vars.get("ansible_connection", "ssh")

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def __repr__(self) -> str:  # stable: no addresses, no secrets
        return f"HostEntry({self.name!r})"


@dataclass
class _Group:
    name: str
    line: int
    hosts: list[str] = field(default_factory=list)
    children: list[tuple[str, int]] = field(default_factory=list)
    vars: dict[str, tuple[str, int]] = field(default_factory=dict)
    defined: bool = False


@dataclass
class Inventory:
    path: str
    hosts: dict[str, HostEntry]
    groups: dict[str, tuple[str, ...]]
    warnings: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter(self.hosts.values())

    def __len__(self) -> int:
        return len(self.hosts)

    def group(self, name: str) -> list[HostEntry]:
        return [self.hosts[h] for h in self.groups.get(name, ())]


def load(path: str | Path) -> Inventory:
    """Read and validate an inventory file."""
    p = Path(path)
    shown = str(path)
    if not p.exists():
        raise InventoryError(shown, None, "no such file; pass an existing inventory with --hosts")
    if p.is_dir():
        raise InventoryError(shown, None, "is a directory; pass an inventory file with --hosts")
    try:
        text = p.read_text(encoding="utf-8")
    except PermissionError:
        raise InventoryError(shown, None, "cannot be read (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise InventoryError(shown, None, f"is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InventoryError(shown, None, f"cannot be read ({exc.strerror})") from None
    return parse(text, shown)


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.75)
    return close[0] if close else ""


def parse(text: str, path: str = "<inventory>") -> Inventory:
    groups: dict[str, _Group] = {}
    host_lines: dict[str, tuple[int, list[tuple[str, str, int]]]] = {}
    host_groups: dict[str, list[str]] = {}
    warnings: list[str] = []

    def err(line: int | None, msg: str) -> InventoryError:
        return InventoryError(path, line, msg)

    def group(name: str, line: int) -> _Group:
        if name not in groups:
            groups[name] = _Group(name, line)
        return groups[name]

    def split(raw: str, lineno: int) -> list[str]:
        try:
            return shlex.split(raw, comments=True)
        except ValueError as exc:
            raise err(lineno, f"cannot parse line ({exc}); check the quotes") from None

    section, kind = "ungrouped", "hosts"
    group("ungrouped", 0).defined = True
    group("all", 0).defined = True
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            match = re.fullmatch(r"\[([^\]:]+)(?::([^\]]+))?\]\s*(?:[#;].*)?", line)
            if not match:
                raise err(lineno, f"bad section header {line!r}; use [group], [group:vars] "
                                  "or [group:children]")
            section, suffix = match.group(1).strip(), match.group(2)
            if not NAME_RE.match(section):
                raise err(lineno, f"bad group name {section!r}; use letters, digits, _ . -")
            if suffix not in (None, "vars", "children"):
                raise err(lineno, f"unknown section kind ':{suffix}'; use :vars or :children")
            kind = {"vars": "vars", "children": "children"}.get(suffix or "", "hosts")
            g = group(section, lineno)
            if kind == "hosts":
                if g.defined and section not in ("ungrouped", "all"):
                    raise err(lineno, f"group [{section}] is defined twice; merge the two sections")
                g.defined, g.line = True, lineno
            continue
        tokens = split(line, lineno)
        if not tokens:
            continue
        if kind == "vars":
            if "=" not in line:
                raise err(lineno, f"expected key=value in [{section}:vars], got {line!r}")
            key, _, value = line.partition("=")
            key = key.strip()
            value_tokens = split(value, lineno)
            groups[section].vars[key] = (" ".join(value_tokens), lineno)
        elif kind == "children":
            if len(tokens) != 1:
                raise err(lineno, f"expected one group name per line in [{section}:children]")
            groups[section].children.append((tokens[0], lineno))
        else:
            name, pairs = tokens[0], tokens[1:]
            if "[" in name:
                raise err(lineno, f"host ranges like {name!r} are not supported; "
                                  "list the hosts one per line")
            if "=" in name:
                raise err(lineno, f"a host line starts with the host name, got {name!r}")
            port_from_name = None
            if re.fullmatch(r"[^:\s]+:\d+", name):
                name, port_from_name = name.rsplit(":", 1)
            if not NAME_RE.match(name):
                raise err(lineno, f"bad host name {name!r}; use letters, digits, _ . -")
            kv: list[tuple[str, str, int]] = []
            if port_from_name:
                kv.append(("ansible_port", port_from_name, lineno))
            for tok in pairs:
                if "=" not in tok:
                    raise err(lineno, f"expected key=value after the host name, got {tok!r}")
                k, _, v = tok.partition("=")
                kv.append((k, v, lineno))
            if section in host_groups.get(name, []):
                raise err(lineno, f"host {name!r} is listed twice in [{section}]; "
                                  "remove one of the lines")
            if kv and name in host_lines and host_lines[name][1]:
                raise err(lineno, f"host {name!r} already has variables at line "
                                  f"{host_lines[name][0]}; give its variables on one line")
            if kv or name not in host_lines:
                host_lines[name] = (lineno, kv)
            host_groups.setdefault(name, []).append(section)
            groups[section].hosts.append(name)

    # Groups referenced but never defined.
    for g in groups.values():
        if not g.defined:
            ref = g.line
            raise err(ref, f"group {g.name!r} has variables or children but no [{g.name}] "
                           "section; add one with its hosts")
        for child, cline in g.children:
            if child not in groups or not groups[child].defined:
                raise err(cline, f"[{g.name}:children] names group {child!r}, which is not "
                                 "defined; add a [" + child + "] section")

    # Cycles in :children.
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        state[name] = 1
        for child, cline in groups[name].children:
            if state.get(child) == 1:
                raise err(cline, f"[{name}:children] includes {child!r}, which includes "
                                 f"{name!r} again (a cycle); remove one of the two")
            if state.get(child) is None:
                visit(child)
        state[name] = 2

    for name in sorted(groups):
        if state.get(name) is None:
            visit(name)

    # Members (transitively) and depth of each group.
    members: dict[str, set[str]] = {}

    def collect(name: str) -> set[str]:
        if name not in members:
            out = set(groups[name].hosts)
            for child, _ in groups[name].children:
                out |= collect(child)
            members[name] = out
        return members[name]

    for name in groups:
        collect(name)
    members["all"] = set(host_lines)
    members["ungrouped"] = {h for h, gs in host_groups.items() if gs == ["ungrouped"]}
    if not host_lines:
        raise err(None, "lists no hosts; add a [group] section with at least one host")
    for g in groups.values():
        if g.name not in ("all", "ungrouped") and not members[g.name]:
            raise err(g.line, f"group [{g.name}] has no hosts; add a host or remove the group")

    depth: dict[str, int] = {"all": 0}

    def set_depth(name: str, d: int) -> None:
        if depth.get(name, -1) < d:
            depth[name] = d
            for child, _ in groups[name].children:
                set_depth(child, d + 1)

    for name in groups:
        if name != "all":
            set_depth(name, 1)

    def typed(key: str, value: str, lineno: int, where: str) -> Any:
        spec = KEYS.get(key)
        if spec is None:
            hint = _suggest(key)
            if hint or key.startswith(("kvm_", "ansible_")):
                more = f"; did you mean {hint!r}?" if hint else " (ignored)"
                warnings.append(f"{path}:{lineno}: unknown key {key!r} in {where}{more}")
            return value
        try:
            return spec.parse(value)
        except ValueError as exc:
            raise err(lineno, f"{key} {exc}") from None

    hosts: dict[str, HostEntry] = {}
    for name in sorted(host_lines):
        lineno, own = host_lines[name]
        in_groups = sorted(
            (g for g in members if name in members[g] and g != "all"),
            key=lambda g: (depth.get(g, 1), g),
        )
        resolved: dict[str, Any] = {}
        for gname in ["all", *in_groups]:
            for key, (value, vline) in groups[gname].vars.items():
                resolved[key] = typed(key, value, vline, f"[{gname}:vars]")
        for key, value, vline in own:
            resolved[key] = typed(key, value, vline, f"host {name!r}")
        if "ansible_ssh_common_args" in resolved:
            vline = next((ln for k, _, ln in own if k == "ansible_ssh_common_args"), lineno)
            resolved.update(_ssh_common_args(resolved["ansible_ssh_common_args"], path, vline))
        hosts[name] = HostEntry(name, resolved, tuple(g for g in in_groups), path, lineno)

    _check_hosts(hosts, path)
    # De-duplicate warnings (group vars are resolved once per host).
    seen: list[str] = []
    for w in warnings:
        if w not in seen:
            seen.append(w)
    group_map = {g: tuple(sorted(members[g])) for g in sorted(members)}
    return Inventory(path, hosts, group_map, seen)


def _ssh_common_args(value: str, path: str, line: int) -> dict[str, Any]:
    """Understand the ssh options pytest-kvm can honour; refuse the rest with a reason."""
    out: dict[str, Any] = {}
    try:
        args = shlex.split(value)
    except ValueError as exc:
        raise InventoryError(path, line, f"ansible_ssh_common_args: {exc}") from None
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
            raise InventoryError(path, line, f"ansible_ssh_common_args: option {arg!r} is not "
                                 "supported; use -J, -o ProxyJump=, -o StrictHostKeyChecking=, "
                                 "-o UserKnownHostsFile= or -o ConnectTimeout=")
        key, _, val = opt.replace(" ", "=", 1).partition("=")
        low = key.lower()
        if low == "proxyjump":
            out["kvm_proxy_jump"] = val
        elif low == "stricthostkeychecking":
            if val.lower() in ("yes", "true"):
                out["kvm_host_key"] = "strict"
            elif val.lower() == "accept-new":
                out["kvm_host_key"] = "accept-new"
            else:
                raise InventoryError(path, line, f"StrictHostKeyChecking={val} is not supported: "
                                     "pytest-kvm verifies host keys; use yes or accept-new")
        elif low == "userknownhostsfile":
            out["kvm_known_hosts"] = val
        elif low == "connecttimeout":
            try:
                out["kvm_connect_timeout"] = _positive(val)
            except ValueError as exc:
                raise InventoryError(path, line, f"ConnectTimeout {exc}") from None
        else:
            raise InventoryError(path, line, f"ansible_ssh_common_args: -o {key} is not "
                                 "supported; use ProxyJump, StrictHostKeyChecking, "
                                 "UserKnownHostsFile or ConnectTimeout")
    return out


def _check_hosts(hosts: dict[str, HostEntry], path: str) -> None:
    seen: dict[tuple, str] = {}
    for entry in hosts.values():
        if entry.connection == "local":
            ident: tuple = ("local",)
        else:
            ident = ("ssh", entry.get("ansible_host", entry.name), entry.get("ansible_port", 22),
                     entry.get("kvm_parent"))
        if ident in seen:
            other = hosts[seen[ident]]
            what = "the local machine" if ident == ("local",) else f"{ident[1]}:{ident[2]}"
            raise InventoryError(path, entry.line, f"host {entry.name!r} is {what} again "
                                 f"(already {other.name!r} at line {other.line}); "
                                 "list each machine once")
        seen[ident] = entry.name
        parent = entry.get("kvm_parent")
        if parent is not None:
            if parent not in hosts:
                raise InventoryError(path, entry.line, f"kvm_parent {parent!r} of host "
                                     f"{entry.name!r} is not an inventory host; add it")
            chain, cur = [entry.name], parent
            while cur is not None:
                if cur in chain:
                    raise InventoryError(path, entry.line, "kvm_parent forms a cycle: "
                                         + " -> ".join([*chain, cur]))
                chain.append(cur)
                cur = hosts[cur].get("kvm_parent")
        peer = entry.get("kvm_migration_peer")
        if peer is not None and peer not in hosts:
            raise InventoryError(path, entry.line, f"kvm_migration_peer {peer!r} of host "
                                 f"{entry.name!r} is not an inventory host; add it")
        jump = entry.get("kvm_proxy_jump")
        if jump and jump in hosts and jump == entry.name:
            raise InventoryError(path, entry.line, f"host {entry.name!r} jumps through itself")
