"""Inventory parsing: good files resolve like Ansible, bad files give one-line errors."""

from __future__ import annotations

import os

import pytest

from pytest_kvm.errors import InventoryError
from pytest_kvm.inventory import load, parse

GOOD = """\
# a comment
loose ansible_host=192.0.2.9

[kvm]
alpha ansible_host=a.example ansible_port=2222 kvm_accel=tcg
beta:2200 kvm_passthrough=01:00.0,0000:02:00.1 kvm_sriov_pf=03:00.0  # trailing comment
gamma kvm_parent=alpha "kvm_shared_storage=/srv/nfs/"

[edge]
beta

[kvm:vars]
ansible_user = tester
kvm_accel=kvm

[all:vars]
kvm_connect_timeout=3

[fleet:children]
kvm
edge

[fleet]

[fleet:vars]
ansible_become=yes
ansible_ssh_common_args='-o StrictHostKeyChecking=accept-new -J bastion'
"""


def test_good_inventory_resolves_like_ansible():
    inv = parse(GOOD, "hosts.ini")
    assert list(inv.hosts) == ["alpha", "beta", "gamma", "loose"]  # sorted, deterministic
    alpha, beta, gamma = inv.hosts["alpha"], inv.hosts["beta"], inv.hosts["gamma"]
    assert alpha.get("ansible_port") == 2222 and alpha.get("kvm_accel") == "tcg"  # host wins
    assert beta.get("kvm_accel") == "kvm"  # [kvm:vars] (child) over nothing
    assert beta.get("ansible_port") == 2200  # host:port shorthand
    assert beta.get("kvm_passthrough") == ("0000:01:00.0", "0000:02:00.1")
    assert beta.get("kvm_sriov_pf") == ("0000:03:00.0",)
    assert gamma.get("kvm_parent") == "alpha" and gamma.get("kvm_shared_storage") == "/srv/nfs"
    assert alpha.get("ansible_user") == "tester" and alpha.get("ansible_become") is True
    assert alpha.get("kvm_connect_timeout") == 3.0  # [all:vars]
    assert alpha.get("kvm_host_key") == "accept-new" and alpha.get("kvm_proxy_jump") == "bastion"
    assert inv.hosts["loose"].groups == ("ungrouped",)
    assert inv.groups["fleet"] == ("alpha", "beta", "gamma")
    assert "loose" not in inv.groups["fleet"] and "ungrouped" in inv.groups
    assert inv.warnings == []


def test_child_group_vars_override_parent_group_vars():
    inv = parse("[p:children]\nc\n[p]\n[c]\nh\n[p:vars]\nkvm_accel=tcg\n[c:vars]\nkvm_accel=kvm\n")
    assert inv.hosts["h"].get("kvm_accel") == "kvm"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[a]\nh1 kvm_accel=kmv\n", "hosts.ini:2: kvm_accel must be kvm, tcg or auto, got 'kmv'"),
        ("[a]\nh1 ansible_port=22x\n",
         "hosts.ini:2: ansible_port must be an integer port (1-65535), got '22x'"),
        ("[a]\nh1 ansible_port=70000\n", "hosts.ini:2: ansible_port must be a port between"),
        ("[a]\nh1\nh1\n", "hosts.ini:3: host 'h1' is listed twice in [a]"),
        ("[a]\nh1 ansible_host=x\n[b]\nh1 ansible_host=y\n",
         "hosts.ini:4: host 'h1' already has variables at line 2"),
        ("[a]\nh1 ansible_host=10.0.0.1\nh2 ansible_host=10.0.0.1\n",
         "hosts.ini:3: host 'h2' is 10.0.0.1:22 again (already 'h1' at line 2)"),
        ("[a]\nh1\n[empty]\n", "hosts.ini:3: group [empty] has no hosts"),
        ("[a:children]\nb\n[b:children]\na\n[a]\n[b]\nh\n", "a cycle"),
        ("[a:children]\nnope\n[a]\nh\n", "hosts.ini:2: [a:children] names group 'nope'"),
        ("[a]\nh1 kvm_passthrough=01:00\n", "hosts.ini:2: kvm_passthrough '01:00' is not a PCI"),
        ("[a]\nh1 kvm_parent=ghost\n", "hosts.ini:2: kvm_parent 'ghost' of host 'h1' is not"),
        ("[a]\nh1 kvm_parent=h2\nh2 kvm_parent=h1\n", "kvm_parent forms a cycle"),
        ("[a]\nweb[01:10]\n", "hosts.ini:2: host ranges like 'web[01:10]' are not supported"),
        ("[a]\nh1 oops\n", "hosts.ini:2: expected key=value after the host name, got 'oops'"),
        ("[a:bogus]\n", "hosts.ini:1: unknown section kind ':bogus'"),
        ("[a\n", "hosts.ini:1: bad section header"),
        ("[a]\nh1 ansible_host='unterminated\n", "hosts.ini:2: cannot parse line"),
        ("# nothing\n", "hosts.ini: lists no hosts"),
        ("[a]\nh1 ansible_connection=docker\n", "ansible_connection must be ssh or local"),
        ("[a]\nh1 ansible_ssh_common_args='-o StrictHostKeyChecking=no'\n",
         "StrictHostKeyChecking=no is not supported"),
        ("[a]\nh1 ansible_ssh_common_args='-v'\n", "option '-v' is not supported"),
        ("[a]\nh1 kvm_shared_storage=relative/dir\n", "must be an absolute path"),
        ("[a]\nh1 kvm_reruns=two\n", "hosts.ini:2: kvm_reruns must be a whole number >= 0"),
        ("[a]\nh1\n[a]\nh2\n", "hosts.ini:3: group [a] is defined twice"),
        ("[a]\nh1 ansible_connection=local\nh2 ansible_connection=local\n",
         "is the local machine again"),
    ],
)
def test_bad_inventory_is_one_line_naming_file_and_line(text, expected):
    with pytest.raises(InventoryError) as exc:
        parse(text, "hosts.ini")
    message = str(exc.value)
    assert message.startswith(expected) or expected in message, message
    assert "\n" not in message


def test_unknown_keys_warn_with_the_closest_known_key():
    inv = parse("[a]\nh1 kvm_acel=tcg kvm_whatever=1 http_port=80 ansibel_host=x\n", "hosts.ini")
    assert inv.warnings == [
        "hosts.ini:2: unknown key 'kvm_acel' in host 'h1'; did you mean 'kvm_accel'?",
        "hosts.ini:2: unknown key 'kvm_whatever' in host 'h1' (ignored)",
        "hosts.ini:2: unknown key 'ansibel_host' in host 'h1'; did you mean 'ansible_host'?",
    ]  # plain Ansible variables such as http_port are not ours to judge


def test_missing_unreadable_and_directory_files(tmp_path):
    with pytest.raises(InventoryError, match="nope.ini: no such file"):
        load(tmp_path / "nope.ini")
    with pytest.raises(InventoryError, match="is a directory"):
        load(tmp_path)
    binary = tmp_path / "bin.ini"
    binary.write_bytes(b"\xff\xfe[a]\n")
    with pytest.raises(InventoryError, match="is not UTF-8"):
        load(binary)
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.ini"
        locked.write_text("[a]\nh\n")
        locked.chmod(0)
        with pytest.raises(InventoryError, match="permission denied"):
            load(locked)


def test_every_key_is_documented_in_the_readme():
    from pathlib import Path

    from pytest_kvm.inventory import KEYS

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [k for k in KEYS if f"| `{k}` |" not in readme]
    assert not missing, f"README's inventory table lacks: {missing}"


@pytest.mark.parametrize("name", ["hosts.ini", "hosts.metal.ini"])
def test_shipped_inventories_are_clean(name):
    from pathlib import Path

    inv = load(Path(__file__).parent.parent / name)
    assert inv.warnings == [] and len(inv) >= 2
