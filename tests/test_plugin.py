"""The plugin as a user runs it, on real sshd hosts: in pytest's ``pytester`` (in process),
or in a subprocess where the test needs one (its environment, another network namespace)."""

from __future__ import annotations

import glob
import socket
import subprocess
import sys
import textwrap

import pytest

TESTINFRA_OFF = ["-p", "no:pytest11.testinfra"]


def pytest_run(args, cwd, *, prefix=(), timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


SUITE = textwrap.dedent("""
    import pytest

    @pytest.mark.parametrize("drv", ["virtio_net", "virtio_blk"])
    def test_kernel(kvm_host, drv):
        assert kvm_host.facts.kernel

    def test_plain():
        pass
""")


@pytest.fixture
def suite(tmp_path):
    (tmp_path / "test_it.py").write_text(SUITE)
    return tmp_path


@pytest.fixture
def tester(pytester):
    """pytester with the suite: ``tester.runpytest(...)`` runs it in this process."""
    pytester.makepyfile(test_it=SUITE)
    return pytester


@pytest.mark.parametrize("testinfra", [True, False], ids=["with-testinfra", "without"])
def test_help_shows_the_kvm_group(tester, testinfra):
    r = tester.runpytest("--help", *([] if testinfra else TESTINFRA_OFF))
    out = r.stdout.str()
    assert r.ret == 0, r.stderr.str()
    assert "pytest-kvm (KVM host testing):" in out and "--kvm-hosts=PATH" in out
    if not testinfra:
        assert "--hosts=PATH" in out


@pytest.mark.parametrize("testinfra", [True, False], ids=["with-testinfra", "without"])
def test_hosts_option_with_and_without_testinfra(rig, tester, testinfra):
    tester.makefile(".ini", hosts=rig.inventory())
    r = tester.runpytest("-v", "--hosts", "hosts.ini", *([] if testinfra else TESTINFRA_OFF))
    r.assert_outcomes(passed=5)
    r.stdout.fnmatch_lines(["*test_it.py::test_kernel[[]host1-virtio_net[]] PASSED*",  # ids
                            "*test_it.py::test_kernel[[]host2-virtio_blk[]] PASSED*"])


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


@pytest.mark.parametrize("listing", ["--collect-only", "--fixtures", "--help"])
def test_listing_writes_nothing(suite, listing):
    """A listing leaves the last run's results as they were (compare reads its figures)."""
    results = suite / "reports" / "allure-results"
    results.mkdir(parents=True)
    (results / "kvm-figures.json").write_text('{"format": 1, "tests": {"x": {}}}')
    (results / "last-run-result.json").write_text("{}")
    (suite / "lab.ini").write_text("[x]\nlocalhost ansible_connection=local\n")
    before = sorted(p for p in suite.rglob("*") if "__pycache__" not in str(p))
    r = pytest_run(["--kvm-hosts", "lab.ini", listing], suite, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p for p in suite.rglob("*") if "__pycache__" not in str(p)) == before
    assert (results / "kvm-figures.json").read_text() == '{"format": 1, "tests": {"x": {}}}'


def test_inert_without_an_inventory(tester):
    r = tester.runpytest("-v", "-rs")
    out = r.stdout.str()
    assert "kvm inventory" not in out
    assert "test_plain PASSED" in out
    assert "SKIPPED" in out and "no inventory given: pass --hosts hosts.ini" in out


def test_bad_inventory_is_a_usage_error_without_traceback(tester):
    tester.makefile(".ini", hosts="[lab]\nh1 kvm_accel=kmv\n")
    r = tester.runpytest("--hosts", "hosts.ini")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert r.stderr.str().strip() == \
        "ERROR: hosts.ini:2: kvm_accel must be kvm, tcg or auto, got 'kmv'"
    assert "Traceback" not in r.stdout.str() + r.stderr.str()


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


NEW_SUITE = textwrap.dedent("""
    import pytest

    pytestmark = pytest.mark.kvm_suite("uptime")

    def test_host_is_up(kvm_host):
        assert kvm_host.facts.kernel
""")


def test_a_suite_declared_in_its_one_place_runs_with_no_other_edit(rig, tmp_path):
    """A new suite file plus its one declaration (a conftest.py beside it): the inventory
    accepts its name in kvm_suites, and the plugin parametrises it over the hosts that take
    part (all by default), with no edit to pytest-kvm."""
    (tmp_path / "test_uptime.py").write_text(NEW_SUITE)
    (tmp_path / "conftest.py").write_text(
        "from pytest_kvm.registry import Suite, register\nregister(Suite('uptime', 'host'))\n")
    (tmp_path / "lab.ini").write_text(rig.inventory(host_vars={"host2": {
        "kvm_suites": "uptime"}}))
    r = pytest_run(["-v", "--hosts", "lab.ini"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_uptime.py::test_host_is_up[host1] PASSED" in r.stdout
    assert "test_uptime.py::test_host_is_up[host2] PASSED" in r.stdout


@pytest.mark.parametrize("inventory", [True, False], ids=["inventory", "no-inventory"])
def test_a_suite_file_not_declared_fails_the_run_in_one_line(rig, tmp_path, inventory):
    """Marked with a suite name nobody declared, it would run on no host (no host's
    kvm_suites can name it): the run fails instead, naming the file and the fix."""
    (tmp_path / "test_uptime.py").write_text(NEW_SUITE)
    (tmp_path / "lab.ini").write_text(rig.inventory())
    r = pytest_run(["-q", *(["--hosts", "lab.ini"] if inventory else [])], tmp_path)
    assert r.returncode == pytest.ExitCode.INTERRUPTED, r.stdout + r.stderr
    assert "test_uptime.py: kvm_suite('uptime') is not a declared suite, so it would run on " \
           "no host; declare it once with pytest_kvm.registry.register(Suite('uptime', " \
           "shape)) in a conftest.py (declared: virtio, virtio-data, passthrough, sriov, " \
           "migration, nested)" in r.stdout.splitlines(), r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_missing_inventory_file(tester):
    r = tester.runpytest("--hosts", "nope.ini")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: nope.ini: no such file" in r.stderr.str()


def test_unknown_key_warns(rig, tester):
    tester.makefile(".ini", hosts=rig.inventory(host_vars={"host1": {"kvm_acel": "tcg"}}))
    r = tester.runpytest("--hosts", "hosts.ini", "-q")
    assert r.ret == 0
    assert "hosts.ini:2: unknown key 'kvm_acel'; did you mean 'kvm_accel'?" in r.stdout.str()


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


def test_the_info_log_tells_a_guests_story_in_order_with_no_secret(pytester):
    """--log-cli-level=INFO: the guest's launch, each command it ran, its stop."""
    pytester.makepyfile(test_story="""
        def test_story(guest, kvm_session):
            assert guest.sh("echo story-$((6*7))").strip() == "story-42"
            assert kvm_session._keydir is None  # a micro guest needs no key: none made
    """)
    pytester.makefile(".ini", hosts="[lab]\nlocalhost ansible_connection=local "
                                    "ansible_become_password=Not-In-Any-Log-9\n")
    keydirs = set(glob.glob("/tmp/pytest-kvm-keys-*"))
    r = pytester.runpytest("--hosts", "hosts.ini", "--log-cli-level=INFO", "-p", "no:randomly")
    r.assert_outcomes(passed=1)
    assert set(glob.glob("/tmp/pytest-kvm-keys-*")) == keydirs  # none left behind
    r.stdout.re_match_lines([r".*localhost/guest: starting QEMU .*",
                             r".*localhost/guest: ready in .*",
                             r".*localhost/guest: `echo story-\$\(\(6\*7\)\)` -> 0 .*",
                             r".*localhost/guest: stopping QEMU .*"], consecutive=False)
    assert "Not-In-Any-Log-9" not in r.stdout.str() + r.stderr.str()
