"""Real photographs shipped inside installed PyPI packages -> small ImageNet-style trees.

Tests and demos of the data pipeline need JPEGs with real-photo statistics (texture,
noise, colour correlations) so that decoders, resizers and compressed-size estimates
behave as they would on ImageNet -- but they must run with no network access. The
photos therefore come from data files that already ship inside wheels:

* scikit-image ``skimage/data/``: astronaut, brick, camera, chelsea, coffee, coins,
  grass, gravel, hubble_deep_field, ihc, moon, motorcycle_left, motorcycle_right,
  retina, rocket (synthetic/binary/tiny images such as horse, logo, text, phantom,
  chessboard, color, cell, clock_motion are deliberately excluded);
* scikit-learn ``sklearn/datasets/images/``: china, flower;
* matplotlib ``mpl-data/sample_data/``: grace_hopper.

Only the package locations are resolved (``importlib.util.find_spec``); the packages are
never imported. Pixel work uses numpy + Pillow only.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["IMAGENETTE_WNIDS", "PhotoTree", "class_sources", "make_imagenet_tree", "random_view", "source_photos"]

#: The 10 Imagenette classes (real ImageNet-1k WNIDs), sorted.
IMAGENETTE_WNIDS: tuple[str, ...] = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888605",
)

# (package, sub-directory inside the package, file names of real photographs)
_SOURCES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("skimage", "data", (
        "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png",
        "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
        "moon.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg",
        "rocket.jpg")),
    ("sklearn", "datasets/images", ("china.jpg", "flower.jpg")),
    ("matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",)),
)
_PIP_NAMES = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}
MIN_PHOTOS = 8       # fewer than this -> RuntimeError
_MIN_SOURCE_SIDE = 256  # shorter side in pixels
# Quirks replacing regular train files, in planting order (quirk i -> class i % n_classes).
_QUIRKS = ("cmyk", "gray1", "gray2", "gray3", "png_as_jpeg", "huge", "tiny", "exif_rotated")


def _package_dir(pkg: str) -> Path | None:
    spec = importlib.util.find_spec(pkg)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=1)
def _load_photos() -> tuple[tuple[str, Image.Image], ...]:
    photos, missing = [], []
    for pkg, sub, names in _SOURCES:
        base = _package_dir(pkg)
        if base is None or not (base / sub).is_dir():
            missing.append(_PIP_NAMES[pkg])
            continue
        for name in names:
            path = base / sub / name
            if not path.is_file():
                continue
            with Image.open(path) as im:
                rgb = im.convert("RGB")
            if min(rgb.size) >= _MIN_SOURCE_SIDE:
                photos.append((Path(name).stem, rgb))
    if len(photos) < MIN_PHOTOS:
        raise RuntimeError(
            f"fastfc.demo.photos found only {len(photos)} bundled photographs (need >= {MIN_PHOTOS}); "
            f"missing package(s): {', '.join(missing) or 'none (data files absent)'}. "
            "Install them with: pip install scikit-image scikit-learn matplotlib")
    photos.sort(key=lambda p: p[0])
    return tuple(photos)


def source_photos() -> list[tuple[str, Image.Image]]:
    """Return the bundled real photographs as ``[(name, image), ...]`` sorted by name.

    ``name`` is the file stem (e.g. ``"astronaut"``); ``image`` is a mode ``'RGB'``
    (uint8, H x W x 3) PIL image of between 300 and ~1400 px per side; grayscale
    sources are replicated to 3 channels. Decoding happens once per process (cached);
    each call returns fresh copies, so callers may mutate them.

    Raises:
        RuntimeError: fewer than ``MIN_PHOTOS`` (8) photos were found; the message names
            the missing package(s) (``pip install scikit-image scikit-learn matplotlib``).
    """
    return [(name, im.copy()) for name, im in _load_photos()]


@dataclass
class PhotoTree:
    """Result of :func:`make_imagenet_tree`.

    Attributes:
        root: tree root holding ``train/<wnid>/`` and ``val/<wnid>/``.
        classes: sorted WNIDs (one per class directory).
        counts: split (``"train"``/``"val"``) -> wnid -> number of files on disk.
        quirks: quirk name -> path of the planted file (empty when ``quirks=False``).
    """
    root: Path
    classes: list[str]
    counts: dict[str, dict[str, int]]
    quirks: dict[str, Path] = field(default_factory=dict)


def class_sources(n_classes: int) -> list[list[Image.Image]]:
    """Disjoint round-robin split of the sorted photos over classes.

    With fewer photos than classes, class ``c`` reuses photo ``c % n``; in reuse round
    ``r = c // n >= 1`` the photo is colour-inverted (odd r) and its RGB channels are
    rotated by r, so the reusing class stays visually distinct from the original one.
    """
    photos = [im for _, im in _load_photos()]
    n = len(photos)
    if n >= n_classes:
        return [photos[c::n_classes] for c in range(n_classes)]
    out = []
    for c in range(n_classes):
        r = c // n
        arr = np.asarray(photos[c % n])
        if r:
            arr = np.roll(255 - arr if r % 2 else arr, r, axis=2)
        out.append([Image.fromarray(np.ascontiguousarray(arr))])
    return out


def random_view(rng: np.random.Generator, src: Image.Image, min_side: int, max_side: int,
                 size: tuple[int, int] | None = None) -> Image.Image:
    """Random crop (area 0.3-1.0, aspect 3/4-4/3) -> resize (long side in range) -> flip."""
    w, h = src.size
    area = w * h * rng.uniform(0.3, 1.0)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = min(w, max(1, round(math.sqrt(area * aspect))))
    ch = min(h, max(1, round(math.sqrt(area / aspect))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    long_side = int(rng.integers(min_side, max_side + 1))
    flip = bool(rng.random() < 0.5)
    if size is None:
        s = long_side / max(cw, ch)
        size = (max(1, round(cw * s)), max(1, round(ch * s)))
    img = src.resize(size, Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch), reducing_gap=2.0)
    return img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img


def _encode(img: Image.Image, quality: int, quirk: str | None) -> bytes:
    buf = io.BytesIO()
    if quirk == "png_as_jpeg":
        img.save(buf, format="PNG")
    elif quirk == "cmyk":
        img.convert("CMYK").save(buf, format="JPEG", quality=quality)
    elif quirk is not None and quirk.startswith("gray"):
        img.convert("L").save(buf, format="JPEG", quality=quality)
    elif quirk == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90 CW to display
        img.save(buf, format="JPEG", quality=quality, exif=exif)
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


_QUIRK_SIZES = {"huge": (4000, 3000), "tiny": (20, 20), "exif_rotated": (400, 300)}


def _write_view(path: Path, rng: np.random.Generator, src: Image.Image, quirk: str | None, min_side: int,
                max_side: int) -> None:
    """One random view of ``src`` saved at ``path`` as :func:`make_imagenet_tree` describes."""
    img = random_view(rng, src, min_side, max_side, _QUIRK_SIZES.get(quirk or ""))
    data = _encode(img, int(rng.integers(75, 96)), quirk)
    if quirk == "truncated":
        data = data[: len(data) // 2]
    path.write_bytes(data)


def _check_tree_args(root: Path, n_classes: int, train_per_class: int, val_per_class: int, min_side: int,
                     max_side: int, planted: tuple) -> None:
    """:func:`make_imagenet_tree`'s argument checks (its Raises section)."""
    if not 1 <= n_classes <= len(IMAGENETTE_WNIDS):
        raise ValueError(f"n_classes must be in 1..{len(IMAGENETTE_WNIDS)}, got {n_classes}")
    if train_per_class < 0 or val_per_class < 0:
        raise ValueError("train_per_class and val_per_class must be >= 0")
    if not 1 <= min_side <= max_side:
        raise ValueError(f"need 1 <= min_side <= max_side, got {min_side}, {max_side}")
    if planted and train_per_class <= (len(planted) - 1) // n_classes:
        raise ValueError(f"train_per_class={train_per_class} too small to plant "
                         f"{len(planted)} quirks over {n_classes} classes")
    for split in ("train", "val"):
        if (root / split).exists():
            raise FileExistsError(f"{root / split} already exists")


def make_imagenet_tree(root: str | Path, *, n_classes: int = 10, train_per_class: int = 30,
                       val_per_class: int = 10, seed: int = 0, quirks: bool = True,
                       truncated: bool = False, min_side: int = 160,
                       max_side: int = 500) -> PhotoTree:
    """Write a small ImageNet-layout JPEG tree made from the bundled real photographs.

    Layout: ``root/train/<wnid>/<wnid>_<k>.JPEG`` (k = 0..train_per_class-1) and
    ``root/val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG`` (numbers 1..n_classes*val_per_class,
    globally unique and shuffled across classes like the official set). Classes are the
    first ``n_classes`` of :data:`IMAGENETTE_WNIDS`, each drawing on its own disjoint
    subset of :func:`source_photos`. Each file is a random crop (area 0.3-1.0, aspect
    3/4-4/3) of one class photo, resized so its longer side is in ``[min_side, max_side]``
    pixels, randomly h-flipped, saved as RGB baseline JPEG with quality 75-95. Output
    bytes depend only on the arguments (``numpy.random.default_rng(seed)``).

    With ``quirks=True`` these train files replace regular ones (same names; quirk i goes
    to class ``i % n_classes``, file index ``i // n_classes``): ``cmyk`` (CMYK JPEG),
    ``gray1..3`` (mode 'L' JPEGs), ``png_as_jpeg`` (PNG bytes under a .JPEG name),
    ``huge`` (4000x3000), ``tiny`` (20x20), ``exif_rotated`` (stored 400 wide x 300 high,
    EXIF Orientation=6, i.e. displayed 300x400). ``truncated=True`` adds one extra train
    file ``<wnid>_<train_per_class>.JPEG`` holding the first half of a valid JPEG's bytes.

    Returns a PhotoTree whose ``counts`` match the files on disk.

    Raises:
        ValueError: n_classes not in 1..10, negative per-class counts, bad side range, or
            train_per_class too small to hold the quirks.
        FileExistsError: ``root/train`` or ``root/val`` already exists.
        RuntimeError: too few bundled photos (see :func:`source_photos`).
    """
    root, planted = Path(root), (_QUIRKS if quirks else ())
    _check_tree_args(root, n_classes, train_per_class, val_per_class, min_side, max_side, planted)
    rng = np.random.default_rng(seed)
    classes = sorted(IMAGENETTE_WNIDS[:n_classes])
    sources = class_sources(n_classes)
    quirk_at = {(i % n_classes, i // n_classes): q for i, q in enumerate(planted)}
    trunc_cls = len(_QUIRKS) % n_classes
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    quirk_paths: dict[str, Path] = {}  # filled by write()
    val_ids = iter(rng.permutation(n_classes * val_per_class) + 1)

    def write(path: Path, c: int, k: int, quirk: str | None) -> None:
        _write_view(path, rng, sources[c][k % len(sources[c])], quirk, min_side, max_side)
        if quirk is not None:
            quirk_paths[quirk] = path

    for c, wnid in enumerate(classes):
        tdir, vdir = root / "train" / wnid, root / "val" / wnid
        for d in (tdir, vdir):
            d.mkdir(parents=True)
        n_train = train_per_class
        for k in range(train_per_class):
            write(tdir / f"{wnid}_{k}.JPEG", c, k, quirk_at.get((c, k)))
        if truncated and c == trunc_cls:
            write(tdir / f"{wnid}_{train_per_class}.JPEG", c, train_per_class, "truncated")
            n_train += 1
        for k in range(val_per_class):
            write(vdir / f"ILSVRC2012_val_{int(next(val_ids)):08d}.JPEG", c, k, None)
        counts["train"][wnid], counts["val"][wnid] = n_train, val_per_class
    return PhotoTree(root=root, classes=classes, counts=counts, quirks=quirk_paths)
