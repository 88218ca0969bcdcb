"""Benchmark: ImageNet → beton conversion throughput, img/s per core.

Converts a real-photo ImageNet-style tree (:mod:`fastfc.fixtures.photos`, ImageNet-like sizes) with the
default recipe (proportion, 500 px, p=0.5, q90) on all cores, and reports the scan (integrity
check) and write phases separately. Target (issue 7): ≥ 100 img/s per core at 500 px. There is
no baseline for this one; the figure is tracked over commits in ``results/history.jsonl``.

    python -m benchmarks.convert            # ~1 min on 2 cores
    python -m benchmarks.convert --smoke    # tiny, for CI
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from data_prep.beton import BetonWriter, ImageFiles, WriterSettings
from data_prep.imagenet import list_classes, list_split, scan
from fastfc.fixtures.photos import make_imagenet_tree

from .common import Target, median_time, parser, print_table, record

MAKE_BENCH: list[str] | None = []  # `make bench` runs it with these arguments
TARGETS = (Target("convert", "conversion per core", lambda l: l["figures"]["convert_img_per_s_per_core"], " img/s",
                  ">= 100 img/s", lambda v: v >= 100),)


def run(*, per_class: int, repeats: int, workers: int, history=True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tree = make_imagenet_tree(Path(tmp) / "src", train_per_class=per_class, val_per_class=1)
        classes = list_classes(tree.root)
        settings = WriterSettings()
        n = sum(tree.counts["train"].values())

        def scan_once():
            return scan(list_split(tree.root, "train", classes), tree.root, workers=workers, skip_bad=False)

        max_pixels = scan_once()
        listing = list_split(tree.root, "train", classes)
        files = ImageFiles([str(tree.root / f) for f in listing.files], listing.labels, settings)

        def write_once():
            out = Path(tmp) / "train.beton"
            BetonWriter(out, settings, workers, max_pixels, desc="bench write").write(files)
            return out

        t_scan, _ = median_time(scan_once, repeats)
        t_write, _ = median_time(write_once, repeats)
        src_bytes = sum(p.stat().st_size for p in (tree.root / "train").rglob("*") if p.is_file())
        beton_bytes = (Path(tmp) / "train.beton").stat().st_size
    total = t_scan + t_write
    figures = {"images": n, "workers": workers, "scan_img_per_s": n / t_scan, "write_img_per_s": n / t_write,
               "convert_img_per_s": n / total, "convert_img_per_s_per_core": n / total / workers,
               "source_mb": src_bytes / 1e6, "beton_mb": beton_bytes / 1e6, "settings": settings.as_dict()}
    line = record("convert", figures, {"beton_vs_source_size": beton_bytes / src_bytes},
                  save=history)
    print_table(f"convert: {n} real-photo images, {workers} workers, median of {repeats}", [
        ("scan (integrity check)", f"{figures['scan_img_per_s']:.0f} img/s"),
        ("write (decode+resize+encode)", f"{figures['write_img_per_s']:.0f} img/s"),
        ("whole conversion", f"{figures['convert_img_per_s']:.0f} img/s"),
        ("per core", f"{figures['convert_img_per_s_per_core']:.0f} img/s/core (target >= 100)"),
        ("beton / source size", f"{figures['beton_mb']:.1f} MB / {figures['source_mb']:.1f} MB"),
    ])
    return line


def main(argv=None) -> None:
    p = parser(__doc__, per_class=100, repeats=3)
    args = p.parse_args(argv)
    if args.smoke:
        run(per_class=3, repeats=1, workers=1, history=False)
    else:
        run(per_class=args.per_class, repeats=args.repeats, workers=args.workers)


if __name__ == "__main__":
    main()
