"""Run every ``benchmarks/bench_*.py`` module's ``run() -> list[dict]`` and print one table.

A row is ``{name, value, baseline, ratio, goal}`` (+ optional ``unit``, ``ok``, ``best``: the
fastest repeat where ``value`` is a median): ``value`` and
``baseline`` are measured in the same run, ``ratio = value / baseline`` where there is a baseline,
``goal`` says what passes (e.g. ``"ratio <= 1.10"`` or ``"value <= 2"``).
Usage: ``python -m benchmarks [substring ...] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import operator
import sys
import time
from pathlib import Path
from typing import Any

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def passes(row: dict[str, Any]) -> bool | None:
    """Evaluate a goal like ``"ratio <= 1.10"`` against the row (None: no goal)."""
    if "ok" in row:
        return row["ok"]
    goal = row.get("goal")
    if not goal:
        return None
    field, op, limit = goal.split()[:3]
    value = row.get(field)
    return None if value is None else _OPS[op](value, float(limit))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("only", nargs="*", help="run modules whose name contains one of these")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    here = Path(__file__).parent
    names = sorted(p.stem for p in here.glob("bench_*.py"))
    if args.only:
        names = [n for n in names if any(o in n for o in args.only)]
    rows: list[dict[str, Any]] = []
    for name in names:
        start = time.perf_counter()
        print(f"== {name}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        for row in module.run():
            rows.append({"module": name, **row, "ok": passes(row)})
        print(f"   {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    cols = ["module", "name", "value", "unit", "baseline", "ratio", "goal", "ok", "best"]
    table = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [
        max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)
    ]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
