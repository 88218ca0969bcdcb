"""The last word of ``make bench``: each benchmark's newest figure against its target (issue 7).

Reads the history (``benchmarks/results/history.jsonl``, or ``FASTFC_BENCH_HISTORY``), takes the
newest line of each benchmark, and prints one row per target: the measure, its value, the target
and whether it is met. The GPU targets of ``step.py`` are judged only on a CUDA line of RN50; with
none in the history the row says so instead of judging a CPU figure against a GPU target.

    python -m benchmarks.summary
    python -m benchmarks.summary --history some/history.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .common import HISTORY


def _last_step_row(line: dict) -> dict:
    return list(line["figures"]["rows"].values())[-1]


def _is_gpu_rn50(line: dict) -> bool:
    return line["figures"].get("device", "").startswith("cuda") and line["figures"].get("arch") == "RN50"


@dataclass(frozen=True)
class Target:
    benchmark: str
    measure: str
    value: Callable[[dict], float]
    unit: str
    target: str
    met: Callable[[float], bool]
    applies: Callable[[dict], bool] = lambda line: True
    missing: str = "not run yet"


TARGETS = (
    Target("loader", "fastfc loader vs ImageFolder", lambda l: l["ratios"]["ffcv_vs_imagefolder"], "x", ">= 3x",
           lambda v: v >= 3),
    Target("loader", "fastfc loader vs decode bound", lambda l: l["ratios"]["ffcv_vs_decode_bound"], "x", ">= 0.8x",
           lambda v: v >= 0.8),
    Target("convert", "conversion per core", lambda l: l["figures"]["convert_img_per_s_per_core"], " img/s",
           ">= 100 img/s", lambda v: v >= 100),
    Target("shards", "shard reads vs ImageFolder", lambda l: l["ratios"]["shards_vs_imagefolder"], "x", ">= 2x",
           lambda v: v >= 2),
    Target("step", "RN50 step, all toggles vs eager fp32", lambda l: list(l["ratios"]["vs_eager_fp32"].values())[-1],
           "x", ">= 3x (GPU)", lambda v: v >= 3, _is_gpu_rn50, "needs a GPU run (benchmarks/gpu.sh)"),
    Target("step", "RN50 step on one GPU", lambda l: _last_step_row(l)["img_per_s"], " img/s", ">= 5000 img/s (H200)",
           lambda v: v >= 5000, _is_gpu_rn50, "needs a GPU run (benchmarks/gpu.sh)"),
    Target("probe", "cached probe vs image path", lambda l: l["ratios"]["cached_vs_images"], "x", ">= 20x",
           lambda v: v >= 20),
    Target("e2e", "data wait", lambda l: 100 * l["figures"]["data_wait"], "%", "< 5%", lambda v: v < 5),
    Target("cli", "slowest --help / argument error", lambda l: l["figures"]["slowest_s"], " s", "< 1.5 s",
           lambda v: v < 1.5),
)


def read_history(path: Path) -> list[dict]:
    """The history's lines, oldest first. Raises FileNotFoundError naming ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no benchmark history; run `make bench` first")
    return [json.loads(text) for text in path.read_text().splitlines() if text.strip()]


def summarise(lines: list[dict]) -> list[dict]:
    """One row per target: ``benchmark, measure, value (str), target, status (met/missed/...), sha, date``."""
    rows = []
    for t in TARGETS:
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
