"""Exact, distributed reading of the shift-set webdataset shards written by ``data_prep.shifts``.

A set folder holds ``<set>-000000.tar, ...`` and ``meta.json`` (classes, ImageNet indices, counts,
per-shard counts). Each sample has key ``%08d`` and exactly three members: the original image
bytes (``jpg``/``jpeg``/``png``/``webp``/``bmp``), ``cls`` (ASCII int, the set's own label space,
the README's shift-set table) and ``json`` (``{"path": ..., "imagenet": [...]}``).

Safety: only whitelisted members are ever read or decoded; any other member (``.pyd``,
``.pickle``, ``.pth``, ...) stops the read with a :class:`ShardFormatError` naming the shard, and
is rejected by name *before* its bytes are read -- nothing is ever unpickled.

Exactness: ``R`` ranks x ``W`` workers form ``G = R*W`` global workers, ``g = rank*W + worker``.
With ``n = n_shards >= G`` shard ``i`` goes to global worker ``i % G``. Otherwise global worker
``g`` reads shard ``j = g % n`` together with the other ``c_j`` workers ``g' ≡ j (mod n)``, and
keeps the samples at positions ``i`` in that shard with ``i % c_j == g // n``; the bytes of the
samples it does not keep are skipped, not read. Each worker walks one shard instead of all of
them. Every sample is read exactly once overall: no padding, no duplicates (unlike
``DistributedSampler``). Splitting is done here, not by webdataset (1.0.2 reads ``RANK`` /
``WORLD_SIZE`` from the environment and refuses world size > 1 without a node splitter).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision import transforms
from webdataset.tariterators import group_by_keys, tar_file_expander

from fastfc.cpus import fit_workers
from fastfc.data.images import BadImageError, decode_rgb
from fastfc.data.shifts import read_meta, set_decoding  # a set's meta.json (also re-exported)

#: image extension -> formats PIL may report for it (camera JPEGs open as "MPO").
IMAGE_FORMATS = {"jpg": ("JPEG", "MPO"), "jpeg": ("JPEG", "MPO"), "png": ("PNG",),
                 "webp": ("WEBP",), "bmp": ("BMP",)}
ALLOWED_MEMBERS = frozenset(IMAGE_FORMATS) | {"cls", "json"}
_MEMBER_RE = re.compile(r"^([0-9]+)\.([A-Za-z0-9]+)$")


class ShardFormatError(ValueError):
    """A shard breaks the format (unexpected member, missing/duplicate member, bad value)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # webdataset appends stream/url objects to ``args``; keep it readable
        return self.message


@dataclass(frozen=True)
class RawSample:
    """One sample as stored: ``image`` is the undecoded file bytes, ``ext`` its format extension,
    ``label`` the ``cls`` int (set's own label space), ``info`` the parsed ``json`` member."""
    key: str
    shard: str
    ext: str
    image: bytes
    label: int
    info: dict


def shard_paths(set_dir: str | Path, meta: dict | None = None) -> list[tuple[Path, int]]:
    """``[(path, count), ...]`` of the set's shards in meta.json order.

    Raises:
        FileNotFoundError: meta.json or a listed shard is missing.
        ValueError: a shard name is not a plain file name.
    """
    meta = read_meta(set_dir) if meta is None else meta
    out = []
    for entry in meta["shards"]:
        name = entry["name"]
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"{Path(set_dir) / 'meta.json'}: bad shard name {name!r}")
        path = Path(set_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} listed in meta.json is missing")
        out.append((path, int(entry["count"])))
    return out


def crop_border(img: Image.Image, px: int) -> Image.Image:
    """Cut ``px`` pixels off every border: a W x H image becomes (W - 2px) x (H - 2px).

    Raises:
        ValueError: ``px < 0`` or the image has a side of at most ``2 * px``.
    """
    if px < 0:
        raise ValueError(f"border crop must be >= 0 px, got {px}")
    if px == 0:
        return img
    w, h = img.size
    if w <= 2 * px or h <= 2 * px:
        raise ValueError(f"cannot crop {px} px off each border of a {w}x{h} image")
    return img.crop((px, px, w - px, h - px))


class ResizeCenterCrop:
    """``Resize(resolution, bicubic)`` + ``CenterCrop(resolution)`` of torchvision, in one PIL
    resample that computes only the kept square.

    torchvision resizes the whole image (short side to ``resolution``, long side truncated to
    int) and then throws the borders away; here the same output grid is mapped onto the source
    with PIL's ``box`` argument, so the filter scale and every output pixel's centre are the
    same and only the discarded columns (or rows) are skipped. Outputs equal torchvision's up to
    float rounding of the filter taps: on real photos a few % of the pixels differ, by a mean
    under 0.1 and at most a few grey levels (tests/test_shards.py checks it).
    Returns an RGB PIL image of ``resolution x resolution``.
    """

    def __init__(self, resolution: int):
        self.resolution = int(resolution)

    def __call__(self, img: Image.Image) -> Image.Image:
        r, (w, h) = self.resolution, img.size
        if w <= h:  # torchvision's _compute_resized_output_size
            new_w, new_h = r, int(r * h / w)
        else:
            new_w, new_h = int(r * w / h), r
        left, top = int(round((new_w - r) / 2.0)), int(round((new_h - r) / 2.0))  # CenterCrop's rounding
        sx, sy = w / new_w, h / new_h
        return img.resize((r, r), Image.BICUBIC, box=(left * sx, top * sy, (left + r) * sx, (top + r) * sy))

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(resolution={self.resolution})"


class ToNormalizedTensor:
    """RGB PIL image -> float32 ``(3, H, W)``, ``(x / 255 - mean) / std``: ``ToTensor`` +
    ``Normalize`` of torchvision in one pass over the pixels (equal to within 1e-6)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(mean), tuple(std)
        self._shift = torch.tensor(self.mean).view(3, 1, 1) * 255
        self._scale = 1 / (torch.tensor(self.std).view(3, 1, 1) * 255)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)
        return x.sub_(self._shift).mul_(self._scale).contiguous()

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean}, std={self.std})"


def eval_transform(resolution: int, mean: Sequence[float], std: Sequence[float]) -> transforms.Compose:
    """Evaluation transform for an RGB PIL image: the paper's (and CLIP's) Resize + CenterCrop.

    Bicubic ``Resize(resolution)`` of the short side and ``CenterCrop(resolution)``
    (:class:`ResizeCenterCrop`), then ``ToTensor`` (0..1) and ``Normalize(mean, std)``
    (:class:`ToNormalizedTensor`; per-channel, RGB, 0..1 scale). Same output as torchvision's
    ``Compose([Resize, CenterCrop, ToTensor, Normalize])`` (see :class:`ResizeCenterCrop`),
    about 1.2x faster per image on ImageNet-sized photos. A set's own decoding (EXIF, border crop)
    comes before it, from its ``meta.json`` (:func:`set_decoding`).

    Returns:
        A callable mapping a PIL image to a float32 tensor ``(3, resolution, resolution)``.
    """
    return transforms.Compose([ResizeCenterCrop(resolution), ToNormalizedTensor(mean, std)])


def _iter_shard(shard: Path, expected: int, keep=None) -> Iterator[tuple[str, dict]]:
    """``(key, {ext: bytes})`` of one shard's samples, structure-checked, bytes undecoded.

    ``keep(i)`` (``i``: the sample's position in the shard) picks samples; the others' bytes are
    skipped, never read into memory, but their member names are still checked against the
    whitelist and their keys still count towards ``expected`` and the duplicate check.
    """
    keys: list[str] = []  # every sample key in shard order
    known: set[str] = set()
    kept: set[str] = set()

    def select(fname: str) -> bool:  # runs on each member's name before its bytes are read
        m = _MEMBER_RE.match(fname)
        if m is None or m.group(2).lower() not in ALLOWED_MEMBERS:
            raise ShardFormatError(
                f"{shard}: member {fname!r} is not allowed (only <digits>.{{"
                f"{','.join(sorted(ALLOWED_MEMBERS))}}}); refusing to read this shard")
        key = m.group(1)
        if not keys or keys[-1] != key:
            if key in known:
                raise ShardFormatError(f"{shard}: sample {key!r} appears twice (duplicate key)")
            keys.append(key)
            known.add(key)
            if keep is None or keep(len(keys) - 1):
                kept.add(key)
        return key in kept

    with open(shard, "rb") as stream:
        files = tar_file_expander([{"url": str(shard), "stream": stream}], select_files=select)
        for sample in group_by_keys(files):
            key = sample["__key__"]
            members = {k: v for k, v in sample.items() if not k.startswith("__")}
            images = [k for k in members if k in IMAGE_FORMATS]
            if len(images) != 1 or "cls" not in members or "json" not in members:
                raise ShardFormatError(f"{shard}: sample {key!r} has members {sorted(members)}; "
                                       "need exactly one image, one cls and one json")
            yield key, members
    if len(keys) != expected:
        raise RuntimeError(f"{shard}: holds {len(keys)} samples but meta.json says {expected}")


def _parse(shard: Path, key: str, members: dict) -> RawSample:
    ext = next(k for k in members if k in IMAGE_FORMATS)
    cls = members["cls"].decode("ascii", "replace").strip()
    if not cls.isdecimal():
        raise ShardFormatError(f"{shard}: {key}.cls is not a decimal int: {cls[:40]!r}")
    try:
        info = json.loads(members["json"].decode("utf-8"))
    except ValueError as exn:
        raise ShardFormatError(f"{shard}: {key}.json is not UTF-8 JSON: {exn}") from None
    return RawSample(key, shard.name, ext, members[ext], int(cls), info)


def iter_samples(set_dir: str | Path, *, rank: int = 0, world_size: int = 1, worker: int = 0,
                 num_workers: int = 1) -> Iterator[RawSample]:
    """The samples of global worker ``g = rank*num_workers + worker`` of ``G = world_size*num_workers``
    (split as in the module doc), in set order, undecoded. The transform-free read path.

    Raises:
        ValueError: bad rank/worker numbers.
        ShardFormatError (a ValueError): a forbidden/missing/duplicate member or bad cls/json.
        RuntimeError: a shard's sample count differs from meta.json.
        FileNotFoundError: meta.json or a shard is missing.
    """
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"need 0 <= rank < world_size and 0 <= worker < num_workers, got "
                         f"rank={rank} world_size={world_size} worker={worker} num_workers={num_workers}")
    shards = shard_paths(set_dir)
    G, g = world_size * num_workers, rank * num_workers + worker
    if len(shards) >= G:  # shard split
        for path, count in shards[g::G]:
            for key, members in _iter_shard(path, count):
                yield _parse(path, key, members)
    else:  # sample split inside one shard, shared by the c workers g' = j (mod n)
        n = len(shards)
        path, count = shards[g % n]
        c, r = (G - g % n + n - 1) // n, g // n
        for key, members in _iter_shard(path, count, keep=lambda i: i % c == r):
            yield _parse(path, key, members)


def decode_image(sample: RawSample, *, exif_upright: bool = False) -> Image.Image:
    """Decode the image bytes to an RGB PIL image by :mod:`fastfc.data.images`'s policy, the one the
    ImageNet converter applies too (as stored, or turned by the EXIF orientation with
    ``exif_upright``; 16-bit grey scaled, not clipped; CMYK, palette, alpha: see there).

    Raises:
        ShardFormatError: undecodable bytes, or a format that differs from the extension.
    """
    try:
        rgb, fmt = decode_rgb(sample.image, f"{sample.key}.{sample.ext}", exif_upright=exif_upright)
    except BadImageError as exn:
        raise ShardFormatError(f"{sample.shard}: cannot decode {exn.path}: {exn.reason}") from None
    if fmt not in IMAGE_FORMATS[sample.ext]:
        raise ShardFormatError(f"{sample.shard}: {sample.key}.{sample.ext} holds a {fmt} image")
    return rgb


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group if initialised, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardReader(IterableDataset):
    """Iterable over this rank's (and DataLoader worker's) share of a shard set.

    Yields ``(image, label, key)``: ``image`` is ``transform(rgb_pil)`` (the PIL image itself when
    ``transform`` is None; ``rgb_pil`` decoded as the set's ``meta.json`` says, :func:`set_decoding`),
    ``label`` an int in the set's label space, ``key`` the ``%08d`` string.
    ``rank``/``world_size`` default to the initialised process group (else 0/1) and are fixed at
    construction; the worker split comes from ``get_worker_info()``. Every rank must use the same
    number of DataLoader workers. A rank or worker with no data yields nothing.
    """

    def __init__(self, set_dir: str | Path, *, transform=None, rank: int | None = None,
                 world_size: int | None = None):
        super().__init__()
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        self.set_dir = Path(set_dir)
        self.meta = read_meta(self.set_dir)
        self.decoding = set_decoding(self.meta)
        self.transform = transform
        self.rank, self.world_size = dist_rank_world() if rank is None else (rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for s in iter_samples(self.set_dir, rank=self.rank, world_size=self.world_size,
                              worker=worker, num_workers=num_workers):
            img = crop_border(decode_image(s, exif_upright=self.decoding["exif_upright"]), self.decoding["border_crop"])
            yield (img if self.transform is None else self.transform(img)), s.label, s.key


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``[(image (3,H,W), label, key), ...]`` -> ``(images [B,3,H,W], labels [B] int64, keys list[str])``."""
    images, labels, keys = zip(*batch)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), list(keys)


def make_shard_loader(set_dir: str | Path, *, transform, batch_size: int, num_workers: int | None = None,
                      rank: int | None = None, world_size: int | None = None,
                      pin_memory: bool = False) -> DataLoader:
    """DataLoader over this rank's exact share of a set (no padding, ``drop_last=False``).

    Args:
        transform: PIL RGB image -> float32 tensor ``(3, H, W)``, e.g. :func:`eval_transform`.
        batch_size: samples per batch (the last batch of each worker may be smaller).
        num_workers: DataLoader workers per rank (0 = read in this process; default and upper bound:
            :func:`fastfc.cpus.fit_workers`); same on every rank.
        rank, world_size: default to the initialised process group, else 0 / 1.

    Returns:
        A DataLoader yielding ``(images [B,3,H,W] float32, labels [B] int64, keys list[str])``.
        Sum the per-rank sample counts (all_reduce) and pass the total to :func:`check_count`.
    """
    ds = ShardReader(set_dir, transform=transform, rank=rank, world_size=world_size)
    return DataLoader(ds, batch_size=batch_size, num_workers=fit_workers(num_workers, "num_workers"), drop_last=False,
                      collate_fn=collate, pin_memory=pin_memory)


def check_count(set_dir: str | Path, n_seen: int) -> None:
    """Check that ``n_seen`` (samples read over all ranks) equals meta.json's ``count``.

    Raises:
        RuntimeError: the counts differ; the message names the set dir and both numbers.
    """
    expected = int(read_meta(set_dir)["count"])
    if int(n_seen) != expected:
        raise RuntimeError(f"{set_dir}: read {int(n_seen)} samples but meta.json count is {expected}")
