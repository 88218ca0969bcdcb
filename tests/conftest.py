"""Shared fixtures: real-photo ImageNet trees and their conversions, built once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.beton import WriterSettings
from data_prep.imagenet import convert, list_classes, list_split
from fastfc.fixtures.photos import make_imagenet_tree

RED_CMYK = "train/n01440764/red_cmyk.JPEG"


@pytest.fixture(scope="session")
def photo_tree(tmp_path_factory):
    """10 classes x (30 train + 10 val) real-photo JPEGs with every planted quirk, plus a 64x64 pure-red CMYK JPEG."""
    root = tmp_path_factory.mktemp("imagenet")
    tree = make_imagenet_tree(root, quirks=True)
    Image.new("RGB", (64, 64), (255, 0, 0)).convert("CMYK").save(root / RED_CMYK, "JPEG", quality=95)
    tree.counts["train"]["n01440764"] += 1
    return tree


@pytest.fixture(scope="session")
def converted(photo_tree, tmp_path_factory):
    """``photo_tree`` converted with the default recipe: ``(out_dir, meta)``."""
    out = tmp_path_factory.mktemp("betons")
    meta = convert(photo_tree.root, out, settings=WriterSettings(), workers=2)
    return out, meta


def beton_index(src: Path, split: str, relpath: str) -> int:
    """Index in the beton of the source file ``relpath`` (beton order = listing order)."""
    return list_split(Path(src), split, list_classes(Path(src))).files.index(relpath)


def rel(tree, path: Path) -> str:
    return Path(path).relative_to(tree.root).as_posix()


def mean_rgb(img: np.ndarray) -> np.ndarray:
    return img.reshape(-1, 3).mean(axis=0)


@pytest.fixture(scope="session")
def small_beton(tmp_path_factory):
    """A 300-image real-photo train beton stored at 64 px (cheap to decode) for training tests."""
    root = tmp_path_factory.mktemp("train-src")
    make_imagenet_tree(root, quirks=False, val_per_class=1)
    out = tmp_path_factory.mktemp("train-beton")
    convert(root, out, splits=("train",), settings=WriterSettings(max_resolution=64), workers=2)
    return out / "train.beton"


@pytest.fixture(scope="session")
def beton63(tmp_path_factory):
    """A 63-image (9 classes x 7) train beton at 64 px: with a global batch of 8, 8 steps per
    epoch (the last of 7 images), and ffcv's distributed order pads 2 ranks to 32 images each."""
    root = tmp_path_factory.mktemp("train63-src")
    make_imagenet_tree(root, n_classes=9, train_per_class=7, val_per_class=1, quirks=False)
    out = tmp_path_factory.mktemp("train63-beton")
    convert(root, out, splits=("train",), settings=WriterSettings(max_resolution=64), workers=2)
    return out / "train.beton"


def file_size_limit(max_bytes: int):
    """A ``preexec_fn`` giving a child process a real file-size limit (``RLIMIT_FSIZE``), as a full
    disk stops a write: SIGXFSZ ignored, so a write past the limit raises ``EFBIG``."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit
