"""A pytest plugin for the lab benchmark: exact setup + teardown seconds per test, written as
JSON to $PYTEST_KVM_DURATIONS at the end of the session."""

from __future__ import annotations

import json
import os

_phases: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if report.when in ("setup", "teardown"):
        _phases[report.nodeid] = _phases.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    path = os.environ.get("PYTEST_KVM_DURATIONS")
    if path:
        with open(path, "w") as f:
            json.dump(_phases, f)
