"""A host that becomes unreachable in the middle of a run (its network link goes down while
a guest runs on it): its tests error naming it, fast; the other host's tests go on; nothing
waits for ever; the next run's cleanup removes what the lost host kept running."""

from __future__ import annotations

import re
import textwrap
import time

from test_plugin import pytest_run

FIRST = textwrap.dedent("""
    import subprocess

    def test_boot(guest):
        assert guest.sh("echo up").strip() == "up"

    def test_link_goes_down(guest, kvm_host):
        if kvm_host.name == "host2":  # the cable is pulled while the guest runs
            subprocess.run({cut!r}, check=True)
        assert guest.sh("echo still", timeout=10).strip() == "still"

    def test_after(guest):
        assert guest.sh("echo after").strip() == "after"
""")

LATER = textwrap.dedent("""
    def test_later(kvm_host):
        assert kvm_host.run(["echo", "later"]).stdout.strip() == "later"
""")


def outcomes(stdout: str) -> dict[str, str]:
    """test id -> PASSED/FAILED/ERROR from `-rA`'s short summary (errors at teardown too)."""
    found: dict[str, str] = {}
    for status, nodeid in re.findall(r"^(PASSED|FAILED|ERROR) (\S+)", stdout, re.M):
        test = nodeid.split("::")[-1]
        found[test] = "ERROR" if found.get(test) == "ERROR" else status
        if status == "ERROR":
            found[test] = "ERROR"
    return found


def test_host_lost_mid_run(rig, tmp_path):
    host2 = rig.hosts[1]
    cut = ["ip", "-n", host2.netns, "link", "set", f"{rig.tag}p2", "down"]
    (tmp_path / "test_first.py").write_text(FIRST.format(cut=cut))
    (tmp_path / "test_later.py").write_text(LATER)
    (tmp_path / "hosts.ini").write_text(rig.inventory("kvm_connect_timeout=3"))
    started = time.monotonic()
    try:
        r = pytest_run(["--hosts", "hosts.ini", "-rA", "-p", "no:randomly"], tmp_path,
                       timeout=400)
        elapsed = time.monotonic() - started
    finally:
        host2.exec("ip", "link", "set", f"{rig.tag}p2", "up")
    out = r.stdout
    got = outcomes(out)
    assert got["test_boot[host1]"] == got["test_boot[host2]"] == "PASSED", out[-3000:]
    for test in ("test_link_goes_down", "test_after", "test_later"):
        assert got[f"{test}[host1]"] == "PASSED", out[-3000:]   # host1 goes on
        assert got[f"{test}[host2]"] in ("FAILED", "ERROR"), out[-3000:]
    # every error of host2 names it; none is a hang
    for block in re.split(r"^_{3,} ", out, flags=re.M)[1:]:
        if "[host2]" in block.splitlines()[0]:
            assert "host2" in block.split("\n", 1)[1], block[-2000:]
    assert "Timeout" not in out.split("short test summary")[0].split("\n")[-1]
    assert elapsed < 240, f"the run took {elapsed:.0f} s"

    # The lost host kept its guest (nobody could stop it); once host2 is back, the next
    # run's cleanup removes it.
    def guests_left() -> str:
        return host2.exec("pgrep", "-af", f"qemu-system.*{rig.workdir}").stdout.strip()

    assert guests_left(), "the lost host's guest should still be running"
    r2 = pytest_run(["--hosts", "hosts.ini", "--kvm-cleanup"], tmp_path, timeout=120)
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-2000:]
    assert not guests_left()
