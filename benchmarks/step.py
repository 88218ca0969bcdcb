"""Benchmark: distillation-step img/s as the performance toggles are added, on synthetic batches.

Rows (each adds one toggle to the previous), all through the real :func:`fastfc.train.train_step`
and :func:`fastfc.train.prepare`:

1. eager fp32 NCHW, multi-tensor AdamW (the original loop) — the baseline;
2. + channels_last;  3. + bf16 autocast;  4. + torch.compile;  5. + fused AdamW.

Batches are random tensors already on the device, so the figure is the step alone (the loader is
``benchmarks/e2e.py``'s business). Teachers and students are random-init (no download); the
FLOPs are the same as with real weights. MFU is reported on GPUs with a known peak.
Target (issue 7): RN50 on one H200 ≥ 3× the baseline and ≥ 5,000 img/s. Imports no ffcv.

    python -m benchmarks.step                                   # CPU: the tiny CNN, batch 64 (~2 min)
    python -m benchmarks.step --arch mobilenet_v2 --resolution 128 --batch 16   # CPU, a real net (slow compile)
    python -m benchmarks.step --arch RN50 --batch 256 --steps 20  # GPU
    python -m benchmarks.step --smoke                           # tiny, for CI
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fastfc.distill import DistillTask, ObjectiveConfig
from fastfc.models import build_student, build_teacher
from fastfc.runtime import Runtime, peak_flops
from fastfc.train import TrainConfig, prepare, train_step

from .common import Target, print_table, record


def _last_row(line: dict) -> dict:
    return list(line["figures"]["rows"].values())[-1]


def _is_gpu_rn50(line: dict) -> bool:
    return line["figures"].get("device", "").startswith("cuda") and line["figures"].get("arch") == "RN50"


MAKE_BENCH: list[str] | None = []  # `make bench` runs it with these arguments
TARGETS = (  # GPU targets: judged only on a CUDA line of RN50 (benchmarks/gpu.sh)
    Target("step", "RN50 step, all toggles vs eager fp32", lambda l: list(l["ratios"]["vs_eager_fp32"].values())[-1],
           "x", ">= 3x (GPU)", lambda v: v >= 3, _is_gpu_rn50, "needs a GPU run (benchmarks/gpu.sh)"),
    Target("step", "RN50 step on one GPU", lambda l: _last_row(l)["img_per_s"], " img/s", ">= 5000 img/s (H200)",
           lambda v: v >= 5000, _is_gpu_rn50, "needs a GPU run (benchmarks/gpu.sh)"),
)

ROWS = [  # (name, channels_last, bf16, compile, fused)
    ("eager fp32 NCHW", False, False, False, False),
    ("+ channels_last", True, False, False, False),
    ("+ bf16", True, True, False, False),
    ("+ compile", True, True, True, False),
    ("+ fused AdamW", True, True, True, True),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_row(arch: str, batch: int, resolution: int | None, device: torch.device, *, channels_last: bool,
                bf16: bool, compile: bool, fused: bool, steps: int, repeats: int, warmup: int) -> dict:
    """img/s (median over ``repeats`` timed blocks of ``steps`` steps, after ``warmup`` steps)."""
    teacher, student = build_teacher(arch), build_student(arch, seed=0)
    task = DistillTask(teacher, student, ObjectiveConfig()).to(device)
    size = resolution or teacher.input_size
    cfg = TrainConfig(channels_last=channels_last, precision="bf16" if bf16 else "fp32", compile=compile, lr=1e-4)
    model, optimizer = prepare(task, cfg, Runtime(device=device), fused=fused)
    if channels_last:
        teacher.visual.to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, size, size, device=device)
    for _ in range(warmup):  # includes compilation; excluded from the timing
        train_step(task, model, optimizer, images, lr=1e-4, cfg=cfg)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            loss, _ = train_step(task, model, optimizer, images, lr=1e-4, cfg=cfg)
        _sync(device)
        times.append(time.perf_counter() - t0)
    assert torch.isfinite(loss), "the benchmarked step diverged"
    img_s = batch * steps / statistics.median(times)
    flops = task.flops_per_image * (size / teacher.input_size) ** 2 if resolution else task.flops_per_image
    peak = peak_flops(device)
    return {"img_per_s": img_s, "mfu": img_s * flops / peak if peak else None,
            "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}


def run(*, arch: str, batch: int, resolution: int | None, steps: int, repeats: int, warmup: int,
        device: str | None = None, rows=ROWS, history: bool = True) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results = {}
    for name, cl, bf16, comp, fused in rows:
        results[name] = measure_row(arch, batch, resolution, dev, channels_last=cl, bf16=bf16, compile=comp,
                                    fused=fused, steps=steps, repeats=repeats, warmup=warmup)
        print(f"  {name:<16} {results[name]['img_per_s']:10.1f} img/s", flush=True)
        torch._dynamo.reset()
    base = results[rows[0][0]]["img_per_s"]
    ratios = {name: r["img_per_s"] / base for name, r in results.items()}
    figures = {"arch": arch, "batch": batch, "resolution": resolution, "device": str(dev), "steps": steps,
               "repeats": repeats, "rows": results}
    line = record("step", figures, {"vs_eager_fp32": ratios}, save=history)
    print_table(f"step: {arch} distillation, batch {batch}, {dev}, median of {repeats} x {steps} steps", [
        (name, f"{r['img_per_s']:8.1f} img/s  {ratios[name]:5.2f}x"
               + (f"  MFU {r['mfu']:.1%}" if r["mfu"] else "")) for name, r in results.items()])
    return line


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=None, help="encoder name (default: RN50 on GPU, tiny on CPU)")
    p.add_argument("--batch", type=int, default=None, help="default: 256 on GPU, 64 on CPU")
    p.add_argument("--resolution", type=int, default=None, help="default: the teacher's native one")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny model, 2 rows, no history line (CI)")
    args = p.parse_args(argv)
    if args.smoke:
        run(arch="tiny", batch=4, resolution=None, steps=2, repeats=1, warmup=1, device="cpu",
            rows=ROWS[:2], history=False)
        return
    gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    run(arch=args.arch or ("RN50" if gpu else "tiny"), batch=args.batch or (256 if gpu else 64),
        resolution=args.resolution, steps=args.steps, repeats=args.repeats,
        warmup=args.warmup, device=args.device)


if __name__ == "__main__":
    main()
