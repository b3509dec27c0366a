"""pytest-kvm's pytest plugin (registered through the ``pytest11`` entry point).

Inert unless an inventory is given (``--hosts``/``--kvm-hosts``/``KVM_HOSTS``) or a kvm
fixture is used: it adds nothing to collection and opens no connection on its own.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from . import inventory as inv
from . import reporting
from .collect import (  # noqa: F401
    pytest_collection_modifyitems,
    pytest_generate_tests,
    pytest_xdist_make_scheduler,
)
from .errors import InventoryError, KvmError, escape_logs
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
    kvm_migration,
    kvm_migration_model,
    kvm_migration_tls,
    kvm_pair,
    kvm_property,
    kvm_samples,
    kvm_session,
    module_guest_factory,
    qmp,
)
from .guest import sweep
from .host import Owner, controller_id, process_start, replay_dead_journals
from .results import (  # noqa: F401 - hooks are registered by being here
    pytest_runtest_call,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_sessionstart,
    pytest_terminal_summary,
)

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
    """Whether another plugin has added the option ``name``: pytest's own parser knows it
    (it takes it, or refuses it without a value)."""
    try:
        _, unknown = parser.parse_known_and_unknown_args([name, "x"])
    except pytest.UsageError:
        return True
    return name not in unknown


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
    config.addinivalue_line("markers", "kvm_no_host: (pytest-kvm's own) a check of a suite "
                            "that no inventory host runs, left out of the run")
    config.addinivalue_line("markers", "kvm_suite(name): the suite this module belongs to, "
                            "declared in pytest_kvm.registry (hosts take part through the "
                            "inventory key kvm_suites)")
    config.stash[SESSION_KEY] = None
    config.stash[FAILED_KEY] = set()
    escape_logs()
    path = inventory_path(config)
    if not path:
        return
    try:
        inventory = inv.load(path)
    except InventoryError as exc:
        raise pytest.UsageError(str(exc)) from None
    for message in inventory.warnings:
        config.issue_config_time_warning(pytest.PytestConfigWarning(message), stacklevel=2)
    if not _touches_no_host(config):  # (a listing writes nothing: no results, no figures)
        reporting.default_results_dir(config)
    owner, worker = _run_identity()
    config.stash[SESSION_KEY] = KvmSession(inventory, owner, worker,
                                           keep_failed=config.getoption("kvm_keep_failed"))


def pytest_cmdline_main(config: pytest.Config):
    """--kvm-cleanup: sweep every inventory host and exit, before pytest configures a run
    (no session, no results directory, no collection)."""
    if not config.getoption("kvm_cleanup"):
        return None
    path = inventory_path(config)
    if not path:
        raise pytest.UsageError("--kvm-cleanup needs an inventory: pass --hosts hosts.ini")
    escape_logs()
    try:
        inventory = inv.load(path)
    except InventoryError as exc:
        raise pytest.UsageError(str(exc)) from None
    session = KvmSession(inventory, _run_identity()[0])
    try:
        return cleanup(session)
    finally:
        session.close()


def cleanup(session: KvmSession) -> int:
    """Stop every guest of a dead run and undo its changes, on each host; 1 if any failed."""
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


