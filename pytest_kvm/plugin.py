"""pytest-kvm's pytest plugin (registered through the ``pytest11`` entry point).

Inert unless an inventory is given (``--hosts``/``--kvm-hosts``/``KVM_HOSTS``) or a kvm
fixture is used: it adds nothing to collection and opens no connection on its own.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from . import inventory as inv
from . import registry, remote, reporting
from .errors import InventoryError, KvmError, escape_logs
from .figures import FILE_NAME, Figure, RunFigures
from .files import write_atomic
from .fixtures import (  # noqa: F401 - fixtures are registered by being here
    FAILED_KEY,
    NO_INVENTORY,
    SESSION_KEY,
    KvmSession,
    _kvm_revive_dead_guest,
    guest,
    guest_factory,
    guest_spec,
    kvm_device_lease,
    kvm_figure,
    kvm_host,
    kvm_migration_tls,
    kvm_pair,
    kvm_property,
    kvm_samples,
    kvm_session,
    module_guest_factory,
    qmp,
)
from .guest import Guest, GuestCommandTimeout, GuestDied, sweep
from .host import Host, Owner, controller_id, process_start, replay_dead_journals

try:  # the LogXML of --junitxml (pytest keeps it under this key since 7.0)
    from _pytest.junitxml import xml_key as junit_xml_key
except ImportError:  # pragma: no cover - a pytest that moved it: figures stay test properties
    junit_xml_key = None

HOSTS_HELP = ("Ansible inventory of KVM hosts (INI, YAML, a directory, with group_vars/ and "
              "host_vars/); also --kvm-hosts or env KVM_HOSTS")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvm", "pytest-kvm (KVM host testing)")
    group.addoption("--kvm-hosts", dest="kvm_hosts", metavar="PATH", default=None,
                    help=HOSTS_HELP)
    group.addoption("--kvm-cleanup", action="store_true", default=False,
                    help="stop guests left behind by dead runs on every inventory host, "
                         "remove their run dirs, and exit (runs no tests)")
    group.addoption("--kvm-keep-failed", action="store_true", default=False,
                    help="keep a failed test's guests running for debugging and print how "
                         "to reach their consoles")
    group.addoption("--kvm-samples", dest="kvm_samples", metavar="N", type=_positive, default=1,
                    help="measure each figure N times (N migrations each way per variant, N "
                         "transfers per device): samples for `python -m pytest_kvm compare`")
    group.addoption("--kvm-figures", dest="kvm_figures", metavar="PATH", default=None,
                    help="write every test's figures and outcome as JSON here (default: "
                         "kvm-figures.json in the Allure results directory)")


def _positive(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of samples, 1 or more")
    return value


def _option_taken(parser: pytest.Parser, name: str) -> bool:
    groups = [parser._anonymous, *parser._groups]  # noqa: SLF001 - no public listing exists
    return any(name in opt.names() for g in groups for opt in g.options)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args) -> None:
    # `--hosts` is also pytest-testinfra's option. Every setuptools plugin has added its
    # options by now, so take the name only when nobody else has (no argparse conflict);
    # otherwise read testinfra's value when it names an inventory file.
    if not _option_taken(parser, "--hosts"):
        parser.getgroup("kvm").addoption("--hosts", dest="kvm_hosts", metavar="PATH",
                                         default=None, help=HOSTS_HELP)


def inventory_path(config: pytest.Config) -> str | None:
    path = config.getoption("kvm_hosts", None)
    if path:
        return path
    other = getattr(config.option, "hosts", None)  # pytest-testinfra owns --hosts
    if isinstance(other, str) and (other.endswith((".ini", ".cfg", ".yml", ".yaml"))
                                   or os.path.exists(other)):
        return other
    return os.environ.get("KVM_HOSTS") or None


def _run_identity() -> tuple[Owner, str]:
    """The run id and owner, shared by the xdist workers of one run (they inherit the env).

    Anything else (a pytest started by a test, say) is a run of its own.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and os.environ.get("PYTEST_KVM_RUN_ID") and os.environ.get("PYTEST_KVM_OWNER_PID"):
        return Owner.current(os.environ["PYTEST_KVM_RUN_ID"]), worker
    pid = os.getpid()
    owner = Owner(os.urandom(4).hex(), controller_id(), pid, process_start(pid))
    os.environ["PYTEST_KVM_RUN_ID"] = owner.run_id
    os.environ["PYTEST_KVM_OWNER_PID"] = str(pid)
    return owner, "main"


@pytest.hookimpl(tryfirst=True)  # before allure-pytest reads --alluredir
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvm_suite(name): the suite this module belongs to, "
                            "declared in pytest_kvm.registry (hosts take part through the "
                            "inventory key kvm_suites)")
    config.stash[SESSION_KEY] = None
    config.stash[FAILED_KEY] = set()
    escape_logs()
    path = inventory_path(config)
    if not path:
        if config.getoption("kvm_cleanup"):
            raise pytest.UsageError("--kvm-cleanup needs an inventory: pass --hosts hosts.ini")
        return
    try:
        inventory = inv.load(path)
    except InventoryError as exc:
        raise pytest.UsageError(str(exc)) from None
    for message in inventory.warnings:
        config.issue_config_time_warning(pytest.PytestConfigWarning(message), stacklevel=2)
    if not config.getoption("kvm_cleanup"):  # (a cleanup writes no results, and must not
        reporting.default_results_dir(config)  # empty the last run's: the nightly's after_script)
    owner, worker = _run_identity()
    config.stash[SESSION_KEY] = KvmSession(inventory, owner, worker,
                                           keep_failed=config.getoption("kvm_keep_failed"))


def pytest_cmdline_main(config: pytest.Config):
    if not config.getoption("kvm_cleanup"):
        return None
    config._do_configure()  # noqa: SLF001 - configure (reads the inventory) without a session
    session = config.stash[SESSION_KEY]
    status = 0
    for name in session.inventory.hosts:
        try:
            host = session.host(name, sweep_leftovers=False)
            swept = sweep(host, session.owner.run_id)
            undone = replay_dead_journals(host, session.owner.run_id)
        except KvmError as exc:
            print(f"{name}: NOT CLEANED: {exc}")
            status = 1
            continue
        print(f"{name}: stopped {len(swept)} leftover guest(s)"
              + "".join(f"\n  {path}" for path in swept))
        print(f"{name}: undid {len(undone)} change(s) of dead runs"
              + "".join(f"\n  {line}" for line in undone))
        if any("FAILED" in line for line in undone):
            status = 1
    return status


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:  # closed at sessionfinish already, unless the session never ran
        session.close()


def _touches_no_host(config: pytest.Config) -> str | None:
    """The option for which pytest-kvm connects to no host (it only lists things)."""
    for dest, flag in (("collectonly", "--collect-only"), ("showfixtures", "--fixtures"),
                       ("show_fixtures_per_test", "--fixtures-per-test"),
                       ("markers", "--markers"), ("help", "--help"), ("version", "--version")):
        if getattr(config.option, dest, False):
            return flag
    return None


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return None
    listing = _touches_no_host(config)
    if listing:  # a listing touches no host: no connection, sweep, replay or nested boot
        return [f"kvm inventory: {session.inventory.path} ({len(session.inventory)} hosts, "
                f"not connected: {listing})"]
    names = list(session.inventory.hosts)
    parallel = bool(getattr(config.option, "numprocesses", None))

    def line(name: str) -> str:
        entry = session.inventory.hosts[name]
        if entry.config.parent:  # booted when the run knows its checks (see below)
            return (f"  {name}: nested host on {entry.config.parent}, "
                    f"{_nested_qemu(session, entry)} ("
                    + ("booted by each worker" if parallel else
                       "booted in the background if a check needs it") + ")")
        try:
            return "  " + session.host(name).summary()
        except KvmError as exc:
            return f"  {name}: NOT USED: {exc}"

    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        lines = list(pool.map(line, names))
    return [f"kvm inventory: {session.inventory.path} ({len(names)} hosts)", *lines]


def _nested_qemu(session, entry) -> str:
    """A nested host's QEMU, asked of its parent: the L1 runs its parent's root filesystem,
    so kvm_qemu there is the parent's file. Only a parent that is up (not nested itself)."""
    parent = entry.config.parent
    if session.inventory.hosts[parent].config.parent:
        return entry.config.qemu
    try:
        r = session.host(parent).run([entry.config.qemu, "--version"], check=False, timeout=30)
    except KvmError:
        return entry.config.qemu
    match = re.search(r"version ([0-9][0-9.]*)", r.stdout)
    return f"QEMU {match.group(1)}" if match else f"no QEMU ({entry.config.qemu} on {parent})"


def pytest_collection_finish(session: pytest.Session) -> None:
    """The nested hosts the selected checks need start booting now, in the background, so
    their boots overlap the checks of the hosts that are up (one pytest process only: each
    xdist worker boots its own when it first needs it)."""
    kvm = session.config.stash.get(SESSION_KEY, None)
    if (kvm is None or _touches_no_host(session.config) or hasattr(session.config, "workerinput")
            or getattr(session.config.option, "numprocesses", None)):
        return
    used = set()
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        used.update(n for n in (params.get("kvm_host"), *(params.get("kvm_pair") or ()))
                    if n is not None)
    nested = [n for n, e in kvm.inventory.hosts.items() if e.config.parent and n in used]
    if nested:
        kvm.boot_in_background(nested)


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kvm_host" not in metafunc.fixturenames and "kvm_pair" not in metafunc.fixturenames:
        return
    suite = declared_suite(metafunc)
    session = metafunc.config.stash.get(SESSION_KEY, None)
    if session is None:
        used = "kvm_pair" if "kvm_pair" in metafunc.fixturenames else "kvm_host"
        metafunc.parametrize(used, [pytest.param(None, marks=pytest.mark.skip(
            reason=NO_INVENTORY))], ids=["no-inventory"], indirect=True, scope="module")
        return
    names = suite_hosts(session.inventory, suite)
    if "kvm_pair" in metafunc.fixturenames:
        # One test per (source, destination): each host with its kvm_migration_peer, or
        # with itself (two QEMU processes on one host).
        pairs = [(n, session.inventory.hosts[n].config.migration_peer or n) for n in names]
        ids = [f"{a}-to-{b}" if a != b else f"{a}-self" for a, b in pairs]
        metafunc.parametrize("kvm_pair", pairs, ids=ids, indirect=True, scope="module")
        return
    if "kvm_pci" in metafunc.fixturenames and suite is not None and suite.devices:
        # One test per (host, device the inventory names under that key).
        key = suite.devices
        field = inv.KEYS[key].field
        pairs = [(n, bdf) for n in names
                 for bdf in getattr(session.inventory.hosts[n].config, field)]
        if not pairs:
            metafunc.parametrize(["kvm_host", "kvm_pci"], [pytest.param(None, None, marks=(
                pytest.mark.skip(reason=f"no host in {session.inventory.path} names a device "
                                        f"in {key}")))], ids=[f"no-{key}"],
                indirect=["kvm_host"], scope="module")
            return
        metafunc.parametrize(["kvm_host", "kvm_pci"], pairs,
                             ids=[f"{n}-{bdf}" for n, bdf in pairs], indirect=["kvm_host"],
                             scope="module")
        return
    metafunc.parametrize("kvm_host", names, ids=names, indirect=True, scope="module")


def declared_suite(metafunc: pytest.Metafunc) -> registry.Suite | None:
    """The suite a test's module declares with ``@pytest.mark.kvm_suite(name)`` (None for a
    test of no suite, which runs on every host); a name that is not declared in the registry
    fails collection in one line naming the file and the fix."""
    marker = metafunc.definition.get_closest_marker("kvm_suite")
    if marker is None:
        return None
    name = marker.args[0] if marker.args else None
    suite = registry.get(name) if isinstance(name, str) else None
    if suite is None:
        pytest.fail(f"{metafunc.definition.nodeid.split('::')[0]}: kvm_suite({name!r}) is not a "
                    f"declared suite, so it would run on no host; declare it once with "
                    f"pytest_kvm.registry.register(Suite({name!r}, shape)) in a conftest.py "
                    f"(declared: {', '.join(registry.names())})", pytrace=False)
    return suite


def suite_hosts(inventory, suite: registry.Suite | None) -> list[str]:
    """The hosts a suite runs on: those whose kvm_suites names it (all, for a test of no
    suite). Sorted, so that xdist workers agree."""
    return sorted(name for name, entry in inventory.hosts.items()
                  if suite is None or entry.config.takes_part(suite.name))


# What a rerun (kvm_reruns) is for: a guest that died or hung, not a failed check.
# What kvm_reruns reruns: a guest that died (QEMU exited, reset, triple-faulted) or stopped
# answering, raised anywhere in the failure's chain of causes (pytest-rerunfailures follows it).
RERUN_ON = [GuestDied, GuestCommandTimeout]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return
    if reporting.active(config):
        reporting.label_items(items)
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        names = [params.get("kvm_host"), *(params.get("kvm_pair") or ())]
        reruns = max((session.inventory.hosts[n].config.reruns for n in names
                      if n in session.inventory.hosts), default=0)
        if reruns and not item.get_closest_marker("flaky"):
            item.add_marker(pytest.mark.flaky(reruns=reruns, only_rerun=RERUN_ON))


UPTIME_KEY = pytest.StashKey[dict]()


def _hosts_of(item: pytest.Item) -> list:
    funcargs = getattr(item, "funcargs", {})
    hosts = [v for v in funcargs.values() if isinstance(v, Host)]
    pair = funcargs.get("kvm_pair")
    if isinstance(pair, tuple):
        hosts += [h for h in pair if isinstance(h, Host)]
    return list({id(h): h for h in hosts}.values())


def _guests_of(item: pytest.Item) -> list:
    funcargs = getattr(item, "funcargs", {})
    guests = [g for g in funcargs.values() if isinstance(g, Guest)]
    for name in ("guest_factory", "module_guest_factory"):
        guests += list(getattr(funcargs.get(name), "guests", []))
    return list({id(g): g for g in guests}.values())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    # Where each host's kernel log stood when the check began (for dmesg on failure).
    if reporting.active(item.config):
        marks = {}
        for host in _hosts_of(item):
            if host.down:
                continue
            try:
                marks[host.name] = float(host.read("/proc/uptime").split()[0])
            except (KvmError, ValueError):
                pass
        item.stash[UPTIME_KEY] = marks
    # The test body is the "check" step (provision/boot, migrate and stop are steps too).
    with reporting.step(f"check {item.originalname}"):
        return (yield)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when == "call" and reporting.active(item.config):
        for g in _guests_of(item):
            if g.host.down is None:
                _best_effort(reporting.attach_guest, g, report.failed)
    if not report.failed:
        return
    _note_rerun(item, call)
    item.config.stash.setdefault(FAILED_KEY, set()).add(item.nodeid)
    # A failing check shows what the guest saw: its lsmod and the end of its dmesg.
    for g in _guests_of(item):
        for title, command in (("lsmod", "lsmod"), ("dmesg", "dmesg | tail -n 60")):
            if g.host.down:
                text = f"(unavailable: {g.host.down})"
            elif g.stopped:
                text = "(guest stopped)"
            else:
                text = _best_effort(g.sh, command, timeout=20)
            report.sections.append((f"guest {g.host.name}/{g.spec.name} {title}", text))
            reporting.attach_text(f"guest {g.host.name}/{g.spec.name} {title}", text)
    # ...and the host's kernel log since the check began.
    for host in _hosts_of(item):
        since = item.stash.get(UPTIME_KEY, {}).get(host.name)
        if since is None or host.down:
            continue
        r = _best_effort(host.run, remote.argv("dmesg-since", str(since)), become=True,
                         check=False, timeout=30)
        text = r if isinstance(r, str) else (r.stdout or "(nothing new)")
        reporting.attach_text(f"host {host.name} dmesg since the check began", text)


RERUNS_KEY = pytest.StashKey[list]()


def _note_rerun(item: pytest.Item, call) -> None:
    """Remember why a check is rerun (kvm_reruns), for the terminal summary."""
    marker = item.get_closest_marker("flaky")
    if marker is None or call.excinfo is None:
        return
    cause = _rerun_cause(call.excinfo.value)
    if getattr(item, "execution_count", 1) <= marker.kwargs.get("reruns", 0) and cause:
        reason = f"{type(cause).__name__}: {cause}"
        item.config.stash.setdefault(RERUNS_KEY, []).append(
            (item.nodeid, reason.splitlines()[0][:300]))


def _rerun_cause(exc: BaseException | None) -> BaseException | None:
    """The exception in ``exc``'s chain that kvm_reruns reruns for, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, tuple(RERUN_ON)):
            return exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return None


class FigureRecorder:
    """Where the reports arrive (the controller under xdist, where a session-scoped fixture
    cannot write): every test's figures (``kvm_figure``) and properties also as testsuite
    properties ``<test id>.<name>`` of the JUnit XML (xunit2, pytest's default family, has no
    testcase properties), and the run's figures as kvm-figures.json."""

    def __init__(self, xml, path: str | None) -> None:
        self.xml, self.path = xml, path
        self.run = RunFigures(path or "")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            for _, value in report.user_properties:
                figure = Figure.decoded(value)
                if figure is not None:
                    self.run.add(report.nodeid, figure)
            if report.nodeid in self.run.tests:
                self.run.tests[report.nodeid].outcome = report.outcome
        if report.when == "teardown":
            for name, value in report.user_properties:
                if self.xml is not None:
                    self.xml.add_global_property(f"{report.nodeid}.{name}", value)

    def pytest_sessionfinish(self) -> None:
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            write_atomic(self.path, json.dumps(self.run.as_dict(), indent=1))


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config  # junitxml made its LogXML at configure time
    if not inventory_path(config) or hasattr(config, "workerinput"):
        return
    xml = config.stash.get(junit_xml_key, None) if junit_xml_key is not None else None
    path = config.getoption("kvm_figures", None)
    if reporting.active(config):
        reporting.private_results(config)
        if path is None:
            path = os.path.join(config.option.allure_report_dir, FILE_NAME)
    config.pluginmanager.register(FigureRecorder(xml, path), "kvm-figures")


def pytest_terminal_summary(terminalreporter) -> None:
    kvm = terminalreporter.config.stash.get(SESSION_KEY, None)
    if kvm is not None:  # (under xdist each worker has its own)
        nested = [(name, line) for name, line in kvm.connected()
                  if kvm.inventory.hosts[name].config.parent]
        if nested:  # (booted after the header)
            terminalreporter.write_sep("-", "kvm nested hosts")
            for _, line in sorted(nested):
                terminalreporter.write_line(line)
    if kvm is not None and kvm.channels:
        terminalreporter.write_sep("-", "kvm guests: how their commands went")
        for guest, channel in sorted(kvm.channels.items()):
            terminalreporter.write_line(f"{guest}: {channel}")
    reruns = terminalreporter.config.stash.get(RERUNS_KEY, [])
    if reruns:
        terminalreporter.write_sep("=", "kvm reruns (kvm_reruns: a guest died or hung)")
        for nodeid, reason in reruns:
            terminalreporter.write_line(f"{nodeid}: {reason}")


def _best_effort(fn, *args, **kw):
    """Diagnostics never break the run: a failure to collect one becomes its text."""
    try:
        return fn(*args, **kw)
    except Exception as exc:  # noqa: BLE001 - the host or guest may be gone
        return f"(unavailable: {exc})"


def pytest_sessionfinish(session: pytest.Session) -> None:
    kvm = session.config.stash.get(SESSION_KEY, None)
    if kvm is None:
        return
    if reporting.active(session.config):
        reporting.write_environment(session.config, kvm)
    # The nested hosts stop here, not at unconfigure: live logging (--log-cli-level) still
    # shows it, under "live log sessionfinish".
    kvm.close()
