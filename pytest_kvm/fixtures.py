"""Fixtures: the session's hosts (parametrised over the inventory) and guests on them."""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import shlex
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import NoReturn

import pytest

from . import reporting
from .errors import KvmError
from .features import nesting
from .features.migration import address_of
from .figures import ATTACHMENT_PREFIX, Figure
from .guest import (
    CloudInit,
    Disk,
    Guest,
    GuestSpec,
    MicroImage,
    Owner,
    build_micro,
    distro,
    start_guest,
    sweep,
)
from .guest.cloudinit import ed25519_keypair
from .guest.launch import safe_name
from .guest.state import RUN_DIR
from .host import Host, Journal, Leases, replay_dead_journals
from .inventory import HostConfig, HostEntry, Inventory
from .transport import Transport, for_entry

log = logging.getLogger(__name__)
BOOT_JOIN_TIMEOUT = 900  # s: a nested host's boot is bounded by its own timeouts, well below

NO_INVENTORY = "no inventory given: pass --hosts hosts.ini (or set KVM_HOSTS)"


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
        self._l1_guests: list[Guest] = []
        self._link_dirs: list[tuple[Host, str]] = []
        self._keydir: str | None = None
        self._closed = False
        self.leases = Leases(owner.run_id)
        self.channels: dict[str, str] = {}  # "host/guest" -> how its commands went, its OS

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

    def connected(self) -> list[tuple[str, str]]:
        """(name, summary) of the hosts up so far (facts probed); "NOT USED" and why for
        those that failed."""
        hosts, broken = dict(self._hosts), dict(self._broken)  # (a boot may be adding one)
        return [*((n, f"{n}: NOT USED: {e}") for n, e in broken.items()),
                *((n, h.summary()) for n, h in hosts.items()
                  if n not in broken and "facts" in vars(h))]  # (probed: no SSH here)

    def _connect(self, entry) -> Host:
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
            link = nesting.make_link(parent, entry, ends, rundir, self.owner.line() + "\n")
            self._link_dirs.append((parent, rundir))
        host, l1 = nesting.provision(parent, entry, nesting.L1Options.from_entry(entry, link),
                                     self.keydir,
                                     lambda p, spec: self.start_guest(p, spec, entry.name))
        self._l1_guests.append(l1)
        server_name = entry.config.l1_nfs_server
        if server_name:  # the server first (booted now if it is another host)
            server = host if server_name == entry.name else self.host(server_name)
            nesting.export_nfs(server)
            nesting.mount_nfs(host, server)
        return host

    def nested_host(self, parent: Host, name: str, opts: nesting.L1Options) -> Host:
        """A nested host made for a test (not from the inventory); stop it with release()."""
        entry = HostEntry(name, HostConfig(parent=parent.name), path=self.inventory.path)
        host, l1 = nesting.provision(parent, entry, opts, self.keydir,
                                     lambda p, spec: self.start_guest(p, spec, name))
        host.l1_guest = l1
        return host

    def release(self, host: Host) -> None:
        host.transport.close()
        host.l1_guest.stop()

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
        seq = f"{self.worker}-{next(self._seq)}"
        guest = start_guest(host, spec, self.image_for(host), self.owner, seq, label, wait)
        if wait:  # (a migration's destination takes its source's channel)
            self.channels[f"{host.name}/{spec.name}"] = f"{guest.channel} ({guest.os_family})"
        return guest

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
        for guest in reversed(self._l1_guests):
            try:
                guest.stop()
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


SESSION_KEY = pytest.StashKey[KvmSession | None]()
FAILED_KEY = pytest.StashKey[set]()


def kvm_session_of(config: pytest.Config) -> KvmSession | None:
    return config.stash.get(SESSION_KEY, None)


class GuestFactory:
    """Starts guests; stops every one of them at the end of its scope, also after a failure.

    With --kvm-keep-failed, guests of a failed test are left running and their console
    command is printed instead.
    """

    def __init__(self, session: KvmSession, default_host: Host | None, label: str,
                 failed: Callable[[], bool] = lambda: False):
        self.session = session
        self.default_host = default_host
        self.label = label
        self.failed = failed  # did a test of this factory's scope fail (for --kvm-keep-failed)
        self.guests: list[Guest] = []
        self.replaced: dict[Guest, Guest] = {}  # a dead guest -> the fresh one in its place

    def __call__(self, spec: GuestSpec | None = None, host: Host | None = None,
                 wait: bool = True, **changes) -> Guest:
        host = host or self.default_host
        if host is None:
            raise KvmError("guest_factory needs a host: use kvm_host in the test or pass host=")
        spec = (spec or GuestSpec()).with_(**changes) if changes else (spec or GuestSpec())
        with reporting.step(f"provision and boot {spec.name} on {host.name}"):
            guest = self.session.start_guest(
                host, with_host_image(spec, host, self.session), self.label, wait)
        self.guests.append(guest)
        return guest

    def revive(self, guest: Guest) -> Guest:
        """A fresh guest (same host, same spec, a new QEMU) in place of a dead one, which is
        stopped: for a rerun on a host with kvm_reruns, whose tests share a module guest."""
        try:
            guest.stop()
        except KvmError:
            pass  # it is gone already, or the sweep of the next run removes it
        with reporting.step(f"provision and boot {guest.spec.name} on {guest.host.name} "
                            "again (the previous one died)"):
            fresh = self.session.start_guest(guest.host, guest.spec, self.label)
        self.guests[self.guests.index(guest)] = fresh
        self.replaced[guest] = fresh
        return fresh

    @contextlib.contextmanager
    def held(self, spec: GuestSpec | None = None, host: Host | None = None, **changes):
        """A guest for the life of the fixture that holds it, stopped when that fixture ends::

            @pytest.fixture(scope="module")
            def my_guest(kvm_host, module_guest_factory):
                with module_guest_factory.held(GuestSpec(...), host=kvm_host) as guest:
                    yield guest

        pytest ends a module fixture that depends on ``kvm_host`` when the host parameter
        changes (its tests are grouped by parameters of module scope, so one host's tests
        can come in several runs): the guest is stopped then, not at the end of the module,
        so the guests of one host do not pile up on it."""
        guest = self(spec, host, **changes)
        try:
            yield guest
        finally:
            self.release(guest)

    def release(self, guest: Guest) -> None:
        """Stop ``guest`` (or the fresh guest that replaced it) before the factory's scope
        ends; one of a failed test stays, under --kvm-keep-failed, until that end."""
        while guest in self.replaced:
            guest = self.replaced.pop(guest)
        if guest not in self.guests or (self.failed() and self.session.keep_failed
                                        and guest.alive()):
            return
        self.guests.remove(guest)
        with reporting.step(f"stop {guest.spec.name} on {guest.host.name}"):
            guest.stop()

    def finish(self, failed: bool, reporter=None) -> list[str]:
        errors, kept = [], []
        for guest in reversed(self.guests):
            if failed and self.session.keep_failed and guest.alive():
                kept.append(f"kept {guest!r}: console: ssh to {guest.host.name}, then "
                            f"cd {shlex.quote(guest.rundir)} && "
                            f"socat -,raw,echo=0 UNIX-CONNECT:c.sock ; "
                            f"stop it with pytest --hosts ... --kvm-cleanup")
                continue
            try:
                with reporting.step(f"stop {guest.spec.name} on {guest.host.name}"):
                    guest.stop()
            except KvmError as exc:
                errors.append(str(exc))
        self.guests.clear()
        if reporter is not None:
            for line in kept:
                reporter.write_line(line, yellow=True)
        if errors:
            raise KvmError("; ".join(errors))
        return kept


def with_host_image(spec: GuestSpec, host: Host, session: KvmSession) -> GuestSpec:
    """The spec on the host's distro image (kvm_guest_image), when it names one and the spec
    does not bring its own kernel or image: boot disk first, a fresh cloud-init seed."""
    image = host.entry.config.guest_image
    if not image or spec.kernel or spec.cloud_init or spec.root:
        return spec
    cfg = host.entry.config
    # commands: the guest agent where the image has one, else SSH to its sshd (our key, its
    # host key known before it boots), else the serial console
    key, pub = nesting.keypair(session.keydir)  # (made only when a guest needs a key)
    ci = CloudInit(user=cfg.guest_user, password=secrets.token_urlsafe(12),
                   hostname=safe_name(spec.name, 30), ssh_keys=(pub,),
                   host_key=ed25519_keypair())
    firmware = cfg.guest_firmware
    if firmware == "auto":
        firmware = "bios" if cfg.guest_root else distro.firmware_of(image)
    disks = (Disk(image=image), *spec.disks)
    if spec.disks and spec.disks[0].shared and not spec.disks[0].image:
        # a first disk on shared storage (a migrating guest's) becomes the boot disk there:
        # the image's overlay on shared storage, so that the destination boots nothing anew
        disks = (replace(spec.disks[0], image=image), *spec.disks[1:])
    return spec.with_(disks=disks, cloud_init=ci,
                      root=cfg.guest_root, memory=max(spec.memory, 1024), agent=True,
                      firmware=firmware, ssh_key=key)


def _failed(request, node) -> bool:
    failed = request.config.stash.get(FAILED_KEY, set())
    return any(nodeid == node.nodeid or nodeid.startswith(node.nodeid + "::")
               for nodeid in failed)


def _factory(request, session: KvmSession, host: Host | None):
    label = request.node.name
    factory = GuestFactory(session, host, label, lambda: _failed(request, request.node))
    yield factory
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    factory.finish(factory.failed(), reporter)


def _fail(exc: KvmError) -> NoReturn:
    """Fail the test on a lab error: its one line, no traceback, its type named (Allure's
    categories go by it; kvm_reruns by the error itself, the failure's context)."""
    pytest.fail(f"{type(exc).__name__}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def kvm_session(pytestconfig) -> KvmSession:
    """The inventory and its hosts for this pytest process."""
    session = kvm_session_of(pytestconfig)
    if session is None:
        pytest.skip(NO_INVENTORY)
    return session


@pytest.fixture(scope="module")
def kvm_host(request, kvm_session) -> Host:
    """One inventory host per parameter (test ids carry the host name)."""
    name = getattr(request, "param", None)
    if name is None:
        pytest.skip(NO_INVENTORY)
    try:
        return kvm_session.host(name)
    except KvmError as exc:
        _fail(exc)


@pytest.fixture(scope="module")
def kvm_pair(request, kvm_session):
    """(source, destination) hosts for migration; the same host twice for a self pair.
    Both hosts' migration leases are held (sorted: no deadlock) for the module."""
    if getattr(request, "param", None) is None:
        pytest.skip(NO_INVENTORY)
    src, dst = request.param
    try:
        pair = kvm_session.host(src), kvm_session.host(dst)
    except KvmError as exc:
        _fail(exc)
    with kvm_session.leases.hold(f"{src}-migration", f"{dst}-migration"):
        yield pair


@pytest.fixture(scope="module")
def kvm_migration_tls(kvm_pair):
    """TLS credentials for the pair's migrations (a per-run CA and certificates), unless both
    hosts say ``kvm_migration_tls=no`` (plain TCP) or the pair is one host (a unix socket in
    the private run dir needs none); else None."""
    src, dst = kvm_pair
    if src is dst or (src.entry.config.migration_tls is False
                      and dst.entry.config.migration_tls is False):
        yield None
        return
    from .features.migration import MigrationTls

    tls = MigrationTls(sorted({address_of(src), address_of(dst)}))
    yield tls
    tls.close()


@pytest.fixture(scope="module")
def kvm_device_lease(kvm_host, kvm_pci, kvm_session):
    """Exclusive use of the module's PCI device (kvm_pci) on its host across xdist workers."""
    with kvm_session.leases.hold(f"{kvm_host.name}-{kvm_pci}"):
        yield kvm_pci


def _host_if_used(request) -> Host | None:
    if "kvm_host" in request.fixturenames:
        return request.getfixturevalue("kvm_host")
    return None


@pytest.fixture
def guest_factory(request, kvm_session):
    """Start guests: ``guest_factory(GuestSpec(...), host=...)``; all stopped after the test."""
    yield from _factory(request, kvm_session, _host_if_used(request))


@pytest.fixture(scope="module")
def module_guest_factory(request, kvm_session):
    """As guest_factory, but the guests live for the whole module."""
    yield from _factory(request, kvm_session, _host_if_used(request))


@pytest.fixture(scope="module")
def guest_spec() -> GuestSpec:
    """The spec of the module's shared ``guest``; override it in a suite module."""
    return GuestSpec()


@pytest.fixture(scope="module")
def guest(kvm_host, guest_spec, module_guest_factory) -> Iterator[Guest]:
    """One guest per host and module, shared by the module's tests of that host; stopped
    when they are done (which, with other module parameters, can be before the module's
    end: the next run of that host's tests boots it again)."""
    try:
        booted = module_guest_factory(guest_spec, host=kvm_host)
    except KvmError as exc:
        _fail(exc)
    yield booted
    module_guest_factory.release(booted)


@pytest.fixture(autouse=True)
def _kvm_revive_dead_guest(request):
    """On hosts with kvm_reruns: a test (or its rerun) that shares the module's guests gets
    fresh ones for those the previous test left dead."""
    if ("module_guest_factory" not in request.fixturenames
            or "kvm_host" not in request.fixturenames):
        return
    host = request.getfixturevalue("kvm_host")
    if not host.entry.config.reruns:
        return
    factory = request.getfixturevalue("module_guest_factory")
    for shared in list(factory.guests):
        if shared.dead:
            _replace_fixture_value(request, shared, factory.revive(shared))


def _replace_fixture_value(request, old, new) -> None:
    """Fixtures whose value is ``old`` give ``new`` from now on, to this test and the rest of
    their scope. pytest keeps a fixture's value in ``FixtureDef.cached_result`` (value,
    cache key, exception) and this test's arguments in ``item.funcargs``; fixtures computed
    from the old value (e.g. a guest's lsmod) keep what they read."""
    item = request.node
    for defs in item._fixtureinfo.name2fixturedefs.values():  # noqa: SLF001
        for fixturedef in defs:
            cached = getattr(fixturedef, "cached_result", None)
            if cached is not None and cached[0] is old:
                fixturedef.cached_result = (new, *cached[1:])
    for name, value in list(item.funcargs.items()):
        if value is old:
            item.funcargs[name] = new


@pytest.fixture
def qmp(guest):
    """QMP of the module's guest (qemu.qmp behind a synchronous helper)."""
    return guest.qmp


@pytest.fixture
def kvm_figure(request):
    """Record a measured figure of this check, one value or several samples, with its unit
    and which way is better: ``kvm_figure("downtime_ms", [12, 15], unit="ms",
    better="lower")``.

    It becomes a test property and, in ``--junitxml`` output of every ``junit_family``, a
    testsuite property ``<test id>.<name>`` (xunit2 allows no testcase properties, and
    pytest's ``record_property`` warns there) holding every sample as JSON; in Allure, a
    parameter of the test and a ``figure: <name>`` attachment; in kvm-figures.json, the test's
    entry. ``python -m pytest_kvm compare`` reads them back."""
    def record(name: str, value, *, better: str, unit: str = "") -> None:
        figure = Figure.of(name, value, unit, better)
        request.node.user_properties.append((name, figure.encoded()))
        reporting.parameter(name, figure.shown())
        reporting.attach_json(f"{ATTACHMENT_PREFIX}{name}",
                              {"test": request.node.nodeid, "name": name, **figure.as_dict()})
    return record


@pytest.fixture
def kvm_property(request):
    """Record a descriptive value of this check (a status, a version, a setting): a test
    property, a JUnit testsuite property ``<test id>.<name>``, an Allure parameter. Not a
    figure: ``compare`` leaves it out."""
    def record(name: str, value) -> None:
        request.node.user_properties.append((name, value))
        reporting.parameter(name, value)
    return record


@pytest.fixture(scope="session")
def kvm_samples(request) -> int:
    """How many times a check measures its figures (``--kvm-samples N``, default 1)."""
    return request.config.getoption("kvm_samples", 1) or 1
