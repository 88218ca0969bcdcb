"""ImageNet val (or train) read straight from its folder, through the shift sets' evaluation path.

The paper scores ImageNet val exactly as it scores the shift sets (docs/recipe.md): the original
JPEG, shorter side resized to the encoder's input (bicubic), centre crop, normalisation. A folder
laid out as ``<wnid>/*`` (the layout ``python -m data_prep.shifts --set imagenet-val`` converts)
is read here with the shard reader's own decode (:func:`fastfc.data.shards.decode_image`) and
transform (:func:`fastfc.data.shards.eval_transform`), so it gives the same embeddings as the
``imagenet-val`` shards written from it. Label = index of the WNID in the 1000 sorted ImageNet
WNIDs, as in every 1000-way set. The probe reads the ImageNet train folder the same way
(:func:`fastfc.probe.train_classes`), as the released code did (``datasets/imagenet.py``,
``ImageNet.populate_train``: ``ImageFolder`` with the evaluation ``preprocess``). Images are
read as stored (the EXIF orientation tag ignored, as ``pil_loader``) and uncropped.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fastfc.data import shifts
from fastfc.data.images import ListingError
from fastfc.data import shards
from fastfc.data.betons import check_beton
from fastfc.data.shards import RawSample, decode_image

SET_NAME = "imagenet-val"
_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}  # content format -> member ext


@dataclass
class FolderSet:
    """An image folder as an evaluation set.

    Attributes:
        root: the folder holding ``<wnid>/`` class folders.
        files: image paths relative to ``root``, in set order (classes by ImageNet index, names sorted).
        labels: int ImageNet index per file.
        meta: the fields of a shard set's ``meta.json`` that scoring reads (``set``, ``classes``,
            ``imagenet_indices``, ``projection``, ``count``, ``per_class``: images per class).
    """

    root: Path
    files: list[str]
    labels: list[int]
    meta: dict


def is_image_folder(path: Path) -> bool:
    """A folder without ``meta.json``: an image folder, not a converted shard set."""
    return path.is_dir() and not (path / "meta.json").is_file()


def read_folder(root: str | Path) -> FolderSet:
    """List ``root/<wnid>/*`` with the ``imagenet-val`` registry entry's label rule (:mod:`fastfc.data.shifts`).

    Raises:
        ValueError: ``root`` holds no class folders (e.g. the flat official release), a folder
            that is not an ImageNet WNID, or an empty class folder; the message names it.
    """
    root = Path(root)
    if not any(d.is_dir() for d in root.iterdir()):
        raise ValueError(f"{root}: no <wnid>/ class folders. Lay ImageNet val out as <wnid>/*.JPEG "
                         "(the flat official release: see data_prep.imagenet --val-labels), or give "
                         "imagenet-val shards written by `python -m data_prep.shifts --set imagenet-val`")
    try:
        listing = shifts.list_set(SET_NAME, root, shifts.imagenet_wnids())
    except (ListingError, shifts.LabelSpaceError) as e:
        raise ValueError(str(e)) from None
    meta = {"set": SET_NAME, "classes": listing.classes, "imagenet_indices": listing.imagenet_indices,
            "projection": shifts.get(SET_NAME).projection, "count": len(listing.files),
            "per_class": [0] * len(listing.classes)}
    for label in listing.labels:
        meta["per_class"][label] += 1
    return FolderSet(root, listing.files, listing.labels, meta)


def source_meta(source: Path) -> dict | None:
    """The set meta of a shard folder (its ``meta.json``) or an image folder; ``None`` for a beton."""
    if is_image_folder(source):
        return read_folder(source).meta
    if source.is_dir():
        return shards.read_meta(source)
    return None


def source_decoding(source: Path) -> dict:
    """How ``source``'s images were decoded, for ``results.json``: ``{"exif_upright", "border_crop"}``.
    A shard set or image folder: :func:`fastfc.data.shards.set_decoding` of its meta (a folder is
    read as stored, uncropped); a beton: its writer's ``exif_upright`` (``True`` for a beton written
    before the option existed, which was stored upright), never cropped."""
    meta = source_meta(source)
    if meta is not None:
        return shards.set_decoding(meta)
    writer = check_beton(source).get("writer", {})
    return {"exif_upright": bool(writer.get("exif_upright", True)), "border_crop": 0}


def fingerprint(folder: FolderSet) -> str:
    """sha256 over every file's relative path, size, mtime (ns) and label: any change rebuilds a cache."""
    h = hashlib.sha256()
    for rel, label in zip(folder.files, folder.labels):
        st = (folder.root / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    return h.hexdigest()


class FolderDataset(Dataset):
    """Rows ``start..stop-1`` of a :class:`FolderSet`: ``(transform(rgb), label, row)`` per item.

    Decoding is the shard reader's (:func:`fastfc.data.shards.decode_image`), the member extension
    taken from the file's content as ``data_prep.shifts`` names it.
    """

    def __init__(self, folder: FolderSet, transform, start: int, stop: int):
        self.folder, self.transform, self.start, self.stop = folder, transform, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        row = self.start + i
        rel = self.folder.files[row]
        data = (self.folder.root / rel).read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as im:
                ext = _EXT.get(im.format, "jpg")
        except Exception:  # undecodable: decode_image raises the named error below
            ext = "jpg"
        img = decode_image(RawSample(rel, str(self.folder.root), ext, data, self.folder.labels[row], {}))
        return self.transform(img), self.folder.labels[row], row


def _collate(batch):
    images, labels, rows = zip(*batch)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), torch.tensor(rows, dtype=torch.int64)


def folder_batches(folder: FolderSet, transform, *, rank: int, world_size: int, batch_size: int,
                   num_workers: int):
    """This rank's contiguous slice of the folder, in set order: ``(rows [B] int64, images [B,3,S,S]
    float32, labels [B] int64)`` per batch; every image read exactly once over all ranks."""
    n = len(folder.files)
    start, stop = n * rank // world_size, n * (rank + 1) // world_size
    if start == stop:
        return
    loader = DataLoader(FolderDataset(folder, transform, start, stop), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate, drop_last=False)
    for images, labels, rows in loader:
        yield rows, images, labels
