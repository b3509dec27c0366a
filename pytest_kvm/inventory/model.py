"""Groups, hosts and their variables as Ansible's inventory holds them.

The readers (``sources``) fill a :class:`Model` through the same operations Ansible's
inventory plugins use (add a group, add a host to a group, add a child group, set a variable);
:meth:`Model.reconcile` then applies Ansible's rules for ``all`` and ``ungrouped``, and
:meth:`Model.host_vars` resolves a host's variables with Ansible's precedence. Every variable
keeps where it was set (:class:`Origin`), so a bad value is reported at its ``file:line``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InventoryError

# Variables ansible-inventory leaves out of a host's resolved variables (Ansible's
# INTERNAL_STATIC_VARS): magic and play variables, not inventory data.
INTERNAL_VARS = frozenset("""
    ansible_async_path ansible_collection_name ansible_config_file ansible_dependent_role_names
    ansible_diff_mode ansible_facts ansible_forks ansible_inventory_sources ansible_limit
    ansible_play_batch ansible_play_hosts ansible_play_hosts_all ansible_play_role_names
    ansible_playbook_python ansible_role_name ansible_role_names ansible_run_tags
    ansible_skip_tags ansible_verbosity ansible_version inventory_dir inventory_file
    inventory_hostname inventory_hostname_short groups group_names hostvars playbook_dir
    play_hosts role_name role_names role_path role_uuid
""".split())


@dataclass(frozen=True)
class Origin:
    """Where a value was set: a file and, where known, a line."""

    path: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path

    def error(self, message: str) -> InventoryError:
        return InventoryError(self.path, self.line, message)


@dataclass
class Group:
    name: str
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)
    priority: int = 1


@dataclass
class Host:
    name: str
    origin: Origin
    vars: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)


@dataclass
class Value:
    """A resolved variable: its value and where it was set."""

    value: Any
    origin: Origin


class Model:
    """An inventory under construction; the operations mirror Ansible's InventoryData."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.hosts: dict[str, Host] = {}
        self.add_group("all")
        self.add_group("ungrouped")
        self.add_child("all", "ungrouped")
        # group_vars/ and host_vars/ of each source, in the order the sources were given
        self.vars_dirs: list[str] = []
        # what was skipped, as Ansible warns about it (``file:line: ...``)
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    # -- building ------------------------------------------------------------------------
    def add_group(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise ValueError(f"invalid group name {name!r}: a group name is a non-empty string")
        self.groups.setdefault(name, Group(name))
        return name

    def add_host(self, name: str, group: str | None, origin: Origin,
                 port: int | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"invalid host name {name!r}")
        if name not in self.hosts:
            self.hosts[name] = Host(name, origin)
            if port:
                self.set_host_var(name, "ansible_port", int(port), origin)
        if group is not None:
            members = self.groups[group].hosts
            if name not in members:
                members.append(name)

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.groups[name].parents)
        while todo:
            g = todo.pop()
            if g not in seen:
                seen.add(g)
                todo.extend(self.groups[g].parents)
        return seen

    def add_child(self, parent: str, child: str) -> None:
        """Add a group (or, as Ansible allows, a host) to a group."""
        if parent not in self.groups:
            raise ValueError(f"{parent} is not a known group")
        if child not in self.groups:
            if child in self.hosts:
                if child not in self.groups[parent].hosts:
                    self.groups[parent].hosts.append(child)
                return
            raise ValueError(f"{child} is not a known host nor group")
        if parent == child:
            raise ValueError(f"group {child!r} cannot be a child of itself")
        if child in self.groups[parent].children:
            return
        if child in self.ancestors(parent):
            raise ValueError(f"adding group {child!r} as child to {parent!r} creates a "
                             "recursive dependency loop")
        self.groups[parent].children.append(child)
        if parent not in self.groups[child].parents:
            self.groups[child].parents.append(parent)

    def set_group_var(self, group: str, key: str, value: Any, origin: Origin) -> None:
        g = self.groups[group]
        if key == "ansible_group_priority":
            try:
                g.priority = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"ansible_group_priority must be a whole number, got "
                                 f"{value!r}") from None
            return
        g.vars[key], g.origins[key] = value, origin

    def set_host_var(self, host: str, key: str, value: Any, origin: Origin) -> None:
        h = self.hosts[host]
        h.vars[key], h.origins[key] = value, origin

    def reconcile(self) -> None:
        """Ansible's rules once every source is read: groups without a parent are children
        of ``all``; a host is in ``ungrouped`` exactly when it is in no other group."""
        for name in list(self.groups):
            if name != "all" and not self.groups[name].parents:
                self.add_child("all", name)
        ungrouped = self.groups["ungrouped"].hosts
        for name in self.hosts:
            direct = {g for g, grp in self.groups.items() if name in grp.hosts}
            if "ungrouped" in direct:
                if direct - {"all", "ungrouped"}:
                    ungrouped.remove(name)
            elif not direct - {"all"}:
                ungrouped.append(name)

    # -- reading -------------------------------------------------------------------------
    def depth(self) -> dict[str, int]:
        """Each group's depth: the longest path from ``all`` (Ansible sorts group variables
        by it)."""
        depth: dict[str, int] = {}

        def walk(name: str, d: int) -> None:
            if depth.get(name, -1) < d:
                depth[name] = d
                for child in self.groups[name].children:
                    walk(child, d + 1)

        walk("all", 0)
        for name in self.groups:  # before reconcile(), or a group cut off from all
            if name not in depth:
                walk(name, 0)
        return depth

    def groups_of(self, host: str) -> set[str]:
        """Every group the host is in, directly or through child groups (``all`` included)."""
        direct = {g for g, grp in self.groups.items() if host in grp.hosts}
        out = set(direct)
        for g in direct:
            out |= self.ancestors(g)
        return out

    def members(self, group: str) -> list[str]:
        """The hosts of a group and of its descendants, in Ansible's order."""
        order, seen_groups, queue = [group], {group}, [group]
        while queue:
            nxt: list[str] = []
            for g in queue:
                for child in self.groups[g].children:
                    if child not in seen_groups:
                        seen_groups.add(child)
                        order.append(child)
                        nxt.append(child)
            queue = nxt
        out: list[str] = []
        for g in order:
            out.extend(h for h in self.groups[g].hosts if h not in out)
        return out

    def sorted_groups(self, names: set[str]) -> list[str]:
        """Ansible's order for merging group variables: depth, then priority, then name."""
        depth = self.depth()
        return sorted(names, key=lambda g: (depth[g], self.groups[g].priority, g))
