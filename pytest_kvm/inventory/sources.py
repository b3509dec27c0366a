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

import logging
import os
from pathlib import Path

from ..errors import InventoryError
from .ini import read_ini
from .model import Model, NotThisFormat, Origin
from .patterns import parse_address
from .varsfiles import read_text
from .yamlinv import YAML_EXTS, read_yaml

log = logging.getLogger("pytest_kvm.inventory")

# Names Ansible skips in an inventory directory (hidden files, vars dirs, backups, docs...).
_SKIP_EXTS = (".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst",
              ".orig", ".cfg", ".retry")
_SKIP_NAMES = ("host_vars", "group_vars", "vars_plugins")


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
            name, port = parse_address(item)
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


def _read_file(path: Path, model: Model, in_dir: bool) -> None:
    shown = str(path)
    text = read_text(path, "keep the hosts in a plain file and only secrets in vault files")
    if text.startswith("#!") and os.access(path, os.X_OK):
        raise InventoryError(shown, 1, "is an inventory script; pytest-kvm does not run "
                             "programs to read an inventory: write its hosts to an INI or "
                             "YAML file")
    ext = path.suffix.lower()
    readers = []
    if ext in YAML_EXTS or not ext:
        readers.append(read_yaml)
    if ext != ".toml":
        readers.append(read_ini)
    failures: list[NotThisFormat] = []
    for reader in readers:
        try:  # as Ansible: what a reader added before it failed stays
            reader(text, shown, model)
        except NotThisFormat as exc:
            failures.append(exc)
            continue
        log.debug("%s: read as %s", shown, reader.__name__.removeprefix("read_"))
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
