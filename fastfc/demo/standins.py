"""The demo's shift-like stand-in sets: made from the bundled photographs, in the real releases' layouts.

The sets shown are the :data:`fastfc.data.shifts.REGISTRY` entries that have a :class:`StandIn` in
:data:`MAKERS` (in registry order); each is written under its registry entry's ``release`` folder
and ``images_dir``, so the real converter (``data_prep.shifts``) reads it unchanged. Showing a new
registered set in the demo takes one :class:`StandIn` here, keyed by its registry name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from fastfc.data import shifts
from fastfc.fixtures.photos import IMAGENETTE_WNIDS, class_sources, random_view


@dataclass(frozen=True)
class Draw:
    """One stand-in image to make: view ``k`` of class ``c``.

    Attributes:
        rng: the generator every draw of one call of :func:`make_shift_sets` shares, in a fixed order.
        wnid: the class's WNID; ``index``: its ImageNet-1k index; ``name``: its ObjectNet-style
            folder name (the lower-case ImageNet class name, ``_`` for spaces).
        view: a fresh random view of ``source``, the class's source photograph (RGB).
    """

    rng: np.random.Generator
    wnid: str
    index: int
    name: str
    c: int
    k: int
    view: Image.Image
    source: Image.Image


@dataclass(frozen=True)
class StandIn:
    """How the demo makes one set's stand-in.

    Attributes:
        label: its name in every table (e.g. ``"v2-like"``).
        path: the file of a :class:`Draw`, relative to the set's images folder (its suffix picks the format).
        image: the image of a :class:`Draw`.
        finish: called once after every image is written, with the set's registry entry, its
            ``--src`` folder, the generator, the class names (WNID → ``Draw.name``), the 1000
            WNIDs and the source photographs, e.g. for mapping files.
    """

    label: str
    path: Callable[[Draw], str]
    image: Callable[[Draw], Image.Image]
    finish: Callable | None = None


def _sketch(img: Image.Image) -> Image.Image:
    """A pencil-like rendering: inverted edges of the grey image, contrast stretched."""
    edges = ImageOps.grayscale(img).filter(ImageFilter.SMOOTH).filter(ImageFilter.FIND_EDGES)
    return ImageOps.autocontrast(ImageOps.invert(edges), cutoff=2).convert("RGB")


def _rendition(img: Image.Image, k: int) -> Image.Image:
    """A cartoon/poster-like rendition: smoothed, posterised, alternately solarised or edge-enhanced."""
    img = ImageOps.posterize(img.filter(ImageFilter.ModeFilter(5)), 2 + k % 2)
    return ImageOps.solarize(img, 160) if k % 3 == 0 else img.filter(ImageFilter.EDGE_ENHANCE_MORE)


def _hard_crop(rng: np.random.Generator, src: Image.Image) -> Image.Image:
    """A small off-centre crop (5-15% of the area), resized: an ImageNet-A-like hard example."""
    w, h = src.size
    side = int(math.sqrt(w * h * rng.uniform(0.05, 0.15)))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    return src.resize((224, 224), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))


def _framed(img: Image.Image) -> Image.Image:
    """ObjectNet's look: a 1-px red frame around the photo."""
    arr = np.asarray(img.convert("RGB")).copy()
    arr[0], arr[-1], arr[:, 0], arr[:, -1] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
    return Image.fromarray(arr)


def _objectnet_finish(entry: shifts.ShiftSet, src: Path, rng: np.random.Generator, names: dict[str, str],
                      imagenet: list[str], sources: list) -> None:
    """Mapping files in ObjectNet's real format for the demo's classes, and an unmapped
    ``air_freshener`` folder (two framed views) that the converter must drop."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    full = [f"{IMAGENET_CLASSNAMES[i]} ({w})" for i, w in enumerate(imagenet)]  # unique 2012-style names
    m = src / entry.mappings
    m.mkdir(parents=True)
    (m / "folder_to_objectnet_label.json").write_text(json.dumps(
        {**{f: f.replace("_", " ").capitalize() for f in names.values()}, "air_freshener": "Air freshener"}, indent=1))
    (m / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {f.replace("_", " ").capitalize(): full[imagenet.index(w)] for w, f in names.items()}, indent=1))
    (m / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): i for i in range(len(imagenet))}))
    (m / "imagenet_to_label_2012_v2").write_text("\n".join(full) + "\n")
    unmapped = src / entry.images_dir / "air_freshener"
    unmapped.mkdir(parents=True)
    for k in range(2):
        _framed(random_view(rng, sources[0][0], 200, 300)).save(unmapped / f"{k:016x}.png")


#: The demo's stand-in makers, keyed by registry name. Their OOD sets are stand-ins made from the
#: training photographs, not the real datasets; their labels in every table say so.
MAKERS: dict[str, StandIn] = {
    "imagenet-v2": StandIn("v2-like", lambda d: f"{d.index}/{d.rng.bytes(8).hex()}.jpeg", lambda d: d.view),
    "imagenet-sketch": StandIn("sketch-like", lambda d: f"{d.wnid}/sketch_{d.k}.JPEG", lambda d: _sketch(d.view)),
    "imagenet-r": StandIn("r-like", lambda d: f"{d.wnid}/art_{d.k}.jpg", lambda d: _rendition(d.view, d.k)),
    "imagenet-a": StandIn("a-like", lambda d: f"{d.wnid}/0.{d.k:06d}_{d.name} _ {d.name}_0.{d.c}{d.k}.jpg",
                          lambda d: _hard_crop(d.rng, d.source)),
    "objectnet": StandIn("objectnet-like", lambda d: f"{d.name}/{d.rng.bytes(8).hex()}.png", lambda d: _framed(d.view),
                         finish=_objectnet_finish),
}
#: The registered sets the demo shows, in registry order.
SETS: list[shifts.ShiftSet] = [s for s in shifts.REGISTRY.values() if s.name in MAKERS]
#: Set name → its table label (``results.json``'s ``stand_ins``).
STAND_INS: dict[str, str] = {s.name: MAKERS[s.name].label for s in SETS}
#: Set name → its folder under the demo's ``shifts/`` (the release's own folder name).
SHIFT_DIRS: dict[str, str] = {s.name: s.release for s in SETS}


def _class_names(classes: list[str], imagenet: list[str]) -> dict[str, str]:
    """WNID → the lower-case ImageNet class name, ``_`` for spaces (ObjectNet's folder style)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return {w: IMAGENET_CLASSNAMES[imagenet.index(w)].lower().replace(" ", "_").replace("'", "") for w in classes}


def make_shift_sets(root: str | Path, *, per_class: int = 8, seed: int = 1) -> dict[str, Path]:
    """The stand-ins of :data:`SETS` from the bundled photographs, in the real datasets' layouts:

    * ``imagenetv2-matched-frequency/<ImageNet index>/<hash>.jpeg`` (integer folders);
    * ``sketch/<wnid>/*.JPEG``: pencil-like edge renderings;
    * ``imagenet-r/<wnid>/*.jpg``: posterised / solarised renditions;
    * ``imagenet-a/<wnid>/<score>_<name> _ <name>_<score>.jpg``: hard crops, dotted names;
    * ``objectnet-1.0/images/<folder>/*.png`` with a 1-px red frame and ``mappings/`` in the real
      format, plus an unmapped ``air_freshener`` folder that the converter must drop.

    ``per_class`` images per class and set; the photos are fresh random views (another seed) of
    each class's source photographs.

    Returns:
        ``{set name: its --src folder}`` (``root/<release>``).
    """
    root, rng = Path(root), np.random.default_rng(seed)
    classes, imagenet = sorted(IMAGENETTE_WNIDS), shifts.imagenet_wnids()
    sources, names = class_sources(len(classes)), _class_names(classes, imagenet)
    folders = {s.name: root / s.release / s.images_dir for s in SETS}
    for c, wnid in enumerate(classes):
        for k in range(per_class):
            source = sources[c][k % len(sources[c])]
            d = Draw(rng, wnid, imagenet.index(wnid), names[wnid], c, k, random_view(rng, source, 200, 400), source)
            paths = {s.name: folders[s.name] / MAKERS[s.name].path(d) for s in SETS}  # draws in a fixed order:
            made = {s.name: MAKERS[s.name].image(d) for s in SETS}                   # every path, then every image
            for name, path in paths.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                made[name].save(path, quality=90) if path.suffix != ".png" else made[name].save(path)
    for s in SETS:
        if MAKERS[s.name].finish is not None:
            MAKERS[s.name].finish(s, root / s.release, rng, names, imagenet, sources)
    return {s.name: root / s.release for s in SETS}
