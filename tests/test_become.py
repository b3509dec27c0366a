"""Ansible's become, honoured: a real unprivileged user on real sshd hosts, real sudo.

The user logs in with the rig's key; sudo asks for the user's password (no NOPASSWD rule).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import pytest

from pytest_kvm import inventory
from pytest_kvm.errors import KvmError
from pytest_kvm.transport import for_entry


@pytest.fixture(scope="module")
def sudo_user(rig):
    if shutil.which("sudo") is None:
        pytest.skip("sudo is not installed (make setup installs it)")
    name = f"pkvm{rig.tag[2:]}"
    password = secrets.token_urlsafe(12)
    home = os.path.join(rig.dir, name)
    subprocess.run(["useradd", "-M", "-d", home, "-s", "/bin/sh", name], check=True)
    os.makedirs(home)
    shutil.chown(home, name)
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
    os.makedirs("/etc/sudoers.d", mode=0o750, exist_ok=True)
    rule = f"/etc/sudoers.d/{name}"
    with open(rule, "w") as f:
        f.write(f"{name} ALL=(ALL:ALL) ALL\n")  # a password is always asked
    os.chmod(rule, 0o440)
    # sshd reads authorized_keys as the user: let it through the rig's (root-only) dir
    keys = os.path.join(rig.dir, "authorized_keys")
    mode = os.stat(rig.dir).st_mode & 0o777
    os.chmod(rig.dir, 0o711)
    os.chmod(keys, 0o644)
    yield name, password
    os.chmod(rig.dir, mode)
    os.unlink(rule)
    subprocess.run(["userdel", name], check=False)


def transport(rig, tmp_path, user: str, **keys: str):
    path = tmp_path / "hosts.ini"
    extra = " ".join(f"{k}={v}" for k, v in keys.items())
    path.write_text(rig.inventory().replace("ansible_user=root", f"ansible_user={user}")
                    .replace("[rig]\nhost1 ", f"[rig]\nhost1 {extra} "))
    inv = inventory.load(path)
    return for_entry(inv.hosts["host1"], inv)


def test_become_with_a_password_runs_as_root_and_the_command_never_sees_it(
        rig, tmp_path, sudo_user):
    user, password = sudo_user
    t = transport(rig, tmp_path, user, ansible_become="yes", ansible_become_password=password)
    try:
        assert t.run(["id", "-un"]).stdout.strip() == user  # unprivileged without become
        assert t.run(["id", "-u"], become=True).stdout.strip() == "0"
        # stdin given to a privileged command is the command's own: the password is sudo's
        assert t.run(["cat"], become=True, input="hello\n").stdout == "hello\n"
        stream = t.open_stream(["sh", "-c", "id -u; cat"])
        stream.send(b"ping\n")
        out = b""
        while b"ping" not in out:
            out += stream.recv(4096, timeout=10)
        stream.close()
        assert out.split() == [b"0", b"ping"]  # root, and the stream saw no password
        assert password not in repr(t) and password not in repr(t.become)
    finally:
        t.close()


def test_become_user_and_become_no(rig, tmp_path, sudo_user):
    user, password = sudo_user
    t = transport(rig, tmp_path, user, ansible_become="true", ansible_become_user="nobody",
                  ansible_sudo_pass=password)  # Ansible's older name for the password
    try:
        assert t.run(["id", "-un"], become=True).stdout.strip() == "nobody"
    finally:
        t.close()
    t = transport(rig, tmp_path, user, ansible_become="no")
    try:  # never sudo: a privileged command runs as the user
        assert t.run(["id", "-un"], become=True).stdout.strip() == user
    finally:
        t.close()


def test_become_without_the_password_fails_with_sudos_reason(rig, tmp_path, sudo_user):
    user, _ = sudo_user
    t = transport(rig, tmp_path, user, ansible_become="yes")
    try:
        with pytest.raises(KvmError, match="password is required"):
            t.run(["id", "-u"], become=True)
    finally:
        t.close()


def test_legacy_connection_names_connect_as_ansible_does(rig, tmp_path, sudo_user):
    """ansible_ssh_user / ansible_ssh_host win over ansible_user / ansible_host when both are
    set, as in Ansible's ssh connection plugin."""
    user, _ = sudo_user
    host1 = rig.hosts[0].address
    path = tmp_path / "hosts.ini"
    path.write_text(rig.inventory().replace(
        f"host1 ansible_host={host1}",
        f"host1 ansible_host=192.0.2.1 ansible_ssh_host={host1} ansible_ssh_user={user}"))
    inv = inventory.load(path)
    t = for_entry(inv.hosts["host1"], inv)
    try:
        assert t.run(["id", "-un"]).stdout.strip() == user
    finally:
        t.close()


def test_a_command_sudo_runs_without_a_password_never_reads_it(rig, tmp_path, sudo_user):
    """sudo's policy differs by command (NOPASSWD for cat, a password for the rest): the
    password goes to sudo when it asks, never into the stream of a command it runs
    without one."""
    user, password = sudo_user
    rule = f"/etc/sudoers.d/{user}-cat"
    cat = shutil.which("cat")
    with open(rule, "w") as f:
        f.write(f"{user} ALL=(ALL:ALL) NOPASSWD: {cat}\n")
    os.chmod(rule, 0o440)
    t = transport(rig, tmp_path, user, ansible_become="yes", ansible_become_password=password)
    try:
        assert t.run(["id", "-u"], become=True).stdout.strip() == "0"  # asked, answered
        assert t.run([cat], become=True, input="hello\n").stdout == "hello\n"
        assert t.run([cat], become=True).stdout == ""  # nothing of the password
        stream = t.open_stream([cat])
        stream.send(b"ping\n")
        out = b""
        while b"ping" not in out:
            out += stream.recv(4096, timeout=10)
        stream.close()
        assert out == b"ping\n"
    finally:
        t.close()
        os.unlink(rule)
