"""Stage 2: a host's variables with Ansible's precedence, and ``ansible-inventory`` views.

Precedence, lowest first (Ansible's default ``VARIABLE_PRECEDENCE`` without a play):
the inventory's ``all`` vars, the inventory's vars of the host's other groups (by depth,
``ansible_group_priority``, name), ``group_vars/all``, ``group_vars/<group>`` (same order),
the host's own inventory vars, ``host_vars/<host>``. A later value replaces an earlier one
whole (Ansible's default ``hash_behaviour=replace``).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from . import yamlload
from .config import secret_names
from .model import INTERNAL_VARS, Model, Origin, Value, var_name
from .varsfiles import list_folder, load_vars_file, vars_files

HIDDEN = "***"  # a secret's value in what is printed


class Resolver:
    """Resolves hosts' variables of one model (variable files are read once each)."""

    def __init__(self, model: Model, reveal_secrets: bool = False):
        self.model = model
        self.reveal_secrets = reveal_secrets
        self._files: dict[Path, dict[str, tuple[Any, Origin]]] = {}
        self._folders: dict[str, frozenset[str] | None] = {}
        self._groups: dict[str, dict[str, Value]] = {}  # each group's group_vars/, merged

    def _folder(self, folder: str) -> frozenset[str] | None:
        if folder not in self._folders:
            self._folders[folder] = list_folder(folder)
        return self._folders[folder]

    def _group_file_vars(self, name: str) -> dict[str, Value]:
        if name not in self._groups:
            self._groups[name] = self._file_vars("group_vars", name)
        return self._groups[name]

    def _file_vars(self, kind: str, name: str) -> dict[str, Value]:
        out: dict[str, Value] = {}
        for base in self.model.vars_dirs:
            for path in vars_files(base, kind, name, self._folder):
                if path not in self._files:
                    self._files[path] = load_vars_file(path)
                out.update({k: Value(v, o) for k, (v, o) in self._files[path].items()})
        return out

    def host_vars(self, name: str) -> dict[str, Value]:
        model = self.model
        host = model.hosts[name]
        groups = model.sorted_groups(model.groups_of(name) - {"all"})
        out: dict[str, Value] = {}

        def inventory_vars(group: str) -> dict[str, Value]:
            g = model.groups[group]
            return {k: Value(v, g.origins[k]) for k, v in g.vars.items()}

        out.update(inventory_vars("all"))
        for g in groups:
            out.update(inventory_vars(g))
        out.update(self._group_file_vars("all"))
        for g in groups:
            out.update(self._group_file_vars(g))
        out.update({k: Value(v, host.origins[k]) for k, v in host.vars.items()})
        out.update(self._file_vars("host_vars", name))
        return {k: v for k, v in out.items() if k not in INTERNAL_VARS}

    def as_list(self) -> dict[str, Any]:
        """What ``ansible-inventory --list`` prints (before JSON encoding)."""
        model = self.model
        hosts = set(model.members("all"))
        out: dict[str, Any] = {}
        seen: set[str] = set()

        def fmt(name: str) -> None:
            group = model.groups[name]
            entry: dict[str, Any] = {}
            if name != "all":
                entry["hosts"] = [h for h in group.hosts if h in hosts]
            entry["children"] = list(group.children)
            for child in group.children:
                if child not in seen:
                    seen.add(child)
                    fmt(child)
            entry = {k: v for k, v in entry.items() if v}
            if entry:
                out[name] = entry

        fmt("all")
        hostvars = {}
        for name in model.members("all"):
            values = self.plain(name)
            if values:
                hostvars[name] = values
        out["_meta"] = {"hostvars": hostvars, "profile": "inventory_legacy"}
        return out

    def plain(self, name: str) -> dict[str, Any]:
        """A host's resolved variables as plain values (``ansible-inventory --host``); its
        secrets (passwords, and what they are made from or make) as "***" unless
        ``reveal_secrets``."""
        values = self.host_vars(name)
        hidden = frozenset() if self.reveal_secrets else secret_names(values)
        return {k: HIDDEN if k in hidden else v.value for k, v in values.items()}


def _jsonable(value: Any, unsafe: bool) -> Any:
    """Values as ansible-inventory encodes them (its legacy JSON profile): keys that are not
    strings as JSON writes them, text that was not UTF-8 with "?" for each byte that was not
    (as ansible-inventory displays it), ``!unsafe`` text marked where ``unsafe``."""
    if isinstance(value, yamlload.Unsafe):
        return {"__ansible_unsafe": _text(value)} if unsafe else _text(value)
    if isinstance(value, yamlload.Vaulted):
        return {"__ansible_vault": value.ciphertext}
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(var_name(k)): _jsonable(v, unsafe) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v, unsafe) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def _text(value: str) -> str:
    return value.encode("utf-8", "replace").decode() if yamlload.not_utf8(value) else str(value)


def dumps(data: Any, unsafe: bool = True) -> str:
    """JSON as ansible-inventory prints it (sorted keys, 4-space indent); ``unsafe=False``
    for ``--host``, whose values come through Ansible's variable manager, unmarked."""
    return json.dumps(_jsonable(data, unsafe), sort_keys=True, indent=4)
