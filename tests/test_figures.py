"""Measured figures (``kvm_figure``) in every report: JUnit XML under pytest's default family
(xunit2, which has no testcase properties) with no warning, under xdist too, and Allure."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from pytest_kvm.figures import attachments

SUITE = """
def test_measured(kvm_figure, kvm_property):
    kvm_figure("downtime_ms", 42, unit="ms", better="lower")
    kvm_figure("guest_gap_ms", [310.5, 12, 7], unit="ms", better="lower")
    kvm_figure("throughput_mbps", [900.0], unit="Mbit/s", better="higher")
    kvm_property("machine", "pc-q35-7.2")
"""
INVENTORY = "[lab]\nlocalhost ansible_connection=local\n"


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(test_it=SUITE)
    pytester.makefile(".ini", hosts=INVENTORY)
    return pytester


def suite_properties(path) -> dict[str, str]:
    root = ET.parse(path).getroot()
    return {p.get("name"): p.get("value") for p in root.iter("property")
            if p in list(root.find("testsuite/properties") or [])}


def test_figures_are_testsuite_properties_under_xunit2_with_no_warning(suite):
    r = suite.runpytest("--hosts", "hosts.ini", "--junitxml", "r.xml", "-W", "error")
    r.assert_outcomes(passed=1)
    assert "warnings" not in r.parseoutcomes()  # record_property would warn here
    props = suite_properties(suite.path / "r.xml")
    assert json.loads(props["test_it.py::test_measured.downtime_ms"]) == {
        "kvm_figure": "downtime_ms", "unit": "ms", "better": "lower", "samples": [42]}
    assert json.loads(props["test_it.py::test_measured.guest_gap_ms"])["samples"] == [
        310.5, 12, 7]
    assert props["test_it.py::test_measured.machine"] == "pc-q35-7.2"


def test_figures_survive_xdist(suite):
    r = suite.runpytest_subprocess("--hosts", "hosts.ini", "--junitxml", "r.xml", "-n", "2",
                                   "-p", "no:cacheprovider", "--kvm-figures", "f.json")
    r.assert_outcomes(passed=1)
    props = suite_properties(suite.path / "r.xml")
    assert json.loads(props["test_it.py::test_measured.guest_gap_ms"])["samples"] == [
        310.5, 12, 7]
    figures = json.loads((suite.path / "f.json").read_text())  # written by the controller
    assert figures["tests"]["test_it.py::test_measured"]["outcome"] == "passed"
    assert figures["tests"]["test_it.py::test_measured"]["figures"]["throughput_mbps"] == {
        "unit": "Mbit/s", "better": "higher", "samples": [900.0]}


def test_figures_are_allure_parameters(suite):
    r = suite.runpytest("--hosts", "hosts.ini", "--alluredir", "allure")
    r.assert_outcomes(passed=1)
    [result] = [json.loads(f.read_text()) for f in (suite.path / "allure").glob("*-result.json")]
    params = {p["name"]: p for p in result["parameters"]}
    assert params["guest_gap_ms"]["value"].strip("'") == "310.5, 12, 7 ms; lower is better"
    assert params["downtime_ms"].get("excluded") is True  # trends still join runs
    attached = {a["name"]: json.loads((suite.path / "allure" / a["source"]).read_text())
                for a in attachments(result)}
    assert attached["figure: throughput_mbps"] == {
        "test": "test_it.py::test_measured", "name": "throughput_mbps", "unit": "Mbit/s",
        "better": "higher", "samples": [900.0]}
    assert (suite.path / "allure" / "kvm-figures.json").exists()  # beside the results


@pytest.mark.parametrize("call, message", [
    ('kvm_figure("x", 1)', "missing 1 required keyword-only argument: 'better'"),
    ('kvm_figure("x", 1, better="faster")', "better='faster', not one of lower, higher"),
    ('kvm_figure("x", [], better="lower")', "figure 'x': no samples"),
    ('kvm_figure("x", "12", better="lower")', "sample '12' is not a finite number"),
])
def test_a_figure_without_a_direction_or_numbers_is_refused(pytester, call, message):
    pytester.makepyfile(test_it=f"def test_it(kvm_figure):\n    {call}\n")
    pytester.makefile(".ini", hosts=INVENTORY)
    r = pytester.runpytest("--hosts", "hosts.ini")
    r.assert_outcomes(failed=1)
    assert message in r.stdout.str()
