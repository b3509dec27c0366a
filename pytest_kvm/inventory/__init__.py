"""The inventory of KVM hosts: the Ansible inventory a lab already has, read as Ansible reads it.

In three stages:

1. ``sources``: read INI, YAML/JSON, a directory of them, or a host list into a model of
   groups and hosts (Ansible's operations and rules, ``model``);
2. ``resolve``: each host's variables with Ansible's precedence, ``group_vars/`` and
   ``host_vars/`` included (also what ``python -m pytest_kvm inventory --list`` prints);
3. ``config``: the keys pytest-kvm uses (each declared once in ``keys``, as a field of the
   frozen ``HostConfig``; their values typed by ``values``), checked and typed.

Every error is an :class:`~pytest_kvm.errors.InventoryError` whose text is one line,
``file:line: what to fix``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import InventoryError
from . import config, ini, resolve, sources
from .keys import KEYS, HostConfig
from .model import Model, NotThisFormat, Origin
from .values import Secret, normalize_bdf

__all__ = ["KEYS", "HostConfig", "HostEntry", "Inventory", "Secret", "load",
           "normalize_bdf", "parse", "read_model"]


@dataclass(frozen=True)
class HostEntry:
    """One inventory host: its typed configuration and all its resolved variables."""

    name: str
    config: HostConfig = field(default_factory=HostConfig)
    groups: tuple[str, ...] = ()
    path: str = "<inventory>"
    line: int = 0
    vars: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    origins: Mapping[str, Origin] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def connection(self) -> str:
        return self.config.connection

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path

    def __repr__(self) -> str:  # stable: no addresses, no secrets
        return f"HostEntry({self.name!r})"


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


def read_model(*paths: str | Path) -> Model:
    """Stage 1: the inventory's groups and hosts (from one or more sources, in order, as
    ``ansible-inventory -i A -i B``), reconciled as Ansible does."""
    model = Model()
    for path in paths:
        sources.read(path, model)
    model.reconcile()
    return model


def load(path: str | Path) -> Inventory:
    """Read an inventory (file, directory or host list) and check the keys pytest-kvm uses."""
    model = read_model(path)
    return _inventory(model, str(path))


def parse(text: str, path: str = "<inventory>") -> Inventory:
    """An inventory from INI text (for tests and tools); ``path`` names it in errors."""
    model = Model()
    try:
        ini.read_ini(text, path, model)
    except NotThisFormat as exc:
        raise InventoryError(path, exc.line, exc.message) from None
    model.reconcile()
    return _inventory(model, path)


def _inventory(model: Model, path: str) -> Inventory:
    if not model.hosts:
        raise InventoryError(path, None, "lists no hosts; add a group with at least one host")
    resolver = resolve.Resolver(model)
    warnings: list[str] = list(model.warnings)
    hosts: dict[str, HostEntry] = {}
    for name in sorted(model.hosts):
        values = resolver.host_vars(name)
        groups = tuple(model.sorted_groups(model.groups_of(name) - {"all"}))
        try:
            cfg, origins = config.build(name, values, groups, warnings)
        except config.NotAKvmHost as exc:
            warnings.append(str(exc))
            continue
        origin = model.hosts[name].origin
        secret = config.secret_names(values)
        plain = {k: Secret(str(v.value)) if k in secret else v.value
                 for k, v in values.items()}  # a password stays hidden wherever this goes
        hosts[name] = HostEntry(name, cfg, groups, origin.path, origin.line or 0,
                                MappingProxyType(plain), MappingProxyType(origins))
    if not hosts:
        raise InventoryError(path, None, "lists no host pytest-kvm can use (ssh or local "
                             "connections); add one")
    _check_hosts(hosts)
    group_map = {g: tuple(sorted(h for h in model.members(g) if h in hosts))
                 for g in sorted(model.groups)}
    return Inventory(path, hosts, group_map, warnings)


def _check_hosts(hosts: dict[str, HostEntry]) -> None:
    """What no single value shows: the same machine twice, unknown or cyclic references."""
    seen: dict[tuple, str] = {}

    def err(entry: HostEntry, message: str, field: str | None = None) -> InventoryError:
        origin = entry.origins.get(field) if field else None
        if origin is not None:
            return origin.error(message)
        return InventoryError(entry.path, entry.line or None, message)

    for entry in hosts.values():
        cfg = entry.config
        if cfg.connection == "local":
            ident: tuple = ("local",)
        else:
            ident = ("ssh", cfg.host or entry.name, cfg.port or 22, cfg.parent)
        if ident in seen:
            other = hosts[seen[ident]]
            what = "the local machine" if ident == ("local",) else f"{ident[1]}:{ident[2]}"
            raise err(entry, f"host {entry.name!r} is {what} again (already {other.name!r} at "
                             f"{other.where}); list each machine once")
        seen[ident] = entry.name
        if cfg.parent is not None:
            if cfg.parent not in hosts:
                raise err(entry, f"kvm_parent {cfg.parent!r} of host {entry.name!r} is not an "
                                 "inventory host; add it", "parent")
            chain, cur = [entry.name], cfg.parent
            while cur is not None:
                if cur in chain:
                    raise err(entry, "kvm_parent forms a cycle: " + " -> ".join([*chain, cur]),
                              "parent")
                chain.append(cur)
                cur = hosts[cur].config.parent
        if cfg.migration_peer is not None and cfg.migration_peer not in hosts:
            raise err(entry, f"kvm_migration_peer {cfg.migration_peer!r} of host "
                             f"{entry.name!r} is not an inventory host; add it",
                      "migration_peer")
        if cfg.l1_link is not None:
            _check_link(entry, hosts, err)
        if cfg.l1_nfs_server is not None:
            server = hosts.get(cfg.l1_nfs_server)
            if server is None or server.config.l1_link is None \
                    or server.config.l1_link != cfg.l1_link:
                raise err(entry, f"kvm_l1_nfs_server {cfg.l1_nfs_server!r} of host "
                                 f"{entry.name!r} must be a nested host on its kvm_l1_link "
                                 f"({cfg.l1_link or 'none'})", "l1_nfs_server")
            if server.config.l1_nfs_server not in (None, server.name):
                raise err(entry, f"kvm_l1_nfs_server {server.name!r} of host {entry.name!r} "
                                 "mounts from another host itself; name the host that "
                                 "serves", "l1_nfs_server")
            if cfg.shared_storage is None:
                raise err(entry, f"host {entry.name!r} has kvm_l1_nfs_server but no "
                                 "kvm_shared_storage (where to mount it); add it",
                          "l1_nfs_server")
        if cfg.proxy_jump and cfg.proxy_jump == entry.name:
            raise err(entry, f"host {entry.name!r} jumps through itself", "proxy_jump")


def _check_link(entry: HostEntry, hosts: dict[str, HostEntry], err) -> None:
    """A link joins exactly two nested hosts of one parent, each with an IP address in one
    /24 (kvm_migration_address)."""
    cfg = entry.config
    ends = [h for h in hosts.values() if h.config.l1_link == cfg.l1_link]
    if cfg.parent is None:
        raise err(entry, f"kvm_l1_link on host {entry.name!r}, which is not a nested host "
                         "(no kvm_parent)", "l1_link")
    if len(ends) != 2 or ends[0].config.parent != ends[1].config.parent:
        raise err(entry, f"kvm_l1_link {cfg.l1_link!r} must join exactly two nested hosts of "
                         f"one parent; it has {', '.join(h.name for h in ends)}", "l1_link")
    try:
        nets = {ipaddress.ip_interface(f"{h.config.migration_address}/24").network
                for h in ends}
        if len(nets) != 1 or nets.pop().version != 4 or ends[0].config.migration_address == \
                ends[1].config.migration_address:
            raise ValueError
    except ValueError:
        raise err(entry, f"the hosts on kvm_l1_link {cfg.l1_link!r} need distinct IPv4 "
                         "addresses in one /24 as kvm_migration_address (e.g. 10.77.0.1 and "
                         "10.77.0.2)", "l1_link") from None
