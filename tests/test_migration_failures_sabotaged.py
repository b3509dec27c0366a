"""The failure-path checks can fail, and fail for the right reason: the failure-path suite run
on localhost's self pair against a product that loses or hides what a failure does (the
source stopped by a cancel, a recovery never attempted, a death not named, a cut relay left
behind, a non-convergence without its figures, a destination that refuses nothing), each
caught by its check with a message that names it; the checks no sabotage touches still pass."""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from pathlib import Path

from test_plugin import pytest_run

SABOTAGE = textwrap.dedent('''
    import dataclasses

    import pytest

    from pytest_kvm.features.migration import failures, job, link

    def cancel_and_stop(f, j, s):
        """cancel: the source stopped too (a product that loses the guest's run)"""
        acted = real_cancel(f, j, s)
        if acted:
            j.source.qmp.execute("stop")
        return acted

    real_cancel = failures._cancel
    real_attempt = failures.attempt

    def attempt(run, failure, to_host):
        if failure.name == "cancel":
            failure = dataclasses.replace(failure, strike=cancel_and_stop)
        seen = real_attempt(run, failure, to_host)
        if failure.name == "cancel":  # (the harness resumes it, for the checks after)
            run.guest.qmp.execute("cont")
        return seen

    class NoRecovery(job.Job):
        """postcopy-recovery: never attempted"""
        RECOVER_WITHIN_S = 15.0

        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.restream = None

    @pytest.fixture(autouse=True, scope="session")
    def sabotage():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(failures, "attempt", attempt)
            mp.setattr("pytest_kvm.features.migration.run.attempt", attempt)
            mp.setattr(failures, "Job", NoRecovery)
            # destination-dies: its death not named
            mp.setattr(job.Job, "destination_fate", lambda self, wait=0: "")
            # link-lost: the frozen relay left where it is
            mp.setattr(link.Relay, "close", lambda self: None)
            # no-convergence: said without its figures
            mp.setattr(job.Watchdog, "explain", lambda self, s, w: "did not finish")
            # destination-refuses: a destination of the same machine type (nothing to refuse)
            mp.setattr(failures, "another_machine", lambda host, machine: machine)
            yield
''')

# check -> what its failure must say
CAUGHT = {
    "test_the_guest_runs_where_it_should[localhost-self-cancel]":
        r"after the failure the source is 'paused', not running",
    "test_the_source_paused_only_where_postcopy_switches[localhost-self-cancel]":
        r"the source stopped 1 time\(s\) during the attempt, not 0",
    "test_the_failure_says_what_happened[localhost-self-destination-dies]":
        r"does not name what happened .*SIGKILL",
    "test_the_failed_destination_is_gone_and_nothing_is_left[localhost-self-link-lost]":
        r"left behind: \[\"localhost: the relay's process \d+",
    "test_the_failure_says_what_happened[localhost-self-no-convergence]":
        r"does not name what happened .*NotConverging: did not finish",
    "test_the_failure_says_what_happened[localhost-self-destination-refuses]":
        r"does not name what happened .*\(it did not fail\)",
}
# a check whose variant lost its guest errors, naming the loss
LOST = r"the guest was lost: after postcopy-recovery .*postcopy paused for \d+ s"


def test_each_sabotage_is_caught_by_its_check_for_the_right_reason(tmp_path):
    shutil.copy(Path(__file__).parent.parent / "suites" / "test_migration_failures.py",
                tmp_path)
    (tmp_path / "conftest.py").write_text(SABOTAGE)
    (tmp_path / "hosts.ini").write_text(
        "[lab]\nlocalhost ansible_connection=local kvm_suites=migration\n")
    try:
        r = pytest_run(["--hosts", "hosts.ini", "-rfE", "-p", "no:randomly", "--tb=short"],
                       tmp_path, timeout=900)
    finally:  # the relay the sabotage left behind (its run dir is gone)
        subprocess.run(["pkill", "-f", "^socat UNIX-LISTEN:.*/run/.*/relay.sock "], check=False)
    out = r.stdout
    summary = {line.split(" - ")[0].split("::")[-1]: line for line in out.splitlines()
               if line.startswith(("FAILED ", "ERROR "))}
    sections = out.split("= FAILURES =")[-1]
    for check, says in CAUGHT.items():
        assert f"FAILED test_migration_failures.py::{check}" in out, (check, out[-4000:])
        block = sections.split(f"_ {check} _", 1)[-1].split("\n_", 1)[0]
        assert re.search(says, block), (check, says, block[-2000:])
    lost = [c for c in summary if "postcopy-recovery" in c]
    assert len(lost) == 9 and all(summary[c].startswith("ERROR") for c in lost), summary
    assert re.search(LOST, out), out[-3000:]
    # what no sabotage touched still passes: the other variants' workload and memory
    for variant in ("destination-dies", "link-lost", "no-convergence", "destination-refuses"):
        for check in ("test_workload_has_the_same_pid", "test_guest_memory_intact",
                      "test_the_next_migration_succeeds"):
            assert f"{check}[localhost-self-{variant}]" not in summary, summary
