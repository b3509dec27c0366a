"""Fixtures: the session's hosts, parametrised over the inventory."""

from __future__ import annotations

import threading

import pytest

from .errors import KvmError
from .host import Host
from .inventory import Inventory
from .transport import Transport, for_entry

NO_INVENTORY = "no inventory given: pass --hosts hosts.ini (or set KVM_HOSTS)"


class KvmSession:
    """Hosts of the inventory for one pytest process: one connection per host, opened lazily."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory
        self._transports: dict[str, Transport] = {}
        self._hosts: dict[str, Host] = {}
        self._broken: dict[str, str] = {}
        self._lock = threading.Lock()

    def host(self, name: str) -> Host:
        """The Host, connected and with its facts probed; KvmError when it cannot be reached.

        A host that failed once fails fast for the rest of the session (no repeated timeouts).
        """
        with self._lock:
            if name in self._broken:
                raise KvmError(self._broken[name])
            if name not in self._hosts:
                entry = self.inventory.hosts[name]
                self._hosts[name] = Host(entry, for_entry(entry, self.inventory, self._transports))
            host = self._hosts[name]
        try:
            host.facts  # noqa: B018 - connects and probes once
        except KvmError as exc:
            with self._lock:
                self._broken[name] = str(exc)
            raise
        return host

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()


SESSION_KEY = pytest.StashKey[KvmSession | None]()


def kvm_session_of(config: pytest.Config) -> KvmSession | None:
    return config.stash.get(SESSION_KEY, None)


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
        pytest.fail(str(exc), pytrace=False)
