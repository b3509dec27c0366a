"""Stage 1: read inventory sources into a :class:`~.model.Model`, as Ansible reads them.

A source is an INI file, a YAML/JSON file (Ansible's YAML inventory format), a directory of
such files (read in name order, as Ansible does, skipping the names it skips), or a
comma-separated host list (``'web1,web2,'``). Beside each source, ``group_vars/`` and
``host_vars/`` hold variable files (``NAME``, ``NAME.yml``/``.yaml``/``.json``, or a
directory ``NAME/`` of them). Inventory scripts and plugin configurations are refused: a test
run reads data, it runs nothing.

Errors are :class:`InventoryError`: one line, ``file:line: what is wrong``.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import shlex
import string
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import InventoryError
from . import yamlload
from .model import Model, Origin

log = logging.getLogger("pytest_kvm.inventory")

# Names Ansible skips in an inventory directory (hidden files, vars dirs, backups, docs...).
_SKIP_EXTS = (".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst",
              ".orig", ".cfg", ".retry")
_SKIP_NAMES = ("host_vars", "group_vars", "vars_plugins")
YAML_EXTS = (".yaml", ".yml", ".json")
VARS_EXTS = (".yml", ".yaml", ".json")


class NotThisFormat(Exception):
    """A reader declined or failed; the next format is tried (as Ansible tries plugins)."""

    def __init__(self, line: int | None, message: str, fits: bool = False):
        # fits: the text is of this format (it parsed) but its content is wrong
        self.line, self.message, self.fits = line, message, fits
        super().__init__(message)


def read(path: str | Path, model: Model | None = None) -> Model:
    """Read one inventory source (file, directory or host list) into a model."""
    model = model or Model()
    shown = str(path)
    p = Path(path)
    if not p.exists():
        if "," in shown:
            _read_host_list(shown, model)
            return model
        raise InventoryError(shown, None, "no such file or directory; pass an existing "
                             "inventory with --hosts")
    if p.is_dir():
        _read_dir(p, model)
    else:
        _read_file(p, model, in_dir=False)
    model.vars_dirs.append(os.path.realpath(p if p.is_dir() else p.parent))
    return model


def _read_host_list(text: str, model: Model) -> None:
    origin = Origin("<host list>")
    for item in text.split(","):
        item = item.strip()
        if item:
            name, port = _parse_address(item)
            model.add_host(name, "ungrouped", origin, port)


def _read_dir(path: Path, model: Model) -> None:
    for name in sorted(os.listdir(path)):
        if name.startswith(".") or name in _SKIP_NAMES or name.endswith(_SKIP_EXTS):
            continue
        full = path / name
        if full.is_dir():
            _read_dir(full, model)
        else:
            _read_file(full, model, in_dir=True)


def _text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except PermissionError:
        raise InventoryError(str(path), None, "cannot be read (permission denied)") from None
    except OSError as exc:
        raise InventoryError(str(path), None, f"cannot be read ({exc.strerror})") from None
    # As Ansible: bytes that are not UTF-8 are kept as surrogate escapes, not refused.
    return data.decode("utf-8", "surrogateescape")


def _read_file(path: Path, model: Model, in_dir: bool) -> None:
    shown = str(path)
    text = _text(path)
    if text.startswith(yamlload.VAULT_HEADER):
        raise InventoryError(shown, 1, "is encrypted with Ansible Vault; pytest-kvm cannot "
                             "decrypt it: keep the hosts in a plain file and only secrets "
                             "in vault files")
    if text.startswith("#!") and os.access(path, os.X_OK):
        raise InventoryError(shown, 1, "is an inventory script; pytest-kvm does not run "
                             "programs to read an inventory: write its hosts to an INI or "
                             "YAML file")
    ext = path.suffix.lower()
    readers = []
    if ext in YAML_EXTS or not ext:
        readers.append(_read_yaml)
    if ext != ".toml":
        readers.append(_read_ini)
    failures: list[NotThisFormat] = []
    for reader in readers:
        try:  # as Ansible: what a reader added before it failed stays
            reader(text, shown, model)
        except NotThisFormat as exc:
            failures.append(exc)
            continue
        log.debug("%s: read as %s", shown, reader.__name__.removeprefix("_read_"))
        return
    if ext == ".toml":
        raise InventoryError(shown, None, "TOML inventories are not read; convert it to INI "
                             "or YAML (ansible-inventory -i FILE --list --yaml)")
    # The complaint of the format the file is in: YAML for a .yml file or text that parsed
    # as YAML, INI otherwise.
    last = next((f for f in failures if f.fits or ext in YAML_EXTS), failures[-1])
    if in_dir:
        model.warn(f"{Origin(shown, last.line)}: not an inventory ({last.message}); what it "
                   "held before that line is kept, as Ansible keeps it")
        return
    raise InventoryError(shown, last.line, last.message)



# -- INI -------------------------------------------------------------------------------------
_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
_GROUP_LINE = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")


def _read_ini(text: str, path: str, model: Model) -> None:
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
    names, port = _expand_pattern(tokens[0])
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


# -- host patterns (ranges, ports, IPv6) ----------------------------------------------------
_NUM_RANGE = r"\[(?:[0-9]+:[0-9]+)(?::[0-9]+)?\]"
_HEX_RANGE = r"\[(?:[0-9a-f]+:[0-9a-f]+)(?::[0-9]+)?\]"
_ALNUM_RANGE = r"\[(?:[a-z]:[a-z]|[0-9]+:[0-9]+)(?::[0-9]+)?\]"
_V6 = rf"(?:[0-9a-f]{{1,4}}|{_HEX_RANGE})"
_V4 = rf"(?:[01]?[0-9]{{1,2}}|2[0-4][0-9]|25[0-5]|{_NUM_RANGE})"
_LABEL = rf"(?:[\w]|{_ALNUM_RANGE})(?:[\w_-]|{_ALNUM_RANGE})*(?<![_-])"
_BRACKETED_PORT = re.compile(r"^\[(.+)\]:([0-9]+)$")
_HOST_PORT = re.compile(r"^((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)$")
_IPV4 = re.compile(rf"^(?:{_V4}\.){{3}}{_V4}$", re.I)
_IPV6 = re.compile(
    rf"^((?:{_V6}:){{7}}{_V6}|(?:{_V6}:){{1,6}}:|(?:{_V6}:)(?::{_V6}){{1,6}}|"
    rf"(?:{_V6}:){{2}}(?::{_V6}){{1,5}}|(?:{_V6}:){{3}}(?::{_V6}){{1,4}}|"
    rf"(?:{_V6}:){{4}}(?::{_V6}){{1,3}}|(?:{_V6}:){{5}}(?::{_V6}){{1,2}}|"
    rf"(?:{_V6}:){{6}}(?::{_V6})|:(?::{_V6}){{1,6}}|{_V6}?::|"
    rf"(?:0:){{6}}(?:{_V6}\.){{3}}{_V6}|::(?:ffff:)?(?:{_V6}\.){{3}}{_V6}|"
    rf"(?:0:){{5}}ffff:(?:{_V6}\.){{3}}{_V6})$", re.I)
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$", re.I | re.UNICODE)


def _parse_address(address: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, an IPv6 address -> (host, port).

    Raises ValueError for what is no host name or address (the caller then keeps the text).
    """
    port = None
    for pattern in (_BRACKETED_PORT, _HOST_PORT):
        m = pattern.match(address)
        if m:
            address, port = m.group(1), int(m.group(2))
    if not any(p.match(address) for p in (_IPV4, _IPV6, _HOSTNAME)):
        raise ValueError(f"not a valid network host name: {address}")
    return address, port


def _expand_pattern(pattern: str) -> tuple[list[str], int | None]:
    """A host pattern with optional port and ranges -> its host names and the port."""
    try:
        host, port = _parse_address(pattern)
    except ValueError:
        host, port = pattern, None
    return (_expand_ranges(host) if "[" in host else [host]), port


def _expand_ranges(name: str) -> list[str]:
    """``web[01:10:3]-[a:c]`` -> web01-a ... (Ansible's host ranges: numeric with leading
    zeros and an optional stride, or alphabetic)."""
    parts = name.replace("[", "|", 1).replace("]", "|", 1).split("|")
    if len(parts) != 3:
        raise ValueError(f"host range in {name!r} is not closed: use [begin:end] or "
                         "[begin:end:step]")
    head, spec, tail = parts
    bounds = spec.split(":")
    if len(bounds) not in (2, 3):
        raise ValueError(f"host range [{spec}] must be begin:end or begin:end:step")
    begin, end = bounds[0] or "0", bounds[1]
    step = bounds[2] if len(bounds) == 3 else "1"
    if not end:
        raise ValueError(f"host range [{spec}] must specify an end value")
    width = None
    if begin[0] == "0" and len(begin) > 1:
        if len(begin) != len(end):
            raise ValueError(f"host range [{spec}]: begin and end must have the same width")
        width = len(begin)
    try:
        i_beg, i_end = string.ascii_letters.index(begin), string.ascii_letters.index(end)
    except ValueError:  # numeric
        try:
            seq: list[Any] = list(range(int(begin), int(end) + 1, int(step)))
        except ValueError:
            raise ValueError(f"host range [{spec}] must be numbers or single letters "
                             "(and a whole, non-zero step)") from None
    else:
        if i_beg > i_end:
            raise ValueError(f"host range [{spec}] must have begin <= end")
        if int(step) == 0:
            raise ValueError(f"host range [{spec}]: the step must not be 0")
        seq = list(string.ascii_letters[i_beg:i_end + 1:int(step)])
    out: list[str] = []
    for item in seq:
        text = str(item).zfill(width) if width else str(item)
        expanded = head + text + tail
        out.extend(_expand_ranges(expanded) if "[" in expanded else [expanded])
    return out


# -- YAML ------------------------------------------------------------------------------------
def _read_yaml(text: str, path: str, model: Model) -> None:
    """Ansible's YAML inventory: groups at the top level, each with hosts/vars/children."""
    try:
        data = yamlload.load(text)
    except yamlload.LoadError as exc:
        raise NotThisFormat(yamlload.where(exc), exc.problem, fits=exc.fits) from None
    except yaml.YAMLError as exc:
        raise NotThisFormat(yamlload.where(exc), f"is not valid YAML: "
                            f"{getattr(exc, 'problem', None) or exc}") from None
    if not data:
        raise NotThisFormat(None, "is an empty YAML file")
    if not isinstance(data, Mapping):
        raise NotThisFormat(None, "is YAML but not an inventory: the top level must map "
                            "group names to groups")
    meta = data.get("_meta")
    if isinstance(meta, Mapping) and "hostvars" in meta:
        raise NotThisFormat(yamlload.line_of(data, "_meta"), "is ansible-inventory --list "
                            "output (an inventory script's format), which Ansible does not "
                            "read as an inventory: write it with ansible-inventory --list "
                            "--yaml", fits=True)
    if data.get("plugin"):
        raise NotThisFormat(yamlload.line_of(data, "plugin"), "is an inventory plugin "
                            f"configuration (plugin: {data['plugin']}); pytest-kvm reads static "
                            "inventories: write its hosts to an INI or YAML file", fits=True)
    try:
        for name, body in data.items():
            _yaml_group(name, body, Origin(path, yamlload.line_of(data, name)), path, model)
    except (ValueError, TypeError) as exc:
        raise NotThisFormat(getattr(exc, "line", None), str(exc), fits=True) from None


class _YamlError(ValueError):
    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line = line


def _yaml_group(name: Any, body: Any, origin: Origin, path: str, model: Model) -> str:
    if not isinstance(body, (Mapping, type(None))):
        model.warn(f"{origin}: skipping {name!r}: not a valid group definition")
        return name
    if not isinstance(name, str) or not name:
        raise _YamlError(origin.line, f"group name {name!r} must be a non-empty string"
                         + ("; put quotes around it" if name else ""))
    model.add_group(name)
    if body is None:
        return name
    raw, body = body, dict(body)  # sections may be rewritten below; raw keeps the lines
    for section in ("vars", "children", "hosts"):
        if section in body:
            if isinstance(body[section], str):
                body[section] = {body[section]: None}
            if not isinstance(body[section], (Mapping, type(None))):
                raise _YamlError(yamlload.line_of(raw, section), f"the {section!r} entry of "
                                 f"group {name!r} must be a mapping, got "
                                 f"{type(body[section]).__name__}")
    for key, value in body.items():
        here = Origin(path, yamlload.line_of(raw, key) or origin.line)
        if not isinstance(value, (Mapping, type(None))):
            model.warn(f"{here}: skipping key {key!r} of group {name!r}: not a mapping")
            continue
        if value is None:
            continue
        if key == "vars":
            for var, val in value.items():
                model.set_group_var(name, var, val,
                                    Origin(path, yamlload.line_of(value, var) or here.line))
        elif key == "children":
            for child, child_body in value.items():
                child_origin = Origin(path, yamlload.line_of(value, child) or here.line)
                child = _yaml_group(child, child_body, child_origin, path, model)
                try:
                    model.add_child(name, child, child_origin)
                except ValueError as exc:
                    raise _YamlError(child_origin.line, str(exc)) from None
        elif key == "hosts":
            for pattern, host_vars in value.items():
                host_origin = Origin(path, yamlload.line_of(value, pattern) or here.line)
                if not isinstance(pattern, str):
                    raise _YamlError(host_origin.line, f"host {pattern!r} must be a string: "
                                     "put quotes around numbers")
                host_vars = host_vars or {}
                if not isinstance(host_vars, Mapping):
                    raise _YamlError(host_origin.line, f"the variables of host {pattern!r} "
                                     "must be a mapping")
                names, port = _expand_pattern(pattern)
                for host in names:
                    model.add_host(host, name, host_origin, port)
                    for var, val in host_vars.items():
                        model.set_variable(host, var, val, Origin(
                            path, yamlload.line_of(host_vars, var) or host_origin.line))
        else:
            model.warn(f"{here}: skipping key {key!r} of group {name!r}: only vars, children "
                       "and hosts are valid")
    return name


# -- group_vars/ and host_vars/ --------------------------------------------------------------
def vars_files(base: str, kind: str, name: str,
               entries: Callable[[str], frozenset[str] | None] | None = None) -> list[Path]:
    """The variable files of a group or host beside an inventory, in Ansible's order.

    ``entries`` lists a folder (or None where there is none); a caller resolving many hosts
    passes a cached one, so each folder is listed once rather than probed per host."""
    if not name or name.startswith(os.sep):
        return []
    folder = os.path.join(base, kind)
    present = (entries or list_folder)(folder)
    if present is None:
        return []
    for ext in ("", *VARS_EXTS):
        if os.sep not in name and name + ext not in present:
            continue
        candidate = Path(folder, name + ext)
        if candidate.exists():
            return _dir_files(candidate) if candidate.is_dir() else [candidate]
    return []


def list_folder(folder: str) -> frozenset[str] | None:
    """The names in a folder; None where it is not one."""
    try:
        return frozenset(os.listdir(folder))
    except (NotADirectoryError, FileNotFoundError):
        return None


def _dir_files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") or name.endswith("~"):
            continue
        full = folder / name
        ext = os.path.splitext(name)[1]
        if full.is_dir() and not ext:
            found.extend(_dir_files(full))
        elif full.is_file() and (not ext or ext in VARS_EXTS):
            found.append(full)
    return found


def load_vars_file(path: Path) -> dict[str, tuple[Any, Origin]]:
    """One group_vars/host_vars file -> {key: (value, origin)}; empty files give {}."""
    shown = str(path)
    text = _text(path)
    if text.startswith(yamlload.VAULT_HEADER):
        raise InventoryError(shown, 1, "is encrypted with Ansible Vault; pytest-kvm cannot "
                             "decrypt it: encrypt single values (!vault) and keep the keys "
                             "pytest-kvm uses in plain text")
    try:
        data = yamlload.load(text)
    except yamlload.LoadError as exc:
        raise InventoryError(shown, yamlload.where(exc), exc.problem) from None
    except yaml.YAMLError as exc:
        raise InventoryError(shown, yamlload.where(exc), f"is not valid YAML: "
                             f"{getattr(exc, 'problem', None) or exc}") from None
    if not data:
        return {}
    if not isinstance(data, Mapping):
        raise InventoryError(shown, None, "must hold a mapping of variable names to values, "
                             f"got {type(data).__name__}")
    return {k: (v, Origin(shown, yamlload.line_of(data, k))) for k, v in data.items()}
