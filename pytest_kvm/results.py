"""What a run leaves behind: a failing check's diagnostics (the guest's lsmod and dmesg,
the host's kernel log since the check began), every check's figures in the JUnit XML and in
kvm-figures.json, and the terminal summary (nested hosts, how guests' commands went, reruns).
"""

from __future__ import annotations

import json
import os

import pytest

from . import remote, reporting
from .collect import RERUN_ON
from .errors import KvmError
from .figures import FILE_NAME, Figure, RunFigures
from .files import write_atomic
from .fixtures import FAILED_KEY, SESSION_KEY
from .guest import Guest
from .host import Host

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


def junit_xml(config: pytest.Config):
    """The --junitxml writer (pytest's LogXML), found among the registered plugins by what
    ``record_testsuite_property`` calls on it (``add_global_property``); None without
    --junitxml."""
    return next((p for p in config.pluginmanager.get_plugins()
                 if callable(getattr(p, "add_global_property", None))), None)


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config  # junitxml made its LogXML at configure time
    if (config.stash.get(SESSION_KEY, None) is None or hasattr(config, "workerinput")
            or config.option.collectonly):  # (a listing writes nothing)
        return
    xml = junit_xml(config)
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
    if kvm is not None and kvm.strays_removed:
        terminalreporter.write_sep("=", "kvm strays: guests of this run nobody stopped, "
                                   "removed before a boot")
        for line in kvm.strays_removed:
            terminalreporter.write_line(line)
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
