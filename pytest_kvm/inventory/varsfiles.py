"""``group_vars/`` and ``host_vars/`` beside an inventory: which files a group or host has, in
Ansible's order, and what they hold."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import InventoryError
from . import yamlload
from .model import Origin

VARS_EXTS = (".yml", ".yaml", ".json")


def read_text(path: Path, vault_fix: str) -> str:
    """A file's text (bytes that are not UTF-8 kept as surrogate escapes, as Ansible keeps
    them); a file encrypted whole with Ansible Vault is refused, with ``vault_fix``."""
    try:
        data = path.read_bytes()
    except PermissionError:
        raise InventoryError(str(path), None, "cannot be read (permission denied)") from None
    except OSError as exc:
        raise InventoryError(str(path), None, f"cannot be read ({exc.strerror})") from None
    text = data.decode("utf-8", "surrogateescape")
    if text.startswith(yamlload.VAULT_HEADER):
        raise InventoryError(str(path), 1, "is encrypted with Ansible Vault; pytest-kvm cannot "
                             f"decrypt it: {vault_fix}")
    return text


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
    text = read_text(path, "encrypt single values (!vault) and keep the keys pytest-kvm uses "
                           "in plain text")
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
