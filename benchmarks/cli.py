"""Benchmark: how fast the command lines answer ``--help`` and argument errors, in wall seconds.

Each command runs as a fresh process (``python -m ...``), as a user types it; the sides run in turn
and the median of ``--repeats`` is reported. Baseline, measured in the same run: a process that
only imports torch, ffcv and open_clip, what every command paid before argparse ran when those
were imported at the top (9-17 s in the issue that asked for this). Target (issue 15): the slowest
command under 1.5 s.

    python -m benchmarks.cli               # ~1 min on 2 cores
    python -m benchmarks.cli --smoke       # one round, no history line (CI)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

from .common import Target, interleaved_times, parser, print_table, record

MAKE_BENCH: list[str] | None = []  # `make bench` runs it with these arguments
TARGETS = (Target("cli", "slowest --help / argument error", lambda l: l["figures"]["slowest_s"], " s", "< 1.5 s",
                  lambda v: v < 1.5),)

COMMANDS = {
    "fastfc --help": ["-m", "fastfc", "--help"],
    "fastfc toy --help": ["-m", "fastfc", "toy", "--help"],
    "fastfc cifar --help": ["-m", "fastfc", "cifar", "--help"],
    "fastfc cifar train --help": ["-m", "fastfc", "cifar", "train", "--help"],
    "fastfc cifar train --config nope.toml": ["-m", "fastfc", "cifar", "train", "--config", "nope.toml"],
    "fastfc probe --help": ["-m", "fastfc", "probe", "--help"],
    "fastfc distill --config nope.toml": ["-m", "fastfc", "distill", "--config", "nope.toml"],
    "fastfc eval --compare runs/nope": ["-m", "fastfc", "eval", "--compare", "runs/nope"],
    "data_prep.imagenet --help": ["-m", "data_prep.imagenet", "--help"],
    "data_prep.imagenet (no --src)": ["-m", "data_prep.imagenet"],
    "data_prep.shifts --help": ["-m", "data_prep.shifts", "--help"],
}
BASELINE = ["-c", "import torch, ffcv, open_clip"]


def _process(argv: list[str], cwd: str):
    return lambda: subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, timeout=300)


def run(*, repeats: int, baseline: bool = True, history: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as cwd:  # no runs/ or nope.toml there: the errors are real
        sides = {name: _process(argv, cwd) for name, argv in COMMANDS.items()}
        if baseline:
            sides["baseline: import torch, ffcv, open_clip"] = _process(BASELINE, cwd)
        times = interleaved_times(sides, repeats, warmup=1)
    commands = {name: times[name] for name in COMMANDS}
    slowest = max(commands, key=commands.get)
    figures = {"seconds": commands, "slowest": slowest, "slowest_s": commands[slowest], "repeats": repeats}
    ratios = {}
    if baseline:
        figures["baseline_s"] = times["baseline: import torch, ffcv, open_clip"]
        ratios["heavy_imports_vs_slowest"] = figures["baseline_s"] / figures["slowest_s"]
    line = record("cli", figures, ratios, save=history)
    print_table(f"cli: wall seconds per fresh process, median of {repeats}",
                [(name, f"{t:.2f} s") for name, t in times.items()]
                + [("slowest command", f"{slowest}: {commands[slowest]:.2f} s (target < 1.5 s)")])
    return line


def main(argv=None) -> None:
    p = parser(__doc__, repeats=5, workers=False)
    args = p.parse_args(argv)
    if args.smoke:
        run(repeats=1, baseline=False, history=False)
    else:
        run(repeats=args.repeats)


if __name__ == "__main__":
    main()
