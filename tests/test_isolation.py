"""One failure costs one check: a guest of a failed check is gone before the next check
starts, and a guest nobody stops any more is removed (and named) before the next boot.

The migration suite runs on localhost's self pair with the copy-storage variant's migration
failing for real (its destination QEMU killed as the migration starts); at every check's
start a conftest counts this run's QEMU processes (ps, by their process name) into a file."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

from pytest_kvm.guest import GuestSpec, GuestState, Owner
from pytest_kvm.inventory import parse
from pytest_kvm.lab import GuestFactory, KvmSession

from test_plugin import pytest_run

COUNTING = textwrap.dedent('''
    import json
    import os
    import subprocess

    import pytest

    from pytest_kvm.features.migration import run as mig_run

    def qemus():
        """This run's QEMU processes (their process name, not the shell that waits on one)."""
        tag = "pytest-kvm-" + os.environ["PYTEST_KVM_RUN_ID"] + "-"
        out = subprocess.run(["ps", "-eo", "comm=,args="], capture_output=True,
                             text=True).stdout
        return sum(1 for line in out.splitlines()
                   if line.startswith("pytest-kvm-") and tag in line)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(item):
        with open("counts.jsonl", "a") as f:
            f.write(json.dumps([item.name, qemus()]) + "\\n")

    real_hop = mig_run.Run.hop

    def hop(self, to_host):
        """copy-storage's migration fails: its destination is killed as it starts."""
        if self.variant.name != "copy-storage":
            return real_hop(self, to_host)
        real_migrate = mig_run.migrate

        def dying(source, dest, stream, **kw):
            def kill(job, sample):
                if getattr(job, "struck", False):
                    return False
                dest.host.run(["kill", "-KILL", str(dest.pid)])
                job.struck = True
                return True
            return real_migrate(source, dest, stream, on_sample=kill, **kw)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mig_run, "migrate", dying)
            return real_hop(self, to_host)

    mig_run.Run.hop = hop
''')


def test_a_failed_migrations_guests_are_gone_before_the_next_check(tmp_path):
    shutil.copy(Path(__file__).parent.parent / "suites" / "test_migration.py", tmp_path)
    (tmp_path / "conftest.py").write_text(COUNTING)
    (tmp_path / "hosts.ini").write_text(
        "[lab]\nlocalhost ansible_connection=local kvm_suites=migration kvm_reruns=2\n")
    r = pytest_run(["--hosts", "hosts.ini", "-rfE", "-k",
                    "shared-storage or copy-storage or ping-pong", "--tb=line"], tmp_path,
                   timeout=900)
    out = r.stdout
    assert "killed by SIGKILL" in out, out[-3000:]  # the migration failed, for real
    counts = [json.loads(line) for line in (tmp_path / "counts.jsonl").read_text().split("\n")
              if line]
    # (at a variant's first check the last variant's guest is still up: pytest ends a module
    # fixture's instance as it sets the next one up, after this count)
    failed = [n for name, n in counts if "copy-storage" in name]
    assert len(failed) == 13 and failed[1:] == [0] * 12, counts  # none after its failure
    after = [n for name, n in counts if "ping-pong" in name]
    assert after[0] == 0, counts  # the next variant starts on a host with none of ours
    assert "13 errors" in out.splitlines()[-1] and "26 passed" in out.splitlines()[-1], out[-3000:]
    assert "rerun" not in out.splitlines()[-1]  # a failed migration is not a dead guest


def test_a_stray_guest_is_removed_before_the_next_boot_and_named():
    """A guest whose stop failed (marked stopped, its QEMU still running): the next boot on
    its host removes it first, and the session names it for the report."""
    session = KvmSession(parse("[l]\nlocalhost ansible_connection=local\n"),
                         Owner.current("stray1"))
    try:
        host = session.host("localhost")
        factory = GuestFactory(session, host, "stray")
        lost = factory(GuestSpec(name="lost"))
        lost.state = GuestState.STOPPED  # what a failed stop leaves
        assert lost.alive()
        fresh = factory(GuestSpec(name="fresh"))
        assert not lost.alive()
        assert len(session.strays_removed) == 1, session.strays_removed
        assert lost.rundir.rsplit("/", 1)[1] in session.strays_removed[0]
        assert "its QEMU was running" in session.strays_removed[0]
        assert fresh.alive()
        factory.finish(False)
        assert not fresh.alive()
    finally:
        session.close()
