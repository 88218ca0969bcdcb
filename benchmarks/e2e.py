"""Benchmark: distillation with the FFCV loader feeding the real step, against the step alone.

The same task and settings run twice: through :func:`fastfc.train.train` reading the train beton
(RandomResizedCrop + flip, normalised in the loader), and through the bare
:func:`fastfc.train.train_step` on one synthetic batch already in memory. The loader side reports
img/s and the data-wait share measured by the trainer (``perf/data_wait``: time blocked on the
next batch over wall time). The beton stores each image at the shorter side the crop needs
(``data_prep.beton.short_side_for``), as the README recommends. Target (issue 7): data wait < 5%.

    python -m benchmarks.e2e              # tiny student at 32 px, CPU
    python -m benchmarks.e2e --smoke      # tiny, for CI
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .common import Target, parser, print_table, record

MAKE_BENCH: list[str] | None = []  # `make bench` runs it with these arguments
TARGETS = (Target("e2e", "data wait", lambda l: 100 * l["figures"]["data_wait"], "%", "< 5%", lambda v: v < 5),)


def run(*, arch: str = "tiny", per_class: int = 40, steps: int = 60, batch: int = 64, workers: int = 2,
        history: bool = True) -> dict:
    from data_prep.beton import WriterSettings, short_side_for
    from data_prep.imagenet import convert
    from fastfc.data.ffcv import TRAIN_SCALE
    from fastfc.distill import DistillConfig, run as distill
    from fastfc.models import ENCODERS, canonical_name
    from fastfc.fixtures.photos import make_imagenet_tree
    from fastfc.runtime import Runtime
    from fastfc.train import TrainConfig

    from .step import measure_row

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_imagenet_tree(tmp / "src", train_per_class=per_class, val_per_class=1, quirks=False)
        cfg = DistillConfig()
        cfg.encoder.name, cfg.teacher.pretrained = arch, None
        resolution = ENCODERS[canonical_name(arch)].input_size  # stored as README recommends: short side for the crop
        convert(tmp / "src", tmp / "betons", splits=("train",), workers=workers,
                settings=WriterSettings(short_side=short_side_for(resolution, TRAIN_SCALE[0])))
        cfg.data.train_beton, cfg.data.workers = str(tmp / "betons" / "train.beton"), workers
        cfg.train = TrainConfig(epochs=1000, max_steps=steps, global_batch_size=batch, warmup_steps=5, precision="fp32",
                                compile=False, log_every=max(1, steps // 3), out_dir=str(tmp / "run"))
        distill(cfg, rt=Runtime())
        logged = [json.loads(l) for l in (tmp / "run" / "metrics.jsonl").read_text().splitlines()][1:]  # skip warm-up
    loader_img_s = sum(m["perf/img_per_s"] for m in logged) / len(logged)
    data_wait = sum(m["perf/data_wait"] for m in logged) / len(logged)
    synthetic = measure_row(arch, batch, None, Runtime().device, channels_last=True, bf16=False, compile=False,
                            fused=False, steps=max(3, steps // 6), repeats=3, warmup=2)
    figures = {"arch": arch, "batch": batch, "steps": steps, "workers": workers,
               "loader_img_per_s": loader_img_s, "synthetic_img_per_s": synthetic["img_per_s"], "data_wait": data_wait}
    ratios = {"loader_vs_synthetic": loader_img_s / synthetic["img_per_s"]}
    line = record("e2e", figures, ratios, save=history)
    print_table(f"e2e: {arch} distillation, batch {batch}, {workers} loader workers", [
        ("FFCV loader + step", f"{loader_img_s:.0f} img/s, data wait {data_wait:.1%} (target < 5%)"),
        ("step on a synthetic batch", f"{synthetic['img_per_s']:.0f} img/s"),
        ("ratio", f"{ratios['loader_vs_synthetic']:.2f}x"),
    ])
    return line


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--arch", default="tiny")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    from fastfc.data.ffcv import quiet_numba_finalizer_noise
    quiet_numba_finalizer_noise()
    if args.smoke:
        run(per_class=4, steps=6, batch=8, workers=1, history=False)
    else:
        run(arch=args.arch, steps=args.steps, batch=args.batch, workers=args.workers)


if __name__ == "__main__":
    main()
