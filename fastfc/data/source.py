"""One data source behind one face: a beton, a shard set or an image folder.

Every stage that reads images (``fastfc features``, the probe's train source, ``fastfc eval``)
opens its input with :func:`open_source` and asks the :class:`Source` alone: how many images
(``count``), the fingerprint its feature cache is keyed by (:meth:`Source.fingerprint`), its record
(``meta``), set name, label space and decoding, and this rank's batches (:meth:`Source.batches`).
:func:`source_kind` is the one place that tells the three kinds apart:

* ``"beton"``: a file, an ffcv beton written by ``python -m data_prep.imagenet`` (its folder's
  ``meta.json`` beside it lists the classes and the writer's settings);
* ``"shards"``: a folder holding ``meta.json``, a set written by ``python -m data_prep.shifts``
  (:func:`fastfc.data.shifts.read_meta`; its decoding, EXIF upright and border crop, travels in it);
* ``"folder"``: any other folder, an ImageNet-layout image folder ``<wnid>/*`` (val or train),
  listed here with the ``imagenet-val`` registry entry's label rule (:func:`read_folder`) and read
  by :mod:`fastfc.data.folder` through the shard reader's decode and the evaluation transform.

Torch-free at import (the CLI checks its inputs through it before torch): a beton's ``count`` and
``meta`` import ffcv's reader, and :meth:`Source.batches` imports torch, where they run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from fastfc.data import shifts
from fastfc.data.betons import beton_samples, check_beton
from fastfc.data.images import ListingError
from fastfc.data.shifts import ID_SET, read_meta, set_decoding

KINDS = ("beton", "shards", "folder")


def source_kind(path: str | Path) -> str:
    """``"beton"`` (a file), ``"shards"`` (a folder holding ``meta.json``) or ``"folder"`` (any other
    folder: an image folder, whose listing is checked when it is read).

    Raises:
        FileNotFoundError: ``path`` is neither a file nor a folder; one line naming it and the three
            things a source can be.
    """
    path = Path(path)
    if path.is_file():
        return "beton"
    if path.is_dir():
        return "shards" if (path / "meta.json").is_file() else "folder"
    raise FileNotFoundError(
        f"{path}: no such file or folder; give a .beton written by `python -m data_prep.imagenet`, a "
        "shift-set folder written by `python -m data_prep.shifts` or an ImageNet val folder (<wnid>/*.JPEG)")


def open_source(path: str | Path) -> Source:
    """The :class:`Source` at ``path`` (:func:`source_kind`); nothing but its kind is read yet.

    Raises:
        FileNotFoundError: as :func:`source_kind`.
    """
    return Source(Path(path), source_kind(path))


# ----------------------------------------------------------------------------- an image folder's listing

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
        listing = shifts.list_set(ID_SET, root, shifts.imagenet_wnids())
    except (ListingError, shifts.LabelSpaceError) as e:
        raise ValueError(str(e)) from None
    meta = {"set": ID_SET, "classes": listing.classes, "imagenet_indices": listing.imagenet_indices,
            "projection": shifts.get(ID_SET).projection, "count": len(listing.files),
            "per_class": [0] * len(listing.classes)}
    for label in listing.labels:
        meta["per_class"][label] += 1
    return FolderSet(root, listing.files, listing.labels, meta)


def folder_fingerprint(folder: FolderSet) -> str:
    """sha256 over every file's relative path, size, mtime (ns) and label: any change rebuilds a cache."""
    h = hashlib.sha256()
    for rel, label in zip(folder.files, folder.labels):
        st = (folder.root / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the source

class Source:
    """A beton, a shard set or an image folder (``kind``: one of :data:`KINDS`) at ``path``, as
    :func:`open_source` opens it. What it reads (``meta``, a folder's listing, ``count``, the
    fingerprint) is read once, when first asked, and kept.
    """

    def __init__(self, path: Path, kind: str):
        if kind not in KINDS:
            raise ValueError(f"source kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.path, self.kind = Path(path), kind

    def __repr__(self) -> str:
        return f"Source({str(self.path)!r}, kind={self.kind!r})"

    @cached_property
    def listing(self) -> FolderSet:
        """An image folder's files and labels (:func:`read_folder`). Raises ``ValueError`` for
        another kind, and as :func:`read_folder` for a folder not in ``<wnid>/*`` layout."""
        if self.kind != "folder":
            raise ValueError(f"{self.path}: a {self.kind}, not an image folder; it has no listing")
        return read_folder(self.path)

    @cached_property
    def meta(self) -> dict:
        """Its record: a shard set's ``meta.json`` (:func:`fastfc.data.shifts.read_meta`); an image
        folder's listing meta (:class:`FolderSet`); a beton's folder's ``meta.json``, once the beton is
        checked against it (:func:`fastfc.data.betons.check_beton`, which imports ffcv's reader).

        Raises:
            FileNotFoundError / ValueError: a missing or unreadable ``meta.json``, a beton it does not
                describe, a folder not in ``<wnid>/*`` layout; one line naming the file.
        """
        if self.kind == "folder":
            return self.listing.meta
        if self.kind == "shards":
            return read_meta(self.path)
        return check_beton(self.path)

    @cached_property
    def count(self) -> int:
        """The number of images: a folder's listed files, a shard set's ``meta.json`` ``count``, a
        beton's samples from its header (:func:`fastfc.data.betons.beton_samples`; no ``meta.json``
        needed beside it, but checked against one there)."""
        if self.kind == "folder":
            return len(self.listing.files)
        if self.kind == "shards":
            return int(self.meta["count"])
        return beton_samples(self.path)

    @property
    def name(self) -> str:
        """The set's name: its ``meta.json``'s ``set`` (``imagenet-val`` for an image folder, read
        from its listing); a beton's file name.

        Raises:
            ValueError: a shard set's ``meta.json`` names no set; the message names the file.
        """
        if self.kind == "beton":
            return self.path.name
        name = self.meta.get("set")
        if not isinstance(name, str):
            raise ValueError(f"{self.path / 'meta.json'}: names no set (no \"set\" field); write the set again "
                             "with `python -m data_prep.shifts`")
        return name

    @property
    def space(self) -> dict:
        """The label space it is scored in: ``{"set", "classes", "imagenet_indices", "projection"}``
        from a shard set's or image folder's meta; for a beton the classes of the ``meta.json``
        beside it, ``set`` its file name, no ImageNet indices, projection ``none``."""
        if self.kind == "beton":
            return {"set": self.path.name, "classes": self.meta["classes"], "imagenet_indices": None,
                    "projection": "none"}
        return {k: self.meta[k] for k in ("set", "classes", "imagenet_indices", "projection")}

    @property
    def decoding(self) -> dict:
        """How its images are decoded before the evaluation transform, for ``results.json``:
        ``{"exif_upright": bool, "border_crop": int px}``. A shard set: as its ``meta.json`` says
        (:func:`fastfc.data.shifts.set_decoding`); an image folder: as stored, uncropped; a beton: its
        writer's ``exif_upright`` (``True`` for a beton written before the option existed, which was
        stored upright), never cropped."""
        if self.kind != "beton":
            return set_decoding(self.meta)
        writer = self.meta.get("writer", {})
        return {"exif_upright": bool(writer.get("exif_upright", True)), "border_crop": 0}

    def fingerprint(self) -> str:
        """The sha256 hex digest a feature cache is keyed by: a beton by its resolved path, size and
        mtime (ns); a shard set by its ``meta.json``'s bytes (which hold every shard's sha256); an image
        folder by every file's path, size, mtime and label (:func:`folder_fingerprint`). Computed once
        per :class:`Source`."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        if self.kind == "folder":
            return folder_fingerprint(self.listing)
        if self.kind == "shards":
            return hashlib.sha256((self.path / "meta.json").read_bytes()).hexdigest()
        st = self.path.stat()
        return hashlib.sha256(f"{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()

    def batches(self, *, resolution: int, mean, std, batch_size: int, num_workers: int | None,
                rank: int = 0, world_size: int = 1, device="cpu"):
        """This rank's contiguous share of the images, in set order: ``(rows [B] int64, images
        [B,3,S,S] float32, labels [B] int64)`` per batch, ``rows`` indexing the whole set (``S`` =
        ``resolution``); every image read exactly once over ``world_size`` ranks. A shard set or image
        folder: the shard reader's decode (as ``meta.json`` says) and the evaluation transform
        (:func:`fastfc.data.shards.eval_transform`, normalised by ``mean``/``std``), on the CPU; a beton:
        ffcv's centre-crop decoder, on ``device``. Imports torch (and ffcv for a beton)."""
        kw = {"batch_size": batch_size, "num_workers": num_workers, "rank": rank, "world_size": world_size}
        if self.kind == "beton":
            yield from self._beton_batches(resolution, mean, std, device=device, **kw)
            return
        from fastfc.data.shards import eval_transform

        transform = eval_transform(resolution, mean, std)
        if self.kind == "folder":  # ImageNet val or train from its folder, through the shard path's transform
            from fastfc.data.folder import folder_batches

            yield from folder_batches(self.listing, transform, **kw)
            return
        import torch

        from fastfc.data.shards import make_shard_loader

        for images, labels, keys in make_shard_loader(self.path, transform=transform, **kw):  # keys: row numbers
            yield torch.tensor([int(k) for k in keys]), images, labels

    def _beton_batches(self, resolution: int, mean, std, *, device, batch_size: int, num_workers: int | None,
                       rank: int, world_size: int):
        import torch

        from fastfc.data.ffcv import make_loader

        n = self.count
        start, stop = n * rank // world_size, n * (rank + 1) // world_size
        if start == stop:
            return
        loader = make_loader(self.path, train=False, batch_size=batch_size, resolution=resolution, mean=mean, std=std,
                             num_workers=num_workers, device=device, indices=range(start, stop))
        row = start
        for images, labels in loader:
            yield torch.arange(row, row + len(labels)), images, labels
            row += len(labels)
