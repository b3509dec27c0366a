"""Allure results as a nightly reader gets them: labels, attachments, environment, categories."""

from __future__ import annotations

import glob
import json
import shutil
import textwrap
from pathlib import Path

from test_plugin import pytest_run

FAILING = textwrap.dedent("""
    import pytest
    pytestmark = pytest.mark.kvm_suite("virtio")

    def test_fails_on_purpose(guest):
        assert "no_such_module" in guest.sh("lsmod")
""")


def test_allure_results_of_a_run(tmp_path):
    shutil.copy(Path(__file__).parent.parent / "suites" / "test_virtio.py", tmp_path)
    (tmp_path / "test_fail.py").write_text(FAILING)
    (tmp_path / "hosts.ini").write_text("[l0]\nlocalhost ansible_connection=local\n")
    r = pytest_run(["--hosts", "hosts.ini", "-q"], tmp_path, timeout=300)
    assert "1 failed, 14 passed" in r.stdout, r.stdout[-2000:]
    results_dir = tmp_path / "reports" / "allure-results"  # the default place
    results = {}
    for f in glob.glob(str(results_dir / "*-result.json")):
        data = json.load(open(f))
        results[data["name"]] = data

    ok = results["test_device_bound[localhost-virtio_net]"]
    labels = {(x["name"], x["value"]) for x in ok["labels"]}
    assert {("feature", "virtio"), ("story", "test_device_bound"),
            ("kvm_host", "localhost")} <= labels
    names = [a["name"] for a in ok["attachments"]]
    assert "localhost/virtio QEMU command line" in names
    assert "localhost/virtio console log" in names
    cmdline = next(a for a in ok["attachments"] if a["name"].endswith("QEMU command line"))
    assert "qemu-system-x86_64" in (results_dir / cmdline["source"]).read_text()

    bad = results["test_fails_on_purpose[localhost]"]
    assert bad["status"] == "failed"
    names = [a["name"] for a in bad["attachments"]]
    assert "guest localhost/guest lsmod" in names
    assert "host localhost dmesg since the check began" in names

    env = (results_dir / "environment.properties").read_text()
    assert "localhost.accel=tcg" in env or "localhost.accel=kvm" in env
    categories = json.loads((results_dir / "categories.json").read_text())
    assert [c["name"] for c in categories][:2] == ["Infrastructure: host unreachable",
                                                  "Infrastructure: provisioning"]
