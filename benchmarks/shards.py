"""Benchmark: shift-set evaluation read throughput, shards vs ImageFolder, img/s.

Both sides read the same real-photo JPEGs (an ImageNet-R-style set of 10 WNID folders, longer
side 160-500 px) with the same eval transform (short side → 224 bicubic, centre crop,
normalise), the same DataLoader workers and batch size, in interleaved rounds:

* baseline: torchvision ``ImageFolder`` + CLIP's preprocess as torchvision composes it
  (``Resize``, ``CenterCrop``, ``ToTensor``, ``Normalize``);
* fastfc: the set's webdataset shards + :func:`fastfc.data.shards.eval_transform` (the same
  output, one resample over the kept square, one pass to normalise).

A second pair reads the bytes alone after evicting them from the page cache: the storage side of
a first evaluation pass, where one sequential tar beats thousands of small files.

Target (issue 7): shards ≥ 2× ImageFolder.

    python -m benchmarks.shards            # ~1 min on 2 cores
    python -m benchmarks.shards --smoke    # tiny, for CI
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

from data_prep.shifts import list_set, read_imagenet_classes, write_set
from fastfc.data.shards import eval_transform, make_shard_loader
from fastfc.fixtures.photos import make_imagenet_tree
from fastfc.models import CLIP_MEAN, CLIP_STD

from .common import Target, interleaved_times, parser, print_table, record

MAKE_BENCH: list[str] | None = []  # `make bench` runs it with these arguments
TARGETS = (Target("shards", "shard reads vs ImageFolder", lambda l: l["ratios"]["shards_vs_imagefolder"], "x", ">= 2x",
                  lambda v: v >= 2),)


def _drain(loader) -> int:
    return sum(len(batch[1]) for batch in loader)


def _cold_read(paths: list[str]):
    """Read every byte of ``paths`` after evicting them from the page cache (``posix_fadvise``
    DONTNEED needs no root): the storage side of a first evaluation pass, without decoding."""
    def read() -> int:
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        total = 0
        for p in paths:
            with open(p, "rb") as f:
                total += len(f.read())
        return total
    return read


def run(*, per_class: int, repeats: int, workers: int, batch_size: int = 64, resolution: int = 224,
        history: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tree = make_imagenet_tree(Path(tmp) / "src", train_per_class=per_class, val_per_class=0, quirks=False)
        folder = tree.root / "train"
        write_set(list_set("imagenet-r", folder, read_imagenet_classes()), folder, Path(tmp) / "out", workers=workers)
        shards = make_shard_loader(Path(tmp) / "out" / "imagenet-r",
                                   transform=eval_transform(resolution, CLIP_MEAN, CLIP_STD),
                                   batch_size=batch_size, num_workers=workers)
        clip_preprocess = transforms.Compose([
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(resolution), transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
        imagefolder = DataLoader(ImageFolder(str(folder), transform=clip_preprocess), batch_size=batch_size,
                                 num_workers=workers)
        n = _drain(shards)
        assert n == _drain(imagefolder), "both sides must read the same images"
        tars = [str(p) for p in sorted((Path(tmp) / "out" / "imagenet-r").glob("*.tar"))]
        files = [path for path, _ in imagefolder.dataset.samples]
        t = interleaved_times({"shards": lambda: _drain(shards), "imagefolder": lambda: _drain(imagefolder),
                               "cold_tars": _cold_read(tars), "cold_files": _cold_read(files)}, repeats)
        t_shards, t_folder = t["shards"], t["imagefolder"]
    figures = {"images": n, "workers": workers, "batch_size": batch_size, "resolution": resolution, "repeats": repeats,
               "shards_img_per_s": n / t_shards, "imagefolder_img_per_s": n / t_folder,
               "cold_read_shards_img_per_s": n / t["cold_tars"], "cold_read_files_img_per_s": n / t["cold_files"]}
    ratios = {"shards_vs_imagefolder": t_folder / t_shards, "cold_read_shards_vs_files": t["cold_files"] / t["cold_tars"]}
    line = record("shards", figures, ratios, save=history)
    print_table(f"shards: {n} real-photo images, {workers} workers, batch {batch_size}, "
                f"median of {repeats} interleaved rounds", [
        ("webdataset shards", f"{figures['shards_img_per_s']:.0f} img/s"),
        ("ImageFolder (baseline)", f"{figures['imagefolder_img_per_s']:.0f} img/s"),
        ("ratio", f"{ratios['shards_vs_imagefolder']:.2f}x (target >= 2x)"),
        ("storage read only, page cache evicted", f"tars {figures['cold_read_shards_img_per_s']:.0f} img/s vs files "
                                                  f"{figures['cold_read_files_img_per_s']:.0f} img/s = "
                                                  f"{ratios['cold_read_shards_vs_files']:.1f}x"),
    ])
    return line


def main(argv=None) -> None:
    p = parser(__doc__, per_class=60, repeats=5)
    args = p.parse_args(argv)
    if args.smoke:
        run(per_class=2, repeats=1, workers=1, batch_size=8, resolution=32, history=False)
    else:
        run(per_class=args.per_class, repeats=args.repeats, workers=args.workers)


if __name__ == "__main__":
    main()
