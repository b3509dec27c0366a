"""Allure results as a nightly reader gets them: labels, attachments, environment, categories."""

from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_kvm import reporting
from pytest_kvm.reporting import counter_chart

from test_plugin import pytest_run

ROOT = Path(__file__).parent.parent

FAILING = textwrap.dedent("""
    import pytest
    pytestmark = pytest.mark.kvm_suite("virtio")

    def test_fails_on_purpose(guest):
        assert "no_such_module" in guest.sh("lsmod")
""")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The virtio suite and a failing check on localhost, results in the default place."""
    tmp_path = tmp_path_factory.mktemp("allure")
    shutil.copy(ROOT / "suites" / "test_virtio.py", tmp_path)
    (tmp_path / "test_fail.py").write_text(FAILING)
    (tmp_path / "hosts.ini").write_text("[l0]\nlocalhost ansible_connection=local\n")
    stale = tmp_path / "reports" / "allure-results" / "stale-result.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    r = pytest_run(["--hosts", "hosts.ini", "-q"], tmp_path, timeout=300)
    assert "1 failed, 14 passed" in r.stdout, r.stdout[-2000:]
    return tmp_path


def load(results_dir: Path) -> dict:
    results = {}
    for f in glob.glob(str(results_dir / "*-result.json")):
        data = json.load(open(f))
        results[data["name"]] = data
    return results


def test_allure_results_of_a_run(run):
    results_dir = run / "reports" / "allure-results"  # the default place
    assert not (results_dir / "stale-result.json").exists()  # one run per results dir
    results = load(results_dir)
    assert len(results) == 15

    ok = results["test_device_bound[localhost-virtio_net]"]
    labels = {(x["name"], x["value"]) for x in ok["labels"]}
    assert {("feature", "virtio"), ("story", "test_device_bound"),
            ("kvm_host", "localhost"), ("parentSuite", "localhost"), ("suite", "virtio")} <= labels
    names = [a["name"] for a in ok["attachments"]]
    assert "localhost/virtio QEMU command line" in names
    assert "localhost/virtio console log" in names
    cmdline = next(a for a in ok["attachments"] if a["name"].endswith("QEMU command line"))
    assert "qemu-system-x86_64" in (results_dir / cmdline["source"]).read_text()

    assert [(st["name"], st["status"]) for st in ok["steps"]] == [
        ("check test_device_bound", "passed")]

    bad = results["test_fails_on_purpose[localhost]"]
    assert bad["status"] == "failed"
    assert [(st["name"], st["status"]) for st in bad["steps"]] == [
        ("check test_fails_on_purpose", "failed")]
    # provisioning and teardown are steps of the guest fixture (an Allure container)
    containers = [json.load(open(f)) for f in glob.glob(str(results_dir / "*-container.json"))]
    fixture_steps = [st["name"] for c in containers for phase in ("befores", "afters")
                     for fx in c.get(phase, []) for st in fx.get("steps", [])]
    assert any(st.startswith("provision and boot ") for st in fixture_steps), fixture_steps
    assert any(st.startswith("stop ") for st in fixture_steps), fixture_steps
    names = [a["name"] for a in bad["attachments"]]
    assert "guest localhost/guest lsmod" in names
    assert "host localhost dmesg since the check began" in names

    env = (results_dir / "environment.properties").read_text()
    assert "localhost.accel=tcg" in env or "localhost.accel=kvm" in env
    categories = json.loads((results_dir / "categories.json").read_text())
    assert [c["name"] for c in categories][:2] == ["Infrastructure: host unreachable",
                                                  "Infrastructure: provisioning"]


def render(results_dir: Path, report_dir: Path) -> None:
    subprocess.run(["npx", "--yes", "allure-commandline", "generate", str(results_dir), "-o",
                    str(report_dir), "--clean"], check=True, capture_output=True, timeout=300)


def check_report(results_dir: Path, report_dir: Path, shot: Path):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "check_report.py"),
                           str(results_dir), str(report_dir), str(shot)],
                          capture_output=True, text=True, timeout=300)


def test_report_renders_with_the_right_counts(run, tmp_path):
    """`make report`'s HTML in headless Chromium: the overview shows the run's 14 passed and
    1 failed. The same check fails when the report and the results disagree."""
    results_dir = run / "reports" / "allure-results"
    report = tmp_path / "report"
    render(results_dir, report)
    r = check_report(results_dir, report, tmp_path / "overview.png")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "15 test cases (14 passed, 1 failed)" in r.stdout
    assert (tmp_path / "overview.png").stat().st_size > 10_000

    # results with one more failure than the rendered report shows: caught
    tampered = tmp_path / "tampered"
    shutil.copytree(results_dir, tampered)
    extra = json.loads(next(tampered.glob("*-result.json")).read_text())
    extra.update(uuid="0" * 32, historyId="1" * 32, status="failed", stop=extra["stop"] + 1)
    (tampered / f"{'0' * 32}-result.json").write_text(json.dumps(extra))
    r = check_report(tampered, report, tmp_path / "overview2.png")
    assert r.returncode == 1
    assert "overview shows 15 test cases, results have 16" in r.stdout


def test_counter_chart_is_valid_svg():
    samples = [(i * 0.2, i + 1, "QEMU 1 on a" if i < 10 else "QEMU 2 on <b>") for i in range(20)
               if i not in (9, 10)]
    svg = counter_chart(samples, [(1.5, 2.3, "hop 1")])
    root = ET.fromstring(svg)  # well-formed, names escaped
    ns = "{http://www.w3.org/2000/svg}"
    dots = [c for c in root.iter(ns + "circle") if c.get("r") == "1.6"]
    assert len(dots) == len(samples)
    assert len({c.get("fill") for c in dots}) == 2  # one colour per QEMU process
    ys = [float(c.get("cy")) for c in dots]
    assert ys == sorted(ys, reverse=True)  # the counter only goes up (SVG y grows downwards)
    assert [t.text for t in root.iter(ns + "title")] == ["hop 1"]
    assert counter_chart([], []) == ""


def test_check_report_needs_a_report(tmp_path):
    r = check_report(tmp_path, tmp_path / "none", tmp_path / "x.png")
    assert r.returncode == 1 and "run make report first" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr



def test_categories_go_by_the_type_of_what_was_raised():
    """Allure's message for an exception starts with its type: the lab's categories match
    types (and their subclasses, and a fixture's one-line failure naming one), not wording."""
    from allure_commons.utils import format_exception

    from pytest_kvm.errors import CommandFailed, HostUnreachable
    from pytest_kvm.guest import GuestDied
    from pytest_kvm.lab import NestedHostError

    def category(exc: BaseException) -> str:
        message = format_exception(type(exc), exc).strip()
        return next(c["name"] for c in reporting.categories()
                    if re.fullmatch(c.get("messageRegex", "(?s).*"), message))

    class Renamed(HostUnreachable):
        pass

    assert category(HostUnreachable("h: no answer")) == "Infrastructure: host unreachable"
    assert category(Renamed("h: gone")) == "Infrastructure: host unreachable"
    try:
        pytest.fail("HostUnreachable: h: no answer", pytrace=False)
    except pytest.fail.Exception as failed:
        assert category(failed) == "Infrastructure: host unreachable"
    assert category(GuestDied("lab1/g: QEMU exited")) == "Infrastructure: provisioning"
    assert category(NestedHostError("lab1: no sshd")) == "Infrastructure: provisioning"
    # the same words from a product check are the product's failure
    assert category(AssertionError("QEMU exited; host unreachable")) == "Product failures"
    assert category(CommandFailed("h", "lspci", type("R", (), {"stderr": "x", "stdout": "",
                                                               "status": 1})())) \
        == "Product failures"
