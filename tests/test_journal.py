"""Crash safety: a run killed with SIGKILL after changing a host leaves a journal on it; the
cleanup (or the next run) undoes the changes and stops the run's guests.

The host is a lab L1 that this test keeps running, reached by the killed run as an ordinary
SSH host, so its state outlives the run that changed it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pytest_kvm.features import vfio
from pytest_kvm.guest import Owner
from pytest_kvm.inventory import parse
from pytest_kvm.lab import KvmSession

from test_plugin import pytest_run

LAB = """\
[l0]
localhost ansible_connection=local
[lab]
lab1 kvm_parent=localhost kvm_l1_devices=igb,e1000e kvm_sriov_pf=0000:01:00.0 kvm_passthrough=0000:02:00.0
"""
PF, NIC = "0000:01:00.0", "0000:02:00.0"

VICTIM = textwrap.dedent('''
    import os, time
    from pytest_kvm.features import sriov, vfio
    from pytest_kvm.guest import GuestSpec

    def test_changes_the_host_then_hangs(kvm_host, guest_factory):
        vfio.bind_vfio(kvm_host, "0000:02:00.0")
        sriov.save(kvm_host, "0000:01:00.0")
        kvm_host.write("/sys/bus/pci/devices/0000:01:00.0/sriov_drivers_autoprobe", "0")
        sriov.set_numvfs(kvm_host, "0000:01:00.0", 2)
        guest_factory(GuestSpec(name="victim"))
        open(os.environ["READY_FILE"], "w").write("changed")
        time.sleep(600)
''')


@pytest.fixture(scope="module")
def lab1():
    session = KvmSession(parse(LAB, "lab.ini"), Owner.current("jrnl0001"))
    yield session.host("lab1")
    session.close()


def state(host):
    nic, pf = host.pci(NIC), host.pci(PF)
    return {"driver": nic.driver, "override": nic.override, "numvfs": pf.numvfs,
            "autoprobe": pf.autoprobe,
            "qemu": host.run(["pgrep", "-f", "[q]emu-system"], check=False).stdout.split()}


def test_kill_9_then_cleanup_restores_the_host(lab1, tmp_path):
    before = state(lab1)
    assert before == {"driver": "e1000e", "override": "(null)", "numvfs": 0, "autoprobe": "1",
                      "qemu": []}
    t = lab1.transport
    (tmp_path / "hosts.ini").write_text(
        f"[lab]\nlab1 ansible_host=127.0.0.1 ansible_port={t.port} ansible_user=root "
        f"ansible_ssh_private_key_file={t.key_file} kvm_known_hosts={t.known_hosts} "
        f"kvm_passthrough={NIC} kvm_sriov_pf={PF}\n")
    (tmp_path / "test_victim.py").write_text(VICTIM)
    ready = tmp_path / "ready"
    env = dict(os.environ, READY_FILE=str(ready))
    env.pop("PYTEST_KVM_RUN_ID", None)
    victim = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                               "--hosts", "hosts.ini"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not ready.exists():
        assert victim.poll() is None and time.monotonic() < deadline, "the victim never got there"
        time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)  # no teardown, no finalizer runs
    victim.wait()

    changed = state(lab1)
    assert changed["driver"] == "vfio-pci" and changed["numvfs"] == 2 and changed["qemu"]

    r = pytest_run(["--hosts", "hosts.ini", "--kvm-cleanup"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lab1: stopped 1 leftover guest(s)" in r.stdout
    assert "lab1: undid 2 change(s) of dead runs" in r.stdout
    assert state(lab1) == before
    assert lab1.run(["sh", "-c", f"ls {lab1.workdir}/journal | grep -c . || true"]
                    ).stdout.strip() == "0"


def test_a_normal_run_leaves_no_journal(lab1):
    b = vfio.bind_vfio(lab1, NIC)
    assert lab1.run(["sh", "-c", f"cat {lab1.workdir}/journal/*.log"], check=False).stdout
    b.restore()
    assert lab1.run(["sh", "-c", f"ls {lab1.workdir}/journal | grep -c . || true"]
                    ).stdout.strip() == "0"
