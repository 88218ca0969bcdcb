"""The Python steps of ``benchmarks/gpu.sh`` (the one device call and its ``--cpu`` twin).

    python -m benchmarks.gpu_run photos ROOT --classes 10 --train 300 --val 20 --min-side 160 --max-side 500 --stand-ins
    python -m benchmarks.gpu_run wait RUN_DIR --step 150 --pid PID      # until metrics.jsonl reaches a step
    python -m benchmarks.gpu_run resume RUN_DIR --first-lines N         # the stop/resume check + history line
    python -m benchmarks.gpu_run note step|loader HISTORY | eval RESULTS_JSON   # a step's figure for the table

``photos``: an ImageNet-layout tree of real-photo JPEGs (:func:`fastfc.fixtures.photos.make_imagenet_tree`)
and, with ``--stand-ins``, the shift-set stand-ins (:func:`fastfc.demo.standins.make_shift_sets`):
the inputs of the real converters. ``resume`` reads the run's ``metrics.jsonl`` (the first ``N`` lines are the run that was
sent SIGTERM, the rest its ``--resume``) and checks: the first run stopped early at a checkpoint;
the resumed run's steps continue after it; the logged lr equals the schedule
(:func:`fastfc.train.scheduled_lr`) at every step of both; the resumed loss continues (its first
record at most 1.5x the last one before the stop, all finite). It appends one history line
``distill_run`` (img/s, data wait, MFU, peak memory: medians over the records after the first,
which holds the compilation) and exits 1 with one line naming what failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

PERF = ("perf/img_per_s", "perf/data_wait", "perf/mfu", "perf/peak_mem_gb")


def photos(root: Path, *, classes: int, train: int, val: int, min_side: int, max_side: int, stand_ins: bool) -> None:
    from fastfc.fixtures.photos import make_imagenet_tree
    from fastfc.demo.standins import make_shift_sets

    t0 = time.perf_counter()
    tree = make_imagenet_tree(root / "imagenet", n_classes=classes, train_per_class=train, val_per_class=val,
                              quirks=False, min_side=min_side, max_side=max_side)
    if stand_ins:  # all five are drawn together (~15 s on 2 busy cores: the twin leaves them out)
        make_shift_sets(root / "shifts", per_class=max(1, val // 2))
    n = sum(sum(c.values()) for c in tree.counts.values())
    print(f"photos: {n} JPEGs ({classes} classes, {train} train + {val} val each, longer side "
          f"{min_side}-{max_side} px){' and the shift-set stand-ins' if stand_ins else ''} in {time.perf_counter() - t0:.1f} s")


def wait(run_dir: Path, *, step: int, pid: int, timeout: float) -> int:
    """0 once ``run_dir/metrics.jsonl`` holds a record at ``step`` or later; 1 if process ``pid``
    ended first or ``timeout`` seconds passed (with a line saying which)."""
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if metrics.is_file() and any(r.get("step", 0) >= step for r in _records(metrics)):
                return 0
        except json.JSONDecodeError:  # a line being written: read again
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"wait: the run (pid {pid}) ended before step {step}; nothing to stop", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"wait: no record at step {step} in {metrics} after {timeout:.0f} s", file=sys.stderr)
    return 1


def _records(metrics: Path) -> list[dict]:
    lines = metrics.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _median(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.median(values) if values else None


def check_resume(run_dir: Path, first_lines: int) -> tuple[dict, list[str]]:
    """The figures of a stopped-and-resumed run and the list of what is wrong with it (empty: ok)."""
    from fastfc.config import from_dict
    from fastfc.train import TrainConfig, scheduled_lr

    cfg = from_dict(TrainConfig, json.loads((run_dir / "config.json").read_text())["train"])
    records = _records(run_dir / "metrics.jsonl")
    rows = [r for r in records if "train/loss" in r]  # end-of-epoch task records have no loss
    first = [r for r in records[:first_lines] if "train/loss" in r]
    resumed = rows[len(first):]
    problems = []
    if not first or not resumed:
        return {}, [f"{run_dir}/metrics.jsonl: {len(first)} records before the stop and {len(resumed)} after "
                    "the resume; both runs must log"]
    stop, total = first[-1]["step"], cfg.max_steps
    if total is not None and stop >= total:
        problems.append(f"the first run was not stopped early (it reached step {stop} of {total})")
    if resumed[0]["step"] <= stop or resumed[0]["step"] > stop + cfg.log_every:
        problems.append(f"the resumed run's first record is at step {resumed[0]['step']}, not just after {stop}")
    for r in rows:
        want = scheduled_lr(cfg, r["step"] - 1, total=total, steps_per_epoch=1)
        if not math.isclose(r["train/lr"], want, rel_tol=1e-6):
            problems.append(f"lr at step {r['step']} is {r['train/lr']:.6g}, the schedule says {want:.6g}")
            break
    losses = [r["train/loss"] for r in rows]
    if any(v is None or not math.isfinite(v) for v in losses):
        problems.append("a logged loss is not finite")
    elif resumed[0]["train/loss"] > 1.5 * first[-1]["train/loss"]:
        problems.append(f"the loss jumped at the resume: {first[-1]['train/loss']:.4g} at step {stop}, "
                        f"{resumed[0]['train/loss']:.4g} at step {resumed[0]['step']}")
    steady = rows[1:] or rows
    figures = {"steps": rows[-1]["step"], "stopped_at": stop, "resumed_first_step": resumed[0]["step"],
               "loss_first": losses[0], "loss_before_stop": first[-1]["train/loss"],
               "loss_after_resume": resumed[0]["train/loss"], "loss_last": losses[-1],
               "global_batch": cfg.global_batch_size, "precision": cfg.precision, "compile": cfg.compile,
               **{k.split("/")[1]: _median(steady, k) for k in PERF}, "resume_ok": not problems}
    return figures, problems


def resume(run_dir: Path, first_lines: int, arch: str, device: str) -> int:
    from benchmarks.common import record

    figures, problems = check_resume(run_dir, first_lines)
    if figures:
        record("distill_run", {"arch": arch, "device": device, **figures})
        f = figures
        print(f"distill: {f['steps']} steps, stopped at {f['stopped_at']} and resumed at {f['resumed_first_step']}; "
              f"loss {f['loss_first']:.4g} -> {f['loss_before_stop']:.4g}, then {f['loss_after_resume']:.4g} -> "
              f"{f['loss_last']:.4g}; {f['img_per_s']:.0f} img/s, data wait {f['data_wait']:.1%}"
              + (f", MFU {f['mfu']:.1%}" if f["mfu"] else "")
              + (f", peak {f['peak_mem_gb']:.1f} GB" if f["peak_mem_gb"] else ""))
    for p in problems:
        print(f"resume check: {p}", file=sys.stderr)
    return 1 if problems else 0


def note(what: str, path: Path) -> str:
    """The table's figure for step ``what`` ("step", "loader": from the history ``path``; "eval":
    from the ``results.json`` at ``path``)."""
    if what == "eval":
        sets = json.loads(path.read_text())["sets"]
        return ", ".join(f"{name} top-1 {s['top1']:.1%} of {s['n']}" for name, s in sets.items())
    lines = [line for line in _records(path) if line["benchmark"] == {"step": "step", "loader": "loader_beton"}[what]]
    if what == "loader":
        f = lines[-1]["figures"]
        return (f"{f['ffcv_img_per_s']:.0f} img/s ({f['dtype']} on {f['device']}), decode bound "
                f"{f['decode_bound_img_per_s']:.0f} img/s")
    return "; ".join(f"{line['figures']['arch']} {list(line['figures']['rows'].values())[-1]['img_per_s']:.0f} img/s, "
                     f"{list(line['ratios']['vs_eager_fp32'].values())[-1]:.2f}x eager fp32" for line in lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ph = sub.add_parser("photos")
    ph.add_argument("root", type=Path)
    for name in ("classes", "train", "val", "min-side", "max-side"):
        ph.add_argument(f"--{name}", type=int, required=True)
    ph.add_argument("--stand-ins", action="store_true", help="also the shift-set stand-ins, under ROOT/shifts")
    w = sub.add_parser("wait")
    w.add_argument("run_dir", type=Path)
    w.add_argument("--step", type=int, required=True)
    w.add_argument("--pid", type=int, required=True)
    w.add_argument("--timeout", type=float, default=300)
    r = sub.add_parser("resume")
    r.add_argument("run_dir", type=Path)
    r.add_argument("--first-lines", type=int, required=True)
    r.add_argument("--arch", required=True)
    r.add_argument("--device", required=True)
    n = sub.add_parser("note")
    n.add_argument("what", choices=("step", "loader", "eval"))
    n.add_argument("path", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "note":
        print(note(a.what, a.path))
        return 0
    if a.cmd == "photos":
        photos(a.root, classes=a.classes, train=a.train, val=a.val, min_side=a.min_side, max_side=a.max_side,
               stand_ins=a.stand_ins)
        return 0
    if a.cmd == "wait":
        return wait(a.run_dir, step=a.step, pid=a.pid, timeout=a.timeout)
    return resume(a.run_dir, a.first_lines, a.arch, a.device)


if __name__ == "__main__":
    raise SystemExit(main())
