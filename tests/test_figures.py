"""Measured figures (``kvm_figure``) in every report: JUnit XML under pytest's default family
(xunit2, which has no testcase properties) with no warning, under xdist too, and Allure."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

SUITE = """
def test_measured(kvm_figure):
    kvm_figure("downtime_ms", 42)
    kvm_figure("guest_gap_ms", 310.5)
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
    assert props["test_it.py::test_measured.downtime_ms"] == "42"
    assert props["test_it.py::test_measured.guest_gap_ms"] == "310.5"


def test_figures_survive_xdist(suite):
    r = suite.runpytest_subprocess("--hosts", "hosts.ini", "--junitxml", "r.xml", "-n", "2",
                                   "-p", "no:cacheprovider")
    r.assert_outcomes(passed=1)
    props = suite_properties(suite.path / "r.xml")
    assert props["test_it.py::test_measured.downtime_ms"] == "42"


def test_figures_are_allure_parameters(suite):
    r = suite.runpytest("--hosts", "hosts.ini", "--alluredir", "allure")
    r.assert_outcomes(passed=1)
    [result] = [json.loads(f.read_text()) for f in (suite.path / "allure").glob("*-result.json")]
    params = {p["name"]: p for p in result["parameters"]}
    assert params["downtime_ms"]["value"] == "'42'" or params["downtime_ms"]["value"] == "42"
    assert params["downtime_ms"].get("excluded") is True  # trends still join runs
