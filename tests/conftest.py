"""Fixtures of the project's own tests: real sshd hosts, real QEMU, no mocks of either."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from pytest_kvm import inventory  # noqa: E402
from pytest_kvm.transport import for_entry  # noqa: E402

from rig import SshRig  # noqa: E402

pytest_plugins = ["pytester"]  # plugin-level tests that need no process of their own


@pytest.fixture(scope="session")
def rig():
    """Two real OpenSSH hosts in their own network namespaces."""
    if os.geteuid() != 0:
        pytest.skip("the sshd test rig needs root (network namespaces)")
    r = SshRig(count=2).start()
    yield r
    r.stop()
    assert not r.leftovers(), f"rig left behind: {r.leftovers()}"


@pytest.fixture(scope="session")
def rig_inventory(rig, tmp_path_factory) -> inventory.Inventory:
    path = tmp_path_factory.mktemp("inv") / "hosts.ini"
    path.write_text(rig.inventory())
    return inventory.load(path)


@pytest.fixture
def ssh(rig_inventory):
    """A fresh SSH transport to rig host1 (closed after the test)."""
    t = for_entry(rig_inventory.hosts["host1"], rig_inventory)
    yield t
    t.close()
