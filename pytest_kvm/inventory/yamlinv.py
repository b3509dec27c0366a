"""Ansible's YAML (and JSON) inventory format: groups at the top level, each with hosts, vars
and children."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from . import yamlload
from .model import Model, NotThisFormat, Origin
from .patterns import expand_pattern

YAML_EXTS = (".yaml", ".yml", ".json")


def read_yaml(text: str, path: str, model: Model) -> None:
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
                names, port = expand_pattern(pattern)
                for host in names:
                    model.add_host(host, name, host_origin, port)
                    for var, val in host_vars.items():
                        model.set_variable(host, var, val, Origin(
                            path, yamlload.line_of(host_vars, var) or host_origin.line))
        else:
            model.warn(f"{here}: skipping key {key!r} of group {name!r}: only vars, children "
                       "and hosts are valid")
    return name
