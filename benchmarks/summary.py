"""The last word of ``make bench``: each benchmark's newest figure against its target (issue 7).

Reads the history (``benchmarks/results/history.jsonl``, or ``FASTFC_BENCH_HISTORY``), takes the
newest line of each benchmark, and prints one row per target that the benchmark modules declare
(``TARGETS``): the measure, its value, the target and whether it is met. The GPU targets of
``step.py`` are judged only on a CUDA line of RN50; with none in the history the row says so
instead of judging a CPU figure against a GPU target.

    python -m benchmarks.summary
    python -m benchmarks.summary --history some/history.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import HISTORY, Target, discover


def targets() -> list[Target]:
    """The targets every importable benchmark module declares (:func:`benchmarks.common.discover`)."""
    return [t for module in discover().values() if not isinstance(module, str) for t in getattr(module, "TARGETS", ())]


def read_history(path: Path) -> list[dict]:
    """The history's lines, oldest first. Raises FileNotFoundError naming ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no benchmark history; run `make bench` first")
    return [json.loads(text) for text in path.read_text().splitlines() if text.strip()]


def summarise(lines: list[dict]) -> list[dict]:
    """One row per target: ``benchmark, measure, value (str), target, status (met/missed/...), sha, date``."""
    rows = []
    for t in targets():
        newest = next((l for l in reversed(lines) if l["benchmark"] == t.benchmark and t.applies(l)), None)
        if newest is None:
            rows.append({"benchmark": t.benchmark, "measure": t.measure, "value": "-", "target": t.target,
                         "status": t.missing, "sha": "", "date": ""})
            continue
        v = t.value(newest)
        rows.append({"benchmark": t.benchmark, "measure": t.measure, "value": f"{v:.2f}{t.unit}", "target": t.target,
                     "status": "met" if t.met(v) else "missed", "sha": newest["sha"], "date": newest["date"][:10]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--history", type=Path, default=HISTORY, help="history file (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        rows = summarise(read_history(args.history))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    cols = ("benchmark", "measure", "value", "target", "status", "sha", "date")
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("\nsummary: the newest figure of each benchmark against its target (issue 7)")
    for r in [dict(zip(cols, cols))] + rows:
        print(("  " + "  ".join(f"{r[c]:<{width[c]}}" for c in cols)).rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
