"""Groups, hosts and their variables as Ansible's inventory holds them.

The readers (``sources``) fill a :class:`Model` through the same operations Ansible's
inventory plugins use (add a group, add a host to a group, add a child group, set a variable);
:meth:`Model.reconcile` then applies Ansible's rules for ``all`` and ``ungrouped``, and
:meth:`Model.host_vars` resolves a host's variables with Ansible's precedence. Every variable
keeps where it was set (:class:`Origin`), so a bad value is reported at its ``file:line``.
"""

from __future__ import annotations

import json
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


class NotThisFormat(Exception):
    """A reader declined or failed; the next format is tried (as Ansible tries plugins)."""

    def __init__(self, line: int | None, message: str, fits: bool = False):
        # fits: the text is of this format (it parsed) but its content is wrong
        self.line, self.message, self.fits = line, message, fits
        super().__init__(message)


@dataclass
class Group:
    name: str
    # direct members and child groups, in the order added (dicts: ordered sets)
    hosts: dict[str, None] = field(default_factory=dict)
    children: dict[str, None] = field(default_factory=dict)
    parents: dict[str, None] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)
    priority: int = 1


@dataclass
class Host:
    name: str
    origin: Origin
    vars: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)
    groups: dict[str, None] = field(default_factory=dict)  # the groups it is directly in


@dataclass
class Value:
    """A resolved variable: its value and where it was set."""

    value: Any
    origin: Origin


class Model:
    """An inventory under construction; the operations mirror Ansible's InventoryData.

    Every operation costs the same whatever the inventory's size (membership is kept in
    ordered sets on both sides), so reading is linear in hosts and groups.
    """

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.hosts: dict[str, Host] = {}
        # the group that made 'all' its child, and where (a loop Ansible finds at reconcile)
        self.above_all: tuple[str, Origin | None] | None = None
        self._depth: dict[str, int] | None = None
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
            raise ValueError(f"invalid group name {name!r}: a group name is a non-empty string"
                             + ("; put quotes around it" if name else ""))
        if name not in self.groups:
            self.groups[name] = Group(name)
            self._depth = None
        return name

    def _join(self, group: str, host: str) -> None:
        if host not in self.groups[group].hosts:
            self.groups[group].hosts[host] = None
            self.hosts[host].groups[group] = None

    def add_host(self, name: str, group: str | None, origin: Origin,
                 port: int | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"invalid host name {name!r}")
        if name not in self.hosts:
            host = self.hosts[name] = Host(name, origin)
            if port:  # on the host itself, as Ansible's Host(name, port) does
                host.vars["ansible_port"], host.origins["ansible_port"] = int(port), origin
        if group is not None:
            self._join(group, name)

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.groups[name].parents)
        while todo:
            g = todo.pop()
            if g not in seen:
                seen.add(g)
                todo.extend(self.groups[g].parents)
        return seen

    def add_child(self, parent: str, child: str, origin: Origin | None = None) -> None:
        """Add a group (or, as Ansible allows, a host) to a group."""
        if parent not in self.groups:
            raise ValueError(f"{parent} is not a known group")
        if child not in self.groups:
            if child in self.hosts:
                self._join(parent, child)
                return
            raise ValueError(f"{child} is not a known host nor group")
        if parent == child:
            raise ValueError(f"group {child!r} cannot be a child of itself")
        if child in self.groups[parent].children:
            return
        if child in self.ancestors(parent):
            raise ValueError(f"adding group {child!r} as child to {parent!r} creates a "
                             "recursive dependency loop")
        if child == "all" and self.above_all is None:
            self.above_all = (parent, origin)
        self.groups[parent].children[child] = None
        self.groups[child].parents[parent] = None
        self._depth = None

    def set_variable(self, name: str, key: Any, value: Any, origin: Origin) -> None:
        """A variable of a group or a host by name: where a group and a host share the name,
        the group's (Ansible's ``InventoryData.set_variable``), so a host line's variables
        become its group's when the host is named like the group."""
        if name in self.groups:
            self.set_group_var(name, key, value, origin)
        else:
            self.set_host_var(name, key, value, origin)

    def set_group_var(self, group: str, key: Any, value: Any, origin: Origin) -> None:
        g = self.groups[group]
        key = var_name(key)
        if key == "ansible_group_priority":
            try:
                priority = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"ansible_group_priority must be a whole number, got "
                                 f"{value!r}") from None
            g.priority = priority
            return
        self._set(g, key, value, origin)

    def set_host_var(self, host: str, key: Any, value: Any, origin: Origin) -> None:
        self._set(self.hosts[host], var_name(key), value, origin)

    @staticmethod
    def _set(owner: Group | Host, key: str, value: Any, origin: Origin) -> None:
        owner.vars[key], owner.origins[key] = value, origin

    def reconcile(self) -> None:
        """Ansible's rules once every source is read: groups without a parent are children
        of ``all``; a host is in ``ungrouped`` exactly when it is in no other group."""
        for name in list(self.groups):
            if name != "all" and not self.groups[name].parents:
                try:
                    self.add_child("all", name)
                except ValueError:
                    parent, where = self.above_all or ("?", None)
                    raise (where or Origin("<inventory>")).error(
                        f"group {parent!r} has 'all' as a child, but every group is in 'all' "
                        f"(adding {name!r} to 'all' creates a dependency loop): remove 'all' "
                        f"from the children of {parent!r}") from None
        ungrouped = self.groups["ungrouped"]
        for name, host in self.hosts.items():
            if "ungrouped" in host.groups:
                if host.groups.keys() - {"all", "ungrouped"}:
                    del ungrouped.hosts[name]
                    del host.groups["ungrouped"]
            elif not host.groups.keys() - {"all"}:
                ungrouped.hosts[name] = None
                host.groups["ungrouped"] = None
        for name in self.groups.keys() & self.hosts.keys():
            self.warn(f"{self.hosts[name].origin}: found both group and host with the same "
                      f"name: {name} (its host line's variables are the group's, as in "
                      "Ansible)")

    # -- reading -------------------------------------------------------------------------
    def depth(self) -> dict[str, int]:
        """Each group's depth: the longest path from ``all`` (Ansible sorts group variables
        by it); computed once per shape of the group tree."""
        if self._depth is not None:
            return self._depth
        depth: dict[str, int] = {}
        order = self._topological()
        for name in order:
            d = depth.setdefault(name, 0)
            for child in self.groups[name].children:
                if depth.get(child, -1) < d + 1:
                    depth[child] = d + 1
        self._depth = depth
        return depth

    def _topological(self) -> list[str]:
        """Groups with every parent before its children (the tree has no loop)."""
        pending = {name: len(g.parents) for name, g in self.groups.items()}
        ready = [name for name, n in pending.items() if n == 0]
        order: list[str] = []
        while ready:
            name = ready.pop()
            order.append(name)
            for child in self.groups[name].children:
                pending[child] -= 1
                if pending[child] == 0:
                    ready.append(child)
        return order

    def groups_of(self, host: str) -> set[str]:
        """Every group the host is in, directly or through child groups (``all`` included)."""
        direct = self.hosts[host].groups if host in self.hosts else {}
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
        out: dict[str, None] = {}
        for g in order:
            out.update(dict.fromkeys(self.groups[g].hosts))
        return list(out)

    def sorted_groups(self, names: set[str]) -> list[str]:
        """Ansible's order for merging group variables: depth, then priority, then name."""
        depth = self.depth()
        return sorted(names, key=lambda g: (depth[g], self.groups[g].priority, g))


def var_name(key: Any) -> str:
    """A variable's name as Ansible prints it: YAML 1.1 keys that are not strings (``on:``,
    ``off:``, ``3:``, ``~:``) become the text JSON gives them ("true", "false", "3", "null")."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    raise ValueError(f"variable name {key!r} is a {type(key).__name__}, not a string: put "
                     "quotes around it")
