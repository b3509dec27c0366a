"""A/B comparison of two runs' figures (``python -m pytest_kvm compare A B``).

Firecracker's method (tools/ab_test.py): per test and figure, the samples of run A and run B
are compared with a permutation test of the difference of their means; a change is reported
only when it is both significant (p below ``alpha``, default 0.01) and large enough (relative
change of the mean at least ``min_change``, default 5 %). Whether a change is a regression or
an improvement follows the figure's declared direction (lower or higher is better). A figure
measured on one side only is listed, not dropped. Runs that share no measured check (other
hosts, other checks) are refused.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from .figures import Figure, FiguresError, RunFigures
from .files import write_atomic

REGRESSION, IMPROVEMENT, SAME, ONLY_A, ONLY_B, INCOMPARABLE = (
    "regression", "improvement", "no significant change", "only in A", "only in B",
    "incomparable")


@dataclass
class Side:
    n: int
    median: float
    mean: float
    samples: list[float]


@dataclass
class Row:
    test: str
    figure: str
    unit: str
    better: str
    a: Side | None
    b: Side | None
    change: float | None  # relative change of the mean, B against A
    p: float | None
    verdict: str
    note: str = ""


@dataclass
class Comparison:
    a: str
    b: str
    alpha: float
    min_change: float
    rows: list[Row]

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == REGRESSION]

    @property
    def unjudgeable(self) -> list[Row]:
        """Rows measured on both sides whose samples are too few to ever reach p < alpha."""
        return [r for r in self.rows if r.a and r.b and r.verdict == SAME
                and smallest_p(r.a.n, r.b.n) >= self.alpha]

    @property
    def judged_nothing(self) -> bool:
        """Nothing measured on both sides could reach significance (and nothing regressed)."""
        both = [r for r in self.rows if r.a and r.b and r.verdict != INCOMPARABLE]
        return bool(both) and len(self.unjudgeable) == len(both) and not self.regressions

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.verdict] = out.get(row.verdict, 0) + 1
        return out


def _side(figure: Figure) -> Side:
    values = [float(v) for v in figure.samples]
    return Side(len(values), statistics.median(values), statistics.fmean(values), values)


def _relative(a: float, b: float) -> float:
    if a == 0:
        return 0.0 if b == 0 else float("inf") if b > 0 else float("-inf")
    return (b - a) / abs(a)


def samples_for(alpha: float) -> int:
    """How many samples a side needs (as many on both) for a permutation test to be able to
    give p < alpha at all."""
    n = 1
    while smallest_p(n, n) >= alpha:
        n += 1
    return n


def smallest_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value a permutation test of n_a against n_b samples can give:
    the two most extreme of all C(n_a + n_b, n_a) splits."""
    return min(1.0, 2 / math.comb(n_a + n_b, n_a))


def p_value(a: list[float], b: list[float], resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided permutation test of the difference of means (exact when the permutations are
    fewer than ``resamples``)."""
    if len(a) < 2 and len(b) < 2:
        return 1.0  # one sample each: nothing to permute against
    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0  # all equal

    def diff(x, y, axis):
        return np.mean(y, axis=axis) - np.mean(x, axis=axis)

    result = stats.permutation_test((np.asarray(a), np.asarray(b)), diff, vectorized=True,
                                    permutation_type="independent", alternative="two-sided",
                                    n_resamples=resamples, rng=np.random.default_rng(seed))
    return float(result.pvalue)


def row(test: str, name: str, fa: Figure | None, fb: Figure | None, alpha: float,
        min_change: float) -> Row:
    some = fa or fb
    a, b = (_side(fa) if fa else None), (_side(fb) if fb else None)
    if fa is None or fb is None:
        return Row(test, name, some.unit, some.better, a, b, None, None,
                   ONLY_B if fa is None else ONLY_A)
    if (fa.unit, fa.better) != (fb.unit, fb.better):
        return Row(test, name, fb.unit, fb.better, a, b, None, None, INCOMPARABLE,
                   f"A: {fa.unit or '-'}, {fa.better} is better; B: {fb.unit or '-'}, "
                   f"{fb.better} is better")
    change = _relative(a.mean, b.mean)
    p = p_value(a.samples, b.samples)
    verdict = SAME
    if p < alpha and abs(change) >= min_change:
        worse = change > 0 if fa.better == "lower" else change < 0
        verdict = REGRESSION if worse else IMPROVEMENT
    note = ""
    floor = smallest_p(a.n, b.n)
    if verdict == SAME and abs(change) >= min_change and floor >= alpha:
        note = (f"too few samples for p < {alpha:g}: {a.n} and {b.n} reach {floor:.3g} at best "
                "(--kvm-samples)")
    return Row(test, name, fa.unit, fa.better, a, b, change, p, verdict, note)


def compare(run_a: RunFigures, run_b: RunFigures, alpha: float = 0.01,
            min_change: float = 0.05) -> Comparison:
    """FiguresError when the runs share no measured check."""
    common = set(run_a.tests) & set(run_b.tests)
    if not common:
        raise FiguresError(
            f"{run_a.source} and {run_b.source} share no measured check (A: "
            f"{_sample_ids(run_a)}; B: {_sample_ids(run_b)}): compare two runs of the same "
            "checks on the same hosts")
    rows = []
    for test in sorted(set(run_a.tests) | set(run_b.tests)):
        ta, tb = run_a.tests.get(test), run_b.tests.get(test)
        names = sorted(set(ta.figures if ta else ()) | set(tb.figures if tb else ()))
        for name in names:
            rows.append(row(test, name, ta.figures.get(name) if ta else None,
                            tb.figures.get(name) if tb else None, alpha, min_change))
    return Comparison(run_a.source, run_b.source, alpha, min_change, rows)


def _sample_ids(run: RunFigures, shown: int = 2) -> str:
    ids = sorted(run.tests)
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


# -- output ------------------------------------------------------------------------------------
def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _pct(change: float | None) -> str:
    if change is None:
        return "-"
    if change in (float("inf"), float("-inf")):
        return "+inf" if change > 0 else "-inf"
    return f"{change * 100:+.1f}%"


def _cells(r: Row) -> list[str]:
    def side(s: Side | None) -> str:
        return "-" if s is None else f"{_num(s.median)} (n={s.n})"

    verdict = r.verdict.upper() if r.verdict == REGRESSION else r.verdict
    return [r.test, r.figure + (f" [{r.unit}]" if r.unit else ""), side(r.a), side(r.b),
            _pct(r.change), "-" if r.p is None else f"{r.p:.4f}",
            verdict + (f" ({r.note})" if r.note else "")]


HEADER = ["test", "figure", "A median", "B median", "change", "p", "verdict"]


def _summary(c: Comparison) -> str:
    counts = c.counts()
    parts = [f"{counts[v]} {v}" for v in (REGRESSION, IMPROVEMENT, SAME, ONLY_A, ONLY_B,
                                          INCOMPARABLE) if counts.get(v)]
    line = (f"{len(c.rows)} figures: " + ", ".join(parts) + f" (p < {c.alpha:g} and a change "
            f"of at least {c.min_change * 100:g}% of the mean)")
    few = c.unjudgeable
    if few:
        n = samples_for(c.alpha)
        line += (f"; {len(few)} of them could not be judged: too few samples to reach "
                 f"p < {c.alpha:g} ({n} against {n} would: --kvm-samples {n})")
    if c.judged_nothing:
        line += "; NOTHING COULD BE JUDGED"
    return line


def table(c: Comparison) -> str:
    rows = [HEADER] + [_cells(r) for r in c.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [f"A: {c.a}", f"B: {c.b}"]
    for k, cells in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True))
                     .rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(_summary(c))
    return "\n".join(lines)


def markdown(c: Comparison) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["# A/B comparison", "", f"- A: `{c.a}`", f"- B: `{c.b}`", f"- {_summary(c)}", ""]
    regressions = c.regressions
    if regressions:
        lines += ["**Regressions:** " + "; ".join(f"`{r.test}` {r.figure} {_pct(r.change)}"
                                                  for r in regressions), ""]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(esc(x) for x in _cells(r)) + " |" for r in c.rows]
    return "\n".join(lines) + "\n"


def as_json(c: Comparison) -> dict:
    def clean(value):
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            return "+inf" if value > 0 else "-inf"
        return value

    return {"a": c.a, "b": c.b, "alpha": c.alpha, "min_change": c.min_change,
            "counts": c.counts(), "regressions": len(c.regressions),
            "unjudgeable": len(c.unjudgeable), "judged_nothing": c.judged_nothing,
            "rows": [{k: clean(v) for k, v in asdict(r).items()} for r in c.rows]}


def write(c: Comparison, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md = write_atomic(out / "compare.md", markdown(c), mode=0o644)
    js = write_atomic(out / "compare.json", json.dumps(as_json(c), indent=1) + "\n", mode=0o644)
    return md, js


def allure_result(c: Comparison, directory: Path, name: str) -> Path:
    """The comparison as one Allure result in ``directory`` (a results directory about to be
    rendered): "A/B: <name>", failed when anything regressed, the Markdown attached, the same
    history id every night so the report's history and trend join the nights."""
    import hashlib
    import time
    import uuid

    directory.mkdir(parents=True, exist_ok=True)
    ident = str(uuid.uuid4())
    attachment = f"{ident}-attachment.md"
    (directory / attachment).write_text(markdown(c))
    now = int(time.time() * 1000)
    history = hashlib.md5(f"pytest-kvm compare {name}".encode()).hexdigest()  # noqa: S324
    regressions = c.regressions
    result = {
        "uuid": ident, "historyId": history, "testCaseId": history,
        "name": f"A/B: {name} against the last kept run",
        "fullName": f"pytest_kvm.compare#{name}",
        "status": "failed" if regressions else "passed", "stage": "finished",
        "statusDetails": {"message": (f"{len(regressions)} regression(s): " + "; ".join(
            f"{r.test} {r.figure} {_pct(r.change)}" for r in regressions[:10])
            if regressions else _summary(c))},
        "start": now, "stop": now,
        "labels": [{"name": "feature", "value": "A/B comparison"},
                   {"name": "parentSuite", "value": name}, {"name": "suite", "value": "compare"}],
        "attachments": [{"name": "comparison", "source": attachment, "type": "text/markdown"}],
    }
    out = directory / f"{ident}-result.json"
    out.write_text(json.dumps(result, indent=1))
    return out
