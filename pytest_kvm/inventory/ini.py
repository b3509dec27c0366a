"""Ansible's INI inventory format: host lines, ``[g]``, ``[g:vars]``, ``[g:children]``, values
typed as Ansible types them."""

from __future__ import annotations

import ast
import re
import shlex
import warnings
from typing import Any

from . import yamlload
from .model import Model, NotThisFormat, Origin
from .patterns import expand_pattern

_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
_GROUP_LINE = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")


def read_ini(text: str, path: str, model: Model) -> None:
    """Ansible's INI format: host lines, ``[g]``, ``[g:vars]``, ``[g:children]``."""
    pending: dict[str, dict] = {}  # groups named before they are declared
    group, state = "ungrouped", "hosts"
    lineno = 0

    def fail(message: str) -> NotThisFormat:
        return NotThisFormat(lineno, message)

    def add_pending_children(name: str) -> None:
        for parent in pending[name]["parents"]:
            model.add_child(parent, name)
            if parent in pending and pending[parent]["state"] == "children":
                add_pending_children(parent)
        del pending[name]

    try:
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            origin = Origin(path, lineno)
            if yamlload.not_utf8(line):
                model.warn(f"{origin}: is not UTF-8 text; read as Ansible reads it, and shown "
                           "with '?' for each byte that is not")
            m = _SECTION.match(line)
            if m:
                group, state = m.group(1), m.group(2) or "hosts"
                if state not in ("hosts", "children", "vars"):
                    raise fail(f"section [{group}:{state}] has an unknown type; use [{group}], "
                               f"[{group}:vars] or [{group}:children]")
                if group not in model.groups:
                    if state == "vars" and group not in pending:
                        pending[group] = {"line": lineno, "state": "vars"}
                    model.add_group(group)
                if group in pending and state != "vars":
                    if pending[group]["state"] == "children":
                        add_pending_children(group)
                    else:
                        del pending[group]
                continue
            if line.startswith("[") and line.endswith("]"):
                raise fail(f"invalid section header {line!r}: no spaces inside the brackets; "
                           "use [group], [group:vars] or [group:children]")
            if state == "hosts":
                _ini_host_line(line, group, origin, model, fail)
            elif state == "vars":
                if "=" not in line:
                    raise fail(f"expected key=value in [{group}:vars]")
                key, value = (part.strip() for part in line.split("=", 1))
                model.set_group_var(group, key, _ini_value(value), origin)
            else:
                m = _GROUP_LINE.match(line)
                if not m:
                    raise fail(f"expected one group name per line in [{group}:children]")
                child = m.group(1)
                if child in model.groups:
                    model.add_child(group, child, origin)
                elif child in pending:
                    pending[child].setdefault("parents", []).append(group)
                else:
                    pending[child] = {"line": lineno, "state": "children", "parents": [group]}
    except NotThisFormat:
        raise
    except (ValueError, TypeError) as exc:
        raise fail(str(exc)) from None
    for name, decl in pending.items():
        lineno = decl["line"]
        if decl["state"] == "vars":
            raise fail(f"section [{name}:vars] is for group {name!r}, which is not defined; "
                       f"add a [{name}] or [{name}:children] section")
        raise fail(f"section [{decl['parents'][-1]}:children] includes group {name!r}, which "
                   f"is not defined; add a [{name}] section")


def _ini_host_line(line: str, group: str, origin: Origin, model: Model, fail) -> None:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:
        raise fail(f"cannot split the host line ({exc}); check its quotes") from None
    if not tokens:
        return
    names, port = expand_pattern(tokens[0])
    if tokens[0].strip().endswith(":") and port is None:
        raise fail(f"host {tokens[0]!r} ends in ':', which is reserved for a port")
    if any(n.strip() == "---" for n in names):
        raise fail("'---' is not a host: this looks like a YAML file; name it .yml")
    variables: dict[str, Any] = {}
    for token in tokens[1:]:
        if "=" not in token:
            raise fail(f"expected key=value after the host name, got {_shown_token(token)}")
        key, value = token.split("=", 1)
        variables[key] = _ini_value(value)
    for name in names:
        model.add_host(name, group, origin, port)
        for key, value in variables.items():
            model.set_variable(name, key, value, origin)


def _shown_token(token: str) -> str:
    """A token for an error message, cut short (it may be part of a mistyped secret)."""
    return repr(token if len(token) <= 24 else token[:20] + "...")


def _ini_value(value: str) -> Any:
    """An INI value typed as Ansible types it: a Python literal where it is one, else text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            value = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    return _coerce(value)


def _coerce(value: Any) -> Any:
    if isinstance(value, (list, tuple, set)):
        return [_coerce(v) for v in value]
    if isinstance(value, dict):
        for k in value:
            if not (k is None or isinstance(k, (str, bool, int, float))):
                raise ValueError(f"the key {k!r} in a value is a {type(k).__name__}; use "
                                 "text, a number, true/false or None as keys")
        return {k: _coerce(v) for k, v in value.items()}
    if value is ...:
        return "..."
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, bytes):  # Ansible marks bytes literals unsafe (never templated)
        return yamlload.Unsafe(value.decode("utf-8", "surrogateescape"))
    return value
