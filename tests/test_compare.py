"""``python -m pytest_kvm compare A B``: the A/B comparison of two runs' figures.

First on the lab itself: the same migration measured with and without a bandwidth limit on
the source (the slowdown injected in B) is a regression of the figures a bandwidth limit
slows, and of no other. Then the tool's rules on runs of a small suite whose figures are set
per run: a figure's direction decides regression or improvement, a figure on one side only is
listed, runs of other checks are refused in one line, few samples are never significant, and
the three kinds of results (Allure directory, JUnit XML, kvm-figures.json) read the same.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_plugin import pytest_run

ROOT = Path(__file__).parent.parent


def compare(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_kvm", "compare", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


# -- on the lab: an injected slowdown ----------------------------------------------------------
SLOWED = {"total_time_ms", "throughput_mbps"}  # what a bandwidth limit makes worse
UNTOUCHED = {"setup_time_ms", "transferred_bytes"}  # what it must not be said to change


def test_a_bandwidth_limit_is_a_regression_of_the_figures_it_slows_only(tmp_path):
    """localhost-self, shared storage, 5 migrations there (and 4 back) per run: run A as the
    inventory says, run B with kvm_migration_max_bandwidth=48 (MiB/s; unlimited, the lab
    moves ~160 MiB/s). B against A: total time and throughput regressed (p < 0.01, >= 5 %),
    setup time and bytes did not; the exit status says so."""
    shutil.copy(ROOT / "suites" / "test_migration.py", tmp_path)
    runs = {}
    for name, extra in (("A", ""), ("B", " kvm_migration_max_bandwidth=48")):
        (tmp_path / f"{name}.ini").write_text(
            f"[lab]\nlocalhost ansible_connection=local kvm_suites=migration{extra}\n")
        r = pytest_run(["--hosts", f"{name}.ini", "-k", "shared-storage and test_measured",
                        "--kvm-samples", "5", "--alluredir", f"allure-{name}",
                        "-p", "no:cacheprovider"], tmp_path, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:]
        runs[name] = tmp_path / f"allure-{name}"
    r = compare(str(runs["A"]), str(runs["B"]), "--out", "cmp", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr  # something regressed
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    verdicts = {row["figure"]: row for row in result["rows"]}
    # those two, and no other (downtime and the guest's gap went down, if anything)
    assert {f for f, row in verdicts.items() if row["verdict"] == "regression"} == SLOWED, \
        r.stdout
    for figure in SLOWED:
        assert verdicts[figure]["p"] < 0.01, r.stdout
        assert (verdicts[figure]["b"]["n"], verdicts[figure]["a"]["n"]) == (5, 5), r.stdout
    for figure in UNTOUCHED:
        assert verdicts[figure]["verdict"] != "regression", r.stdout
    assert "REGRESSION" in r.stdout and "throughput_mbps [Mbit/s]" in r.stdout, r.stdout
    assert "**Regressions:**" in (tmp_path / "cmp" / "compare.md").read_text()


# -- the tool's rules, on runs of a small suite --------------------------------------------------
SUITE = '''
import json, pathlib
import pytest

FIGURES = json.loads(pathlib.Path(__file__).with_name("figures.json").read_text())

@pytest.mark.parametrize("case", sorted(FIGURES))
def test_measured(case, kvm_figure):
    for name, (samples, unit, better) in FIGURES[case].items():
        kvm_figure(name, samples, unit=unit, better=better)
'''


def run_of(pytester, name: str, figures: dict) -> Path:
    """A real run of the small suite, its figures set from ``figures``; its Allure dir."""
    pytester.makepyfile(test_it=SUITE)
    (pytester.path / "figures.json").write_text(json.dumps(figures))
    pytester.makefile(".ini", hosts="[lab]\nlocalhost ansible_connection=local\n")
    r = pytester.runpytest("--hosts", "hosts.ini", "--alluredir", f"allure-{name}",
                           "--junitxml", f"{name}.xml", "-p", "no:cacheprovider")
    assert r.ret == 0, r.stdout.str()
    return pytester.path / f"allure-{name}"


LOW = [100.0, 101.0, 99.0, 100.5, 99.5, 100.2, 99.8, 100.1]
HIGH = [v * 1.6 for v in LOW]  # 60 % more


def test_direction_decides_regression_or_improvement(pytester):
    """60 % more throughput is an improvement, 60 % more latency a regression (Firecracker's
    users once read the first as a "60 % regression")."""
    a = run_of(pytester, "A", {"x": {"throughput": [LOW, "MiB/s", "higher"],
                                     "latency_ms": [LOW, "ms", "lower"]}})
    b = run_of(pytester, "B", {"x": {"throughput": [HIGH, "MiB/s", "higher"],
                                     "latency_ms": [HIGH, "ms", "lower"]}})
    r = compare(str(a), str(b), "--out", "o", cwd=pytester.path)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = {row["figure"]: row for row in
            json.loads((pytester.path / "o" / "compare.json").read_text())["rows"]}
    assert rows["throughput"]["verdict"] == "improvement"
    assert rows["latency_ms"]["verdict"] == "regression"
    assert rows["latency_ms"]["change"] == pytest.approx(0.6)
    assert rows["latency_ms"]["p"] < 0.01
    r = compare(str(b), str(a), "--out", "o", cwd=pytester.path)  # the other way round
    assert r.returncode == 1
    rows = {row["figure"]: row for row in
            json.loads((pytester.path / "o" / "compare.json").read_text())["rows"]}
    assert rows["throughput"]["verdict"] == "regression"
    assert rows["latency_ms"]["verdict"] == "improvement"


def test_small_or_insignificant_changes_are_no_change(pytester):
    """A 2 % shift however certain, and a 60 % jump seen once each side, are no change; the
    second says why (too few samples). Exit status 0."""
    a = run_of(pytester, "A", {"x": {"small": [LOW, "ms", "lower"],
                                     "once": [[100.0], "ms", "lower"]}})
    b = run_of(pytester, "B", {"x": {"small": [[v * 1.02 for v in LOW], "ms", "lower"],
                                     "once": [[160.0], "ms", "lower"]}})
    r = compare(str(a), str(b), cwd=pytester.path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "too few samples for p < 0.01: 1 and 1 reach 1 at best" in r.stdout
    assert "2 figures: 2 no significant change" in r.stdout
    r = compare(str(a), str(b), "--min-change", "1", cwd=pytester.path)  # the threshold
    assert r.returncode == 1 and "small [ms]" in r.stdout and "REGRESSION" in r.stdout


def test_a_figure_on_one_side_only_is_listed(pytester):
    a = run_of(pytester, "A", {"x": {"kept": [LOW, "ms", "lower"],
                                     "dropped": [LOW, "ms", "lower"]}})
    b = run_of(pytester, "B", {"x": {"kept": [LOW, "ms", "lower"],
                                     "new": [LOW, "ms", "lower"]}})
    r = compare(str(a), str(b), cwd=pytester.path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any("dropped" in line and "only in A" in line for line in lines), r.stdout
    assert any("new" in line and "only in B" in line for line in lines), r.stdout


def test_runs_of_other_checks_are_refused_in_one_line(pytester):
    a = run_of(pytester, "A", {"on-lab1": {"t": [LOW, "ms", "lower"]}})
    b = run_of(pytester, "B", {"on-metal": {"t": [LOW, "ms", "lower"]}})
    r = compare(str(a), str(b), cwd=pytester.path)
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "share no measured check" in r.stderr and "test_measured[on-lab1]" in r.stderr
    r = compare(str(a), str(pytester.path / "nothing-here"), cwd=pytester.path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not an Allure results directory, a JUnit .xml or a kvm-figures.json" in r.stderr


def test_allure_junit_and_figures_file_read_the_same(pytester):
    a = run_of(pytester, "A", {"x": {"t": [LOW, "ms", "lower"]}})
    b = run_of(pytester, "B", {"x": {"t": [HIGH, "ms", "lower"]}})
    out = []
    for pa, pb in ((a, b), (pytester.path / "A.xml", pytester.path / "B.xml"),
                   (a / "kvm-figures.json", b / "kvm-figures.json")):
        r = compare(str(pa), str(pb), "--out", "o", cwd=pytester.path)
        assert r.returncode == 1, r.stdout + r.stderr
        out.append(json.loads((pytester.path / "o" / "compare.json").read_text())["rows"])
    assert out[0] == out[1] == out[2]
    assert out[0][0]["a"]["samples"] == LOW and out[0][0]["verdict"] == "regression"


def test_nothing_judged_has_an_exit_status_of_its_own_and_says_how_many_samples_would(pytester):
    """The default (--kvm-samples 1): 1 against 1 at +200 %, 3 against 3 at +182 %: neither
    can reach p < 0.01, the summary says so and how many would, exit status 3."""
    a = run_of(pytester, "A", {"x": {"once": [[100.0], "ms", "lower"],
                                     "thrice": [[100.0, 101.0, 99.0], "ms", "lower"]}})
    b = run_of(pytester, "B", {"x": {"once": [[300.0], "ms", "lower"],
                                     "thrice": [[282.0, 283.0, 281.0], "ms", "lower"]}})
    r = compare(str(a), str(b), cwd=pytester.path)
    assert r.returncode == 3, r.stdout + r.stderr
    summary = r.stdout.splitlines()[-2]  # (then the files written)
    assert ("2 of them could not be judged: too few samples to reach p < 0.01 (5 against 5 "
            "would: --kvm-samples 5); NOTHING COULD BE JUDGED") in summary, summary
    report = json.loads((pytester.path / "reports" / "compare" / "compare.json").read_text())
    assert report["judged_nothing"] is True and report["unjudgeable"] == 2


def test_an_output_that_cannot_be_written_is_one_line_with_status_2(pytester):
    a = run_of(pytester, "A", {"x": {"t": [LOW, "ms", "lower"]}})
    (pytester.path / "a-file").write_text("")
    for out in ("a-file", "a-file/below"):
        r = compare(str(a), str(a), "--out", out, cwd=pytester.path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith("compare: cannot write the comparison to "), r.stderr


def test_a_closed_pipe_is_silent(tmp_path):
    (tmp_path / "h.ini").write_text("".join(f"h{i} ansible_host=192.0.2.{i}\n"
                                            for i in range(1, 200)))
    r = subprocess.run(f"{sys.executable} -m pytest_kvm inventory -i h.ini --list | head -1",
                       shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "{" and r.stderr == "", r.stderr
