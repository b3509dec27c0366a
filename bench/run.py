"""Run every benchmark under bench/ (modules named bench_*.py), print a table and write
reports/bench.json: a list of {"name", "value", "unit", "baseline", "ratio"}.

Each module has ``run() -> list[dict]``. Benchmarks measure; they do not pass or fail a build.
Usage: python bench/run.py [name-filter ...]
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
import traceback

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # the real-sshd rig
sys.path.insert(0, str(HERE))  # benchmarks share helpers


def main(argv: list[str]) -> int:
    rows: list[dict] = []
    failed = []
    for path in sorted(HERE.glob("bench_*.py")):
        if argv and not any(a in path.stem for a in argv):
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
            rows += module.run()
        except Exception:
            traceback.print_exc()
            failed.append(path.stem)
    out = ROOT / "reports" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{'name':<24} {'value':>12} {'baseline':>12} {'unit':<6} {'ratio':>7}")
    for r in rows:
        ratio = f"{r['ratio']:>7.3f}" if r["baseline"] else "      -"
        per_check = (f"  ({r['ratio_per_check']:.3f} per check, {r['checks']} checks)"
                     if "ratio_per_check" in r else "")
        print(f"{r['name']:<24} {r['value']:>12.4g} {r['baseline']:>12.4g} {r['unit']:<6} {ratio}"
              f"{per_check}")
    print(f"written: {out.relative_to(ROOT)}")
    if failed:
        print("benchmarks that could not run: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
