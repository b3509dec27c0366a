"""pytest-kvm's pytest plugin (registered through the ``pytest11`` entry point).

Inert unless an inventory is given (``--hosts``/``--kvm-hosts``/``KVM_HOSTS``) or a kvm
fixture is used: it adds nothing to collection and opens no connection on its own.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from . import inventory as inv
from .errors import InventoryError, KvmError
from .fixtures import NO_INVENTORY, SESSION_KEY, KvmSession, kvm_host, kvm_session  # noqa: F401

HOSTS_HELP = "inventory of KVM hosts (Ansible-style INI); also --kvm-hosts or env KVM_HOSTS"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvm", "pytest-kvm (KVM host testing)")
    group.addoption("--kvm-hosts", dest="kvm_hosts", metavar="PATH", default=None,
                    help=HOSTS_HELP)


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
    if isinstance(other, str) and (other.endswith((".ini", ".cfg")) or os.path.isfile(other)):
        return other
    return os.environ.get("KVM_HOSTS") or None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SESSION_KEY] = None
    path = inventory_path(config)
    if not path:
        return
    try:
        inventory = inv.load(path)
    except InventoryError as exc:
        raise pytest.UsageError(str(exc)) from None
    for message in inventory.warnings:
        config.issue_config_time_warning(pytest.PytestConfigWarning(message), stacklevel=2)
    config.stash[SESSION_KEY] = KvmSession(inventory)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return None
    names = list(session.inventory.hosts)

    def line(name: str) -> str:
        try:
            return "  " + session.host(name).summary()
        except KvmError as exc:
            return f"  {name}: UNREACHABLE: {exc}"

    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        lines = list(pool.map(line, names))
    return [f"kvm inventory: {session.inventory.path} ({len(names)} hosts)", *lines]


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kvm_host" not in metafunc.fixturenames:
        return
    session = metafunc.config.stash.get(SESSION_KEY, None)
    if session is None:
        metafunc.parametrize("kvm_host", [pytest.param(None, marks=pytest.mark.skip(
            reason=NO_INVENTORY))], ids=["no-inventory"], indirect=True, scope="module")
        return
    names = sorted(session.inventory.hosts)  # deterministic: xdist workers agree
    metafunc.parametrize("kvm_host", names, ids=names, indirect=True, scope="module")
