"""The guest fixtures as users run them: pytest in a subprocess against real sshd hosts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from test_plugin import pytest_run

SUITE = textwrap.dedent("""
    import os, time
    from pytest_kvm.guest import GuestSpec

    def test_hangs_with_a_guest(guest_factory, kvm_host):
        g = guest_factory(GuestSpec(name="victim"))
        open(os.environ["READY_FILE"], "w").write(g.rundir)
        time.sleep(600)

    def test_fails_with_a_guest(guest):
        assert guest.sh("echo 1") == "2"
""")


@pytest.fixture
def suite(rig, tmp_path):
    (tmp_path / "test_s.py").write_text(SUITE)
    (tmp_path / "hosts.ini").write_text(rig.inventory().replace("host2 ", "#host2 "))
    return tmp_path


def run_dirs(rig) -> list[str]:
    path = os.path.join(rig.workdir, "run")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def qemu_of(rundir_name: str) -> str:
    return subprocess.run(["pgrep", "-af", f"[q]emu-system.*{rundir_name}/"],
                          capture_output=True, text=True).stdout


def start_and_kill(suite, rig) -> str:
    ready = suite / "ready"
    env = dict(os.environ, READY_FILE=str(ready))
    env.pop("PYTEST_KVM_RUN_ID", None)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "--hosts", "hosts.ini", "-k", "hangs"], cwd=suite, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the guest never came up"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # the controller dies: no teardown runs
    proc.wait()
    rundir = ready.read_text()
    name = os.path.basename(rundir)
    assert qemu_of(name), "the killed run's guest should still be running"
    return name


def test_cleanup_stops_guests_of_a_killed_run(suite, rig):
    name = start_and_kill(suite, rig)
    r = pytest_run(["--hosts", "hosts.ini", "--kvm-cleanup"], suite)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "host1: stopped 1 leftover guest(s)" in r.stdout
    assert name not in run_dirs(rig) and not qemu_of(name)


def test_next_run_sweeps_leftovers_at_start(suite, rig):
    name = start_and_kill(suite, rig)
    pytest_run(["--hosts", "hosts.ini", "-k", "fails"], suite)
    assert name not in run_dirs(rig) and not qemu_of(name)


def test_failure_shows_guest_lsmod_and_dmesg_and_leaves_nothing(suite, rig):
    before = run_dirs(rig)
    r = pytest_run(["--hosts", "hosts.ini", "-k", "fails"], suite)
    assert r.returncode == 1
    assert "guest host1/guest lsmod" in r.stdout and "Module                  Size" in r.stdout
    assert "guest host1/guest dmesg" in r.stdout
    assert run_dirs(rig) == before


def test_keep_failed_keeps_the_guest_and_says_how_to_reach_it(suite, rig):
    r = pytest_run(["--hosts", "hosts.ini", "-k", "fails", "--kvm-keep-failed"], suite)
    assert r.returncode == 1
    assert "kept Guest('guest' on 'host1'): console: ssh to host1, then cd " in r.stdout
    kept = [d for d in run_dirs(rig) if qemu_of(d)]
    assert kept
    r = pytest_run(["--hosts", "hosts.ini", "--kvm-cleanup"], suite)
    assert "stopped 1 leftover guest(s)" in r.stdout
    assert not [d for d in run_dirs(rig) if qemu_of(d)]


def test_cleanup_leaves_the_last_runs_results_alone(tmp_path):
    """The nightly jobs run --kvm-cleanup after the suites: it writes no Allure results and
    empties none (it once emptied reports/allure-results, the suites' results with it)."""
    (tmp_path / "hosts.ini").write_text("[lab]\nlocalhost ansible_connection=local\n")
    kept = tmp_path / "reports" / "allure-results" / "lab" / "x-result.json"
    kept.parent.mkdir(parents=True)
    kept.write_text("{}")
    r = pytest_run(["--hosts", "hosts.ini", "--kvm-cleanup"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert kept.exists()
    assert sorted(p.name for p in kept.parent.parent.iterdir()) == ["lab"]


def test_cleanup_without_inventory_is_a_usage_error(tmp_path):
    r = pytest_run(["--kvm-cleanup"], tmp_path)
    assert r.returncode == 4 and "--kvm-cleanup needs an inventory" in r.stderr


def test_a_hosts_module_guest_stops_when_its_run_of_tests_ends(rig, pytester):
    """A module parameter interleaves the hosts' tests (pytest groups tests by parameters of
    module scope): each host's ``guest`` stops when its run of tests ends, so guests never
    pile up on a host (they did on lab1, whose one vCPU then booted each next guest slower,
    past the 60 s boot timeout)."""
    pytester.makepyfile(test_interleaved="""
        import subprocess
        import pytest

        @pytest.fixture(scope="module", params=["a", "b"])
        def flavour(request):
            return request.param

        def one_guest(guest, kvm_session):
            ps = subprocess.run(["pgrep", "-c", "-f", "^qemu-system.* -name pytest-kvm-"
                                 + kvm_session.owner.run_id], capture_output=True, text=True)
            assert guest.alive() and ps.stdout.strip() == "1", ps.stdout

        def test_plain(guest, kvm_session):
            one_guest(guest, kvm_session)

        def test_flavoured(guest, flavour, kvm_session):
            one_guest(guest, kvm_session)

        def test_plain_again(guest, kvm_session):
            one_guest(guest, kvm_session)
    """)
    pytester.makefile(".ini", hosts=rig.inventory())
    r = pytester.runpytest("--hosts", "hosts.ini", "-p", "no:randomly", "-v")
    r.assert_outcomes(passed=8)
    hosts = [line.split("[")[1][:5] for line in r.stdout.lines if "PASSED" in line]
    runs = [h for i, h in enumerate(hosts) if i == 0 or hosts[i - 1] != h]
    assert len(runs) > 2, f"the hosts' tests did not interleave ({hosts}): this proves nothing"
