"""A real Debian guest: debootstrap image, qcow2 overlay, cloud-init NoCloud seed, console login."""

from __future__ import annotations

import secrets

import debian_image
import pytest

from pytest_kvm.fixtures import KvmSession
from pytest_kvm.guest import CloudInit, Disk, GuestSpec, Owner
from pytest_kvm.inventory import parse

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def debian(rig):
    image = debian_image.build()
    session = KvmSession(parse("[l]\nlocalhost ansible_connection=local\n"),
                         Owner.current("distro01"))
    host = session.host("localhost")
    key = open(rig.key + ".pub").read().strip()
    ci = CloudInit(user="root", password=secrets.token_urlsafe(12), ssh_keys=(key,),
                   hostname="pkvm-debian")
    spec = GuestSpec(name="debian", memory=1024, smp=2, disks=(Disk(image=image),),
                     root="/dev/vda", cloud_init=ci)
    guest = session.start_guest(host, spec, "test_distro")
    yield guest, ci, key, image
    guest.stop()
    session.close()


def test_logged_in_on_the_serial_console_as_cloud_init_set_up(debian):
    guest, ci, _, _ = debian
    assert guest.sh("id -un").strip() == "root"
    assert guest.sh("cat /etc/hostname").strip() == ci.hostname


def test_cloud_init_installed_the_ssh_key(debian):
    guest, _, key, _ = debian
    assert key in guest.sh("cat /root/.ssh/authorized_keys")


def test_cloud_init_used_the_nocloud_seed(debian):
    guest, _, _, _ = debian
    status = guest.sh("cloud-init status --long --wait; true", timeout=300)
    assert "status: done" in status and "DataSourceNoCloud" in status, status


def test_sshd_runs_in_the_guest(debian):
    guest, _, _, _ = debian
    assert guest.sh("systemctl is-active ssh; true").strip() == "active"


def test_disk_is_an_overlay_on_the_cached_image(debian):
    guest, _, _, image = debian
    info = guest.host.run(["qemu-img", "info", "-U", f"{guest.rundir}/disk0.qcow2"]).stdout
    assert f"backing file: {image}" in info


def test_password_is_in_no_log(debian):
    guest, ci, _, _ = debian
    for log in ("console.log", "qemu.log", "cmdline"):
        assert ci.password not in guest.read_log(log, 100000)
    assert ci.password not in repr(guest.spec)


def test_virtio_suite_on_the_inventory_distro_image(tmp_path):
    """The virtio suite as a user runs it, on a host whose inventory names a distro image."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    image = debian_image.build()
    suite = Path(__file__).parent.parent / "suites" / "test_virtio.py"
    shutil.copy(suite, tmp_path)
    (tmp_path / "hosts.ini").write_text(
        "[lab]\nlocalhost ansible_connection=local "
        f"kvm_guest_image={image} kvm_guest_root=/dev/vda\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                        "--hosts", "hosts.ini"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "14 passed" in r.stdout
