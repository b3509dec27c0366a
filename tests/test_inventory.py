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
    alpha, beta, gamma = (inv.hosts[n].config for n in ("alpha", "beta", "gamma"))
    assert alpha.port == 2222 and alpha.accel == "tcg"  # host wins
    assert beta.accel == "kvm"  # [kvm:vars] (child) over nothing
    assert beta.port == 2200  # host:port shorthand
    assert beta.passthrough == ("0000:01:00.0", "0000:02:00.1")
    assert beta.sriov_pf == ("0000:03:00.0",)
    assert gamma.parent == "alpha" and gamma.shared_storage == "/srv/nfs"
    assert alpha.user == "tester" and alpha.become is True
    assert alpha.connect_timeout == 3.0  # [all:vars]
    assert alpha.host_key == "accept-new" and alpha.proxy_jump == "bastion"
    assert inv.hosts["loose"].groups == ("ungrouped",)
    assert inv.groups["fleet"] == ("alpha", "beta", "gamma")
    assert "loose" not in inv.groups["fleet"] and "ungrouped" in inv.groups
    assert inv.warnings == []


def test_child_group_vars_override_parent_group_vars():
    inv = parse("[p:children]\nc\n[p]\n[c]\nh\n[p:vars]\nkvm_accel=tcg\n[c:vars]\nkvm_accel=kvm\n")
    assert inv.hosts["h"].config.accel == "kvm"


LAB = "[a]\nl0 ansible_connection=local\n"  # a parent for nested hosts


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[a]\nh1 kvm_accel=kmv\n", "hosts.ini:2: kvm_accel must be kvm, tcg or auto, got 'kmv'"),
        ("[a]\nh1 ansible_port=22x\n",
         "hosts.ini:2: ansible_port must be an integer port (1-65535), got '22x'"),
        ("[a]\nh1 ansible_port=70000\n", "hosts.ini:2: ansible_port must be a port between"),
        ("[a]\nh1 ansible_host=10.0.0.1\nh2 ansible_host=10.0.0.1\n",
         "hosts.ini:3: host 'h2' is 10.0.0.1:22 again (already 'h1' at hosts.ini:2)"),
        ("[a:children]\nb\n[b:children]\na\n[a]\n[b]\nh\n", "recursive dependency loop"),
        ("[a:children]\nnope\n[a]\nh\n",
         "hosts.ini:2: section [a:children] includes group 'nope', which is not defined"),
        ("[a]\nh1 kvm_passthrough=01:00\n", "hosts.ini:2: kvm_passthrough '01:00' is not a PCI"),
        ("[a]\nh\n[a:vars]\nkvm_parent=ghost\n",
         "hosts.ini:4: kvm_parent 'ghost' of host 'h' is not"),  # the line that set it
        ("[a]\nh1 kvm_parent=h2\nh2 kvm_parent=h1\n", "kvm_parent forms a cycle"),
        ("[a]\nweb[01:1]\n", "hosts.ini:2: host range [01:1]: begin and end must have the "
                              "same width"),
        ("[a]\nh1 oops\n", "hosts.ini:2: expected key=value after the host name, got 'oops'"),
        ("[a:bogus]\n", "hosts.ini:1: section [a:bogus] has an unknown type"),
        ("[a b]\n", "hosts.ini:1: invalid section header '[a b]'"),
        ("[a]\nh1 ansible_host='unterminated\n", "hosts.ini:2: cannot split the host line"),
        ("# nothing\n", "hosts.ini: lists no hosts"),
        ("[a]\nh1 ansible_connection=docker\n", "hosts.ini: lists no host pytest-kvm can use"),
        ("[a]\nh1 ansible_ssh_common_args='-o StrictHostKeyChecking=no'\n",
         "StrictHostKeyChecking=no is not supported"),
        ("[a]\nh1 ansible_ssh_common_args='-v'\n", "option '-v' is not supported"),
        ("[a]\nh1 kvm_shared_storage=relative/dir\n", "must be an absolute path"),
        ("[a]\nh1 kvm_reruns=two\n", "hosts.ini:2: kvm_reruns must be a whole number >= 0"),
        ("[a]\nh1 ansible_connection=local\nh2 ansible_connection=local\n",
         "is the local machine again"),
        ("[a]\nh1 =x\n", "hosts.ini:2: a variable has an empty name"),
        ("[a]\nh1 ansible_become_method=su\n", "ansible_become_method must be sudo"),
        ("[a]\nh1 kvm_accel='{{ nope }}'\n",
         "hosts.ini:2: kvm_accel: cannot render kvm_accel's template ('nope' is undefined)"),
        ("[a]\nh1 kvm_accel='{{ x }}' x='{{ kvm_accel }}'\n", "refers to itself"),
        ("[g]\nh\n[ghost:vars]\nx=1\n", "hosts.ini:3: section [ghost:vars] is for group "
                                         "'ghost', which is not defined"),
        (LAB + "h1 kvm_parent=l0 kvm_l1_link=k kvm_migration_address=10.1.0.1\n",
         "hosts.ini:3: kvm_l1_link 'k' must join exactly two nested hosts of one parent; it "
         "has h1"),
        (LAB + "h1 kvm_parent=l0 kvm_l1_link=k\nh2 kvm_parent=l0 kvm_l1_link=k\n",
         "hosts.ini:3: the hosts on kvm_l1_link 'k' need distinct IPv4 addresses in one /24"),
        (LAB + "h1 kvm_parent=l0 kvm_l1_link=k kvm_migration_address=10.1.0.1\n"
         "h2 kvm_parent=l0 kvm_l1_link=k kvm_migration_address=10.2.0.1\n",
         "need distinct IPv4 addresses in one /24"),
        (LAB + "h1 kvm_l1_link=k\n", "hosts.ini:3: kvm_l1_link on host 'h1', which is not a "
                                        "nested host"),
        ("[a]\nh1 kvm_l1_link=a/b\n", "hosts.ini:2: kvm_l1_link must be a short name of "
                                      "letters"),
        (LAB + "h1 kvm_parent=l0 kvm_l1_nfs_server=l0 kvm_shared_storage=/s\n",
         "hosts.ini:3: kvm_l1_nfs_server 'l0' of host 'h1' must be a nested host on its "
         "kvm_l1_link (none)"),
        (LAB + "h1 kvm_parent=l0 kvm_l1_link=k kvm_migration_address=10.1.0.1 "
         "kvm_l1_nfs_server=h1\nh2 kvm_parent=l0 kvm_l1_link=k kvm_migration_address=10.1.0.2\n",
         "hosts.ini:3: host 'h1' has kvm_l1_nfs_server but no kvm_shared_storage"),
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
        "hosts.ini:2: unknown key 'kvm_acel'; did you mean 'kvm_accel'?",
        "hosts.ini:2: unknown key 'kvm_whatever' (ignored)",
        "hosts.ini:2: unknown key 'ansibel_host'; did you mean 'ansible_host'?",
    ]  # plain Ansible variables such as http_port are not ours to judge


def test_missing_unreadable_and_directory_files(tmp_path):
    with pytest.raises(InventoryError, match="nope.ini: no such file"):
        load(tmp_path / "nope.ini")
    with pytest.raises(InventoryError, match="lists no hosts"):
        load(tmp_path)  # a directory is an inventory too (an empty one here)
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
    missing += [a for spec in KEYS.values() for a in spec.aliases if f"`{a}`" not in readme]
    assert not missing, f"README's inventory table lacks: {missing}"


@pytest.mark.parametrize("name", ["hosts.ini", "hosts.metal.ini"])
def test_shipped_inventories_are_clean(name):
    from pathlib import Path

    inv = load(Path(__file__).parent.parent / name)
    assert inv.warnings == [] and len(inv) >= 2


def _write(root, files: dict[str, str]):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_yaml_group_vars_and_templates_reach_the_host_config(tmp_path):
    inv = load(_write(tmp_path, {
        "hosts.yml": "all:\n  children:\n    kvm:\n      hosts:\n"
                     "        k1: {ansible_host: 192.0.2.7, kvm_suites: [virtio, sriov]}\n",
        "group_vars/all.yml": "ansible_user: lab\nkvm_workdir: /var/tmp/lab\n",
        "group_vars/kvm/main.yml": "kvm_migration_address: '{{ ansible_host }}'\n"
                                   "kvm_sriov_pf: ['0000:3b:00.0']\n",
        "host_vars/k1": "ansible_port: 2200\nansible_become_password: hunter2\n",
    }) / "hosts.yml")
    cfg = inv.hosts["k1"].config
    assert (cfg.host, cfg.port, cfg.user, cfg.workdir) == ("192.0.2.7", 2200, "lab",
                                                            "/var/tmp/lab")
    assert cfg.migration_address == "192.0.2.7" and cfg.sriov_pf == ("0000:3b:00.0",)
    assert cfg.suites == ("virtio", "sriov") and cfg.become_password.reveal() == "hunter2"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.become_password)
    assert inv.hosts["k1"].groups == ("kvm",)


@pytest.mark.parametrize("files, expected", [
    ({"hosts.ini": "[g]\nh\n", "group_vars/g.yml": "x: 1\nkvm_accel: fast\n"},
     "group_vars/g.yml:2: kvm_accel must be kvm, tcg or auto, got 'fast'"),
    ({"hosts.ini": "[g]\nh\n", "host_vars/h.yml": "kvm_passthrough: 0000:01:00.0\n"},
     "host_vars/h.yml:1: kvm_passthrough was read as a number"),
    ({"hosts.ini": "[g]\nh\n", "group_vars/all.yml": "ansible_password: !vault |\n"
      "  $ANSIBLE_VAULT;1.1;AES256\n  3132\n"},
     "group_vars/all.yml:1: ansible_password is encrypted with Ansible Vault"),
    ({"hosts.ini": "[g]\nh\n", "group_vars/g.yml": "$ANSIBLE_VAULT;1.1;AES256\n3132\n"},
     "group_vars/g.yml:1: is encrypted with Ansible Vault"),
    ({"hosts.ini": "[g]\nh\n", "group_vars/g.yml": "- a\n- b\n"},
     "group_vars/g.yml: must hold a mapping"),
    ({"hosts.ini": "[g]\nh\n", "group_vars/g.yml": "a: [1\n"}, "group_vars/g.yml:2: is not valid"),
    ({"hosts.ini": "[g]\nh ansible_port=x ansible_password=s3cr3t\n"},
     "hosts.ini:2: ansible_port must be an integer port"),
])
def test_errors_name_the_file_and_line_that_set_the_value(tmp_path, files, expected):
    _write(tmp_path, files)
    with pytest.raises(InventoryError) as exc:
        load(tmp_path / "hosts.ini")
    message = str(exc.value)
    assert message.startswith(str(tmp_path / expected.split(":")[0])), message
    where, what = expected.split(" ", 1)
    assert message.endswith(where.split(":", 1)[1] + " " + what) or what in message, message
    assert message.startswith(str(tmp_path / where)), message
    assert "\n" not in message and "s3cr3t" not in message


def test_a_password_never_appears_in_an_error(tmp_path):
    # a malformed line that holds a password: the error names the line, not its text
    with pytest.raises(InventoryError) as exc:
        parse("[a]\nh1 ansible_password='hunter2 broken\n", "hosts.ini")
    assert "hunter2" not in str(exc.value)
    _write(tmp_path, {"hosts.ini": "[a]\nh1\n", "host_vars/h1.yml": "ansible_password: "
                      "[hunter2]\n"})
    with pytest.raises(InventoryError) as exc:
        load(tmp_path / "hosts.ini")
    assert "hunter2" not in str(exc.value) and "ansible_password must be" in str(exc.value)


def test_an_executable_script_is_refused_not_run(tmp_path):
    script = tmp_path / "inventory.py"
    marker = tmp_path / "ran"
    script.write_text(f"#!/bin/sh\ntouch {marker}\necho '{{}}'\n")
    script.chmod(0o755)
    with pytest.raises(InventoryError, match="is an inventory script"):
        load(script)
    assert not marker.exists()


def test_a_host_list_is_an_inventory():
    inv = load("web1.example,192.0.2.5:2222,")
    assert sorted(inv.hosts) == ["192.0.2.5", "web1.example"]
    assert inv.hosts["192.0.2.5"].config.port == 2222


def test_what_ansible_skips_is_a_warning_naming_it(tmp_path):
    _write(tmp_path, {"inv/a.ini": "[g]\nh\n", "inv/notes": "just some text\nwith [brackets\n",
                      "inv/b.yml": "g:\n  hosts:\n    h2:\n  bogus: {x: 1}\n"})
    inv = load(tmp_path / "inv")
    assert sorted(inv.hosts) == ["h", "h2"]
    assert any(w.startswith(f"{tmp_path}/inv/notes:1: not an inventory")
               for w in inv.warnings), inv.warnings
    assert f"{tmp_path}/inv/b.yml:4: skipping key 'bogus' of group 'g': only vars, children " \
           "and hosts are valid" in inv.warnings


def test_hosts_with_other_connections_are_left_out_with_a_warning():
    inv = parse("[a]\nh1\nw1 ansible_connection=winrm\nsw ansible_connection=ansible.netcommon"
                ".network_cli\nl ansible_connection=ansible.builtin.local\ns ansible_connection="
                "smart\nt ansible_connection=sssh\n", "hosts.ini")
    assert sorted(inv.hosts) == ["h1", "l", "s"]
    assert inv.hosts["l"].config.connection == "local" and inv.hosts["s"].config.connection == "ssh"
    assert "hosts.ini:3: host 'w1' uses ansible_connection=winrm, which pytest-kvm cannot " \
           "use; it is left out" in inv.warnings
    assert any("ansible_connection=sssh (did you mean 'ssh'?)" in w for w in inv.warnings)
    assert "w1" not in inv.groups["a"] and "h1" in inv.groups["a"]


def test_guest_channel_and_boot_commands():
    """kvm_guest_channel names the one channel; kvm_guest_bootcmd is one command or a list (a
    comma inside a command stays in it)."""
    cfg = parse("[a]\nh1 kvm_guest_channel=console kvm_guest_bootcmd='dmesg -n 8'\n"
                "h2 kvm_guest_bootcmd='[\"echo a, b\", \"systemctl mask --now x\"]'\n"
                ).hosts
    assert (cfg["h1"].config.guest_channel, cfg["h1"].config.guest_bootcmd) == (
        "console", ("dmesg -n 8",))
    assert (cfg["h2"].config.guest_channel, cfg["h2"].config.guest_bootcmd) == (
        "auto", ("echo a, b", "systemctl mask --now x"))
    with pytest.raises(InventoryError, match=r"^hosts.ini:2: kvm_guest_channel must be auto, "
                                             r"agent, ssh or console, got 'serial'"):
        parse("[a]\nh1 kvm_guest_channel=serial\n", "hosts.ini")


def test_suites_none_makes_a_host_only_a_peer():
    inv = parse("[a]\nl0 ansible_connection=local kvm_migration_peer=p\np kvm_suites=none\n")
    assert inv.hosts["p"].config.suites == ()
    assert inv.hosts["l0"].config.migration_peer == "p"
