"""Collection: a check parametrised over the inventory's hosts (one host, a migration pair,
or a host and each device it names, as its suite's declaration says), and marked to rerun
where its hosts allow (kvm_reruns)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import pytest

from . import inventory as inv
from . import registry, reporting
from .fixtures import NO_INVENTORY, SESSION_KEY
from .guest import GuestCommandTimeout, GuestDied, QmpTimeout


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
    if not names:  # (an empty parameter set would be pytest's NOTSET item; this one is ours)
        used = "kvm_pair" if "kvm_pair" in metafunc.fixturenames else "kvm_host"
        metafunc.parametrize(used, [pytest.param(None, marks=(
            pytest.mark.skip(reason=no_host_runs(session.inventory, suite)),
            pytest.mark.kvm_no_host))], ids=["no-host"], indirect=True, scope="module")
        return
    if "kvm_pair" in metafunc.fixturenames:
        # One test per (source, destination): each host with its kvm_migration_peer, or
        # with itself (two QEMU processes on one host).
        pairs = [(n, session.inventory.hosts[n].config.migration_peer or n) for n in names]
        ids = [pair_id(a, b) for a, b in pairs]
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
                                        f"in {key} (considered: {', '.join(names)})"),
                pytest.mark.kvm_no_host))], ids=[f"no-{key}"],
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


def no_host_runs(inventory, suite: registry.Suite) -> str:
    """Why no host runs the suite: the hosts considered and the suites each takes part in."""
    said = [f"{n} ({','.join(e.config.suites) or 'none'})" for n, e in
            sorted(inventory.hosts.items()) if e.config.suites is not None]
    shown = ", ".join(said[:8]) + (f" and {len(said) - 8} more" if len(said) > 8 else "")
    return (f"no host of {inventory.path} takes part in suite {suite.name!r}: "
            f"{len(inventory.hosts)} host(s) considered, "
            + (f"their kvm_suites: {shown}" if said else "none of them") +
            f"; add {suite.name} to a host's kvm_suites")


def _deselect_suites_of_no_host(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A suite no host runs is not collected; a module named on the command line keeps one
    of its checks, skipped, saying why."""
    named = {os.path.abspath(a.split("::")[0]) for a in config.args}
    kept, dropped, shown = [], [], set()
    for item in items:
        if item.get_closest_marker("kvm_no_host") is None:
            kept.append(item)
        elif str(item.path) in named and item.path not in shown:
            shown.add(item.path)
            kept.append(item)
        else:
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def suite_hosts(inventory, suite: registry.Suite | None) -> list[str]:
    """The hosts a suite runs on: those whose kvm_suites names it (all, for a test of no
    suite). Sorted, so that xdist workers agree."""
    return sorted(name for name, entry in inventory.hosts.items()
                  if suite is None or entry.config.takes_part(suite.name))


# What a rerun (kvm_reruns) is for: a guest that died or hung, not a failed check.
# What kvm_reruns reruns: a guest that died (QEMU exited, reset, triple-faulted) or stopped
# answering (a command, or QEMU's QMP), raised anywhere in the failure's chain of causes
# (pytest-rerunfailures follows it).
RERUN_ON = [GuestDied, GuestCommandTimeout, QmpTimeout]


def pair_id(source: str, destination: str) -> str:
    """A migration pair's test id: ``a-to-b``, or ``a-self`` for two QEMUs on one host."""
    return f"{source}-to-{destination}" if source != destination else f"{source}-self"


def scope_of(nodeid: str, hosts: Iterable[str]) -> str:
    """The checks that share a module's guests, as one scope of ``--dist loadgroup``: for a
    pair's check the module and the whole id (the pair and its variant), for a host's the
    module and the host; anything else its own (or its ``@group``, as xdist reads it)."""
    path, _, name = nodeid.partition("::")
    if nodeid.rfind("@") > nodeid.rfind("]"):
        return nodeid.rsplit("@", 1)[1]
    m = re.search(r"\[(.*)\]$", name)
    if m is None:
        return nodeid
    param, names = m.group(1), sorted(hosts, key=len, reverse=True)
    if any(param.startswith(pair_id(a, b) + "-") for a in names for b in names):
        return f"{path}::{param}"
    return next((f"{path}::{a}" for a in names if param == a or param.startswith(f"{a}-")),
                nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup``: a module's guests on one worker (a migration variant's checks
    together, so no variant runs twice; xdist's own groups are lost under pytest 9.2)."""
    session = config.stash.get(SESSION_KEY, None)
    if session is None or config.getoption("dist", None) != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    hosts = list(session.inventory.hosts)

    class ByGuests(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid, hosts)

    return ByGuests(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return
    _deselect_suites_of_no_host(config, items)
    if reporting.active(config):
        reporting.label_items(items)
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        names = [params.get("kvm_host"), *(params.get("kvm_pair") or ())]
        reruns = max((session.inventory.hosts[n].config.reruns for n in names
                      if n in session.inventory.hosts), default=0)
        if reruns and not item.get_closest_marker("flaky"):
            item.add_marker(pytest.mark.flaky(reruns=reruns, only_rerun=RERUN_ON))
