"""Robust image decoding for the converters: by content, any mode, EXIF-upright, bounded size.

Real ImageNet is not a folder of clean RGB JPEGs: one train "JPEG" is a PNG, 22 are CMYK,
hundreds are grayscale, some carry EXIF orientation, some are 4000+ px on a side. ffcv 1.0.2's
``RGBImageField`` accepts only ``H x W x 3 uint8`` (REFERENCE.md §4), so everything is
normalised here, once, before it reaches a writer. Decoding never trusts the file extension:
Pillow sniffs the content.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import cv2
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# A truncated file must fail loudly, never be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_BAD_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class BadImageError(ValueError):
    """An input file that cannot be decoded to an image. ``str(err)`` names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def shrink_ratio(height: int, width: int, max_side: int | None = None, short_side: int | None = None) -> float:
    """Scale factor (<= 1) that brings an ``height x width`` image within both bounds.

    ``max_side`` bounds the longer side (ffcv's ``max_resolution``), ``short_side`` the shorter
    side (the smallest size that still feeds a training crop without upsampling, REFERENCE.md §5);
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
    size = (max(1, int(ratio * w)), max(1, int(ratio * h)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _open(path: str | Path) -> Image.Image:
    """Open ``path`` lazily by content. Raises :class:`BadImageError` for empty or non-image files."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImageError(path, f"cannot be read ({e.strerror or e}); fix its permissions or pass --skip-bad") from None
    if not data:
        raise BadImageError(path, "zero-byte file (re-download or remove it, or pass --skip-bad)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImageError(
            path, "not an image: Pillow recognises no image format in its content "
            "(the extension is ignored); remove it or pass --skip-bad") from None
    except _BAD_DATA_ERRORS as e:
        raise BadImageError(path, f"unreadable image header ({e}); pass --skip-bad to skip it") from None


def _load(path: str | Path, im: Image.Image) -> None:
    try:
        im.load()
    except _BAD_DATA_ERRORS as e:
        raise BadImageError(path, f"corrupt or truncated image data (Pillow: {e}); "
                                  "re-download it or pass --skip-bad") from None


def probe_image(path: str | Path) -> tuple[int, int]:
    """Check that ``path`` decodes completely, cheaply, and return its stored ``(height, width)`` in px.

    JPEGs are decoded at 1/8 scale (libjpeg DCT scaling): the entropy-coded data is still read to
    the end, so truncation and corrupt scans are caught at a fraction of a full decode's cost.

    Raises:
        BadImageError: zero-byte, non-image, truncated or corrupt file.
    """
    im = _open(path)
    width, height = im.size
    if im.format == "JPEG":
        im.draft(None, (max(1, width // 8), max(1, height // 8)))
    _load(path, im)
    return height, width


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any Pillow mode → ``H x W x 3 uint8``. 16-bit and 32-bit integer images are scaled, not clipped."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float32)
        if mode.startswith("I;16") or (mode == "I" and arr.max() > 255):
            arr = arr / 257.0  # 0..65535 → 0..255
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    # CMYK (Pillow undoes Adobe's inverted CMYK), L, LA, P, RGBA, 1, YCbCr, ...: alpha is dropped,
    # as torchvision's pil_loader does.
    return np.asarray(im.convert("RGB"))


def load_rgb(path: str | Path, max_resolution: int | None = None, short_side: int | None = None) -> np.ndarray:
    """Decode ``path`` to an upright RGB image whose longer side is at most ``max_resolution``
    and whose shorter side is at most ``short_side``.

    Args:
        path: any image file Pillow reads (JPEG, PNG, ...), whatever its extension.
        max_resolution: bound on the longer side in px; ``None`` or 0: no bound.
        short_side: bound on the shorter side in px; ``None`` or 0: no bound.
            Larger images are first decoded at a reduced DCT scale (JPEG draft mode, never below
            the target), then shrunk by :func:`shrink` (ffcv's rule, cv2 INTER_AREA).

    Returns:
        ``np.ndarray`` of shape ``(H, W, 3)``, dtype ``uint8``, C-contiguous, EXIF orientation applied.

    Raises:
        BadImageError: zero-byte, non-image, truncated or corrupt file.
    """
    im = _open(path)
    if im.format == "JPEG":
        scale = shrink_ratio(im.size[1], im.size[0], max_resolution, short_side)
        if scale < 1:  # draft keeps both sides >= the requested size, so no detail is lost
            im.draft(None, (int(np.ceil(im.size[0] * scale)), int(np.ceil(im.size[1] * scale))))
    _load(path, im)
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF must not cost an otherwise good image; keep stored orientation
        pass
    arr = _to_rgb_array(im)
    arr = shrink(arr, max_resolution, short_side)
    return np.ascontiguousarray(arr)


def imap_progress(fn, items: list, *, workers: int, desc: str):
    """``fn`` over ``items`` in ``workers`` forked processes, in order, with an img/s progress bar.

    A generator: a caller that stops early (first bad file) terminates the pool; one that reads
    to the end closes and joins it.
    """
    import multiprocessing as mp

    from tqdm import tqdm

    with mp.get_context("fork").Pool(workers) as pool, \
            tqdm(total=len(items), desc=desc, unit="img", dynamic_ncols=True) as bar:
        for result in pool.imap(fn, items, chunksize=32):
            bar.update()
            yield result
        pool.close()
        pool.join()
