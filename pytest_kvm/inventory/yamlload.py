"""YAML (and JSON) as Ansible loads it, with the line of every mapping key.

As Ansible's ``from_yaml``: the text is read as JSON first (Python's decoder: exponents,
``NaN``/``Infinity``, surrogate-pair escapes; an object holding ``__ansible_unsafe`` or
``__ansible_vault`` is that value), and only where it is not JSON as YAML, with PyYAML's safe
loader (the library Ansible uses) plus Ansible's tags: ``!unsafe`` (a plain string here:
nothing is templated from it) and ``!vault`` (kept as :class:`Vaulted`, which pytest-kvm
cannot decrypt). Text that is not UTF-8 is refused with its line, as Ansible refuses it.
Mappings come back as :class:`Lines`, a dict that knows the line of each key.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

try:
    _Base = yaml.CSafeLoader
except AttributeError:  # PyYAML without libyaml
    _Base = yaml.SafeLoader  # type: ignore[misc]

VAULT_HEADER = "$ANSIBLE_VAULT;"


class Lines(dict):
    """A mapping that remembers the (1-based) line of each key."""

    lines: dict[Any, int]


class Unsafe(str):
    """A value tagged ``!unsafe``: never rendered as a template."""


class Vaulted:
    """A value tagged ``!vault``: ciphertext that needs Ansible Vault's password."""

    def __init__(self, ciphertext: str):
        self.ciphertext = ciphertext

    def __repr__(self) -> str:
        return "Vaulted(<encrypted>)"


class _Loader(_Base):  # type: ignore[misc, valid-type]
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Lines:
    loader.flatten_mapping(node)
    out = Lines()
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "found an unhashable key", key_node.start_mark) from None
        if not (key is None or isinstance(key, (str, bool, int, float))):
            _refuse(key_node.start_mark, f"the key {key_node.value!r} is a "
                    f"{type(key).__name__}; put quotes around it")
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor("!unsafe", lambda loader, node: Unsafe(loader.construct_scalar(node)))
for _tag in ("!vault", "!vault-encrypted"):
    _Loader.add_constructor(_tag, lambda loader, node: Vaulted(loader.construct_scalar(node)))


_Loader.add_constructor("tag:yaml.org,2002:binary", lambda loader, node: _refuse(
    node.start_mark, "a !!binary value: pytest-kvm reads text; give it as a string"))

_SURROGATE = re.compile("[\ud800-\udfff]")


def not_utf8(text: str) -> bool:
    """Whether text holds what is no Unicode character (bytes read that were not UTF-8)."""
    return _SURROGATE.search(text) is not None


class LoadError(yaml.MarkedYAMLError):
    """What cannot be read, at a line; ``fits``: the text is YAML, its content is wrong."""

    def __init__(self, index: int, line: int, problem: str, fits: bool = False):
        super().__init__(problem=problem,
                         problem_mark=yaml.Mark("<text>", index, line, 0, None, None))
        self.fits = fits

    def __str__(self) -> str:
        return self.problem


def _refuse(mark: yaml.Mark, problem: str):
    raise LoadError(mark.index, mark.line, problem, fits=True)


def load(text: str) -> Any:
    """Parse one document as Ansible does: JSON first, then YAML; raises yaml.YAMLError."""
    bad = _SURROGATE.search(text)
    if bad:  # bytes that are not UTF-8, kept as surrogate escapes when the file was read
        _refuse_at(text, bad.start(), "is not UTF-8 text; save it as UTF-8")
    try:
        data = json.loads(text, object_pairs_hook=_json_object)
    except ValueError:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader with Ansible's tags
    if isinstance(data, (dict, list)):
        _check_json_text(data, text)
        try:  # the lines of the keys, from the same text read as YAML (where it reads)
            _graft_lines(data, yaml.load(text, Loader=_Loader))  # noqa: S506
        except yaml.YAMLError:
            pass
    return data


def _refuse_at(text: str, index: int, problem: str) -> None:
    raise LoadError(index, text.count("\n", 0, index), problem)


def _json_object(pairs: list[tuple[str, Any]]) -> Any:
    out = Lines(pairs)
    out.lines = {}
    if "__ansible_unsafe" in out:  # Ansible's legacy JSON profile
        return Unsafe(_json_str(out, "__ansible_unsafe"))
    if "__ansible_vault" in out:
        return Vaulted(_json_str(out, "__ansible_vault"))
    return out


def _json_str(obj: dict, key: str) -> str:
    if not isinstance(obj[key], str):
        raise ValueError(f"{key} must be a string")  # not JSON then, as for Ansible
    return obj[key]


def _check_json_text(data: Any, text: str) -> None:
    """A string with half a surrogate pair (``"\\ud800"``) is refused, as Ansible refuses it."""
    todo = [data]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, str) and _SURROGATE.search(item):
            index = max(text.lower().find("\\ud"), 0)
            _refuse_at(text, index, "has a \\u escape that is half a surrogate pair, which is "
                       "no Unicode text; write the whole pair or the character itself")


def _graft_lines(data: Any, shadow: Any) -> None:
    if isinstance(data, Lines) and isinstance(shadow, dict):
        data.lines = {k: line for k, line in getattr(shadow, "lines", {}).items() if k in data}
        for key, value in data.items():
            if key in shadow:
                _graft_lines(value, shadow[key])
    elif isinstance(data, list) and isinstance(shadow, list):
        for value, other in zip(data, shadow, strict=False):
            _graft_lines(value, other)


def where(error: yaml.YAMLError) -> int | None:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def line_of(mapping: Any, key: Any) -> int | None:
    return getattr(mapping, "lines", {}).get(key)
