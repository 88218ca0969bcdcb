"""CIFAR-10 data for the paper's CIFAR experiment: the datasets, the two train transforms, the loader.

Recipe (``docs/recipe.md``, "CIFAR-10 experiment"):

* "background" variant, train: pad 8 px on every side with the fixed colour (150, 50, 50),
  random-crop 32×32 (no further padding: the image moves by up to ±8 px and the brick red fills the
  gap), horizontal flip, to tensor in [0, 1];
* "raw" variant, train: the same without the padding (the crop would be a no-op): flip, to tensor;
* test: to tensor only.

Sources: real CIFAR-10 through ``torchvision.datasets.CIFAR10`` (downloaded once when online), or,
offline, :class:`PhotoCIFAR10`: 32×32 views of the photographs that ship inside packages
(:mod:`fastfc.fixtures.photos`, the demo's source), 10 classes, with CIFAR10's own item access.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import transforms as T
from torchvision.datasets import CIFAR10, VisionDataset

from fastfc.cifar.config import SOURCES, VARIANTS
from fastfc.fixtures.photos import class_sources, random_view, source_photos

BACKGROUND = (150, 50, 50)  # the paper's brick red, RGB 0-255
PAD = 8


def train_transform(variant: str, *, pad: int = PAD, fill: tuple[int, int, int] = BACKGROUND) -> T.Compose:
    """The train transform of ``variant`` ("raw" or "background"): PIL 32×32 RGB → ``[3, 32, 32]`` float in [0, 1].

    Raises ``ValueError`` for an unknown variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"data.variant = {variant!r}: choose one of {', '.join(VARIANTS)}")
    shift = [T.Pad(pad, fill=fill), T.RandomCrop(32)] if variant == "background" else []
    return T.Compose([*shift, T.RandomHorizontalFlip(), T.ToTensor()])


def test_transform() -> T.Compose:
    """PIL → ``[3, H, W]`` float in [0, 1]; no augmentation."""
    return T.Compose([T.ToTensor()])


class PhotoCIFAR10(VisionDataset):
    """An offline stand-in for CIFAR-10: 32×32 views of the photographs shipped in packages.

    Class ``c`` draws on its own photographs (:func:`fastfc.fixtures.photos.class_sources`); each image is a
    random crop (area 0.3–1.0, aspect 3/4–4/3) resized to 32×32 and randomly flipped. The train and
    test splits are different views (seeds ``seed`` and ``seed + 1``). The interface is
    ``torchvision.datasets.CIFAR10``'s: ``data`` ``[N, 32, 32, 3]`` uint8 RGB, ``targets`` (list of
    int), ``classes`` (10 names, each the photographs it comes from), items ``(PIL image, int)``.

    Raises:
        RuntimeError: too few photographs installed (see :func:`fastfc.fixtures.photos.source_photos`).
    """

    def __init__(self, train: bool = True, transform=None, target_transform=None, *, per_class: int = 50,
                 seed: int = 0):
        super().__init__(root="", transform=transform, target_transform=target_transform)
        self.train = train
        names = [name for name, _ in source_photos()]
        self.classes = ["+".join(names[c::10]) for c in range(10)]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        rng = np.random.default_rng(seed + (0 if train else 1))
        images, self.targets = [], []
        for c, photos in enumerate(class_sources(10)):
            for k in range(per_class):
                images.append(np.asarray(random_view(rng, photos[k % len(photos)], 32, 32, size=(32, 32))))
                self.targets.append(c)
        self.data = np.stack(images)

    __getitem__ = CIFAR10.__getitem__
    __len__ = CIFAR10.__len__


def build_dataset(source: str, *, train: bool, transform, root: str | Path = "data/cifar10", download: bool = True,
                  per_class: int = 50) -> Dataset:
    """CIFAR-10 (``source="cifar10"``, from ``root``, downloaded there when ``download``) or the
    photo stand-in (``"photos"``, ``per_class`` images per class). Raises ``ValueError`` for an
    unknown source and ``OSError`` naming ``root`` when CIFAR-10 is absent and cannot be downloaded."""
    if source == "photos":
        return PhotoCIFAR10(train, transform, per_class=per_class)
    if source != "cifar10":
        raise ValueError(f"data.source = {source!r}: choose one of {', '.join(SOURCES)}")
    try:
        return CIFAR10(str(root), train=train, transform=transform, download=download)
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found or corrupted", or no network
        raise OSError(f"data.root = {root}: no CIFAR-10 there and it could not be downloaded ({e}); run once "
                      "online with data.download = true, or use data.source = \"photos\" offline") from None


class EpochLoader:
    """A ``DataLoader`` shaped for :func:`fastfc.train.train`: ``len()`` batches per epoch, ``indices``
    (the whole set) and the per-rank ``batch_size`` the trainer's plan checks, iteration
    yielding ``(images [B, 3, 32, 32] float32, labels [B] int64)``, and a writable ``next_epoch`` that
    seeds the order (``DistributedSampler.set_epoch``: each rank its share, padded to
    ``ceil(N / ranks)``; the last partial batch kept, as the original's ``DataLoader``) and is passed
    to every callback in ``on_epoch`` (the ε ramp)."""

    def __init__(self, dataset: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 num_workers: int = 0, pin_memory: bool = False, on_epoch=()):
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                          drop_last=False)
        self.loader = DataLoader(dataset, batch_size, sampler=self.sampler, drop_last=False, num_workers=num_workers,
                                 pin_memory=pin_memory, persistent_workers=num_workers > 0)
        self.on_epoch = list(on_epoch)
        self._epoch = 0
        self.indices, self.batch_size = range(len(dataset)), batch_size  # what the trainer plans with

    @property
    def next_epoch(self) -> int:
        return self._epoch

    @next_epoch.setter
    def next_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self.sampler.set_epoch(epoch)
        for callback in self.on_epoch:
            callback(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def rank_share(dataset: Dataset, rank: int, world_size: int) -> torch.utils.data.Subset:
    """Items ``rank, rank + world_size, ...`` of ``dataset``: every item on exactly one rank (evaluation)."""
    return torch.utils.data.Subset(dataset, range(rank, len(dataset), world_size))
