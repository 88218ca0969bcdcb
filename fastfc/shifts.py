"""The shift sets: their folder layouts, label rules, label spaces and logit projections.

Every set is scored in its *own* label space (docs/recipe.md). A model emits 1000 ImageNet
logits; :func:`project` maps them to the set's K classes by taking, for each class, the max over
the ImageNet indices it maps to:

* ``none`` (ImageNet val, V2, Sketch): K = 1000, class k ↔ ImageNet index k;
* ``mask`` (ImageNet-R, ImageNet-A): K = 200, the classes present in the set's own folders, so
  the argmax runs only within them (Hendrycks et al.'s evaluation);
* ``objectnet-max`` (ObjectNet): K = 113 mapped classes, each scored by the max over its mapped
  ImageNet logits (125 indices in total), per ObjectNet's own mapping files.

This module owns the rules, not the I/O: :mod:`data_prep.shifts` walks folders with them and
stores the resulting ``classes`` and ``imagenet_indices`` in each set's ``meta.json``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from fastfc.data.images import ListingError, read_label_text

if TYPE_CHECKING:
    import torch

PROJECTIONS = ("none", "mask", "objectnet-max")
WNID = re.compile(r"^n\d{8}$")
OBJECTNET_MAPPING_FILES = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                           "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")


class LabelSpaceError(ValueError):
    """A folder or mapping file that does not fit its set's label rule; the message names it."""


@dataclass(frozen=True)
class ShiftSet:
    """A registered evaluation set.

    Attributes:
        name: registry key, e.g. ``"imagenet-r"``.
        layout: the on-disk layout the converter expects under ``--src``.
        projection: one of :data:`PROJECTIONS`.
        images: the size of the full public release (for the README and sanity checks).
        border_crop: px cropped off every border before resizing (ObjectNet's red frame: 2).
    """

    name: str
    layout: str
    projection: str
    images: int
    border_crop: int = 0


REGISTRY: dict[str, ShiftSet] = {s.name: s for s in (
    ShiftSet("imagenet-val", "<wnid>/*.JPEG (1000 folders)", "none", 50_000),
    ShiftSet("imagenet-v2", "<int>/*.jpeg, folders 0..999 (label = int(folder))", "none", 10_000),
    ShiftSet("imagenet-sketch", "<wnid>/* (1000 folders)", "none", 50_889),
    ShiftSet("imagenet-r", "<wnid>/* (200 folders)", "mask", 30_000),
    ShiftSet("imagenet-a", "<wnid>/* (200 folders)", "mask", 7_500),
    ShiftSet("objectnet", "images/<folder>/*.png + mappings/*.json", "objectnet-max", 18_574, border_crop=2),
)}


def get(name: str) -> ShiftSet:
    """The registered set ``name``. Raises ``KeyError`` listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown shift set {name!r}; known: {', '.join(REGISTRY)}") from None


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WNIDs, sorted (index = class label), from the list timm ships
    (``timm/data/_info/imagenet_synsets.txt``, which ``timm.data.ImageNetInfo`` reads; timm comes
    with open_clip). The file is located, not imported: importing timm would import torch.

    Raises:
        FileNotFoundError: timm is not installed.
    """
    spec = importlib.util.find_spec("timm")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "data" / "_info" / "imagenet_synsets.txt"
        if path.is_file():
            return read_label_text(path).split()
    raise FileNotFoundError("timm's ImageNet class list (timm/data/_info/imagenet_synsets.txt) is not installed; "
                            "pip install timm (open_clip_torch brings it)")


# ----------------------------------------------------------------------------- label rules

def v2_label(folder: str, where: Path) -> int:
    """ImageNetV2: the label is ``int(folder)``, never the string sort ("10" < "2")."""
    if not folder.isdigit() or not 0 <= int(folder) <= 999:
        raise LabelSpaceError(f"{where / folder}: an ImageNetV2 folder must be an integer in 0..999")
    return int(folder)


def wnid_index(folder: str, index: dict[str, int], where: Path) -> int:
    """The ImageNet-1k index of a WNID folder; ``index`` maps each sorted WNID to its position."""
    if WNID.match(folder) and folder in index:
        return index[folder]
    raise LabelSpaceError(f"{where / folder}: not one of the 1000 ImageNet WNIDs "
                          "(check --imagenet-classes and that --src points at the class folders)")


def objectnet_classes(mappings: Path, imagenet_classes: Sequence[str]
                      ) -> tuple[dict[str, str], list[str], list[list[int]]]:
    """Read ObjectNet's own mapping files.

    Returns:
        ``(folder → ObjectNet label for mapped folders only, the mapped labels sorted,
        their ImageNet-1k indices)``. ``imagenet_classes`` only checks the index range.

    Raises:
        LabelSpaceError: a mapping file is missing or inconsistent (named).
    """
    missing = [f for f in OBJECTNET_MAPPING_FILES if not (mappings / f).is_file()]
    if missing:
        raise LabelSpaceError(f"{mappings}: missing ObjectNet mapping file(s) {', '.join(missing)}; "
                              "they ship in objectnet-1.0/mappings/ of the official download")
    folder_to_label, label_to_names, pytorch_to_2012 = (_read_json(mappings / f) for f in OBJECTNET_MAPPING_FILES[:3])
    names_2012 = [line.strip() for line in _read_text(mappings / "imagenet_to_label_2012_v2").rstrip().split("\n")]
    name_to_2012 = {name: i for i, name in enumerate(names_2012)}
    ambiguous = {n for n in names_2012 if names_2012.count(n) > 1} if len(name_to_2012) < len(names_2012) else set()
    id2012_to_pytorch = {int(v): int(k) for k, v in pytorch_to_2012.items()}
    indices: dict[str, list[int]] = {}
    for label, names in label_to_names.items():
        idx = []
        for name in (n.strip() for n in names.split(";")):
            if name not in name_to_2012 or name_to_2012[name] not in id2012_to_pytorch:
                raise LabelSpaceError(f"{mappings / 'objectnet_to_imagenet_1k.json'}: ImageNet class "
                                      f"{name!r} (for {label!r}) is not in imagenet_to_label_2012_v2 / "
                                      "pytorch_to_imagenet_2012_id.json")
            if name in ambiguous:
                raise LabelSpaceError(f"{mappings / 'imagenet_to_label_2012_v2'}: ImageNet class {name!r} "
                                      f"(for {label!r}) appears on several lines; its index is ambiguous")
            i = id2012_to_pytorch[name_to_2012[name]]
            if not 0 <= i < len(imagenet_classes):
                raise LabelSpaceError(f"{mappings}: ImageNet index {i} out of range for {label!r}")
            idx.append(i)
        indices[label] = sorted(idx)
    classes = sorted(indices)
    mapped = {folder: label for folder, label in folder_to_label.items() if label in indices}
    return mapped, classes, [indices[c] for c in classes]


def _read_text(path: Path) -> str:
    try:
        return read_label_text(path)  # BOM, CRLF: the forms these files come in
    except ListingError as e:
        raise LabelSpaceError(str(e)) from None


def _read_json(path: Path):
    text = _read_text(path)
    try:
        return json.loads(text)
    except ValueError as e:
        raise LabelSpaceError(f"{path}: not valid JSON ({e}); restore it from the ObjectNet download") from None


# ----------------------------------------------------------------------------- scoring

def project(logits: torch.Tensor, imagenet_indices: Sequence[Sequence[int]]) -> torch.Tensor:
    """Map ImageNet logits to a set's label space.

    Args:
        logits: ``[B, 1000]`` float tensor.
        imagenet_indices: for each of the set's K classes, its ImageNet indices (from ``meta.json``).

    Returns:
        ``[B, K]`` tensor: for class k, the max of ``logits[:, i]`` over its indices ``i``. With one
        index per class this is the R/A mask (or the identity for 1000-way sets).
    """
    import torch

    width = max(len(ix) for ix in imagenet_indices)
    table = torch.full((len(imagenet_indices), width), -1, dtype=torch.long)
    for k, ix in enumerate(imagenet_indices):
        table[k, : len(ix)] = torch.as_tensor(list(ix), dtype=torch.long)
    gathered = logits[:, table.clamp(min=0).view(-1)].view(logits.shape[0], *table.shape)
    gathered = gathered.masked_fill((table < 0).to(logits.device), float("-inf"))
    return gathered.max(dim=2).values


def top1_correct(logits: torch.Tensor, labels: torch.Tensor,
                 imagenet_indices: Sequence[Sequence[int]]) -> int:
    """Number of correct top-1 predictions in the set's own label space.

    Args:
        logits: ``[B, 1000]``; labels: ``[B]`` int64 in ``0..K-1``.
    """
    return int((project(logits, imagenet_indices).argmax(dim=1) == labels.to(logits.device)).sum())
