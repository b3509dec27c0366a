"""Fixtures: the session's hosts (parametrised over the inventory), guests on them, and the
figures a check records. What they hand out comes from the lab layer (pytest_kvm.lab)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

import pytest

from . import reporting
from .errors import KvmError
from .features import compat
from .features.migration import BY_NAME, MigrationUnsupported, Run, address_of, shared_storage
from .figures import ATTACHMENT_PREFIX, Figure
from .guest import Guest, GuestSpec
from .host import Host
from .lab import GuestFactory, KvmSession

NO_INVENTORY = "no inventory given: pass --hosts hosts.ini (or set KVM_HOSTS)"


SESSION_KEY = pytest.StashKey[KvmSession | None]()
FAILED_KEY = pytest.StashKey[set]()


def kvm_session_of(config: pytest.Config) -> KvmSession | None:
    return config.stash.get(SESSION_KEY, None)


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
def kvm_migration_model(kvm_pair) -> compat.PairModel:
    """The machine type and CPU model a guest migrating on the module's pair is started with:
    what both ends accept (kvm_machine, kvm_migration_cpu, or the newest both QEMUs offer);
    none: the module's checks are skipped, naming both hosts, their versions and what lacks."""
    try:
        return compat.pair_model(*kvm_pair)
    except compat.NoCommonModel as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def kvm_migration(kvm_pair, kvm_migration_model, kvm_migration_tls, module_guest_factory,
                  kvm_samples):
    """Migrate a guest on the module's pair as a variant says (pytest_kvm.features.migration:
    VARIANTS, the failure paths among them), once, for many checks::

        @pytest.fixture(scope="module", params=mig.variant_names())
        def migrated(request, kvm_migration):
            with kvm_migration(request.param, GuestSpec(...)) as run:
                yield run

    The guest gets the pair's machine type and CPU model, its disk on kvm_shared_storage
    where the variant uses it (a variant that needs it is skipped without); a variant the
    pair's QEMUs cannot do is skipped. Every guest of the variant is stopped when the block
    ends, and at once when its migration fails."""
    shared = {}

    @contextlib.contextmanager
    def migration(name: str, spec: GuestSpec):
        variant = BY_NAME[name]
        if variant.storage != "copy" and not shared:
            shared["path"], shared["problem"] = shared_storage(*kvm_pair)
        if variant.storage == "shared" and shared.get("problem"):
            pytest.skip(shared["problem"])
        spec = spec.with_(machine=kvm_migration_model.machine,
                          cpu=kvm_migration_model.cpu_option)
        with module_guest_factory.scoped() as start:
            try:
                run = Run(variant, *kvm_pair, spec, start, shared.get("path"),
                          kvm_migration_tls, reporting.step, samples=kvm_samples).execute()
            except MigrationUnsupported as exc:  # a variant this pair's versions cannot do
                pytest.skip(str(exc))
            try:
                yield run
            finally:
                run.close()
    return migration


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
        if shared.dead:  # (the same object, a new QEMU: every holder meets the fresh guest)
            factory.revive(shared)


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
