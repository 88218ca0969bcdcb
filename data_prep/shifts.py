"""Shift sets → webdataset tar shards in each set's own label space, once.

Usage::

    python -m data_prep.shifts --set imagenet-r --src /data/imagenet-r --out /data/shards \\
        --imagenet-classes /data/betons/meta.json
    python -m data_prep.shifts --set objectnet --src /data/objectnet-1.0 --out /data/shards \\
        --imagenet-classes /data/imagenet/train

Output: ``OUT/<set>/<set>-000000.tar …`` and ``OUT/<set>/meta.json`` (set, classes, ImageNet
indices per class, images per class, projection, count, shards with count and sha256, every file
seen but not converted with its reason, the dropped folders, and how the reader decodes the images:
``exif_upright`` and ``border_crop``, :func:`fastfc.data.shifts.set_decoding`; both off by default,
as the released code reads them). Folders are listed by
:mod:`fastfc.data.images`'s policy, which also decodes the images when they are read back.
Each sample keeps the original image bytes (``.jpg``/``.png``/…, named by the *content's*
format; other formats, e.g. TIFF, as a lossless PNG of the decoded image), ``.cls`` (int in the
set's label space) and ``.json`` (source path, ImageNet indices).
Keys are the sample index, ``%08d``: unique and dot-free (webdataset splits keys at the first
dot; ImageNet-A file names contain dots). Order is sorted and tars are written with fixed
metadata, so a conversion is reproducible byte for byte. Label rules: :mod:`fastfc.data.shifts`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from contextlib import suppress
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import fastfc
from fastfc.atomic import (WriteError, check_apart, exit_cleanly_on_sigterm, is_out_of_room, output_lock, publish,
                           room_message, tmp_name, write_json)
from fastfc.cpus import fit_workers
from fastfc.data import images, shifts
from fastfc.data.shifts import SetListing

from .scan import ConversionError, check_files

FORMAT_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}  # MPO: camera JPEGs
DEFAULT_SHARD_BYTES = 250_000_000  # a few shards even for ImageNet-A (about 0.7 GB)


def read_imagenet_classes(path: Path | None = None) -> list[str]:
    """The 1000 sorted ImageNet WNIDs.

    Args:
        path: an ImageNet train folder or a ``data_prep.imagenet`` meta.json; ``None`` takes the
            list timm ships (``timm.data.ImageNetInfo``, installed with open_clip).

    Raises:
        ConversionError: the path is missing or holds no sorted 1000-WNID list.
    """
    if path is None:
        classes = shifts.imagenet_wnids()
    elif path.is_dir():
        classes = [c for c in images.list_class_folders(path).folders if shifts.WNID.match(c)]
    elif path.is_file():
        try:
            classes = json.loads(images.read_label_text(path)).get("classes", [])
        except ValueError as e:
            raise ConversionError(f"{path}: not a meta.json written by data_prep.imagenet ({e})") from None
    else:
        raise ConversionError(f"{path}: not found; pass an ImageNet train folder or the meta.json "
                              "written by data_prep.imagenet")
    if len(classes) != 1000 or any(not shifts.WNID.match(c) for c in classes) or classes != sorted(classes):
        raise ConversionError(f"{path}: expected the 1000 sorted ImageNet WNIDs, found {len(classes)} "
                              "(a --per-class or demo subset is not the ImageNet label space)")
    return classes


def list_set(name: str, src: Path, imagenet_classes: list[str]) -> SetListing:
    """The files and labels of set ``name`` under ``src``, by the set's registry entry
    (:meth:`fastfc.data.shifts.ShiftSet.list`: its layout and label rule).

    Raises:
        ConversionError: ``src`` does not have the set's layout (named, with what to pass instead).
        shifts.LabelSpaceError: a folder or mapping file that breaks the set's label rule.
    """
    try:
        return shifts.list_set(name, src, imagenet_classes)
    except images.ListingError as e:
        raise ConversionError(str(e)) from None


def _probe(path: str):
    """``((extension, re-encode?), None)``, how the file is stored in a shard, or ``(None, why it
    cannot be)``: its own bytes under its format's extension, or, for a format the shard reader does
    not take (TIFF, GIF, ...), a lossless PNG of its decoded RGB image."""
    try:
        fmt = images.probe_image(path).format
        return ((FORMAT_EXT[fmt], False) if fmt in FORMAT_EXT else ("png", True)), None
    except images.BadImageError as e:
        return None, e.reason


def _sample_bytes(path: Path, reencode: bool, exif_upright: bool) -> bytes:
    if not reencode:
        return path.read_bytes()
    out = io.BytesIO()  # the PNG holds no EXIF tag: the decoded pixels as the set decodes them
    Image.fromarray(images.load_rgb(path, exif_upright=exif_upright)).save(out, "PNG")
    return out.getvalue()


def write_set(listing: SetListing, src: Path, out: Path, *, shard_bytes: int = DEFAULT_SHARD_BYTES,
              workers: int | None = None, skip_bad: bool = False, overwrite: bool = False,
              exif_upright: bool = False, border_crop: bool = False) -> dict:
    """Check every image, then write ``out/<set>/`` shards and ``meta.json``. Returns the meta.

    ``exif_upright`` and ``border_crop`` (the set's recommended crop, :attr:`fastfc.data.shifts.ShiftSet.border_crop`:
    ObjectNet's 2 px) are opt-ins recorded in ``meta.json``, which the reader follows
    (:func:`fastfc.data.shifts.set_decoding`); off, the images read as the released code reads them.

    Shards are written under temporary names and renamed, then ``meta.json`` last: a set folder
    with a ``meta.json`` is complete. ``meta.json``'s ``skipped`` names every file seen but not
    converted (the listing's and, with ``skip_bad``, the undecodable ones) with its reason.
    ``workers``: scan processes (default: every usable CPU, :func:`fastfc.cpus.fit_workers`).

    Raises:
        FileExistsError: the set's ``meta.json`` exists and ``overwrite`` is false.
        ConversionError: an unreadable image (named), unless ``skip_bad``; ``shard_bytes`` < 1;
            ``border_crop`` for a set without a recommended crop.
    """
    crop = shifts.get(listing.name).border_crop
    if border_crop and not crop:
        raise ConversionError(f"--objectnet-border-crop: {listing.name} has no border to crop (ObjectNet only)")
    if shard_bytes < 1:
        raise ConversionError(f"--shard-size must be positive, got {shard_bytes / 1e9:g} GB")
    if workers is not None and workers < 1:
        raise ConversionError(f"--workers {workers}: must be >= 1 (omit it to use every usable CPU)")
    set_dir = out / listing.name
    check_apart(set_dir, [("--src", src)], "the set folder")
    if (set_dir / "meta.json").exists() and not overwrite:
        raise FileExistsError(f"{set_dir / 'meta.json'} exists; pass --overwrite to replace the set")
    stored, bad = check_files(_probe, src, listing.files, workers=fit_workers(workers, "--workers", cap=None),
                              skip_bad=skip_bad, desc=f"scan {listing.name}")
    samples = [(rel, label, how) for rel, label, how in zip(listing.files, listing.labels, stored) if how]
    decoding = {"exif_upright": exif_upright, "border_crop": crop if border_crop else 0}
    set_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(set_dir):  # one conversion into set_dir at a time
        return _write_set(listing, samples, src, set_dir, shard_bytes, bad, decoding)


def _write_set(listing: SetListing, samples: list, src: Path, set_dir: Path, shard_bytes: int, bad: list,
               decoding: dict) -> dict:
    """The shards and ``meta.json`` of :func:`write_set`, once its images are checked."""
    shards = _write_shards(listing, samples, src, set_dir, shard_bytes, decoding["exif_upright"])
    expected = {s["name"] for s in shards}
    for stale in set_dir.glob(f"{listing.name}-*.tar"):  # from an earlier, larger conversion
        if stale.name not in expected:
            stale.unlink()
    per_class = np.bincount(np.array([label for _, label, _ in samples], dtype=np.int64), minlength=len(listing.classes))
    meta = {"set": listing.name, "fastfc_version": fastfc.__version__, "source": str(src.resolve()),
            "projection": shifts.get(listing.name).projection, "classes": listing.classes,
            "imagenet_indices": listing.imagenet_indices, "count": len(samples),
            "per_class": per_class.tolist(), **decoding, "shards": shards,
            "skipped": sorted(listing.skipped + bad, key=lambda s: s["file"]),
            "dropped": {"folders": listing.dropped, "images": sum(listing.dropped.values())}}
    write_json(set_dir / "meta.json", meta)
    return meta


def _write_shards(listing: SetListing, samples: list, src: Path, set_dir: Path, shard_bytes: int,
                  exif_upright: bool) -> list[dict]:
    """Write ``samples`` (``(path, label, (ext, re-encode?))``) as shards of about ``shard_bytes``;
    each is published (renamed) only once all are complete. Returns ``[{"name", "count", "sha256"}]``."""
    import webdataset as wds

    shards = []
    writer, stream, writer_bytes = None, None, 0
    needed = sum((src / rel).stat().st_size + 3 * 512 for rel, _, _ in samples)  # the bytes, the headers
    try:
        for key, (rel, label, (ext, reencode)) in enumerate(tqdm(samples, desc=f"write {listing.name}", unit="img",
                                                                 dynamic_ncols=True)):
            if writer is None or writer_bytes >= shard_bytes:
                if writer is not None:
                    _close(writer, stream, set_dir, shards[-1])
                shards.append({"name": f"{listing.name}-{len(shards):06d}.tar", "count": 0})
                stream = open(tmp_name(set_dir / shards[-1]["name"]), "wb")
                # an int mtime: a float one costs a pax header per member, twice the headers to parse
                writer, writer_bytes = wds.TarWriter(stream, encoder=False, mtime=0, user="", group="",
                                                     mode=0o444), 0
            data = _sample_bytes(src / rel, reencode, exif_upright)
            meta = {"path": rel, "imagenet": listing.imagenet_indices[label]}
            writer.write({"__key__": f"{key:08d}", ext: data, "cls": str(label).encode(),
                          "json": json.dumps(meta, sort_keys=True).encode()})
            writer_bytes += len(data) + 3 * 512
            shards[-1]["count"] += 1
        if writer is not None:
            _close(writer, stream, set_dir, shards[-1])
            writer = None
        for s in shards:  # all complete: publish them
            publish(tmp_name(set_dir / s["name"]), set_dir / s["name"])
    except OSError as e:
        if is_out_of_room(e):
            raise WriteError(room_message(tmp_name(set_dir / shards[-1]["name"]), e, needed)) from None
        raise
    finally:
        if writer is not None:
            with suppress(OSError):  # closing writes the tar's end: on a full disk it fails again
                writer.close()
            with suppress(OSError):
                stream.close()
        for s in shards:
            tmp_name(set_dir / s["name"]).unlink(missing_ok=True)
    return shards


def _close(writer, stream, set_dir: Path, shard: dict) -> None:
    """Close a shard (still under its temporary name) and record its sha256."""
    writer.close()
    stream.close()
    h = hashlib.sha256()
    with open(tmp_name(set_dir / shard["name"]), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    shard["sha256"] = h.hexdigest()


def _parser() -> argparse.ArgumentParser:
    sets = "\n".join(f"  {s.name:<16} {s.layout}  [{s.projection}]" for s in shifts.REGISTRY.values())
    p = argparse.ArgumentParser(
        prog="python -m data_prep.shifts",
        description="Convert a distribution-shift test set to webdataset shards in its own label space.",
        epilog=f"sets and the layout expected under --src:\n{sets}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", required=True, choices=list(shifts.REGISTRY), help="which set")
    p.add_argument("--src", type=Path, required=True, help="the set's folder (see the layouts below)")
    p.add_argument("--out", type=Path, required=True, help="shards go to OUT/<set>/")
    p.add_argument("--imagenet-classes", type=Path, default=None, metavar="PATH",
                   help="the 1000 sorted WNIDs: an ImageNet train folder or data_prep.imagenet's meta.json "
                        "(default: the list timm ships)")
    p.add_argument("--shard-size", type=float, default=DEFAULT_SHARD_BYTES / 1e9, metavar="GB",
                   help="shard size in GB (default: %(default).2f); readers split sets with fewer shards "
                        "than ranks x workers by sample")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the scan (default: every CPU this process may use; more are lowered to that)")
    p.add_argument("--skip-bad", action="store_true", help="skip undecodable files, naming them in meta.json")
    p.add_argument("--exif-upright", action="store_true",
                   help="read images turned by their EXIF orientation tag (default: as stored, as torchvision's "
                        "pil_loader and the paper's code); recorded in meta.json")
    p.add_argument("--objectnet-border-crop", action="store_true",
                   help="ObjectNet: cut the 2-px red frame off every image before resizing, as ObjectNet's authors "
                        "recommend (default: no crop, as the paper's code scored it); recorded in meta.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing converted set")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    exit_cleanly_on_sigterm()
    try:
        classes = read_imagenet_classes(args.imagenet_classes)
        listing = list_set(args.set, args.src, classes)
        meta = write_set(listing, args.src, args.out, shard_bytes=int(args.shard_size * 1e9),
                         workers=args.workers, skip_bad=args.skip_bad, overwrite=args.overwrite,
                         exif_upright=args.exif_upright, border_crop=args.objectnet_border_crop)
    except (ConversionError, ValueError, OSError) as e:  # ValueError: LabelSpaceError, ListingError; OSError: --out is a file
        print(f"error: {e}", file=sys.stderr)
        return 1
    present = len(set(listing.labels))
    if present < len(meta["classes"]):  # 1000-way sets: V2 and Sketch have all 1000 class folders
        print(f"note: {meta['set']} has images of {present} of its {len(meta['classes'])} classes; the full set "
              "has every class. Fine for a subset, wrong for the paper's numbers.", file=sys.stderr)
    print(f"{meta['set']}: {meta['count']} images in {present} of {len(meta['classes'])} classes, "
          f"{len(meta['shards'])} shard(s) → {args.out / meta['set']}"
          + (f"; dropped {meta['dropped']['images']} images of unmapped classes" if meta["dropped"]["images"] else "")
          + (f"; {len(meta['skipped'])} skipped, named in meta.json" if meta["skipped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
