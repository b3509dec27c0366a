"""The link a migration stream takes, cut on purpose and restored (the link-lost and postcopy
recovery failure paths).

Between two nested hosts of the lab joined by their private link (``kvm_l1_link``), the
destination's link interface goes down (:class:`LinkDown`: the interface holding its
``kvm_migration_address``, journalled like every host setting, so a crash mid-cut is undone by
the next run): the real link, NFS and all, as an unplugged cable. Anywhere else, a real host's
interfaces are never touched: the stream goes through a relay on the destination host
(:class:`Relay`, socat in a process group of its own), frozen with SIGSTOP to cut it (its
traffic dropped: the sender's buffers fill and stall, as over a dead link) and continued to
restore it, as libvirt's tests cut a migration with a proxy.
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass, field

from ... import remote
from ...errors import KvmError
from ...guest import Guest
from ...host import Change, Host
from .migrate import Stream, port

log = logging.getLogger("pytest_kvm.migration")

RELAY_LIMIT_S = 600  # a relay ends by itself after this long, whatever becomes of us


class LinkError(KvmError):
    pass


@dataclass
class LinkDown(Change):
    """A link interface taken down (undone: brought up again)."""

    interface: str
    error = LinkError

    def undo_op(self) -> tuple[str, list[str]]:
        return "undo-link-down", [self.interface]

    def describe(self) -> str:
        return f"link {self.interface} down"


class Cut:
    """A way to cut the link a stream takes (``cut``), restore it (``restore``) and leave
    nothing behind (``close``: restored, and whatever it started gone)."""

    what = ""

    def cut(self) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.restore()

    def leftovers(self) -> list[str]:
        """What of the cut is still there after close() (nothing, when all went well)."""
        return []


@dataclass
class InterfaceCut(Cut):
    """The lab's private link, down on the destination L1."""

    host: Host
    interface: str
    change: LinkDown | None = field(default=None, init=False)

    @property
    def what(self) -> str:
        return f"{self.host.name}'s link {self.interface} down"

    def cut(self) -> None:
        self.change = LinkDown(self.host, self.interface)
        self.change.record()
        log.info("%s: taking link %s down", self.host.name, self.interface)
        self.host.run(["ip", "link", "set", "dev", self.interface, "down"], become=True,
                      timeout=30)

    def restore(self) -> None:
        if self.change is not None and not self.change.restored:
            log.info("%s: bringing link %s up", self.host.name, self.interface)
            self.change.restore()

    def leftovers(self) -> list[str]:
        r = self.host.run(["ip", "-o", "link", "show", "dev", self.interface], check=False,
                          timeout=30)
        return [] if ",UP" in r.stdout else [f"{self.host.name}: link {self.interface} is "
                                               f"not up: {r.stdout.strip()[:200]}"]


@dataclass
class Relay(Cut):
    """socat on the destination host between where the source connects and where the
    destination QEMU listens; frozen to cut, continued to restore, killed to close."""

    host: Host
    pgid: int

    @property
    def what(self) -> str:
        return f"the relay on {self.host.name} frozen (pgid {self.pgid})"

    def _signal(self, sig: str) -> None:
        self.host.run(["kill", f"-{sig}", "--", f"-{self.pgid}"], check=False, timeout=30)

    def cut(self) -> None:
        log.info("%s: freezing the migration relay (pgid %d)", self.host.name, self.pgid)
        self._signal("STOP")

    def restore(self) -> None:
        self._signal("CONT")

    def close(self) -> None:
        """Continued, then ended (TERM, KILL after 2 s), awaited."""
        # (dash's kill takes a negative pid as a group without "--")
        self.host.run(["sh", "-c", 'kill -CONT "-$1"; kill -TERM "-$1" || exit 0; i=0; '
                       'while kill -0 "-$1" 2>/dev/null; do i=$((i+1)); '
                       '[ $i -eq 20 ] && kill -KILL "-$1"; [ $i -gt 40 ] && exit 1; '
                       'sleep 0.1; done', "relay-close", str(self.pgid)],
                      check=False, timeout=30)

    def leftovers(self) -> list[str]:
        r = self.host.run(["ps", "-o", "pid=", "-s", str(self.pgid)], check=False, timeout=30)
        return [f"{self.host.name}: the relay's process {p}" for p in r.stdout.split()]


def cuttable(source: Host, destination: Guest, stream: Stream) -> tuple[Stream, Cut]:
    """The stream the source should use (through a relay where there is no lab link), and
    the way to cut it."""
    dst = destination.host
    cfg = dst.entry.config
    if source is not dst and cfg.parent and cfg.l1_link and cfg.migration_address:
        out = dst.run(["ip", "-o", "-4", "addr", "show", "to", cfg.migration_address],
                      timeout=30).stdout.split()
        if len(out) > 1 and re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", out[1]):
            return stream, InterfaceCut(dst, out[1])
        raise LinkError(f"{dst.name}: no interface holds {cfg.migration_address} "
                        f"(kvm_migration_address): {' '.join(out)[:200]}")
    if stream.kind == "unix":
        via = Stream("unix", path=f"{destination.rundir}/relay.sock", tls=stream.tls)
        args = [via.path, stream.path]
    else:
        via = Stream(stream.kind, address=stream.address, port=port(), tls=stream.tls)
        args = ["tcp", f"{via.address}:{via.port}", "tcp", f"{stream.address}:{stream.port}"]
    r = dst.run(remote.argv("relay", str(RELAY_LIMIT_S), *args), check=False, timeout=30)
    match = re.fullmatch(r"pgid=(\d+)", r.stdout.strip())
    if not match:
        raise LinkError(f"{dst.name}: the migration relay (socat) did not start: "
                        f"{shlex.quote((r.stdout + r.stderr).strip()[-300:])}; install socat "
                        "on the host")
    log.info("%s: a relay %s -> %s (pgid %s)", dst.name, via.uri(), stream.uri(),
             match.group(1))
    return via, Relay(dst, int(match.group(1)))
