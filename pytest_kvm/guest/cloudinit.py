"""Distro guests: a cloud-init NoCloud seed (built in Python with pycdlib) and a console login."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field

import pycdlib

from ..waiting import wait_until
from .image import PROMPT


@dataclass(frozen=True)
class CloudInit:
    """What the seed tells cloud-init: a user with a password and/or SSH keys, a hostname.

    The password is a secret: it is never part of a repr, a log or a report.
    """

    user: str = "root"
    password: str | None = field(default=None, repr=False)
    ssh_keys: tuple[str, ...] = ()
    # the instance's SSH host key (OpenSSH private key, public line): known before it boots,
    # so a connection to its sshd can be pinned to it
    host_key: tuple[str, str] | None = field(default=None, repr=False)
    hostname: str = "pytest-kvm-guest"
    login_timeout: float = 600.0  # a distro boot under TCG is slow
    # shell commands run as root early in each boot (cloud-init's bootcmd), e.g. to make an
    # image differ the way real ones do (no agent: "systemctl mask --now qemu-guest-agent")
    bootcmd: tuple[str, ...] = ()

    def user_data(self) -> str:
        user: dict = {"name": self.user, "lock_passwd": self.password is None}
        if self.user != "root":
            user.update(sudo="ALL=(ALL) NOPASSWD:ALL", shell="/bin/bash")
        if self.ssh_keys:
            user["ssh_authorized_keys"] = list(self.ssh_keys)
        data: dict = {"hostname": self.hostname, "disable_root": False, "ssh_pwauth": False,
                      "users": [user]}
        if self.bootcmd:
            data["bootcmd"] = list(self.bootcmd)
        if self.host_key is not None:
            data["ssh_keys"] = {"ed25519_private": self.host_key[0],
                                "ed25519_public": self.host_key[1]}
        if self.password is not None:
            data["chpasswd"] = {"expire": False, "users": [
                {"name": self.user, "password": self.password, "type": "text"}]}
        # JSON is YAML: no YAML library needed to write cloud-config.
        return "#cloud-config\n" + json.dumps(data, indent=1) + "\n"

    def meta_data(self) -> str:
        instance = hashlib.sha256(self.user_data().encode()).hexdigest()[:16]
        return f"instance-id: pytest-kvm-{instance}\nlocal-hostname: {self.hostname}\n"


def network_config(management: str | None, others: list[str]) -> str:
    """cloud-init's network config (version 2), each NIC named by its MAC: the management
    NIC (the one SSH is forwarded to) with DHCP, the others (the suites' NICs) up with no
    address, for the checks to set. Without it cloud-init brings up the first NIC only, which
    is not the management NIC when the guest has test NICs."""
    ethernets: dict = {}
    if management:
        ethernets["mgmt0"] = {"match": {"macaddress": management}, "dhcp4": True}
    for i, mac in enumerate(others):
        ethernets[f"test{i}"] = {"match": {"macaddress": mac}, "dhcp4": False,
                                 "dhcp6": False, "optional": True}
    return json.dumps({"version": 2, "ethernets": ethernets}, indent=1) + "\n"


def nocloud_seed(ci: CloudInit, directory: str, network: str | None = None) -> str:
    """An ISO9660 'cidata' volume with meta-data, user-data and the network config when given,
    written 0600 into ``directory`` (it may hold a password: the caller removes it once it is
    on the host)."""
    files = {"meta-data": ci.meta_data().encode(), "user-data": ci.user_data().encode()}
    if network is not None:
        files["network-config"] = network.encode()
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, data in files.items():
        short = "/" + name.replace("-", "").upper()[:8] + ".;1"
        iso.add_fp(io.BytesIO(data), len(data), short, rr_name=name, joliet_path="/" + name)
    out = os.path.join(directory, "seed.iso")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        iso.write_fp(f)
    iso.close()
    return out


def console_login(console, ci: CloudInit, deadline_s: float) -> None:
    """Log in on a serial getty, retrying while cloud-init has not set the password yet,
    then switch the shell to pytest-kvm's prompt so ``run`` works as on the micro guest.
    pexpect.TIMEOUT when no login prompt came, WaitTimeout when logins kept failing."""
    deadline = time.monotonic() + deadline_s

    def logged_in() -> bool:
        console.sendline("")
        console.expect(r"login: ", timeout=max(1.0, deadline - time.monotonic()))
        console.sendline(ci.user)
        i = console.expect([r"[Pp]assword: ", r"\$ ", r"# "], timeout=60)
        if i == 0:
            console.send((ci.password or "") + "\n")  # sent, never logged by us
            i = console.expect([r"Login incorrect", r"\$ ", r"# "], timeout=60)
        return i != 0  # "Login incorrect": cloud-init has not set the password yet

    wait_until(logged_in, deadline_s, f"a console login as {ci.user!r}", step=5)
    # (the prompt split by an empty quote where it is typed: the console echoes what is typed,
    # and the wait must meet the prompt the shell prints, not that echo; else the next
    # command is typed while this one still runs, and sudo in quiet_console discards it)
    half = len(PROMPT) // 2
    console.sendline(f"export PS1='{PROMPT[:half]}''{PROMPT[half:]}'; stty -echoctl 2>/dev/null")
    console.expect_exact(PROMPT, timeout=30)


def quiet_console(console) -> None:
    """Keep kernel messages off the console (they would land inside commands' output)."""
    console.sendline("dmesg -n 1 2>/dev/null || sudo -n dmesg -n 1 2>/dev/null; true")
    console.expect_exact(PROMPT, timeout=30)


def ed25519_keypair() -> tuple[str, str]:
    """A fresh ed25519 key: (OpenSSH private key, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public
