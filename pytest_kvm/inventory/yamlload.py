"""YAML (and JSON) as Ansible loads it, with the line of every mapping key.

PyYAML's safe loader (the library Ansible uses), plus Ansible's tags: ``!unsafe`` (a plain
string here: nothing is templated from it) and ``!vault`` (kept as :class:`Vaulted`, which
pytest-kvm cannot decrypt). Mappings come back as :class:`Lines`, a dict that knows the line
of each key.
"""

from __future__ import annotations

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
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor("!unsafe", lambda loader, node: Unsafe(loader.construct_scalar(node)))
for _tag in ("!vault", "!vault-encrypted"):
    _Loader.add_constructor(_tag, lambda loader, node: Vaulted(loader.construct_scalar(node)))


def load(text: str) -> Any:
    """Parse one YAML document (JSON is YAML too); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader with Ansible's tags


def where(error: yaml.YAMLError) -> int | None:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def line_of(mapping: Any, key: Any) -> int | None:
    return getattr(mapping, "lines", {}).get(key)
