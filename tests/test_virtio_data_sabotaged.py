"""The virtio-data suite's checks can fail, and fail for the right reason: the suite run on a
guest and a lab with faults a real one could have, each caught by its check with a message
that names it; the checks no fault touches still pass."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

from test_plugin import pytest_run

SABOTAGE = textwrap.dedent('''
    import pytest

    from pytest_kvm.features.virtio import hotplug, net
    from pytest_kvm.guest import Guest


    @pytest.fixture(scope="module", autouse=True)
    def faulty_guest(request):
        guest = request.getfixturevalue("guest")
        # no driver for the serial port (nor for the virtio shell: commands on the serial
        # console, as on a guest without virtio_console)
        guest.channel = "console"
        guest.sh("rmmod virtio_console")
        real_counters = net.counters  # counters read on the wrong interface
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(net, "counters", lambda g, iface: real_counters(g, "lo"))
            yield


    @pytest.fixture(autouse=True)
    def faulty_hotplug(monkeypatch):
        # a guest with no udev rule: hot-plugged CPUs and memory stay offline
        real_sh = Guest.sh

        def sh(self, command, timeout=60):
            if "echo 1 > $c/online" in command or "echo online > $m/state" in command:
                return ""
            return real_sh(self, command, timeout)
        monkeypatch.setattr(Guest, "sh", sh)
        # a guest that hangs while asked to let a device go (frozen, so no DEVICE_DELETED)
        real_unplug = hotplug.unplug

        def unplug(guest, device, timeout=90):
            guest.qmp.execute("stop")
            try:
                return real_unplug(guest, device, timeout=10)
            finally:
                guest.qmp.execute("cont")
                # thawed, the guest lets the device go after all: the next check starts on a
                # settled guest (it once timed out on a command while the removal ran)
                try:
                    guest.qmp.event("DEVICE_DELETED", timeout=60, device=device)
                except Exception:
                    pass
        monkeypatch.setattr(hotplug, "unplug", unplug)
''')

# check -> what its failure must say
CAUGHT = {
    "test_net_counters_moved[localhost-rx_bytes]": r"rx_bytes moved by 0, less than the \d+",
    "test_net_counters_moved[localhost-tx_bytes]": r"tx_bytes moved by 0, less than the \d+",
    "test_serial_port_carries_lines_both_ways[localhost]":
        r"no virtio-serial port 'org.pytest-kvm.port0' in the guest \(virtio_console not loaded",
    "test_hot_unplugged_disk_is_gone[localhost]": r"no DEVICE_DELETED event .*hpdisk",
    "test_hot_unplugged_nic_is_gone[localhost]": r"no DEVICE_DELETED event .*hpnic",
    "test_hotplugged_vcpu_comes_online[localhost]": r"assert 1 == \(1 \+ 1\)",
    "test_hotplugged_memory_comes_online[localhost]": r"MemTotal grew by 0 KiB for a 128 MiB",
}


def test_each_fault_is_caught_by_its_check_for_the_right_reason(tmp_path):
    shutil.copy(Path(__file__).parent.parent / "suites" / "test_virtio_data.py", tmp_path)
    (tmp_path / "conftest.py").write_text(SABOTAGE)
    (tmp_path / "hosts.ini").write_text(
        "[lab]\nlocalhost ansible_connection=local kvm_suites=virtio-data\n")
    r = pytest_run(["--hosts", "hosts.ini", "-rfE", "-p", "no:randomly", "--tb=short"],
                   tmp_path, timeout=900)
    out = r.stdout
    failed = set(re.findall(r"^FAILED test_virtio_data\.py::(\S+)", out, re.M))
    assert failed == set(CAUGHT), out[-4000:]
    assert not re.search(r"^ERROR ", out, re.M), out[-4000:]
    for check, why in CAUGHT.items():
        section = out.split(f"_ {check} _", 1)[1].split("\n___", 1)[0] if \
            f"_ {check} _" in out else out
        assert re.search(why, section), f"{check}: {why!r} not in\n{section[-2000:]}"
    assert f"{len(CAUGHT)} failed, {21 - len(CAUGHT)} passed" in out, out[-500:]
