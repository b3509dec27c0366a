"""Files pytest-kvm writes and reads on the controller: outputs written atomically without
following a link planted at their name, and a private cache checked before it is used.

An output (an image copied with ``--out``, a comparison, the figures file) goes to a new
file made exclusively in the same directory (mode 0600 unless said otherwise), then renamed
over its name: a symbolic link another user left there is replaced, never followed, and a
reader sees the old file or the new one whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import KvmError, printable

log = logging.getLogger("pytest_kvm.files")


class UnsafePath(KvmError):
    """A directory pytest-kvm reads or executes from could be changed by another user."""


def write_atomic(path: str | os.PathLike, data: bytes | str, mode: int = 0o600) -> Path:
    """Write ``data`` to ``path``: a temp file (O_EXCL) in its directory, renamed over it."""
    return _replace(path, mode, lambda out: out.write(
        data.encode() if isinstance(data, str) else data))


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike, mode: int = 0o644) -> Path:
    """Copy ``source`` to ``path`` as write_atomic does (a link at ``path`` is replaced)."""
    def fill(out) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)

    return _replace(path, mode, fill)


def _replace(path: str | os.PathLike, mode: int, fill) -> Path:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def _problem(path: str, st: os.stat_result, me: int) -> str | None:
    if st.st_uid not in (me, 0):
        return f"belongs to uid {st.st_uid}"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if st.st_mode & 0o022 and not stat.S_ISSOCK(st.st_mode):
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def private_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` made (0700) if missing, then checked, with every entry under it: each must
    be the user's (or root's), no symbolic link, writable by nobody else. Otherwise an error
    naming the first culprit and the fix (remove it: what another user left inside would
    stay if it were adopted)."""
    me = os.getuid()
    top = Path(path)
    try:
        top.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(top)
    except OSError as exc:
        raise UnsafePath(f"cannot use {what} {printable(str(top))}: {exc}") from exc
    problem = _problem(str(top), st, me) or (
        None if stat.S_ISDIR(st.st_mode) else "is not a directory")
    culprit = str(top)
    if problem is None:
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(top, 0o700)  # ours: made private
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                entry = os.path.join(root, name)
                try:
                    problem = _problem(entry, os.lstat(entry), me)
                except FileNotFoundError:  # (removed meanwhile by another of our runs)
                    continue
                if problem:
                    culprit = entry
                    break
            if problem:
                break
    if problem:
        raise UnsafePath(f"{what} {printable(str(top))} is not safe: {printable(culprit)} "
                         f"{problem}; remove {printable(str(top))} (what another user left "
                         f"there would stay if you made it yours), or point it elsewhere")
    log.debug("%s %s checked", what, top)
    return top
