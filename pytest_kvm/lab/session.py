"""The lab of one pytest process: the inventory's hosts, connected lazily (nested hosts
booted on their parents, with their links and NFS), the guests started on them, and the end
of it all (nested hosts stopped innermost first, connections closed, leases given back)."""

from __future__ import annotations

import itertools
import logging
import random
import shutil
import tempfile
import threading

from .. import remote
from ..errors import KvmError
from ..guest import (
    Guest,
    GuestError,
    GuestSpec,
    MicroImage,
    Owner,
    PortTaken,
    build_micro,
    start_guest,
    sweep,
)
from ..guest.state import RUN_DIR
from ..host import ENTRY_NAME, Host, Journal, Leases, replay_dead_journals
from ..inventory import HostConfig, HostEntry, Inventory
from ..transport import Transport, for_entry
from .nested import (
    L1Options,
    NestedHost,
    NestedHostError,
    export_nfs,
    keypair,
    l1_spec,
    make_link,
    mount_nfs,
)

log = logging.getLogger("pytest_kvm.lab")
BOOT_JOIN_TIMEOUT = 900  # s: a nested host's boot is bounded by its own timeouts, well below


class KvmSession:
    """Hosts of the inventory for one pytest process: one connection per host, opened lazily.

    The first time a host is used, guests left behind on it by dead runs are swept.
    """

    def __init__(self, inventory: Inventory, owner: Owner, worker: str = "main",
                 keep_failed: bool = False):
        self.inventory = inventory
        self.owner = owner
        self.worker = worker
        self.keep_failed = keep_failed
        self.swept: dict[str, list[str]] = {}
        self.replayed: dict[str, list[str]] = {}
        self._transports: dict[str, Transport] = {}
        self._hosts: dict[str, Host] = {}
        self._broken: dict[str, KvmError] = {}
        self._images: dict[tuple, MicroImage] = {}
        self._seq = itertools.count(1)
        self._lock = threading.RLock()  # the session's tables, images and key dir
        self._host_locks: dict[str, threading.RLock] = {}  # one per host: boots overlap
        self._background: threading.Thread | None = None
        self._nested: list[NestedHost] = []  # from the inventory, in boot order
        self._link_dirs: list[tuple[Host, str]] = []
        self._keydir: str | None = None
        self._closed = False
        self.leases = Leases(owner.run_id)
        self.channels: dict[str, str] = {}  # "host/guest" -> how its commands went, its OS
        # every guest this session started, by its run dir's sequence number (None while it
        # boots): what is not here, or stopped, and still has a run dir is a stray
        self._started: dict[str, Guest | None] = {}
        self.strays_removed: list[str] = []  # "host: run dir (QEMU running)", for the summary

    def host(self, name: str, sweep_leftovers: bool = True) -> Host:
        """The Host, connected and with its facts probed; KvmError when it cannot be reached.

        A host that failed once fails fast for the rest of the session (no repeated timeouts).
        Each host has its own lock: a nested host booting (in the background, or for another
        thread) holds up only the checks that need it.
        """
        with self._lock:
            lock = self._host_locks.setdefault(name, threading.RLock())
        with lock:
            if name in self._broken:  # the same error again (its type tells what happened)
                raise self._broken[name].with_traceback(None)
            try:
                if name not in self._hosts:
                    self._hosts[name] = self._connect(self.inventory.hosts[name])
                host = self._hosts[name]
                host.facts  # noqa: B018 - connects and probes once
                if host.journal is None:
                    host.journal = Journal(host, self.owner, self.worker)
                if sweep_leftovers and name not in self.swept:
                    self.swept[name] = sweep(host, self.owner.run_id)
                    self.replayed[name] = replay_dead_journals(host, self.owner.run_id)
            except KvmError as exc:
                self._broken[name] = exc
                raise
        return host

    def boot_in_background(self, names: list[str]) -> None:
        """Connect (and so boot, if nested) these hosts one after another in a thread, while
        the checks run; a check that needs one waits for it, and a host that failed to boot
        fails the checks that need it with the boot's error. close() waits for the thread."""
        log.info("booting in the background: %s", ", ".join(names))

        def boot() -> None:
            for name in names:
                if self._closed:
                    return
                try:
                    self.host(name)
                except Exception as exc:  # noqa: BLE001 - a KvmError is kept in _broken (its
                    # checks fail with it); any other, the check that needs the host meets again
                    log.warning("%s: the background boot failed: %s", name, exc)

        self._background = threading.Thread(target=boot, name="kvm-boot", daemon=True)
        self._background.start()

    def hosts_up(self) -> dict[str, Host]:
        """The hosts connected so far (a background boot may be adding one)."""
        return dict(self._hosts)

    def connected(self) -> list[tuple[str, str]]:
        """(name, summary) of the hosts up so far (facts probed); "NOT USED" and why for
        those that failed."""
        hosts, broken = dict(self._hosts), dict(self._broken)  # (a boot may be adding one)
        return [*((n, f"{n}: NOT USED: {e}") for n, e in broken.items()),
                *((n, h.summary()) for n, h in hosts.items()
                  if n not in broken and "facts" in vars(h))]  # (probed: no SSH here)

    def _connect(self, entry: HostEntry) -> Host:
        parent_name = entry.config.parent
        if parent_name is None:
            return Host(entry, for_entry(entry, self.inventory, self._transports))
        # A nested host: boot it as a guest on its parent, then use it over SSH.
        parent = self.host(parent_name)
        link = None
        if entry.config.l1_link:
            ends = [n for n, e in self.inventory.hosts.items()
                    if e.config.l1_link == entry.config.l1_link]
            rundir = (f"{parent.workdir}/{RUN_DIR}/{self.owner.run_id}-{self.worker}-link-"
                      f"{entry.config.l1_link}")
            link = make_link(parent, entry, ends, rundir, self.owner.line() + "\n")
            self._link_dirs.append((parent, rundir))
        host = self._boot_nested(parent, entry, L1Options.from_entry(entry, link))
        self._nested.append(host)
        server_name = entry.config.l1_nfs_server
        if server_name:  # the server first (booted now if it is another host)
            server = host if server_name == entry.name else self.host(server_name)
            export_nfs(server)
            mount_nfs(host, server)
        return host

    def _boot_nested(self, parent: Host, entry: HostEntry, opts: L1Options) -> NestedHost:
        """Boot an L1 on the parent (a guest of this session: owned, swept) and attach to it
        as a host; another forwarded port when QEMU found one taken."""
        key, pubkey = keypair(self.keydir)
        for attempt in range(4):
            port = random.randrange(20000, 60000)
            try:
                l1 = self.start_guest(parent, l1_spec(entry.name, parent, opts, pubkey, port),
                                      entry.name)
                break
            except GuestError as exc:
                if isinstance(exc, PortTaken) and attempt < 3:
                    continue
                raise NestedHostError(f"{entry.name}: the L1 guest on {parent.name} did not "
                                      f"start: {exc}") from exc
        return NestedHost.attach(parent, entry, l1, port, key, self.keydir)

    def nested_host(self, parent: Host, name: str, opts: L1Options) -> NestedHost:
        """A nested host made for a test (not from the inventory); stop it with its stop()."""
        entry = HostEntry(name, HostConfig(parent=parent.name), path=self.inventory.path)
        return self._boot_nested(parent, entry, opts)

    @property
    def keydir(self) -> str:
        with self._lock:
            if self._keydir is None:
                self._keydir = tempfile.mkdtemp(prefix="pytest-kvm-keys-")
            return self._keydir

    def image_for(self, host: Host) -> MicroImage:
        key = (host.entry.config.guest_kernel, host.entry.config.guest_modules)
        with self._lock:
            if key not in self._images:
                self._images[key] = build_micro(*key)
            return self._images[key]

    def start_guest(self, host: Host, spec: GuestSpec, label: str = "",
                    wait: bool = True) -> Guest:
        n = next(self._seq)
        self._started[str(n)] = None  # (booting: not a stray)
        try:
            guest = start_guest(host, spec, self.image_for(host), self.owner,
                                f"{self.worker}-{n}", label, wait)
        except BaseException:
            del self._started[str(n)]
            raise
        self._started[str(n)] = guest
        if wait:  # (a migration's destination takes its source's channel)
            self.channels[f"{host.name}/{spec.name}"] = f"{guest.channel} ({guest.os_family})"
        return guest

    def strays(self, host: Host) -> tuple[list[str], str]:
        """Remove this process's strays on the host: run dirs of its guests that are not
        running as far as it knows (stopped, or never known: a failed stop, a guest whose
        object was lost), with their QEMU if it still runs. Returns (what was removed, the
        host's load as "1.93 on 2 CPUs")."""
        base = f"{host.workdir}/{RUN_DIR}"
        prefix = f"{self.owner.run_id}-{self.worker}-"
        r = host.run(remote.argv("run-strays", base, prefix), check=False, timeout=30)
        removed, load = [], ""
        for line in r.stdout.splitlines():
            fields = line.split()
            if fields[:1] == ["load"] and len(fields) == 3:
                load = f"{fields[1]} on {fields[2]} CPUs"
                continue
            if len(fields) != 2 or not fields[0].startswith(prefix):
                continue
            seq = fields[0][len(prefix):].split("-", 1)[0]
            if not ENTRY_NAME.fullmatch(fields[0]) or not seq.isdigit():
                continue  # (a link's dir, or a name we would not give)
            known = self._started.get(seq, "unknown")
            if known is None or (isinstance(known, Guest) and not known.stopped):
                continue
            running = fields[1] == "1"
            stop = host.run(remote.argv("qemu-stop", f"{base}/{fields[0]}", "0", ""),
                            check=False, timeout=120)
            what = (f"{host.name}: {fields[0]} ({'its QEMU was running' if running else 'no QEMU'}"
                    f"{'' if stop.ok else ', NOT removed: ' + stop.stdout.strip()})")
            log.warning("a stray guest of this run: %s", what)
            removed.append(what)
        self.strays_removed += removed
        return removed, load

    def close(self) -> None:
        """Stop the nested hosts (innermost first) and close every connection (once)."""
        if self._closed:
            return
        self._closed = True  # (a background boot stops after the host it is booting)
        if self._background is not None:
            self._background.join(BOOT_JOIN_TIMEOUT)
            if self._background.is_alive():
                log.warning("the background boot did not end within %d s; stopping what "
                            "is up", BOOT_JOIN_TIMEOUT)
        for host in self._hosts.values():
            host.transport.close()
        for nested in reversed(self._nested):
            try:
                nested.stop()
            except KvmError:
                pass  # swept by the next run
        for parent, rundir in self._link_dirs:
            parent.run(["rm", "-rf", rundir], check=False, timeout=30)
        for transport in self._transports.values():
            transport.close()
        if self._keydir:
            shutil.rmtree(self._keydir, ignore_errors=True)
        if self.worker == "main":  # the xdist controller ends after its workers
            self.leases.remove()
