"""The emulated lab: a nested host provisioned for real, its pinned host key, device
bind/restore, the safety rules, and state restored after a failing suite."""

from __future__ import annotations

import os
import re
import textwrap

import pytest

from pytest_kvm.errors import HostKeyMismatch
from pytest_kvm.features import sriov, vfio
from pytest_kvm.guest import Owner
from pytest_kvm.host import Host
from pytest_kvm.inventory import parse
from pytest_kvm.lab import KvmSession
from pytest_kvm.waiting import wait_until

from test_plugin import pytest_run

LAB = """\
[l0]
localhost ansible_connection=local
[lab]
lab1 kvm_parent=localhost kvm_l1_devices=igb,e1000e kvm_sriov_pf=0000:01:00.0 kvm_passthrough=0000:02:00.0,0000:00:01.0
"""
PF, NIC, MGMT = "0000:01:00.0", "0000:02:00.0", "0000:00:01.0"


@pytest.fixture(scope="module")
def session():
    s = KvmSession(parse(LAB, "lab.ini"), Owner.current("labtest1"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def lab1(session):
    return session.host("lab1")


def test_nested_host_is_a_kvm_host(lab1):
    f = lab1.facts
    assert f.hardware_kvm and lab1.accel == "kvm"
    assert f.nested.get("kvm_amd") == "1"
    assert f.iommu_groups > 0
    assert f.pci[PF].totalvfs and f.pci[NIC].driver == "e1000e"


def test_host_key_was_pinned_from_the_console(session, lab1):
    t = lab1.transport
    pinned = open(t.known_hosts).read().split()
    console = lab1_guest(session).read_log("console.log", 400)
    assert f"PKVM-HOSTKEY {pinned[1]} {pinned[2]} PKVM-END" in console
    assert t.host_key_policy == "strict"


def test_a_different_host_key_is_refused(session, lab1, tmp_path):
    wrong = tmp_path / "known_hosts"
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGY+X8XkS8GqkQCA4R3SrjtvHlulshQnXsKV/kYV0vi9"
    wrong.write_text(f"[127.0.0.1]:{lab1.transport.port} {other}\n")
    parent = session.host("localhost")
    impostor = Host(lab1.entry, parent.forward(lab1.entry, lab1.transport.port,
                                               lab1.transport.key_file, str(wrong)))
    with pytest.raises(HostKeyMismatch):
        impostor.run(["true"])


def lab1_guest(session):
    return session.host("lab1").l1


def test_bind_to_vfio_and_restore(lab1):
    b = vfio.bind_vfio(lab1, NIC)
    assert lab1.pci(NIC).driver == "vfio-pci" and b.original_driver == "e1000e"
    assert lab1.run(["test", "-c", f"/dev/vfio/{vfio.iommu_group(lab1, NIC)[0]}"]).ok
    b.restore()
    assert lab1.pci(NIC).driver == "e1000e"
    assert lab1.read(f"/sys/bus/pci/devices/{NIC}/driver_override") == "(null)"


def test_the_management_nic_is_never_unbound(lab1):
    with pytest.raises(vfio.PassthroughError, match="carries the host's management connection"):
        vfio.bind_vfio(lab1, MGMT)
    assert lab1.pci(MGMT).driver == "virtio-pci"


def test_a_device_the_inventory_does_not_name_is_never_touched(lab1):
    with pytest.raises(vfio.PassthroughError, match="not named in the inventory"):
        vfio.bind_vfio(lab1, "0000:00:1f.2")
    with pytest.raises(vfio.PassthroughError, match="not named in the inventory"):
        sriov.save(lab1, "0000:00:1f.2")


def test_numvfs_round_trip(lab1):
    state = sriov.save(lab1, PF)
    sriov.set_numvfs(lab1, PF, 2)
    assert len(sriov.vfs(lab1, PF)) == 2
    state.restore()
    assert lab1.pci(PF).numvfs == state.numvfs == 0


FAILING = textwrap.dedent('''
    import pytest
    from test_sriov import pf, total, created  # noqa: F401 - the suite's own fixtures
    from test_passthrough import binding, original  # noqa: F401

    pytestmark = pytest.mark.kvm_suite("sriov")

    def test_fails_with_vfs_created(kvm_host, pf, created):
        assert kvm_host.pci(pf).numvfs > 0
        raise AssertionError("forced failure with VFs created")
''')
FAILING_PT = textwrap.dedent('''
    import pytest
    from test_passthrough import binding, original  # noqa: F401

    pytestmark = pytest.mark.kvm_suite("passthrough")

    def test_fails_with_device_on_vfio(kvm_host, kvm_pci, binding):
        assert kvm_host.pci(kvm_pci).driver == "vfio-pci"
        raise AssertionError("forced failure with the device on vfio-pci")
''')
CHECK = textwrap.dedent('''
    def test_state_is_back(kvm_session):
        lab1 = kvm_session.host("lab1")
        pf = "/sys/bus/pci/devices/0000:01:00.0"
        assert lab1.read(pf + "/sriov_numvfs") == "0"
        assert lab1.read(pf + "/sriov_drivers_autoprobe") == "1"
        assert lab1.read("/sys/bus/pci/devices/0000:02:00.0/driver_override") == "(null)"
        assert lab1.run(["readlink", "/sys/bus/pci/devices/0000:02:00.0/driver"]
                        ).stdout.strip().endswith("/e1000e")
''')


def test_host_state_is_restored_after_failing_tests(tmp_path):
    suites = os.path.join(os.path.dirname(__file__), "..", "suites")
    (tmp_path / "test_a_sriov.py").write_text(FAILING)
    (tmp_path / "test_b_passthrough.py").write_text(FAILING_PT)
    (tmp_path / "test_c_check.py").write_text(CHECK)
    (tmp_path / "hosts.ini").write_text(LAB.replace(",0000:00:01.0", ""))
    env_path = os.pathsep.join([os.path.abspath(suites), os.environ.get("PYTHONPATH", "")])
    os.environ["PYTHONPATH"], old = env_path, os.environ.get("PYTHONPATH")
    try:
        r = pytest_run(["--hosts", "hosts.ini", "-p", "no:randomly", "-v",
                        "--log-cli-level=INFO"], tmp_path, timeout=600)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old
    out = r.stdout  # (a live log can split a test's line from its outcome: the summary)
    assert "FAILED test_a_sriov.py::test_fails_with_vfs_created[lab1-0000:01:00.0-one]" in out
    assert "FAILED test_b_passthrough.py::test_fails_with_device_on_vfio[lab1-0000:02:00.0]" \
        in out, out[-3000:]
    assert "3 failed, 1 passed" in out.splitlines()[-1], out[-3000:]  # test_state_is_back
    # the live log tells the nested host's story to its end: its stop is in it
    finish = out[out.index("live log sessionfinish"):]
    assert "localhost/l1-lab1: stopping QEMU" in finish, out[-3000:]


def test_management_devices_are_found(lab1):
    assert vfio.management_devices(lab1) == {MGMT}


def test_files_the_l1_cannot_see_are_uploaded(lab1, tmp_path):
    visible = os.path.expanduser("~/.cache/pytest-kvm/probe-visible.bin")
    os.makedirs(os.path.dirname(visible), exist_ok=True)
    with open(visible, "wb") as f:
        f.write(b"x" * 1000)
    hidden = tmp_path / "probe-hidden.bin"  # under /tmp: the L1 has its own /tmp
    hidden.write_bytes(b"y" * 1000)
    assert lab1.put_cached(visible) == visible  # read through the parent's root
    remote = lab1.put_cached(str(hidden))
    assert remote.startswith(lab1.workdir + "/cache/")
    assert lab1.run(["cat", remote]).stdout == "y" * 1000
    os.remove(visible)


STACK = """
set -e
# no IPv6 router advertisement on the new links: a default route over them (from the NIC's
# user network) would make the stack management before the test says so
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
ip link add pk-bond type bond mode active-backup
ip link set "$1" down
ip link set "$1" master pk-bond
ip link add link pk-bond name pk-vlan type vlan id 42
ip link add pk-br type bridge
ip link set pk-vlan master pk-br
ip link add link pk-br name pk-mv type macvlan mode bridge
for l in pk-bond pk-vlan pk-br pk-mv; do ip link set "$l" up; done
ip addr add 192.0.2.1/24 dev pk-mv
"""
UNSTACK = ("for l in pk-mv pk-br pk-vlan pk-bond; do ip link del $l 2>/dev/null; done; "
           "echo 0 > /proc/sys/net/ipv6/conf/default/disable_ipv6; true")


def test_the_management_guard_sees_through_bridges_bonds_vlans_and_macvlans(lab1):
    """The e1000e under a macvlan on a bridge on a VLAN on a bond (real kernel devices in the
    L1): once the default route goes over that stack, the e1000e is management and refused."""
    ifname = lab1.run(["ls", f"/sys/bus/pci/devices/{NIC}/net"]).stdout.split()[0]
    lab1.run(["modprobe", "-a", "bonding", "8021q", "bridge", "macvlan"], timeout=60)
    try:
        lab1.run(["sh", "-c", STACK, "stack", ifname], timeout=60)
        assert vfio.management_devices(lab1, "pk-mv") == {MGMT, NIC}
        assert vfio.management_devices(lab1) == {MGMT}  # not (yet) carrying management
        # a default route over the stack (the SSH session keeps its own, on the mgmt NIC)
        lab1.run(["ip", "route", "add", "default", "via", "192.0.2.2", "dev", "pk-mv",
                  "metric", "5000"])
        with pytest.raises(vfio.PassthroughError, match="carries the host's management"):
            vfio.bind_vfio(lab1, NIC)
        assert lab1.pci(NIC).driver == "e1000e"
    finally:
        lab1.run(["sh", "-c", UNSTACK], check=False, timeout=60)
        lab1.run(["ip", "link", "set", ifname, "up"], check=False)
    assert vfio.management_devices(lab1) == {MGMT}


def test_a_pf_whose_vfs_are_in_use_is_not_reset(lab1):
    pf = f"/sys/bus/pci/devices/{PF}"
    lab1.run(["modprobe", "igbvf"], timeout=60)  # the VF driver, there to grab new VFs
    lab1.run(["sh", "-c", f"echo 1 > {pf}/sriov_drivers_autoprobe && echo 2 > {pf}/sriov_numvfs"],
             timeout=120)
    try:
        used = sriov.vfs_in_use(lab1, PF)
        assert len(used) == 2 and all("(igbvf)" in u for u in used), used
        with pytest.raises(sriov.PfInUse, match="has VFs in use by something else: 0000:01:10.0 "
                                                r"\(igbvf\)"):
            sriov.save(lab1, PF)
        assert lab1.pci(PF).numvfs == 2  # untouched
        state = sriov.save(lab1, PF, reset=True)  # kvm_sriov_reset=yes
        assert state.numvfs == 2
        state.restore()  # journalled: marked done
    finally:
        lab1.run(["sh", "-c", f"echo 0 > {pf}/sriov_numvfs"], timeout=120)
    assert sriov.vfs(lab1, PF) == []



def test_a_pf_whose_vf_carries_the_management_connection_is_not_touched(lab1):
    """A VF of the igb (driven by igbvf in the L1) carries the default route: its PF is
    management too, and SR-IOV refuses to save (then reset) it."""
    pf = f"/sys/bus/pci/devices/{PF}"
    lab1.run(["modprobe", "igbvf"], timeout=60)
    lab1.run(["sh", "-c", f"echo 1 > {pf}/sriov_drivers_autoprobe && echo 1 > {pf}/sriov_numvfs"],
             timeout=120)
    try:
        vf = sriov.vfs(lab1, PF)[0]
        ifname = wait_until(lambda: lab1.run(["ls", f"/sys/bus/pci/devices/{vf}/net"],
                                             check=False).stdout.split(), 60,
                            "the VF's interface")[0]
        before = vfio.management_devices(lab1)  # (MGMT; an earlier test's IPv6 route may add)
        assert PF not in before
        assert vfio.management_devices(lab1, ifname) == before | {vf, PF}
        lab1.run(["sh", "-c", 'echo 1 > /proc/sys/net/ipv6/conf/"$0"/disable_ipv6; '
                  'ip link set "$0" up && ip addr add 192.0.2.1/24 dev "$0" && '
                  'ip route add default via 192.0.2.2 dev "$0" metric 5000 onlink', ifname],
                 timeout=60)
        with pytest.raises(vfio.PassthroughError, match=f"{PF} carries the host's management "
                                                        r"connection \(itself, or through"):
            sriov.save(lab1, PF, reset=True)
        assert lab1.pci(PF).numvfs == 1  # untouched
    finally:
        lab1.run(["sh", "-c", f"ip route del default via 192.0.2.2 metric 5000; "
                  f"echo 0 > {pf}/sriov_numvfs"], check=False, timeout=120)
    assert PF not in vfio.management_devices(lab1)


OVERLAP_L0 = textwrap.dedent('''
    import time
    import pytest

    pytestmark = pytest.mark.kvm_suite("nested")

    def test_lab1_boots_while_an_l0_check_runs(kvm_host, kvm_session):
        assert kvm_host.name == "localhost"
        up = lambda: any(name == "lab1" for name, _ in kvm_session.connected())
        assert not up()  # still booting: nobody waited for it
        deadline = time.monotonic() + 300
        while not up() and time.monotonic() < deadline:  # nobody asks for it here
            time.sleep(1)
        assert up()
''')
OVERLAP_L1 = textwrap.dedent('''
    import pytest

    pytestmark = pytest.mark.kvm_suite("virtio")

    def test_lab1_is_used(kvm_host):
        assert kvm_host.name == "lab1"
        assert kvm_host.facts.hardware_kvm
''')


def test_nested_hosts_boot_in_the_background_while_checks_run(tmp_path):
    """The header does not wait for a nested host: it boots in the background while the L0
    checks run, and the end of the run lists it."""
    (tmp_path / "test_a.py").write_text(OVERLAP_L0)
    (tmp_path / "test_b.py").write_text(OVERLAP_L1)
    (tmp_path / "hosts.ini").write_text(
        "[l0]\nlocalhost ansible_connection=local kvm_suites=nested\n"
        "[lab]\nlab1 kvm_parent=localhost kvm_suites=virtio\n")
    r = pytest_run(["--hosts", "hosts.ini", "-p", "no:randomly", "-v",
                    "--log-cli-level=INFO"], tmp_path, timeout=600)
    out = r.stdout
    assert r.returncode == 0, out[-3000:]
    # (its QEMU is the parent's file: a nested host runs its parent's root)
    assert re.search(r"lab1: nested host on localhost, QEMU 10\.[0-9.]+ \(booted in the "
                     r"background if a check needs it\)", out), out[:3000]
    assert out.index("booting in the background: lab1") < out.index(
        "test_a.py::test_lab1_boots_while_an_l0_check_runs"), out[:3000]
    summary = out[out.index("kvm nested hosts"):]
    assert "lab1: kernel " in summary, summary
