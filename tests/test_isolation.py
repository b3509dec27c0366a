"""One failure costs one check: a guest of a failed check is gone before the next check
starts, and a guest nobody stops any more is removed (and named) before the next boot.

The migration suite runs between two real sshd hosts (each in a network namespace of its
own) with the copy-storage variant's migration failing for real (its destination QEMU killed
as the migration starts); at every check's start a conftest counts this run's QEMU processes
on each host (those in its namespace, by their process name) into a file."""

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

    def qemus(netns):
        """This run's QEMU processes in a host's namespace (by their process name, not the
        shell that waits on one)."""
        tag = "pytest-kvm-" + os.environ["PYTEST_KVM_RUN_ID"] + "-"
        pids = set(subprocess.run(["ip", "netns", "pids", netns], capture_output=True,
                                  text=True).stdout.split())
        out = subprocess.run(["ps", "-eo", "pid=,comm=,args="], capture_output=True,
                             text=True).stdout
        return sum(1 for line in out.split("\\n") if line.split()[:1] and
                   line.split()[0] in pids and line.split()[1].startswith("pytest-kvm-")
                   and tag in line)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(item):
        hosts = dict(h.split("=") for h in os.environ["PKVM_NETNS"].split(","))
        with open("counts.jsonl", "a") as f:
            f.write(json.dumps([item.name, {h: qemus(ns) for h, ns in hosts.items()}])
                    + "\\n")

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


def test_a_failed_migrations_guests_are_gone_before_the_next_check(rig, tmp_path):
    shutil.copy(Path(__file__).parent.parent / "suites" / "test_migration.py", tmp_path)
    (tmp_path / "conftest.py").write_text(COUNTING)
    (Path(rig.dir) / "shared").mkdir(exist_ok=True)
    (tmp_path / "hosts.ini").write_text(rig.inventory(
        extra=f"kvm_shared_storage={rig.dir}/shared",
        host_vars={"host1": {"kvm_migration_peer": "host2", "kvm_suites": "migration",
                             "kvm_reruns": 2},
                   "host2": {"kvm_suites": "none"}}))
    netns = ",".join(f"{h.name}={h.netns}" for h in rig.hosts)
    r = pytest_run(["--hosts", "hosts.ini", "-rfE", "-k",
                    "shared-storage or copy-storage or ping-pong", "--tb=line"], tmp_path,
                   timeout=900, prefix=("env", f"PKVM_NETNS={netns}"))
    out = r.stdout
    assert "killed by SIGKILL" in out, out[-3000:]  # the migration failed, for real
    counts = [json.loads(line) for line in (tmp_path / "counts.jsonl").read_text().split("\n")
              if line]
    # (at a variant's first check the last variant's guest is still up: pytest ends a module
    # fixture's instance as it sets the next one up, after this count)
    none = {"host1": 0, "host2": 0}
    failed = [n for name, n in counts if "copy-storage" in name]
    assert len(failed) == 13 and failed[1:] == [none] * 12, counts  # none after its failure
    after = [n for name, n in counts if "ping-pong" in name]
    assert after[0] == none, counts  # the next variant starts on hosts with none of ours
    assert any(n["host2"] for name, n in counts), counts  # (the count sees host2's guests)
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
