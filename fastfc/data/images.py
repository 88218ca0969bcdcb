"""The one policy for listing image folders, reading label files and decoding images to RGB.

Both converters (``data_prep.imagenet``, ``data_prep.shifts``) and the shard reader
(:mod:`fastfc.data.shards`) use this module and nothing else for these decisions, so one file
gives the same pixels and is counted or skipped the same way on every path.

**Listing** (:func:`list_entries`, :func:`list_class_folders`, :func:`list_class_files`):

* entries are sorted by name; any name the file system holds is kept, including spaces and
  bytes that are not UTF-8 (as ``os.fsdecode`` gives them; ``meta.json`` stores them escaped);
* a symbolic link counts as what it points to; a broken link (or a loop) is skipped;
* hidden entries (the name starts with ``.``: ``.DS_Store``, ``.ipynb_checkpoints``, editors'
  ``._x`` files) are skipped, and so are sockets, pipes and devices;
* in a class folder, subfolders are skipped (not descended into); beside the class folders,
  loose files (a README) are skipped;
* every skipped entry is returned as ``{"file": path, "reason": why}``, which the converters
  write to ``meta.json``; a folder that cannot be listed, or a class folder with no file left,
  raises :class:`ListingError`.

Every listed file is then decoded; one that cannot be (unreadable, zero bytes, not an image,
truncated) raises :class:`BadImageError`, and the converters stop on it or, with ``--skip-bad``,
skip it and name it in ``meta.json`` too.

**Decoding** (:func:`load_rgb` for the converters, :func:`decode_rgb` for the shard reader):

* the format is sniffed from the content (Pillow), never taken from the extension (one ImageNet
  train "JPEG" is a PNG); truncated data is an error, never padded with grey;
* the pixels are taken as stored, the EXIF orientation tag ignored, as torchvision's ``pil_loader``
  (the released code's loader, and every published ImageNet number) reads them; ``exif_upright=True``
  (the converters' ``--exif-upright``, recorded in their ``meta.json``) turns a tagged image upright
  instead (a malformed EXIF block is then ignored);
* any mode becomes ``H x W x 3 uint8`` RGB: 16-bit and 32-bit integer greyscale (``I;16*``,
  ``I``) are scaled by 255/65535, not clipped (a mid-grey 32768 reads 128, not 255); CMYK
  (Pillow undoes Adobe's inverted CMYK), grey, palette, bilevel and YCbCr are converted; alpha is
  dropped as torchvision's ``pil_loader`` drops it. ffcv 1.0.2's ``RGBImageField`` accepts only
  ``H x W x 3 uint8`` (docs/recipe.md, known traps), so this is also what every beton stores.

**Label files** (:func:`read_label_text`, :func:`label_lines`): UTF-8 with or without a byte-order
mark (UTF-16 with one too), LF, CRLF or CR line ends, trailing blanks and empty lines.
"""

from __future__ import annotations

import codecs
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

# A truncated file must fail loudly, never be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_BAD_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

HIDDEN = "hidden (the name starts with '.')"
BROKEN_LINK = "broken symbolic link"
UNREADABLE_ENTRY = "cannot be followed or read (e.g. a symbolic link loop)"
NOT_A_FILE = "not a regular file or folder (a socket, pipe or device)"
SUBFOLDER = "a folder inside a class folder (not descended into)"
LOOSE_FILE = "a file beside the class folders, in no class"


class BadImageError(ValueError):
    """An input file that cannot be decoded to an image. ``str(err)`` names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ListingError(ValueError):
    """A folder that cannot be listed or breaks the layout; the message names it and says what to do."""


# ----------------------------------------------------------------------------- listing

@dataclass
class Entries:
    """One folder's entries under the policy: ``files`` and ``folders`` (names, sorted) and the
    ``skipped`` entries as ``{"file": prefix + name, "reason": ...}`` (folders end with ``/``)."""

    files: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def skip(path: str, reason: str) -> dict:
    """A ``meta.json`` entry for a file that was seen but not converted."""
    return {"file": path, "reason": reason}


def list_entries(folder: str | Path, prefix: str = "") -> Entries:
    """Sort ``folder``'s entries into files, folders and skipped ones (see the module doc).

    Args:
        prefix: prepended to the names in ``skipped`` (the folder's path relative to the source root).

    Raises:
        ListingError: ``folder`` is missing, not a folder, or cannot be listed (permissions).
    """
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise ListingError(f"{folder}: cannot be listed ({e.strerror or e}); check the path and its "
                           "permissions") from None
    out = Entries()
    for e in entries:
        try:
            is_dir, is_file = e.is_dir(), e.is_file()  # follow symbolic links; False for broken ones
        except OSError as err:  # a symbolic link loop (ELOOP), an entry gone or unreadable since listing
            out.skipped.append(skip(prefix + e.name, f"{UNREADABLE_ENTRY}: {err.strerror or err}"))
            continue
        if e.name.startswith("."):
            out.skipped.append(skip(prefix + e.name + ("/" if is_dir else ""), HIDDEN))
        elif is_dir:
            out.folders.append(e.name)
        elif is_file:
            out.files.append(e.name)
        else:
            out.skipped.append(skip(prefix + e.name, BROKEN_LINK if e.is_symlink() else NOT_A_FILE))
    return out


def class_folders(entries: Entries, prefix: str = "") -> Entries:
    """``entries`` of a folder of class folders, with its loose files moved to ``skipped``."""
    skipped = sorted(entries.skipped + [skip(prefix + name, LOOSE_FILE) for name in entries.files],
                     key=lambda s: s["file"])
    return Entries([], list(entries.folders), skipped)


def list_class_folders(root: str | Path, prefix: str = "") -> Entries:
    """``root``'s class folders: :func:`list_entries`, then :func:`class_folders`.

    Raises:
        ListingError: ``root`` cannot be listed (see :func:`list_entries`).
    """
    return class_folders(list_entries(root, prefix), prefix)


def list_class_files(folder: str | Path, prefix: str = "") -> Entries:
    """A class folder's image files: :func:`list_entries` with subfolders moved to ``skipped``.

    Raises:
        ListingError: the folder cannot be listed, or holds no file once hidden entries, subfolders
            and broken links are skipped (a class without images would get a label it never shows).
    """
    entries = list_entries(folder, prefix)
    entries.skipped += [skip(f"{prefix}{name}/", SUBFOLDER) for name in entries.folders]
    entries.skipped.sort(key=lambda s: s["file"])
    entries.folders = []
    if not entries.files:
        raise ListingError(f"{folder}: empty class folder (no image files"
                           + (f"; {len(entries.skipped)} entries skipped: {entries.skipped[0]['reason']}, ..."
                              if entries.skipped else "")
                           + "). Every class needs at least one image: restore its files or remove the folder.")
    return entries


# ----------------------------------------------------------------------------- label files

def read_label_text(path: str | Path) -> str:
    """The text of a label or mapping file, whatever form it came in: UTF-8 with or without a
    byte-order mark (UTF-16 with one), and every line end (CRLF, CR) turned into ``\\n``.

    Raises:
        ListingError: the file is missing, unreadable, or not UTF-8 / UTF-16 text (named).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ListingError(f"{path}: cannot be read ({e.strerror or e})") from None
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise ListingError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); save it as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def label_lines(path: str | Path) -> list[tuple[int, str]]:
    """``(line number, line)`` of the non-blank lines of a label file, trailing blanks removed
    (numbers count every line, blank ones too, so an error can point at the line).

    Raises:
        ListingError: see :func:`read_label_text`.
    """
    lines = read_label_text(path).split("\n")
    return [(n, line.rstrip()) for n, line in enumerate(lines, 1) if line.strip()]


# ----------------------------------------------------------------------------- decoding

def open_image(source: str | Path | bytes, name: str | Path | None = None) -> Image.Image:
    """Open an image lazily, its format sniffed from the content (``im.format``).

    Args:
        source: a file path, or the file's bytes (then ``name`` names it in errors).

    Raises:
        BadImageError: unreadable, zero-byte or non-image data.
    """
    name = source if name is None else name
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise BadImageError(name, f"cannot be read ({e.strerror or e}); fix its permissions "
                                      "or pass --skip-bad") from None
    if not data:
        raise BadImageError(name, "zero-byte file (re-download or remove it, or pass --skip-bad)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImageError(
            name, "not an image: Pillow recognises no image format in its content "
                  "(the extension is ignored); remove it or pass --skip-bad") from None
    except _BAD_DATA_ERRORS as e:
        raise BadImageError(name, f"unreadable image header ({e}); pass --skip-bad to skip it") from None


def _load(name, im: Image.Image) -> None:
    try:
        im.load()
    except _BAD_DATA_ERRORS as e:
        raise BadImageError(name, f"corrupt or truncated image data (Pillow: {e}); "
                                  "re-download it or pass --skip-bad") from None


class Probe(NamedTuple):
    """What :func:`probe_image` found: stored size in px and the format Pillow sniffed ("JPEG", "PNG", ...)."""

    height: int
    width: int
    format: str


def probe_image(path: str | Path) -> Probe:
    """Check that ``path`` decodes completely, cheaply, and return its stored size and format.

    JPEGs are decoded at 1/8 scale (libjpeg DCT scaling): the entropy-coded data is still read to
    the end, so truncation and corrupt scans are caught at a fraction of a full decode's cost.

    Raises:
        BadImageError: zero-byte, non-image, truncated or corrupt file.
    """
    im = open_image(path)
    width, height = im.size
    if im.format == "JPEG":
        im.draft(None, (max(1, width // 8), max(1, height // 8)))
    _load(path, im)
    return Probe(height, width, im.format)


def upright(im: Image.Image) -> Image.Image:
    """``im`` turned by its EXIF orientation (``im`` itself when it has none, or a malformed one)."""
    try:
        if im.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
            return ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF must not cost an otherwise good image; keep stored orientation
        pass
    return im


def to_rgb_array(im: Image.Image, name: str | Path = "<image>") -> np.ndarray:
    """Any Pillow mode -> ``H x W x 3 uint8`` (see the module doc). 16-bit and 32-bit integer images
    are scaled by 255/65535, not clipped; alpha is dropped.

    Raises:
        BadImageError: a mode Pillow cannot turn into RGB (e.g. LAB).
    """
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float32)
        if mode.startswith("I;16") or (mode == "I" and arr.max() > 255):
            arr = arr * (255.0 / 65535.0)
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    try:
        return np.asarray(im.convert("RGB"))
    except ValueError as e:
        raise BadImageError(name, f"image mode {mode} cannot be converted to RGB ({e}); "
                                  "convert the file or pass --skip-bad") from None


def shrink_ratio(height: int, width: int, max_side: int | None = None, short_side: int | None = None) -> float:
    """Scale factor (<= 1) that brings an ``height x width`` image within both bounds.

    ``max_side`` bounds the longer side (ffcv's ``max_resolution``), ``short_side`` the shorter
    side (the smallest size that still feeds a training crop without upsampling, docs/recipe.md);
    ``None`` or 0 disables a bound. Images are never enlarged.
    """
    ratio = 1.0
    if max_side:
        ratio = min(ratio, max_side / max(height, width))
    if short_side:
        ratio = min(ratio, short_side / min(height, width))
    return ratio


def shrink(image: np.ndarray, max_side: int | None = None, short_side: int | None = None) -> np.ndarray:
    """Shrink ``image`` (H x W x 3 uint8) by :func:`shrink_ratio` with cv2 INTER_AREA.

    Sizes are truncated to int, as ffcv's ``RGBImageField`` resizer does, except that no side
    drops below 1 px: ffcv's own would ask cv2 for a 0-px side on a 5000 x 2 image and crash.
    Returns ``image`` itself when no shrinking is needed.
    """
    h, w = image.shape[:2]
    ratio = shrink_ratio(h, w, max_side, short_side)
    if ratio >= 1:
        return image
    import cv2

    size = (max(1, int(ratio * w)), max(1, int(ratio * h)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def load_rgb(path: str | Path, max_resolution: int | None = None, short_side: int | None = None, *,
             exif_upright: bool = False) -> np.ndarray:
    """Decode ``path`` to an RGB image whose longer side is at most ``max_resolution`` and whose
    shorter side is at most ``short_side`` (the converters' decode).

    Args:
        path: any image file Pillow reads (JPEG, PNG, ...), whatever its extension.
        max_resolution: bound on the longer side in px; ``None`` or 0: no bound.
        short_side: bound on the shorter side in px; ``None`` or 0: no bound.
            Larger images are first decoded at a reduced DCT scale (JPEG draft mode, never below
            the target), then shrunk by :func:`shrink` (ffcv's rule, cv2 INTER_AREA).
        exif_upright: turn the image by its EXIF orientation (:func:`upright`); default: as stored.

    Returns:
        ``np.ndarray`` of shape ``(H, W, 3)``, dtype ``uint8``, C-contiguous.

    Raises:
        BadImageError: zero-byte, non-image, truncated or corrupt file, or an unconvertible mode.
    """
    im = open_image(path)
    if im.format == "JPEG":
        scale = shrink_ratio(im.size[1], im.size[0], max_resolution, short_side)
        if scale < 1:  # draft keeps both sides >= the requested size, so no detail is lost
            im.draft(None, (int(np.ceil(im.size[0] * scale)), int(np.ceil(im.size[1] * scale))))
    _load(path, im)
    arr = to_rgb_array(upright(im) if exif_upright else im, path)
    return np.ascontiguousarray(shrink(arr, max_resolution, short_side))


def decode_rgb(data: bytes, name: str, *, exif_upright: bool = False) -> tuple[Image.Image, str]:
    """Decode a stored image's bytes to an RGB PIL image at full size (the shard reader's decode;
    same pixels as :func:`load_rgb` without a size bound; ``exif_upright`` as there).

    Returns:
        ``(image in mode RGB, the format Pillow sniffed, e.g. "JPEG")``.

    Raises:
        BadImageError: naming ``name``; undecodable data or an unconvertible mode.
    """
    im = open_image(data, name)
    fmt = im.format
    _load(name, im)
    if exif_upright:
        im = upright(im)
    if im.mode != "RGB":
        im = Image.fromarray(to_rgb_array(im, name))
    return im, fmt
