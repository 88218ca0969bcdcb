"""Benchmark: shift-set evaluation read throughput, shards vs ImageFolder, img/s.

Both sides read the same real-photo JPEGs (an ImageNet-R-style set of 10 WNID folders) with the
same eval transform (short side → 224 bicubic, centre crop, normalise), the same DataLoader
workers and batch size. Target (issue 7): shards ≥ 2× ImageFolder.

    python -m benchmarks.shards            # ~1 min on 2 cores
    python -m benchmarks.shards --smoke    # tiny, for CI
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from data_prep.shifts import list_set, read_imagenet_classes, write_set
from fastfc.data.shards import eval_transform, make_shard_loader
from fastfc.photos import make_imagenet_tree

from .common import median_time, print_table, record

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _drain(loader) -> int:
    return sum(len(batch[1]) for batch in loader)


def run(*, per_class: int, repeats: int, workers: int, batch_size: int = 64, resolution: int = 224,
        history: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tree = make_imagenet_tree(Path(tmp) / "src", train_per_class=per_class, val_per_class=0, quirks=False)
        folder = tree.root / "train"
        write_set(list_set("imagenet-r", folder, read_imagenet_classes()), folder, Path(tmp) / "out", workers=workers)
        transform = eval_transform(resolution, CLIP_MEAN, CLIP_STD)
        shards = make_shard_loader(Path(tmp) / "out" / "imagenet-r", transform=transform,
                                   batch_size=batch_size, num_workers=workers)
        imagefolder = DataLoader(ImageFolder(str(folder), transform=transform), batch_size=batch_size,
                                 num_workers=workers)
        n = _drain(shards)
        assert n == _drain(imagefolder), "both sides must read the same images"
        t_shards, _ = median_time(lambda: _drain(shards), repeats)
        t_folder, _ = median_time(lambda: _drain(imagefolder), repeats)
    figures = {"images": n, "workers": workers, "batch_size": batch_size, "resolution": resolution,
               "shards_img_per_s": n / t_shards, "imagefolder_img_per_s": n / t_folder}
    ratios = {"shards_vs_imagefolder": t_folder / t_shards}
    line = record("shards", figures, ratios, save=history)
    print_table(f"shards: {n} real-photo images, {workers} workers, batch {batch_size}, median of {repeats}", [
        ("webdataset shards", f"{figures['shards_img_per_s']:.0f} img/s"),
        ("ImageFolder (baseline)", f"{figures['imagefolder_img_per_s']:.0f} img/s"),
        ("ratio", f"{ratios['shards_vs_imagefolder']:.2f}x (target >= 2x)"),
    ])
    return line


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=60, help="images per class, 10 classes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no history line (CI)")
    args = p.parse_args(argv)
    if args.smoke:
        run(per_class=2, repeats=1, workers=1, batch_size=8, resolution=32, history=False)
    else:
        run(per_class=args.per_class, repeats=args.repeats, workers=args.workers)


if __name__ == "__main__":
    main()
