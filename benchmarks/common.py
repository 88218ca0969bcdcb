"""Shared benchmark plumbing: the machine line, median-of-runs timing, the JSONL history, targets.

Every benchmark appends one line to ``benchmarks/results/history.jsonl`` recording the git sha,
date, machine (CPU model, cores, GPU if any), library versions, its figures and its ratios.

A benchmark is one module ``benchmarks/<name>.py`` with a ``main(argv)`` and two declarations that
:func:`discover` finds, so adding a benchmark touches only its own file:

* ``TARGETS``: a tuple of :class:`Target`, judged by ``python -m benchmarks.summary``;
* ``MAKE_BENCH``: its arguments in ``make bench`` (``python -m benchmarks``), or ``None`` to leave
  it out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

# FASTFC_BENCH_HISTORY redirects it (the GPU script writes under the device's $OUT).
HISTORY = Path(os.environ.get("FASTFC_BENCH_HISTORY", Path(__file__).resolve().parent / "results" / "history.jsonl"))


def parser(doc: str, *, per_class: int | None = None, repeats: int | None = None,
           workers: bool = True) -> argparse.ArgumentParser:
    """The benchmarks' shared command line: ``--smoke`` always; ``--per-class`` (images per class of
    the 10-class real-photo tree), ``--repeats`` and ``--workers`` (default: all cores) when asked."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if per_class is not None:
        p.add_argument("--per-class", type=int, default=per_class, help="images per class, 10 classes (default: %(default)s)")
    if repeats is not None:
        p.add_argument("--repeats", type=int, default=repeats, help="timed rounds, median reported (default: %(default)s)")
    if workers:
        p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="default: all cores")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no history line (CI)")
    return p


def machine() -> dict:
    """What might explain a difference between two runs: CPU, cores, GPU, library versions."""
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:  # ffcv 1.0.2's own __version__ says 0.0.3rc1; the distribution metadata is right
        info["ffcv"] = importlib.metadata.version("ffcv")
    except importlib.metadata.PackageNotFoundError:  # the GPU machine has no ffcv
        info["ffcv"] = None
    return info


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; return (median s, all times s)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def interleaved_times(sides: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per side, the sides run in turn (A B C A B C ...) so that a shared machine's
    drift hits every side alike; ``warmup`` untimed rounds first. Returns ``{name: median s}``."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def record(benchmark: str, figures: dict, ratios: dict | None = None, *, save: bool = True) -> dict:
    """Build one history line; append it to :data:`HISTORY` when ``save`` (smoke runs don't)."""
    line = {"benchmark": benchmark, "sha": git_sha(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "figures": figures, "ratios": ratios or {}}
    if save:
        HISTORY.parent.mkdir(parents=True, exist_ok=True)
        with HISTORY.open("a") as f:
            f.write(json.dumps(line) + "\n")
    return line


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


@dataclass(frozen=True)
class Target:
    """A target a benchmark declares: ``value(history line) -> float`` judged by ``met``.
    ``applies`` picks the history lines it may be judged on (e.g. GPU lines only); ``missing`` is
    what the summary says when no such line exists."""

    benchmark: str
    measure: str
    value: Callable[[dict], float]
    unit: str
    target: str
    met: Callable[[float], bool]
    applies: Callable[[dict], bool] = lambda line: True
    missing: str = "not run yet"


NOT_BENCHMARKS = {"__init__", "__main__", "common", "summary", "plot", "gpu_run"}


def discover() -> dict[str, ModuleType | str]:
    """Every benchmark module, by name (sorted): the imported module, or the import error's text
    where it cannot be imported here (the GPU machine has no ffcv)."""
    found: dict[str, ModuleType | str] = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem in NOT_BENCHMARKS:
            continue
        try:
            found[path.stem] = importlib.import_module(f"{__package__}.{path.stem}")
        except ImportError as e:
            found[path.stem] = str(e)
    return found
