"""The plugin as a user runs it: pytest in a subprocess, real sshd hosts."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

TESTINFRA_OFF = ["-p", "no:pytest11.testinfra"]


def pytest_run(args, cwd, *, prefix=(), timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def suite(tmp_path):
    (tmp_path / "test_it.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.parametrize("drv", ["virtio_net", "virtio_blk"])
        def test_kernel(kvm_host, drv):
            assert kvm_host.facts.kernel

        def test_plain():
            pass
    """))
    return tmp_path


@pytest.mark.parametrize("testinfra", [True, False], ids=["with-testinfra", "without"])
def test_help_shows_the_kvm_group(tmp_path, testinfra):
    r = pytest_run(["--help", *([] if testinfra else TESTINFRA_OFF)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pytest-kvm (KVM host testing):" in r.stdout and "--kvm-hosts=PATH" in r.stdout
    if not testinfra:
        assert "--hosts=PATH" in r.stdout


@pytest.mark.parametrize("testinfra", [True, False], ids=["with-testinfra", "without"])
def test_hosts_option_with_and_without_testinfra(rig, suite, testinfra):
    (suite / "hosts.ini").write_text(rig.inventory())
    r = pytest_run(["-v", "--hosts", "hosts.ini", *([] if testinfra else TESTINFRA_OFF)], suite)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_it.py::test_kernel[host1-virtio_net] PASSED" in r.stdout  # stable ids
    assert "test_it.py::test_kernel[host2-virtio_blk] PASSED" in r.stdout
    assert "5 passed" in r.stdout


def test_env_var_and_report_header(rig, suite):
    (suite / "lab.ini").write_text(rig.inventory())
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                        "--co"], cwd=suite, capture_output=True, text=True, timeout=60,
                       env={"KVM_HOSTS": "lab.ini", "PATH": "/usr/bin:/bin"})
    assert "test_kernel[host1-virtio_net]" in r.stdout, r.stdout + r.stderr
    r = pytest_run(["--kvm-hosts", "lab.ini", "-k", "nothing"], suite)
    header = r.stdout.splitlines()
    assert "kvm inventory: lab.ini (2 hosts)" in header
    assert any(line.startswith("  host1: kernel ") and "accel " in line for line in header)


@pytest.mark.parametrize("listing", ["--collect-only", "--fixtures", "--markers", "--help"])
def test_listing_touches_no_host(suite, listing):
    """Listing tests or fixtures connects to nothing: not even a host that cannot answer, nor
    a nested host that would have to be booted."""
    listener = socket.create_server(("127.0.0.1", 0))  # would see any connection attempt
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    (suite / "lab.ini").write_text(f"[x]\ndead ansible_host=127.0.0.1 ansible_port={port}\n"
                                   "nested kvm_parent=dead\n")
    r = pytest_run(["--kvm-hosts", "lab.ini", listing], suite, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    with pytest.raises(TimeoutError):
        listener.accept()  # nobody knocked
    listener.close()
    if listing == "--collect-only":
        assert "kvm inventory: lab.ini (2 hosts, not connected: --collect-only)" in r.stdout
        assert "test_kernel[dead-virtio_net]" in r.stdout


def test_inert_without_an_inventory(suite):
    r = pytest_run(["-v", "-rs"], suite)
    assert "kvm inventory" not in r.stdout
    assert "test_plain PASSED" in r.stdout
    assert "SKIPPED" in r.stdout and "no inventory given: pass --hosts hosts.ini" in r.stdout


def test_bad_inventory_is_a_usage_error_without_traceback(suite):
    (suite / "hosts.ini").write_text("[lab]\nh1 kvm_accel=kmv\n")
    r = pytest_run(["--hosts", "hosts.ini"], suite)
    assert r.returncode == 4  # pytest's usage-error code
    assert r.stderr.strip() == "ERROR: hosts.ini:2: kvm_accel must be kvm, tcg or auto, got 'kmv'"
    assert "Traceback" not in r.stdout + r.stderr


def test_yaml_inventory_with_group_vars_runs(rig, suite):
    """The rig as a YAML inventory whose connection settings live in group_vars/."""
    hosts = "".join(f"        {h.name}: {{ansible_host: {h.address}}}\n" for h in rig.hosts)
    (suite / "lab.yml").write_text(f"all:\n  children:\n    rig:\n      hosts:\n{hosts}")
    (suite / "group_vars").mkdir()
    (suite / "group_vars" / "rig.yml").write_text(
        f"ansible_ssh_user: root\nansible_ssh_private_key_file: {rig.key}\n"
        f"kvm_known_hosts: {rig.known_hosts}\nkvm_workdir: \"{{{{ '{rig.workdir}' }}}}\"\n")
    r = pytest_run(["-q", "--hosts", "lab.yml"], suite)
    assert r.returncode == 0 and "5 passed" in r.stdout, r.stdout + r.stderr
    (suite / "group_vars" / "all.yml").write_text("kvm_connect_timeout: soon\n")
    r = pytest_run(["-q", "--hosts", "lab.yml"], suite)
    assert r.returncode == 4 and r.stderr.strip() == (
        f"ERROR: {suite}/group_vars/all.yml:1: kvm_connect_timeout must be a number of "
        "seconds, got 'soon'"), r.stderr


def test_missing_inventory_file(suite):
    r = pytest_run(["--hosts", "nope.ini"], suite)
    assert r.returncode == 4 and "ERROR: nope.ini: no such file" in r.stderr


def test_unknown_key_warns(rig, suite):
    (suite / "hosts.ini").write_text(rig.inventory(host_vars={"host1": {"kvm_acel": "tcg"}}))
    r = pytest_run(["--hosts", "hosts.ini", "-q"], suite)
    assert r.returncode == 0
    assert "hosts.ini:2: unknown key 'kvm_acel'; did you mean 'kvm_accel'?" in r.stdout


def test_unreachable_and_unresolvable_hosts_error_alone(rig, suite):
    # Run inside host2's namespace: name lookups there go to its own loopback only.
    bad = (f"dead ansible_host={rig.hosts[0].address} ansible_port=2\n"
           "ghost ansible_host=no-such-host.invalid\n")
    (suite / "hosts.ini").write_text(rig.inventory().replace("[rig]\n", "[rig]\n" + bad))
    r = pytest_run(["--hosts", "hosts.ini", "-q", "-rfE"], suite,
                   prefix=["ip", "netns", "exec", rig.hosts[1].netns])
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "5 passed, 4 errors" in out  # host1, host2 and test_plain ran; dead, ghost errored
    assert "dead: cannot connect to" in out
    assert "ghost: cannot resolve 'no-such-host.invalid'" in out
    assert "Traceback" not in out
