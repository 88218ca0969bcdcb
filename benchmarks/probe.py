"""Benchmark: a whole 10-epoch linear probe, cached features vs the image path, wall-clock.

Both sides start from the same train beton (real photographs) and the same frozen encoder. The
cached side pays one extraction pass plus 10 epochs on the cache; the image path (the
original's way, ``--from-images``) runs the encoder over the images every epoch. Both use the
paper's recipe. Target (issue 5): cached ≥ 20× faster, with the two top-1s within 1 point.

    python -m benchmarks.probe                         # tiny encoder, CPU (~1 min)
    python -m benchmarks.probe --encoder mobilenet_v2  # a real net (slow on CPU)
    python -m benchmarks.probe --smoke                 # tiny sizes, for CI
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from data_prep.beton import WriterSettings
from data_prep.imagenet import convert
from fastfc.models import build_teacher
from fastfc.photos import make_imagenet_tree
from fastfc.probe import ProbeRecipe, extract, top1, train_from_images, train_heads
from fastfc.train import Runtime

from .common import HISTORY, print_table, record


def run(*, encoder_name: str = "tiny", per_class: int = 30, epochs: int = 10, workers: int = 2,
        batch_size: int = 32, history: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_imagenet_tree(tmp / "src", train_per_class=per_class, val_per_class=1, quirks=False)
        meta = convert(tmp / "src", tmp / "betons", splits=("train",), workers=workers,
                       settings=WriterSettings(max_resolution=256))
        beton, classes = tmp / "betons" / "train.beton", len(meta["classes"])
        recipe = ProbeRecipe(epochs=epochs, batch_size=batch_size, warmup_steps=20)
        encoder = build_teacher(encoder_name, weights="package" if encoder_name == "mobilenet_v2" else None)

        t0 = time.perf_counter()
        feats = extract(encoder, beton, tmp / "cache", batch_size=64, num_workers=workers)
        w, b = train_heads(feats.features, feats.labels, classes, [recipe.weight_decay], recipe, progress=False)
        t_cached = time.perf_counter() - t0

        t0 = time.perf_counter()
        wi, bi = train_from_images(encoder, beton, classes, recipe, Runtime(), out_dir=tmp / "img", num_workers=workers)
        t_images = time.perf_counter() - t0
        acc_cached, acc_images = top1(feats.features, feats.labels, w[0], b[0]), top1(feats.features, feats.labels, wi, bi)
    n = len(feats.labels)
    figures = {"encoder": encoder_name, "images": n, "epochs": epochs, "cached_s": t_cached, "images_s": t_images,
               "cached_img_per_s": n * epochs / t_cached, "images_img_per_s": n * epochs / t_images,
               "train_top1_cached": acc_cached, "train_top1_images": acc_images}
    ratios = {"cached_vs_images": t_images / t_cached, "top1_diff_points": (acc_cached - acc_images) * 100}
    line = record("probe", figures, ratios, history=HISTORY if history else None)
    print_table(f"probe: {encoder_name}, {n} real-photo images, {epochs} epochs, whole job", [
        ("cached features (extract + heads)", f"{t_cached:.1f} s  train top-1 {acc_cached:.3f}"),
        ("image path (baseline)", f"{t_images:.1f} s  train top-1 {acc_images:.3f}"),
        ("speed-up", f"{ratios['cached_vs_images']:.1f}x (target >= 20x); top-1 diff {ratios['top1_diff_points']:+.1f} pt"),
    ])
    return line


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="tiny")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no history line (CI)")
    args = p.parse_args(argv)
    from fastfc.data.ffcv import quiet_numba_finalizer_noise
    quiet_numba_finalizer_noise()
    if args.smoke:
        run(per_class=3, epochs=2, workers=1, batch_size=8, history=False)
    else:
        run(encoder_name=args.encoder, per_class=args.per_class, epochs=args.epochs)


if __name__ == "__main__":
    main()
