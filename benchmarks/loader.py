"""Benchmark: FFCV train-pipeline img/s against ImageFolder and the decode-only bound.

All sides read the same real-photo JPEGs (:mod:`fastfc.fixtures.photos`, ImageNet-like sizes, longer side
160-500 px) with the paper's train transform: RandomResizedCrop 224 (scale 0.9–1.0) + flip +
normalise, batch 32, the same workers. Two betons of the same images are read:

* fastfc's: stored with ``--short-side 256``, the smallest size that feeds a 224-px crop of >= 90%
  of the image without upsampling (README, Converting ImageNet), ffcv's ``proportion`` mode otherwise;
* the ffcv-imagenet recipe (longer side 500), read with plain ffcv's decoder.

fastfc's beton is read with fastfc's decoder (bilinear resize below 2x, :mod:`fastfc.data.resize`)
and, to show that lever alone, with ffcv's stock decoder (``INTER_AREA``).

The fastfc beton is also read with uint8 output and no normalisation: all the CPU does in a GPU
run, where :func:`fastfc.data.ffcv.image_pipeline` normalises on the device.

Baselines measured in the same run, every side run in turn (interleaved rounds, median):

* torchvision ``ImageFolder`` + PIL + the same transforms (a DataLoader with the same workers);
* the decode-only bound: PIL (libjpeg-turbo) decoding the source files in a tight loop, one
  process per core.

Target (issue 7): ≥ 3× ImageFolder and ≥ 0.8× the decode bound; the betons' sizes against the
source JPEGs' are reported too.

    python -m benchmarks.loader            # ~1 min on 2 cores
    python -m benchmarks.loader --smoke    # tiny, for CI
    python -m benchmarks.loader --beton B --src DIR --device cuda --workers 16   # an existing beton (benchmarks/gpu.sh)
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from pathlib import Path

import numpy as np
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import ToTensor, ToTorchImage
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

from data_prep.beton import WriterSettings
from data_prep.imagenet import convert

from fastfc.data.ffcv import TRAIN_SCALE, decode_ops, label_pipeline, make_loader
from fastfc.fixtures.photos import make_imagenet_tree
from fastfc.models import CLIP_MEAN, CLIP_STD

from .common import Target, interleaved_times, parser, print_table, record

MAKE_BENCH: list[str] | None = []  # `make bench` runs it with these arguments
TARGETS = (
    Target("loader", "fastfc loader vs ImageFolder", lambda l: l["ratios"]["ffcv_vs_imagefolder"], "x", ">= 3x",
           lambda v: v >= 3),
    Target("loader", "fastfc loader vs decode bound", lambda l: l["ratios"]["ffcv_vs_decode_bound"], "x", ">= 0.8x",
           lambda v: v >= 0.8),
)


def _decode(path: str) -> int:
    with Image.open(path) as im:  # full decode, as both loaders do
        return np.asarray(im.convert("RGB")).shape[0]


def _rows(rate: dict, ratios: dict, figures: dict) -> list[tuple[str, str]]:
    """The printed table: one row per loader, ratios against ImageFolder and the decode bound."""
    short_side, fastfc_mb = figures["short_side"], figures["beton_mb"]
    recipe_mb, src_mb = figures["recipe_beton_mb"], figures["source_mb"]
    return [
        (f"fastfc beton, short side {short_side}", f"{rate['fastfc']:.0f} img/s  {ratios['ffcv_vs_imagefolder']:.2f}x "
                                                   f"ImageFolder (target >= 3x), {ratios['ffcv_vs_decode_bound']:.2f}x "
                                                   "the decode bound (target >= 0.8x)"),
        ("  same, ffcv's area resize", f"{rate['fastfc_area']:.0f} img/s  {ratios['ffcv_area_vs_imagefolder']:.2f}x"),
        ("  same, float16 normalise", f"{rate['fastfc_fp16']:.0f} img/s  {ratios['ffcv_fp16_vs_imagefolder']:.2f}x"),
        ("  same, uint8 out (a GPU run's CPU side)", f"{rate['fastfc_uint8']:.0f} img/s  "
                                                     f"{ratios['ffcv_uint8_vs_decode_bound']:.2f}x the decode bound"),
        ("ffcv-imagenet recipe, longer side 500", f"{rate['recipe']:.0f} img/s  {ratios['ffcv_recipe_vs_imagefolder']:.2f}x"),
        ("ImageFolder + PIL (baseline)", f"{rate['imagefolder']:.0f} img/s"),
        ("PIL decode of the sources (bound)", f"{rate['decode']:.0f} img/s"),
        ("beton / source size", f"fastfc {fastfc_mb:.1f} MB ({ratios['beton_vs_source_size']:.1f}x), recipe "
                                f"{recipe_mb:.1f} MB ({ratios['recipe_beton_vs_source_size']:.1f}x), source {src_mb:.1f} MB"),
    ]


def run(*, per_class: int = 40, repeats: int = 5, workers: int = 2, batch_size: int = 32, resolution: int = 224,
        short_side: int = 256, history: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tree = make_imagenet_tree(Path(tmp) / "src", train_per_class=per_class, val_per_class=1, quirks=False)
        recipe, short = Path(tmp) / "recipe" / "train.beton", Path(tmp) / "short" / "train.beton"
        convert(tree.root, recipe.parent, splits=("train",), workers=workers)  # ffcv-imagenet: longer side 500
        convert(tree.root, short.parent, splits=("train",), workers=workers, settings=WriterSettings(short_side=short_side))
        folder = tree.root / "train"
        files = sorted(str(p) for p in folder.rglob("*.JPEG"))
        n = len(files)

        def ffcv_pass(beton, dtype, linear_resize=True):
            loader = make_loader(beton, train=True, batch_size=batch_size, resolution=resolution, mean=CLIP_MEAN,
                                 std=CLIP_STD, num_workers=workers, dtype=dtype, linear_resize=linear_resize)
            return lambda: sum(len(y) for _, y in loader)

        def ffcv_gpu_cpu_side(beton):  # what the CPU does for a GPU run: normalisation happens on the device
            loader = Loader(str(beton), batch_size=batch_size, num_workers=workers, order=OrderOption.RANDOM,
                            drop_last=True, pipelines={"image": decode_ops(train=True, resolution=resolution)
                                                       + [ToTensor(), ToTorchImage()], "label": label_pipeline()})
            return lambda: sum(len(y) for _, y in loader)

        tv = transforms.Compose([transforms.RandomResizedCrop(resolution, scale=TRAIN_SCALE), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
        folder_loader = DataLoader(ImageFolder(str(folder), transform=tv), batch_size=batch_size,
                                   num_workers=workers, shuffle=True, drop_last=True)
        with mp.get_context("fork").Pool(workers) as pool:
            t = interleaved_times({
                "decode": lambda: pool.map(_decode, files, chunksize=16),
                "imagefolder": lambda: sum(len(y) for _, y in folder_loader),
                "recipe": ffcv_pass(recipe, np.float32, linear_resize=False),
                "fastfc_area": ffcv_pass(short, np.float32, linear_resize=False),
                "fastfc": ffcv_pass(short, np.float32),
                "fastfc_fp16": ffcv_pass(short, np.float16),
                "fastfc_uint8": ffcv_gpu_cpu_side(short)}, repeats)
            pool.close()  # workers leave by themselves; terminate() could lose its SIGTERM (data_prep/scan.py)
            pool.join()
        seen = n // batch_size * batch_size  # the training loaders drop the last partial batch
        src_mb = sum(os.path.getsize(f) for f in files) / 1e6
        recipe_mb, fastfc_mb = recipe.stat().st_size / 1e6, short.stat().st_size / 1e6
    rate = {k: (n if k == "decode" else seen) / v for k, v in t.items()}
    figures = {"images": n, "workers": workers, "batch_size": batch_size, "resolution": resolution,
               "short_side": short_side, "repeats": repeats,
               "ffcv_img_per_s": rate["fastfc"], "ffcv_fp16_img_per_s": rate["fastfc_fp16"],
               "ffcv_area_img_per_s": rate["fastfc_area"], "ffcv_recipe_img_per_s": rate["recipe"],
               "ffcv_uint8_img_per_s": rate["fastfc_uint8"], "imagefolder_img_per_s": rate["imagefolder"],
               "decode_bound_img_per_s": rate["decode"],
               "source_mb": src_mb, "beton_mb": fastfc_mb, "recipe_beton_mb": recipe_mb}
    ratios = {"ffcv_vs_imagefolder": rate["fastfc"] / rate["imagefolder"],
              "ffcv_fp16_vs_imagefolder": rate["fastfc_fp16"] / rate["imagefolder"],
              "ffcv_area_vs_imagefolder": rate["fastfc_area"] / rate["imagefolder"],
              "ffcv_recipe_vs_imagefolder": rate["recipe"] / rate["imagefolder"],
              "ffcv_vs_decode_bound": rate["fastfc"] / rate["decode"],
              "ffcv_uint8_vs_decode_bound": rate["fastfc_uint8"] / rate["decode"],
              "beton_vs_source_size": fastfc_mb / src_mb, "recipe_beton_vs_source_size": recipe_mb / src_mb}
    line = record("loader", figures, ratios, save=history)
    print_table(f"loader: {n} real-photo JPEGs, {workers} workers, batch {batch_size}, "
                f"median of {repeats} interleaved rounds", _rows(rate, ratios, figures))
    return line


def run_beton(beton: Path, src: Path, *, device: str, workers: int, batch_size: int = 256, resolution: int = 224,
              repeats: int = 3, history: bool = True) -> dict:
    """fastfc's train loader over an existing ``beton`` on ``device`` (on CUDA: ffcv's GPU pipeline,
    ``ToDevice`` then ``NormalizeImage`` on the device, float16 batches) against the decode bound of
    the beton's source JPEGs (``src``, ``*.JPEG`` below it), both with ``workers``, in the same run
    (interleaved rounds, median). Appends a ``loader_beton`` history line; returns it."""
    import torch

    files = sorted(str(p) for p in Path(src).rglob("*.JPEG"))
    cuda = torch.device(device).type == "cuda"
    with mp.get_context("fork").Pool(workers) as pool:  # forked before CUDA is touched
        loader = make_loader(beton, train=True, batch_size=batch_size, resolution=resolution, mean=CLIP_MEAN,
                             std=CLIP_STD, num_workers=workers, device=device, dtype=np.float16 if cuda else np.float32)
        images, _ = next(iter(loader))
        assert images.device.type == torch.device(device).type and images.shape[1:] == (3, resolution, resolution)

        def ffcv_pass():
            for _ in loader:
                pass
            if cuda:
                torch.cuda.synchronize()

        t = interleaved_times({"decode": lambda: pool.map(_decode, files, chunksize=16), "ffcv": ffcv_pass}, repeats)
        pool.close()
        pool.join()
    rate = {"ffcv": len(loader) * batch_size / t["ffcv"], "decode": len(files) / t["decode"]}
    figures = {"beton": str(beton), "images": len(files), "device": device, "dtype": str(images.dtype),
               "workers": workers, "batch_size": batch_size, "resolution": resolution, "repeats": repeats,
               "ffcv_img_per_s": rate["ffcv"], "decode_bound_img_per_s": rate["decode"]}
    line = record("loader_beton", figures, {"ffcv_vs_decode_bound": rate["ffcv"] / rate["decode"]}, save=history)
    print_table(f"loader: {beton}, {device}, {workers} workers, batch {batch_size}, median of {repeats} rounds", [
        ("fastfc train loader", f"{rate['ffcv']:.0f} img/s, {images.dtype} batches on {images.device}, "
                                f"{rate['ffcv'] / rate['decode']:.2f}x the decode bound"),
        ("PIL decode of the sources (bound)", f"{rate['decode']:.0f} img/s")])
    return line


def main(argv=None) -> None:
    p = parser(__doc__, per_class=40, repeats=5)
    p.add_argument("--short-side", type=int, default=256, help="fastfc beton's stored shorter side (px)")
    p.add_argument("--beton", type=Path, help="time this beton instead (with --src, its source JPEGs): the GPU run")
    p.add_argument("--src", type=Path, help="the JPEGs --beton was converted from (the decode bound)")
    p.add_argument("--device", default="cpu", help="with --beton: where batches go (cuda: ffcv's GPU pipeline)")
    p.add_argument("--batch-size", type=int, default=256, help="with --beton (default: %(default)s)")
    p.add_argument("--resolution", type=int, default=224, help="with --beton (default: %(default)s)")
    args = p.parse_args(argv)
    from fastfc.data.ffcv import quiet_numba_finalizer_noise
    quiet_numba_finalizer_noise()
    if args.beton:
        run_beton(args.beton, args.src, device=args.device, workers=args.workers, batch_size=args.batch_size,
                  resolution=args.resolution, repeats=args.repeats)
    elif args.smoke:
        run(per_class=4, repeats=1, workers=1, batch_size=8, resolution=64, short_side=80, history=False)
    else:
        run(per_class=args.per_class, repeats=args.repeats, workers=args.workers, short_side=args.short_side)


if __name__ == "__main__":
    main()
