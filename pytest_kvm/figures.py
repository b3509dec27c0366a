"""Measured figures: a check's numbers kept as samples, each with its unit and direction.

A figure is recorded where it is measured (``kvm_figure("downtime_ms", samples, unit="ms",
better="lower")``) and travels in every report a run writes:

- Allure: a parameter for the reader ("12, 15, 13 ms; lower is better") and a JSON attachment
  named ``figure: <name>`` holding the test id, unit, direction and every sample;
- JUnit XML: a testsuite property ``<test id>.<name>`` whose value is that JSON;
- ``kvm-figures.json`` (beside the Allure results, or ``--kvm-figures PATH``): every test's
  outcome and figures, written by the process that receives the reports (the xdist controller).

``load(path)`` reads any of the three back (a directory of Allure results, a ``.xml`` JUnit
file, a ``.json`` figures file) for ``python -m pytest_kvm compare``.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

DIRECTIONS = ("lower", "higher")
ATTACHMENT_PREFIX = "figure: "
FILE_FORMAT = "pytest-kvm figures 1"
FILE_NAME = "kvm-figures.json"


class FiguresError(ValueError):
    """A results path that holds no figures pytest-kvm can read (one line, for the user)."""


@dataclass(frozen=True)
class Figure:
    name: str
    samples: tuple[float, ...]
    unit: str
    better: str  # "lower" or "higher": which way is an improvement

    def __post_init__(self) -> None:
        if self.better not in DIRECTIONS:
            raise ValueError(f"figure {self.name!r}: better={self.better!r}, not one of "
                             f"{', '.join(DIRECTIONS)}")
        if not self.samples:
            raise ValueError(f"figure {self.name!r}: no samples")
        for value in self.samples:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                    value):
                raise ValueError(f"figure {self.name!r}: sample {value!r} is not a finite "
                                 "number")

    @classmethod
    def of(cls, name: str, value, unit: str, better: str) -> Figure:
        """``value``: one number or an iterable of samples."""
        samples = tuple(value) if isinstance(value, list | tuple) else (value,)
        return cls(name, samples, unit, better)

    def as_dict(self) -> dict:
        return {"unit": self.unit, "better": self.better, "samples": list(self.samples)}

    @classmethod
    def from_dict(cls, name: str, data: dict) -> Figure:
        return cls(name, tuple(data["samples"]), data.get("unit", ""), data["better"])

    def encoded(self) -> str:
        """The JSON a test property, JUnit property and attachment carry."""
        return json.dumps({"kvm_figure": self.name, **self.as_dict()}, separators=(",", ":"))

    @classmethod
    def decoded(cls, text: str) -> Figure | None:
        """The figure in a property value, or None for a property that is not one."""
        if not isinstance(text, str) or '"kvm_figure"' not in text:
            return None
        try:
            data = json.loads(text)
            return cls.from_dict(data["kvm_figure"], data)
        except (ValueError, KeyError, TypeError):
            return None

    def shown(self) -> str:
        """For a reader: '12, 15, 13 ms; lower is better'."""
        values = ", ".join(f"{v:g}" for v in self.samples)
        return f"{values}{' ' + self.unit if self.unit else ''}; {self.better} is better"


@dataclass
class TestFigures:
    """One test's outcome and figures in a run."""

    test: str
    outcome: str = ""
    figures: dict[str, Figure] = field(default_factory=dict)


@dataclass
class RunFigures:
    """What one run measured: test id -> its figures (tests with none left out)."""

    source: str
    tests: dict[str, TestFigures] = field(default_factory=dict)

    def add(self, test: str, figure: Figure, outcome: str = "") -> None:
        entry = self.tests.setdefault(test, TestFigures(test))
        entry.figures[figure.name] = figure
        if outcome:
            entry.outcome = outcome

    def as_dict(self) -> dict:
        return {"format": FILE_FORMAT, "tests": {
            t.test: {"outcome": t.outcome,
                     "figures": {n: f.as_dict() for n, f in sorted(t.figures.items())}}
            for t in sorted(self.tests.values(), key=lambda t: t.test)}}


def load(path: str | Path) -> RunFigures:
    """A run's figures from its Allure results directory, JUnit XML or kvm-figures.json."""
    p = Path(path)
    if p.is_dir():
        run = _from_allure(p)
    elif p.suffix == ".xml" and p.is_file():
        run = _from_junit(p)
    elif p.suffix == ".json" and p.is_file():
        run = _from_file(p)
    else:
        raise FiguresError(f"{path}: not an Allure results directory, a JUnit .xml or a "
                           f"{FILE_NAME}")
    if not run.tests:
        raise FiguresError(f"{path}: no figures in it (a run of checks that record none, or "
                           "results written before figures were kept as samples)")
    return run


def _from_file(path: Path) -> RunFigures:
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FILE_FORMAT:
            raise FiguresError(f"{path}: format {data.get('format')!r}, not {FILE_FORMAT!r}")
        run = RunFigures(str(path))
        for test, entry in data["tests"].items():
            for name, fig in entry["figures"].items():
                run.add(test, Figure.from_dict(name, fig), entry.get("outcome", ""))
        return run
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, FiguresError):
            raise
        raise FiguresError(f"{path}: not a {FILE_NAME}: {exc}") from None


def _from_junit(path: Path) -> RunFigures:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise FiguresError(f"{path}: not XML: {exc}") from None
    outcomes: dict[str, str] = {}
    for case in root.iter("testcase"):
        outcome = ("failed" if case.find("failure") is not None else
                   "broken" if case.find("error") is not None else
                   "skipped" if case.find("skipped") is not None else "passed")
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = outcome
    run = RunFigures(str(path))
    for prop in root.iter("property"):
        figure = Figure.decoded(prop.get("value", ""))
        name = prop.get("name", "")
        if figure is None or not name.endswith("." + figure.name):
            continue
        test = name[: -len(figure.name) - 1]
        run.add(test, figure, _junit_outcome(test, outcomes))
    return run


def _junit_outcome(test: str, outcomes: dict[str, str]) -> str:
    """JUnit names a case by class name (dotted module path) and name; the property by node
    id (path::name): match on the name and the module."""
    path, _, name = test.rpartition("::")
    module = path.removesuffix(".py").replace("/", ".")
    for key, outcome in outcomes.items():
        cls, _, case = key.rpartition("::")
        if case == name and (cls == module or module.endswith("." + cls) or
                             cls.endswith(module)):
            return outcome
    return ""


def _from_allure(directory: Path) -> RunFigures:
    """Each result's ``figure: ...`` attachments; the latest result of a test wins (a
    rerun's)."""
    run = RunFigures(str(directory))
    latest: dict[str, int] = {}
    for result_file in sorted(directory.glob("*-result.json")):
        try:
            result = json.loads(result_file.read_text())
        except ValueError:
            continue
        figures = []
        for attachment in attachments(result):
            if not attachment.get("name", "").startswith(ATTACHMENT_PREFIX):
                continue
            source = directory / Path(attachment.get("source", "")).name  # never outside
            try:
                data = json.loads(source.read_text())
                figures.append((data["test"], Figure.from_dict(data["name"], data)))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        for test, figure in figures:
            stop = int(result.get("stop") or 0)
            if stop < latest.get(test, -1):
                continue
            if stop > latest.get(test, -1):
                run.tests.pop(test, None)
                latest[test] = stop
            run.add(test, figure, result.get("status", ""))
    return run


def attachments(step: dict):
    """Every attachment of an Allure result (or step), its steps' included."""
    yield from step.get("attachments", [])
    for sub in step.get("steps", []):
        yield from attachments(sub)
