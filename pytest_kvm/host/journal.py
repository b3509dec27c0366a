"""The journal: every host setting pytest-kvm changes, written down on the host before it is
changed, undone at the end, and replayed by the next run if this one died (:class:`Change`)."""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import remote
from ..errors import KvmError
from .owner import Owner

if TYPE_CHECKING:
    from .core import Host

log = logging.getLogger("pytest_kvm.host")


# -- the journal: every host setting changed, written down before it is changed -------------
JOURNAL_DIR = "journal"
# Names pytest-kvm gives run dirs and journals (run id, sequence or worker): anything else
# listed in the work dir is left alone.
ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,120}")
BDF = r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]"
_DRIVER = r"[A-Za-z0-9_.-]{0,64}"
# The undo operations a journal may hold: a script of ours (pytest_kvm/remote) and the form
# of each of its arguments. Replay runs nothing else: stored text is never run by a shell.
UNDO_OPS: dict[str, tuple[str, ...]] = {
    "undo-pci-driver": (BDF, _DRIVER, r"\(null\)|" + _DRIVER),
    "undo-sriov-pf": (BDF, r"[0-9]{1,4}", r"[01]"),
    "undo-link-down": (r"[A-Za-z0-9_.-]{1,15}",),  # a lab link taken down (migration)
}


class JournalError(KvmError):
    pass


def undo_argv(op: str, args: list) -> list[str]:
    """The command for a journalled undo operation, once its arguments are checked."""
    forms = UNDO_OPS.get(op)
    if forms is None or not isinstance(args, list) or len(args) != len(forms) or not all(
            isinstance(a, str) and re.fullmatch(f, a) for a, f in zip(args, forms, strict=False)):
        raise JournalError(f"not an undo operation pytest-kvm writes: {op!r} {args!r}"[:200])
    return remote.argv(op, *args)


def list_owned(host: Host, where: str, kind: str) -> list[tuple[str, Owner]]:
    """(path, owner) of the run dirs (kind "dir") or journals ("file") in a directory of the
    host's work dir; names pytest-kvm would not give, and unreadable owners, are skipped."""
    base = f"{host.workdir}/{where}"
    r = host.run(remote.argv("list-owned", base, kind), check=False, timeout=60)
    fields = r.stdout.split("\0")
    out = []
    for name, owner_line in zip(fields[0::2], fields[1::2], strict=False):
        owner = Owner.parse(owner_line)
        if ENTRY_NAME.fullmatch(name) and name not in (".", "..") and owner is not None:
            out.append((f"{base}/{name}", owner))
    return out


class Journal:
    """An append-only file on the host: one undo operation per change, written before the
    change is made, and a ``done`` line when it was undone. A run that died leaves undo lines
    without ``done``: the next run (or --kvm-cleanup) replays them, newest first."""

    def __init__(self, host: Host, owner: Owner, worker: str):
        self.host = host
        self.path = f"{host.workdir}/{JOURNAL_DIR}/{owner.run_id}-{worker}.log"
        self.owner = owner
        self._n = 0
        self._open = 0
        self._lock = threading.Lock()

    def _append(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"))
        self.host.run(remote.argv("journal-append", line, self.path, self.owner.line()),
                      timeout=30)

    def record(self, what: str, op: str, args: list[str]) -> int:
        undo_argv(op, args)  # only what replay would accept is written
        with self._lock:
            self._n += 1
            self._open += 1
            entry = self._n
        self._append({"id": entry, "what": what, "op": op, "args": args})
        return entry

    def done(self, entry: int) -> None:
        self._append({"done": entry})
        with self._lock:
            self._open -= 1
            finished = self._open == 0
        if finished:  # nothing left to undo: no journal left behind
            self.host.run(["rm", "-f", "--", self.path], check=False, timeout=30)


def replay(host: Host, journal_file: str) -> list[str]:
    """Undo what a dead run's journal says it changed and did not undo; remove the file."""
    text = host.run(["cat", "--", journal_file], check=False, timeout=30).stdout
    records = []
    for line in text.splitlines()[1:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    finished = {r["done"] for r in records if "done" in r}
    undone = []
    for record in reversed([r for r in records if "op" in r and r.get("id") not in finished]):
        what = str(record.get("what", "?"))[:200]
        try:
            argv = undo_argv(record["op"], record.get("args"))
            if not host.names_device(record["args"][0]):
                raise JournalError(f"{record['args'][0]} is not a device the inventory names "
                                   f"for {host.name} (nor a VF of one)")
        except JournalError as exc:
            log.warning("%s: %s: refused: %s", host.name, journal_file, exc)
            undone.append(f"{what}: REFUSED ({exc})")
            continue
        result = host.run(argv, become=True, check=False, timeout=120)
        log.info("%s: replayed a dead run's undo: %s: %s", host.name, what,
                 "undone" if result.ok else "FAILED")
        undone.append(f"{what}: {'undone' if result.ok else 'FAILED ' + result.stdout.strip()}")
    host.run(["rm", "-f", "--", journal_file], check=False, timeout=30)
    return undone


def replay_dead_journals(host: Host, current_run: str | None) -> list[str]:
    """Replay every journal on the host whose owner (on this controller) is gone."""
    undone = []
    for path, owner in list_owned(host, JOURNAL_DIR, "file"):
        if owner.run_id != current_run and owner.is_dead():
            undone += replay(host, path)
    return undone


# -- a change made to a host, and how to undo it --------------------------------------------
class HostChangeError(KvmError):
    pass


@dataclass
class Change:
    """A setting changed on a host; ``restore()`` undoes it once (journalled by ``record``)."""

    host: Host
    restored: bool = field(default=False, kw_only=True)
    journal_entry: int | None = field(default=None, kw_only=True)

    def undo_op(self) -> tuple[str, list[str]]:
        """The undo operation (one of UNDO_OPS) and its arguments."""
        raise NotImplementedError

    def undo_command(self) -> list[str]:
        return undo_argv(*self.undo_op())

    def describe(self) -> str:
        raise NotImplementedError

    def record(self) -> None:
        """Write the undo on the host's journal, before the change is made."""
        self.journal_entry = self.host.record_undo(self.describe(), *self.undo_op())

    def restore(self) -> None:
        if self.restored:
            return
        r = self.host.run(self.undo_command(), become=True, check=False, timeout=120)
        if not r.ok:
            raise self.error(f"{self.host.name}: could not restore {self.describe()}: "
                             f"{(r.stdout + r.stderr).strip()}")
        self.restored = True
        self.host.undone(self.journal_entry)

    error = HostChangeError
