"""Benchmark: FFCV train-pipeline img/s against ImageFolder and the decode-only bound.

All sides read the same real-photo JPEGs (:mod:`fastfc.photos`, ImageNet-like sizes) with the
paper's train transform: RandomResizedCrop 224 (scale 0.9–1.0) + flip + normalise, batch 32, the
same workers. Baselines measured in the same run:

* torchvision ``ImageFolder`` + PIL + the same transforms (a DataLoader with the same workers);
* the decode-only bound: PIL decoding the source files in a tight loop, one process per core.

Target (issue 7): FFCV ≥ 3× ImageFolder and ≥ 0.8× the decode bound; the beton's size against
the source JPEGs' is reported too.

    python -m benchmarks.loader            # ~1 min on 2 cores
    python -m benchmarks.loader --smoke    # tiny, for CI
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

from data_prep.imagenet import convert
from fastfc.data.ffcv import TRAIN_SCALE, make_loader
from fastfc.models import CLIP_MEAN, CLIP_STD
from fastfc.photos import make_imagenet_tree

from .common import median_time, print_table, record


def _decode(path: str) -> int:
    with Image.open(path) as im:  # full decode, as both loaders do
        return np.asarray(im.convert("RGB")).shape[0]


def run(*, per_class: int = 40, repeats: int = 3, workers: int = 2, batch_size: int = 32, resolution: int = 224,
        history: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tree = make_imagenet_tree(Path(tmp) / "src", train_per_class=per_class, val_per_class=1, quirks=False)
        convert(tree.root, Path(tmp) / "out", splits=("train",), workers=workers)
        beton, folder = Path(tmp) / "out" / "train.beton", tree.root / "train"
        files = sorted(str(p) for p in folder.rglob("*.JPEG"))
        n = len(files)

        def ffcv_pass(dtype):
            loader = make_loader(beton, train=True, batch_size=batch_size, resolution=resolution, mean=CLIP_MEAN,
                                 std=CLIP_STD, num_workers=workers, dtype=dtype)
            return lambda: sum(len(y) for _, y in loader)

        tv = transforms.Compose([transforms.RandomResizedCrop(resolution, scale=TRAIN_SCALE), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
        folder_loader = DataLoader(ImageFolder(str(folder), transform=tv), batch_size=batch_size,
                                   num_workers=workers, shuffle=True, drop_last=True)
        with mp.get_context("fork").Pool(workers) as pool:
            t_decode, _ = median_time(lambda: pool.map(_decode, files, chunksize=16), repeats)
        t_ffcv, _ = median_time(ffcv_pass(np.float32), repeats)
        t_ffcv16, _ = median_time(ffcv_pass(np.float16), repeats)
        t_folder, _ = median_time(lambda: sum(len(y) for _, y in folder_loader), repeats)
        seen = n // batch_size * batch_size  # both training loaders drop the last partial batch
        src_mb = sum(os.path.getsize(f) for f in files) / 1e6
        beton_mb = beton.stat().st_size / 1e6
    figures = {"images": n, "workers": workers, "batch_size": batch_size, "resolution": resolution,
               "ffcv_img_per_s": seen / t_ffcv, "ffcv_fp16_img_per_s": seen / t_ffcv16,
               "imagefolder_img_per_s": seen / t_folder, "decode_bound_img_per_s": n / t_decode,
               "source_mb": src_mb, "beton_mb": beton_mb}
    ratios = {"ffcv_vs_imagefolder": figures["ffcv_img_per_s"] / figures["imagefolder_img_per_s"],
              "ffcv_fp16_vs_imagefolder": figures["ffcv_fp16_img_per_s"] / figures["imagefolder_img_per_s"],
              "ffcv_vs_decode_bound": figures["ffcv_img_per_s"] / figures["decode_bound_img_per_s"],
              "beton_vs_source_size": beton_mb / src_mb}
    line = record("loader", figures, ratios, save=history)
    print_table(f"loader: {n} real-photo JPEGs, {workers} workers, batch {batch_size}, median of {repeats}", [
        ("ffcv (float32 normalise)", f"{figures['ffcv_img_per_s']:.0f} img/s  {ratios['ffcv_vs_imagefolder']:.2f}x ImageFolder (target >= 3x)"),
        ("ffcv (float16 normalise)", f"{figures['ffcv_fp16_img_per_s']:.0f} img/s  {ratios['ffcv_fp16_vs_imagefolder']:.2f}x"),
        ("ImageFolder + PIL (baseline)", f"{figures['imagefolder_img_per_s']:.0f} img/s"),
        ("PIL decode only (bound)", f"{figures['decode_bound_img_per_s']:.0f} img/s; ffcv at {ratios['ffcv_vs_decode_bound']:.2f}x (target >= 0.8x)"),
        ("beton / source size", f"{beton_mb:.1f} MB / {src_mb:.1f} MB = {ratios['beton_vs_source_size']:.1f}x"),
    ])
    return line


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=40, help="images per class, 10 classes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no history line (CI)")
    args = p.parse_args(argv)
    from fastfc.data.ffcv import quiet_numba_finalizer_noise
    quiet_numba_finalizer_noise()
    if args.smoke:
        run(per_class=4, repeats=1, workers=1, batch_size=8, resolution=64, history=False)
    else:
        run(per_class=args.per_class, repeats=args.repeats, workers=args.workers)


if __name__ == "__main__":
    main()
