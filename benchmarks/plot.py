"""Draw ``results/history.jsonl``: one PNG per benchmark, its ratios over the recorded runs.

    python -m benchmarks.plot                 # → benchmarks/results/<benchmark>.png
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from .common import HISTORY


def _flatten(ratios: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in ratios.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key} "))
        elif isinstance(value, (int, float)):
            flat[prefix + key] = float(value)
    return flat


def plot(history: Path = HISTORY, out_dir: Path | None = None) -> list[Path]:
    """One PNG per benchmark (x: run, labelled by sha and date; y: each ratio). Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = out_dir or history.parent
    runs = defaultdict(list)
    for line in history.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            runs[entry["benchmark"]].append(entry)
    written = []
    for name, entries in sorted(runs.items()):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        series = defaultdict(list)
        for i, e in enumerate(entries):
            for key, value in _flatten(e["ratios"]).items():
                series[key].append((i, value))
        for key, points in sorted(series.items()):
            ax.plot(*zip(*points), marker="o", label=key)
        ax.set_xticks(range(len(entries)), [f"{e['sha']}\n{e['date'][:10]}" for e in entries], fontsize=7)
        ax.set_ylabel("ratio (against the same run's baseline)")
        ax.set_title(f"{name}: {entries[-1]['machine'].get('gpu') or entries[-1]['machine']['cpu']}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--history", type=Path, default=HISTORY)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    for path in plot(args.history, args.out):
        print(path)


if __name__ == "__main__":
    main()
