"""Leases: exclusive use of a host resource (a PCI device, a migration pair) across the
xdist workers of one run, through file locks on the controller."""

from __future__ import annotations

import os

from ..errors import KvmError


# -- leases: exclusive use of a host resource across the xdist workers of one run -----------
class LeaseTimeout(KvmError):
    pass


class Leases:
    """File locks on the controller, shared by the processes of one run (same run id).

    ``hold(names)`` takes them in sorted order, so that two workers wanting overlapping sets
    (a migration pair, a PF and its VF guest) can never deadlock; released on exit.
    """

    def __init__(self, run_id: str, timeout: float = 3600.0):
        import tempfile

        self.dir = os.path.join(tempfile.gettempdir(), f"pytest-kvm-leases-{run_id}")
        self.timeout = timeout

    def remove(self) -> None:
        """Remove the run's lock files (by the run's main process, once its workers ended)."""
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def hold(self, *names: str):
        import contextlib

        from filelock import FileLock, Timeout

        @contextlib.contextmanager
        def held():
            locks = []
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            st = os.lstat(self.dir)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077 or not os.path.isdir(self.dir):
                raise LeaseTimeout(f"lease dir {self.dir} is not this user's private directory "
                                   "(another user made it first?); remove it")
            try:
                for name in sorted(set(names)):
                    lock = FileLock(os.path.join(self.dir, _lease_file(name)))
                    try:
                        lock.acquire(timeout=self.timeout)
                    except Timeout as exc:
                        raise LeaseTimeout(f"{name} stayed leased by another worker for "
                                           f"{self.timeout:g} s") from exc
                    locks.append(lock)
                yield
            finally:
                for lock in reversed(locks):
                    lock.release()

        return held()


def _lease_file(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) + ".lock"
