"""ImageNet folders → FFCV ``train.beton`` / ``val.beton`` + ``meta.json``, once.

Usage::

    python -m data_prep.imagenet --src /data/imagenet --out /data/betons
    python -m data_prep.imagenet --src ROOT --out DIR --per-class 50          # quick subset
    python -m data_prep.imagenet --src ROOT --out DIR --val-labels LOC_val_solution.csv
    python -m data_prep.imagenet --verify DIR --src ROOT                        # re-read and check

Input: ``ROOT/train/<wnid>/*`` and ``ROOT/val/<wnid>/*`` (or the official flat
``ROOT/val/ILSVRC2012_val_*.JPEG`` with ``--val-labels``). Label = index of the WNID in the
sorted list of train class folders (docs/recipe.md). Folders are listed and files decoded by
:mod:`fastfc.data.images` (by content, any mode; as stored, or EXIF-upright with
``--exif-upright``), every file checked in a parallel
scan before anything is written, then written by ffcv with the ffcv-imagenet recipe
(``proportion``, 500 px, p=0.5, q90).

Outputs (written under temporary names and renamed together at the end):

* ``DIR/<split>.beton``: fields ``image`` (RGBImageField) and ``label`` (IntField), source order;
* ``DIR/meta.json``: classes, counts per split and class, each beton's size in bytes, writer
  settings, every file seen but not converted with its reason (``skipped``), listing options,
  fastfc version. It describes every beton in ``DIR``: converting some ``--splits`` keeps the
  others' records, and is refused when another beton was written with another class list (it would
  no longer be described); readers check each beton against it (:mod:`fastfc.data.betons`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import fastfc
from fastfc.atomic import WriteError, atomic_path, check_apart, exit_cleanly_on_sigterm, output_lock
from fastfc.cpus import fit_workers
from fastfc.data import images, shifts
from fastfc.data.betons import read_beton_meta

from .scan import ConversionError, check_files
from .settings import WriterSettings

SPLITS = ("train", "val")


# ----------------------------------------------------------------------------- listing

@dataclass
class Listing:
    """The files of one split in beton order. ``files`` are relative to the source root;
    ``skipped`` names every file seen but not converted, with the reason (:mod:`fastfc.data.images`)."""

    split: str
    files: list[str]
    labels: list[int]
    labels_without_file: int = 0
    skipped: list[dict] = field(default_factory=list)

    def per_class(self, classes: list[str]) -> dict[str, int]:
        counts = Counter(self.labels)
        return {wnid: counts.get(i, 0) for i, wnid in enumerate(classes)}


@contextmanager
def _as_conversion_error():
    """The listing policy's errors, raised as this converter's :class:`ConversionError`."""
    try:
        yield
    except images.ListingError as e:
        raise ConversionError(str(e)) from None


def list_classes(src: Path) -> list[str]:
    """Sorted WNIDs of ``src/train`` (the ImageNet label space). Raises ``ConversionError``."""
    if not src.is_dir():
        raise ConversionError(f"{src}: {'not a folder' if src.exists() else 'does not exist'}; "
                              "--src is the ImageNet root holding train/ and val/")
    train = src / "train"
    if not train.is_dir():
        hint = (f" --src looks one level too deep: try --src {src.parent}"
                if src.name in SPLITS and (src.parent / "train").is_dir() else "")
        raise ConversionError(f"{train}: no train folder. The class list (label = index of the WNID "
                              f"in the sorted train folder names) is defined by ROOT/train/<wnid>/.{hint}")
    with _as_conversion_error():
        classes = images.list_class_folders(train).folders
    if not classes:
        raise ConversionError(f"{train}: no class folders; expected ROOT/train/<wnid>/<images>.")
    return classes


def _subset(files: list[str], per_class: int | None) -> list[str]:
    """A deterministic subset of ``per_class`` files: smallest sha1 of the path, then name order."""
    if per_class is None or len(files) <= per_class:
        return files
    chosen = sorted(files, key=lambda f: hashlib.sha1(os.fsencode(f)).hexdigest())[:per_class]
    return sorted(chosen)


def read_val_labels(path: Path) -> dict[str, str]:
    """Parse a flat-val ground-truth file into ``{file stem: wnid}``.

    Accepted: Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` whose first token
    is the WNID) and text lines ``<file name> <wnid>``, in any of the forms label files come in
    (byte-order mark, CRLF, trailing blanks, blank lines: :func:`fastfc.data.images.label_lines`).
    The devkit's ``ILSVRC2012_validation_ground_truth.txt`` holds bare ILSVRC2012_IDs in devkit
    order, not sorted-WNID order, and is refused with an explanation.
    """
    if not path.is_file():
        raise ConversionError(f"{path}: --val-labels must be a file ({'a folder' if path.exists() else 'not found'})")
    with _as_conversion_error():
        lines = images.label_lines(path)
    labels: dict[str, str] = {}
    for lineno, line in lines:
        tokens = line.replace(",", " ").split()
        if tokens[0] == "ImageId":
            continue
        if len(tokens) < 2 and tokens[0].isdigit():
            raise ConversionError(
                f"{path}:{lineno}: a bare integer label. This looks like the devkit's "
                "ILSVRC2012_validation_ground_truth.txt, whose IDs follow the devkit's meta.mat order, "
                "not the sorted-WNID order. Pass LOC_val_solution.csv (Kaggle) or a file of "
                "'<file name> <wnid>' lines instead.")
        if len(tokens) < 2 or not shifts.WNID.match(tokens[1]):
            raise ConversionError(f"{path}:{lineno}: expected '<file name> <wnid>' or "
                                  f"'ImageId,PredictionString', got {line!r}")
        labels[Path(tokens[0]).name.split(".")[0]] = tokens[1]
    if not labels:
        raise ConversionError(f"{path}: no labels found")
    return labels


def _flat_val(root: Path, split: str, names: list[str], val_labels: Path | None, index: dict) -> tuple[dict, int]:
    """``{wnid: [files]}`` of a flat val folder, and the number of labels without a file."""
    if val_labels is None:
        raise ConversionError(
            f"{root}: a flat folder of {len(names)} files (e.g. {names[0]}), like the official "
            "ILSVRC2012 val release. Pass --val-labels FILE (Kaggle's LOC_val_solution.csv, or "
            "lines '<file name> <wnid>') so each image gets its class.")
    truth = read_val_labels(val_labels)
    by_class: dict[str, list[str]] = {}
    for name in names:
        wnid = truth.get(name.split(".")[0])
        if wnid is None:
            raise ConversionError(f"{root / name}: no label for this file in {val_labels}")
        if wnid not in index:
            raise ConversionError(f"{val_labels}: {name} is labelled {wnid}, which is not a train class")
        by_class.setdefault(wnid, []).append(f"{split}/{name}")
    return by_class, len(truth) - len(names)


def list_split(src: Path, split: str, classes: list[str], *, per_class: int | None = None,
               val_labels: Path | None = None) -> Listing:
    """List ``src/<split>`` in beton order: classes in label order, files by name. What is listed
    and what is skipped (and named in ``listing.skipped``) is :mod:`fastfc.data.images`'s policy;
    files beside class folders are skipped, a folder of files only is a flat val folder.

    Raises:
        ConversionError: missing folder, empty class folder, a class absent from train, a flat
            val folder without ``val_labels``, or an image without a label.
    """
    root = src / split
    if not root.is_dir():
        raise ConversionError(f"{root}: split folder not found (use --splits to choose splits)")
    index = {wnid: i for i, wnid in enumerate(classes)}
    listing = Listing(split, [], [])
    with _as_conversion_error():
        top = images.list_entries(root, f"{split}/")
        if top.files and not top.folders:
            by_class, listing.labels_without_file = _flat_val(root, split, top.files, val_labels, index)
            listing.skipped += top.skipped
        else:
            top = images.class_folders(top, f"{split}/")
            listing.skipped += top.skipped
            by_class = {}
            for wnid in top.folders:
                entries = images.list_class_files(root / wnid, f"{split}/{wnid}/")
                listing.skipped += entries.skipped
                by_class[wnid] = [f"{split}/{wnid}/{n}" for n in entries.files]
    for wnid in sorted(by_class):
        if wnid not in index:
            raise ConversionError(f"{root / wnid}: class {wnid} is in {split} but not in train; "
                                  "the label space is the sorted train class folders.")
        files = _subset(by_class[wnid], per_class)
        listing.files += files
        listing.labels += [index[wnid]] * len(files)
    return listing


# ----------------------------------------------------------------------------- scan

def _probe(path: str):
    try:
        h, w, _ = images.probe_image(path)
        return h * w, None
    except images.BadImageError as e:
        return 0, e.reason


def scan(listing: Listing, src: Path, *, workers: int, skip_bad: bool) -> int:
    """Check every file decodes (in parallel) before anything is written; drop bad ones if asked.

    Bad files are removed from ``listing`` and named in ``listing.skipped`` when ``skip_bad``.

    Returns:
        The largest image's pixel count.

    Raises:
        ConversionError: the first bad file, when not ``skip_bad``.
    """
    pixels, bad = check_files(_probe, src, listing.files, workers=workers, skip_bad=skip_bad,
                              desc=f"scan {listing.split}")
    keep = [i for i, p in enumerate(pixels) if p is not None]
    listing.skipped += bad
    listing.files = [listing.files[i] for i in keep]
    listing.labels = [listing.labels[i] for i in keep]
    if not listing.files:
        raise ConversionError(f"{src / listing.split}: no readable image left")
    return max(pixels[i] for i in keep)


# ----------------------------------------------------------------------------- convert

def convert(src: str | Path, out: str | Path, *, splits=SPLITS, settings: WriterSettings = WriterSettings(),
            workers: int | None = None, per_class: int | None = None, val_labels: str | Path | None = None,
            skip_bad: bool = False, overwrite: bool = False) -> dict:
    """Convert ``src`` (ImageNet layout) into ``out/<split>.beton`` and ``out/meta.json``.

    Returns:
        The ``meta.json`` content.

    Raises:
        FileExistsError: an output exists and ``overwrite`` is false.
        ConversionError: bad layout or bad image (named), see :func:`list_split` and :func:`scan`.
    """
    src, out = Path(src), Path(out)
    splits = tuple(splits)
    if not splits or len(set(splits)) != len(splits) or not set(splits) <= set(SPLITS):
        raise ConversionError(f"--splits {','.join(splits)!r}: give train and/or val, each once")
    if per_class is not None and per_class < 1:
        raise ConversionError(f"--per-class {per_class}: must be >= 1 (omit it to convert everything)")
    if workers is not None and workers < 1:
        raise ConversionError(f"--workers {workers}: must be >= 1 (omit it to use every usable CPU)")
    workers = fit_workers(workers, "--workers", cap=None)
    val_labels = Path(val_labels).resolve() if val_labels else None
    check_apart(out, [("--src", src)], "--out")
    existing = [p for p in [out / f"{s}.beton" for s in splits] + [out / "meta.json"] if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace it "
                              "(nothing was changed)")
    try:  # fail now, not after scanning 1.28 M files
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConversionError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    with output_lock(out):  # one conversion into out at a time
        _remove_stale_temporaries(out, SPLITS)
        classes = list_classes(src)
        kept = _kept_splits(out, splits, classes, src)
        listings = [list_split(src, s, classes, per_class=per_class, val_labels=val_labels) for s in splits]
        max_pixels = {l.split: scan(l, src, workers=workers, skip_bad=skip_bad) for l in listings}
        from .beton import BetonWriter, ImageFiles  # ffcv: imported only to write

        with ExitStack() as stack:  # every output under a temporary name until all are complete
            written = {}
            for l in listings:
                tmp = stack.enter_context(atomic_path(out / f"{l.split}.beton"))
                writer = BetonWriter(tmp, settings, workers, max_pixels[l.split], desc=f"write {l.split}")
                writer.write(ImageFiles([str(src / f) for f in l.files], l.labels, settings))
                written[l.split] = {"count": len(l.files), "per_class": l.per_class(classes),
                                    "bytes": tmp.stat().st_size, "page_size": writer.page_size,
                                    "labels_without_file": l.labels_without_file, "skipped": l.skipped}
            meta = {
                "fastfc_version": fastfc.__version__,
                "source": str(src.resolve()),
                "classes": classes,
                "splits": {**kept, **written},
                "writer": settings.as_dict(),
                "listing": {"per_class": per_class, "val_labels": str(val_labels) if val_labels else None,
                            "order": "classes in label order, files sorted by name"},
            }
            stack.enter_context(atomic_path(out / "meta.json")).write_text(json.dumps(meta, indent=2) + "\n")
        return meta


def _kept_splits(out: Path, splits: tuple, classes: list[str], src: Path) -> dict:
    """The ``meta.json`` records of the betons in ``out`` that this conversion does not rewrite (they
    stay described). Raises :class:`ConversionError` before any work for such a beton written with
    another class list than ``classes``, or not described by ``out/meta.json``: it would be left
    beside a ``meta.json`` that does not describe it."""
    previous = read_beton_meta(out) if (out / "meta.json").is_file() else {}
    kept = {}
    for split in SPLITS:
        beton = out / f"{split}.beton"
        if split in splits or not beton.is_file():
            continue
        record = (previous.get("splits") or {}).get(split)
        written = list((record or {}).get("per_class") or previous.get("classes") or [])
        if record is None or written != classes:
            why = ("is not described by its meta.json" if record is None else
                   f"was written with {len(written)} classes, and {src / 'train'} now has {len(classes)}")
            raise ConversionError(f"{beton} {why}: converting only --splits {','.join(splits)} would leave it "
                                  f"beside a meta.json that does not describe it; convert every split: --splits "
                                  f"{','.join(s for s in SPLITS if s in splits or (out / f'{s}.beton').is_file())} "
                                  "(nothing was changed)")
        kept[split] = record
    return kept


def _remove_stale_temporaries(out: Path, splits) -> None:
    """Delete temporaries of our outputs left by a killed (SIGKILL) run whose process is gone."""
    for name in [f"{s}.beton" for s in splits] + ["meta.json"]:
        for tmp in out.glob(f".{name}.tmp-*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                print(f"removing {tmp} ({tmp.stat().st_size / 1e6:.0f} MB), left by an interrupted run")
                tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- verify

class VerifyError(RuntimeError):
    """A beton that does not match its source; the message lists every problem found."""


def read_images(beton: Path, indices: list[int], metadata: np.ndarray) -> list[np.ndarray]:
    """Decode ``indices`` of ``beton`` through a real ffcv ``Loader`` as ``(H, W, 3) uint8`` arrays.

    ffcv's ``SimpleRGBImageDecoder`` refuses datasets of mixed sizes; this subclass drops that
    check and allocates the largest size. ffcv's decode writes each image contiguously at the
    start of its slot, so the image is the first ``H*W*3`` bytes (``metadata``: the image field).
    """
    from dataclasses import replace

    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.pipeline.allocation_query import AllocationQuery

    class AnySizeDecoder(SimpleRGBImageDecoder):
        def declare_state_and_memory(self, previous_state):
            shape = (int(self.metadata["height"].max()), int(self.metadata["width"].max()), 3)
            return (replace(previous_state, jit_mode=True, shape=shape, dtype=np.dtype("<u1")),
                    AllocationQuery(shape, np.dtype("<u1")))

    indices = sorted(indices)
    loader = Loader(str(beton), batch_size=1, num_workers=1, order=OrderOption.SEQUENTIAL,
                    indices=indices, drop_last=False,
                    pipelines={"image": [AnySizeDecoder()], "label": [IntDecoder()]})
    images = []
    for i, (batch, _) in zip(indices, loader):
        h, w = int(metadata[i]["height"]), int(metadata[i]["width"])
        images.append(np.asarray(batch[0]).reshape(-1)[: h * w * 3].reshape(h, w, 3).copy())
    return images


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images of the same shape (inf if equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def _label_problems(beton: Path, labels: np.ndarray, expected: np.ndarray, classes: list[str],
                    files: list[str]) -> list[str]:
    """Per-class counts and per-sample labels of a beton against the source listing."""
    problems = []
    for i, wnid in enumerate(classes):
        n, m = int((labels == i).sum()), int((expected == i).sum())
        if n != m:
            problems.append(f"{beton}: class {wnid} (label {i}) has {n} samples, source has {m}")
    wrong = np.flatnonzero(labels != expected)
    if len(wrong):
        i = int(wrong[0])
        problems.append(f"{beton}: {len(wrong)} labels differ from the source, first at index {i} "
                        f"({files[i]}: {labels[i]} in beton, {expected[i]} expected)")
    return problems


def _image_problems(beton: Path, image_field: dict, idx: list[int], files: list[str], src: Path, writer: dict,
                    min_psnr: float, problems: list[str]) -> float:
    """Decode images ``idx`` from ``beton`` and from the source; append mismatches to ``problems``.

    Returns the worst PSNR in dB (inf when every checked image is exact)."""
    from ffcv.fields.rgb_image import IMAGE_MODES

    worst = float("inf")
    for i, got in zip(idx, read_images(beton, idx, image_field)):
        want = images.load_rgb(src / files[i], writer["max_resolution"], writer.get("short_side"),
                               exif_upright=writer.get("exif_upright", True))  # absent: written upright
        if got.shape != want.shape:
            problems.append(f"{beton}[{i}] ({files[i]}): shape {got.shape}, source gives {want.shape}")
            continue
        quality = psnr(got, want)
        worst = min(worst, quality)
        if image_field["mode"][i] == IMAGE_MODES["raw"] and quality != float("inf"):
            problems.append(f"{beton}[{i}] ({files[i]}): raw image differs from the source")
        elif quality < min_psnr:
            problems.append(f"{beton}[{i}] ({files[i]}): PSNR {quality:.1f} dB < {min_psnr} dB")
    return worst


def verify(out: str | Path, src: str | Path, *, samples: int = 32, min_psnr: float = 30.0) -> dict:
    """Re-read the betons in ``out`` and check them against the source tree ``src``.

    Checks per split: sample count, every label against the source listing (hence the per-class
    counts), and ``samples`` deterministic images decoded by ffcv against the source after the
    same decode and resize: exact for raw-stored images, PSNR ≥ ``min_psnr`` dB for JPEG-stored.

    Returns:
        ``{split: {"count", "checked_images", "min_psnr_db"}}``.

    Raises:
        VerifyError: listing every mismatch found.
    """
    from ffcv.reader import Reader

    out, src = Path(out), Path(src)
    if not (out / "meta.json").is_file():
        raise VerifyError(f"{out / 'meta.json'}: not found; --verify expects a folder written by "
                          "python -m data_prep.imagenet")
    meta = read_beton_meta(out)
    classes, opts = meta["classes"], meta["listing"]
    val_labels = Path(opts["val_labels"]) if opts.get("val_labels") else None
    problems, report = [], {}
    for split, info in meta["splits"].items():
        listing = list_split(src, split, classes, per_class=opts.get("per_class"), val_labels=val_labels)
        skipped = {s["file"] for s in info["skipped"]}
        keep = [i for i, f in enumerate(listing.files) if f not in skipped]
        files = [listing.files[i] for i in keep]
        expected = np.array([listing.labels[i] for i in keep], dtype=np.int64)
        beton = out / f"{split}.beton"
        reader = Reader(str(beton))
        fields = {name: reader.metadata[f"f{i}"] for i, name in enumerate(reader.field_names)}
        labels = np.asarray(fields["label"], dtype=np.int64)
        if len(labels) != len(expected):
            problems.append(f"{beton}: {len(labels)} samples, source has {len(expected)}")
            continue
        problems += _label_problems(beton, labels, expected, classes, files)
        rng = np.random.default_rng(0)
        idx = sorted(rng.choice(len(files), size=min(samples, len(files)), replace=False).tolist())
        worst = _image_problems(beton, fields["image"], idx, files, src, meta["writer"], min_psnr, problems)
        report[split] = {"count": int(len(labels)), "checked_images": len(idx), "min_psnr_db": worst}
    if problems:
        raise VerifyError("verification failed:\n  " + "\n  ".join(problems))
    return report


# ----------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    d = WriterSettings()
    p = argparse.ArgumentParser(
        prog="python -m data_prep.imagenet",
        description="Convert an ImageNet folder tree (train/<wnid>/*, val/<wnid>/*) to FFCV .beton "
                    "files plus meta.json, or --verify a conversion against its source.",
        epilog="Example: python -m data_prep.imagenet --src /data/imagenet --out /data/betons "
               "--short-side 256 --workers 32\n         python -m data_prep.imagenet --verify /data/betons --src /data/imagenet",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, required=True, help="ImageNet root holding train/ and val/")
    p.add_argument("--out", type=Path, help="output folder for <split>.beton and meta.json")
    p.add_argument("--verify", type=Path, metavar="DIR", help="re-read DIR's betons and check them against --src")
    p.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits (default: %(default)s)")
    p.add_argument("--max-resolution", type=int, default=d.max_resolution,
                   help="longer side in px after resize, 0 = full size (default: %(default)s)")
    p.add_argument("--short-side", type=int, default=d.short_side,
                   help="upper bound on the shorter side in px, 0 = none (default: %(default)s); images are "
                        "shrunk, never enlarged, and --max-resolution still bounds the longer side. Decoding "
                        "scales with stored pixels: 256 feeds 224-px crops of >= 90%% of the image "
                        "without upsampling (RN50, RN101, ViT-B/16); 320 for RN50x4, 427 for RN50x16")
    p.add_argument("--write-mode", choices=("proportion", "jpg", "raw"), default=d.write_mode,
                   help="how images are stored (default: %(default)s)")
    p.add_argument("--compress-probability", type=float, default=d.compress_probability,
                   help="JPEG share in proportion mode (default: %(default)s)")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="default: %(default)s")
    p.add_argument("--exif-upright", action="store_true",
                   help="turn images by their EXIF orientation tag (default: as stored, the tag ignored, as "
                        "torchvision's pil_loader and the paper's code); recorded in meta.json")
    p.add_argument("--workers", type=int, default=None,
                   help="processes (default: every CPU this process may use; more are lowered to that)")
    p.add_argument("--per-class", type=int, default=None, metavar="N",
                   help="a deterministic subset of N images per class, for quick runs")
    p.add_argument("--val-labels", type=Path, default=None, metavar="FILE",
                   help="labels of a flat official val folder: LOC_val_solution.csv or '<file> <wnid>' lines")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip undecodable files and list them in meta.json (default: stop with an error)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    exit_cleanly_on_sigterm()
    new_out = args.out is not None and not args.out.exists()
    try:
        if args.verify:
            report = verify(args.verify, args.src)
            for split, r in report.items():
                print(f"{split}: {r['count']} samples, labels match the source, "
                      f"{r['checked_images']} images checked (min PSNR {r['min_psnr_db']:.1f} dB)")
            print("verify: OK")
            return 0
        if args.out is None:
            _parser().error("--out is required (or pass --verify DIR)")
        settings = WriterSettings(args.max_resolution, args.write_mode, args.compress_probability,
                                  args.jpeg_quality, args.short_side, args.exif_upright)
        splits = tuple(s for s in args.splits.split(",") if s)
        meta = convert(args.src, args.out, splits=splits, settings=settings, workers=args.workers,
                       per_class=args.per_class, val_labels=args.val_labels, skip_bad=args.skip_bad,
                       overwrite=args.overwrite)
    except (ConversionError, VerifyError, FileExistsError, ValueError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        if new_out and args.out.is_dir() and not any(args.out.iterdir()):
            args.out.rmdir()  # a failed first conversion leaves no empty --out folder behind
        return 1
    for split, info in meta["splits"].items():
        print(f"{split}: {info['count']} images in {len(meta['classes'])} classes → {args.out / (split + '.beton')}"
              + (f" ({len(info['skipped'])} skipped, listed in meta.json)" if info["skipped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
