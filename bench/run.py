"""`make bench`: every figure of issue 12 in one run on a throwaway cluster of its own, printed as
one table (figure, what, baseline, measured, ratio, goal, met). `--quick` for a short version,
`--only 1,3` for some figures. Exit 1 if a goal is missed.

    .venv/bin/python bench/run.py [--quick] [--only FIGURES]
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from typing import TextIO

from common import Row, end_context, start_context

FIGURES = {
    "0": "bench",
    "1": "throughput",
    "2": "latency",
    "3": "rescue",
    "4": "overhead",
    "5": "memory",
    "6": "growth",
    "6s": "schedules",
}


def print_table(rows: list[Row], out: TextIO = sys.stdout) -> None:
    print(f"{'figure':14} {'what':44} {'baseline':>20} {'measured':>22} {'ratio':>8} {'goal':>7}  ok", file=out)
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.3f}"
        goal = "-" if row.goal is None else (">=" if row.higher_is_better else "<=") + f"{row.goal:g}"
        print(
            f"{row.figure:14} {row.what:44} {row.baseline:>20} {row.measured:>22} {ratio:>8} {goal:>7}  {row.ok}",
            file=out,
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(FIGURES))
    args = parser.parse_args()
    ctx = start_context(args.quick)
    rows: list[Row] = []
    broken = []
    try:
        for key in args.only.split(","):
            started = time.monotonic()
            try:
                figure_rows = importlib.import_module(FIGURES[key]).run(ctx)
                rows.extend(figure_rows)
                print_table(figure_rows, sys.stderr)  # as it comes: a long run stopped early keeps these
            except Exception:  # one figure's failure must not hide the others' numbers
                traceback.print_exc()
                broken.append(key)
            print(f"figure {key} took {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    finally:
        end_context(ctx)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# {platform.node()}: {platform.platform()}, {os.cpu_count()} cores, quick={args.quick}, {when}")
    print_table(rows)
    for key in broken:
        print(f"figure {key}: FAILED to run (traceback above)")
    return 1 if broken or any(row.ok == "NO" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
