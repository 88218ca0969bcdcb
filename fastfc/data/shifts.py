"""The shift sets: their folder layouts, label rules, label spaces and logit projections.

Every set is scored in its *own* label space (docs/recipe.md). A model emits 1000 ImageNet
logits; :func:`project` maps them to the set's K classes by taking, for each class, the max over
the ImageNet indices it maps to:

* ``none`` (ImageNet val, V2, Sketch): K = 1000, class k ↔ ImageNet index k;
* ``mask`` (ImageNet-R, ImageNet-A): K = 200, the classes present in the set's own folders, so
  the argmax runs only within them (Hendrycks et al.'s evaluation);
* ``objectnet-max`` (ObjectNet): K = 113 mapped classes, each scored by the max over its mapped
  ImageNet logits (125 indices in total), per ObjectNet's own mapping files.

Each :class:`ShiftSet` entry of :data:`REGISTRY` carries its set's rules: where the images and
mapping files sit under ``--src``, the label rule and the projection. :func:`list_set` applies
them to a set's folders; :mod:`data_prep.shifts` writes the listing as shards and stores the
resulting ``classes`` and ``imagenet_indices`` in each set's ``meta.json``, which
:func:`read_meta` reads and :func:`set_decoding` interprets (EXIF upright, border crop) for every
reader. :data:`ID_SET` names the in-distribution set (ImageNet val), here and nowhere else.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from fastfc.atomic import read_json
from fastfc.data import images
from fastfc.data.images import ListingError, read_label_text

if TYPE_CHECKING:
    import torch

ID_SET = "imagenet-val"  # the in-distribution set (ImageNet val): its one definition
PROJECTIONS = ("none", "mask", "objectnet-max")
WNID = re.compile(r"^n\d{8}$")
OBJECTNET_MAPPING_FILES = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                           "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")


class LabelSpaceError(ValueError):
    """A folder or mapping file that does not fit its set's label rule; the message names it."""


@dataclass
class LabelSpace:
    """What a label rule makes of a set's class folders.

    Attributes:
        classes: the set's K class names, in label order.
        imagenet_indices: for each class, its ImageNet-1k indices (list of K lists of int).
        labels: class folder → int label in ``0..K-1``, for the folders kept.
        order: every class folder (kept or dropped) in shard order.
        drop_reason: why a folder not in ``labels`` is dropped (named in ``meta.json``'s ``skipped``).
    """

    classes: list[str]
    imagenet_indices: list[list[int]]
    labels: dict[str, int]
    order: list[str]
    drop_reason: str = "class not mapped to ImageNet-1k"


#: ``rule(folders, where, imagenet_classes, mappings) -> LabelSpace``: the class folder names found
#: (sorted), the folder holding them (for error messages), the 1000 sorted WNIDs, and the set's
#: mapping folder (``None`` when it has none). Raises :class:`LabelSpaceError` naming a folder or file.
LabelRule = Callable[[list, Path, Sequence[str], "Path | None"], LabelSpace]


@dataclass
class SetListing:
    """What a set's folders hold, in shard order. ``files`` are relative to ``--src``; ``labels``
    are ints in the set's label space, one per file; ``skipped`` names every file seen but not
    converted, with the reason (:mod:`fastfc.data.images`)."""

    name: str
    classes: list[str]
    imagenet_indices: list[list[int]]
    files: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # unmapped ObjectNet folders → images
    skipped: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class ShiftSet:
    """A registered evaluation set: the extension point for a new shift set.

    A new set is one entry in :data:`REGISTRY` (plus its test in ``tests/test_shift_sets.py``):
    give its ``release`` folder name and ``layout``; set ``images_dir`` if the class folders sit
    one level down, and ``mappings``/``mapping_files`` if its label rule reads mapping files;
    pick a :data:`PROJECTIONS` entry; and give a ``label_rule`` (:data:`LabelRule`): one of
    :func:`int_folders`, :func:`wnid_folders`, :func:`present_wnids`, :func:`objectnet_mapping`, or
    a new function returning the set's :class:`LabelSpace`. Converter, loaders and scoring then
    take the set by name; nothing else chooses by name.

    Attributes:
        name: registry key, e.g. ``"imagenet-r"``.
        release: the name of the folder the release unpacks to (what ``--src`` points at).
        layout: the on-disk layout the converter expects under ``--src`` (for ``--help``).
        projection: one of :data:`PROJECTIONS`.
        images: the size of the full public release (for the README and sanity checks).
        label_rule: class folders → the set's label space (:data:`LabelRule`).
        images_dir: the folder under ``--src`` holding the class folders (``""``: ``--src`` itself).
        mappings: the folder under ``--src`` holding ``mapping_files`` (``""``: none).
        mapping_files: the files the label rule reads from ``mappings``.
        border_crop: px the set's authors recommend cropping off every border (ObjectNet's red frame:
            2); applied only when the conversion asks (``data_prep.shifts --objectnet-border-crop``,
            recorded in its ``meta.json``), since the released code scored ObjectNet uncropped.
    """

    name: str
    release: str
    layout: str
    projection: str
    images: int
    label_rule: LabelRule
    images_dir: str = ""
    mappings: str = ""
    mapping_files: tuple[str, ...] = ()
    border_crop: int = 0

    def mappings_folder(self, src: Path) -> Path | None:
        """``src``'s mapping folder, checked to hold every mapping file; ``None`` for a set without.

        Raises:
            ListingError: no mapping folder, but ``src``'s parent has one (``--src`` one level too deep).
            LabelSpaceError: a mapping file is missing (named).
        """
        if not self.mappings:
            return None
        if not (src / self.mappings).is_dir() and (src.parent / self.mappings).is_dir():
            raise ListingError(f"{src}: no {self.mappings}/ folder; --src is the {self.release} folder holding "
                               f"{self.images_dir}/ and {self.mappings}/: try --src {src.parent}")
        _require_files(src / self.mappings, self.mapping_files, f"{self.release}/{self.mappings}/")
        return src / self.mappings

    def list(self, src: Path, imagenet_classes: Sequence[str]) -> SetListing:
        """Apply this set's label rule to the folders under ``src``, listed by
        :mod:`fastfc.data.images`'s policy (skipped entries are named in ``listing.skipped``).

        Raises:
            ListingError: ``src`` does not have the set's layout (named, with what to pass instead).
            LabelSpaceError: a folder or mapping file that breaks the rule (named).
        """
        mappings = self.mappings_folder(src)
        listing = SetListing(self.name, [], [])
        root, prefix = src / self.images_dir, f"{self.images_dir}/" if self.images_dir else ""
        folders = _folders(root, listing, prefix)
        space = self.label_rule(folders, root, imagenet_classes, mappings)
        listing.classes, listing.imagenet_indices = space.classes, space.imagenet_indices
        for folder in space.order:
            entries = images.list_class_files(root / folder, f"{prefix}{folder}/")
            listing.skipped += entries.skipped
            files = [f"{prefix}{folder}/{n}" for n in entries.files]
            if folder in space.labels:
                listing.files += files
                listing.labels += [space.labels[folder]] * len(files)
            else:
                listing.dropped[folder] = len(files)
                listing.skipped.append(images.skip(f"{prefix}{folder}/", f"{space.drop_reason}: its "
                                                                        f"{len(files)} images are dropped"))
        return listing


def _folders(root: Path, listing: SetListing, prefix: str) -> list[str]:
    """The class folders under ``root`` (sorted); entries skipped go to ``listing.skipped``."""
    if not root.is_dir():
        raise ListingError(f"{root}: folder not found")
    entries = images.list_class_folders(root, prefix)
    if not entries.folders:
        deep = any(f.is_file() for f in root.iterdir())
        raise ListingError(f"{root}: no class folders (expected {root}/<class>/<images>)"
                           + (f"; it holds files itself, so --src looks one level too deep: try --src {root.parent}"
                              if deep else ""))
    listing.skipped += entries.skipped
    return entries.folders


def get(name: str) -> ShiftSet:
    """The registered set ``name``. Raises ``KeyError`` listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown shift set {name!r}; known: {', '.join(REGISTRY)}") from None


def list_set(name: str, src: Path, imagenet_classes: Sequence[str]) -> SetListing:
    """``get(name).list(src, imagenet_classes)``: the set's files and labels, in shard order.

    Raises:
        KeyError: unknown set; ListingError / LabelSpaceError: as :meth:`ShiftSet.list`.
    """
    return get(name).list(Path(src), imagenet_classes)


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
    _require_files(mappings, OBJECTNET_MAPPING_FILES, "objectnet-1.0/mappings/")
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


def _require_files(folder: Path, names: Sequence[str], release_path: str) -> None:
    """Raise :class:`LabelSpaceError` naming every file of ``names`` missing from ``folder``."""
    missing = [f for f in names if not (folder / f).is_file()]
    if missing:
        raise LabelSpaceError(f"{folder}: missing mapping file(s) {', '.join(missing)}; "
                              f"they ship in {release_path} of the official download")


def _imagenet_space(imagenet_classes: Sequence[str], labels: dict[str, int]) -> LabelSpace:
    """The 1000-way space (class k ↔ ImageNet index k), folders in label order."""
    return LabelSpace(list(imagenet_classes), [[i] for i in range(len(imagenet_classes))], labels,
                      sorted(labels, key=labels.get))


def int_folders(folders: list[str], where: Path, imagenet_classes: Sequence[str], mappings=None) -> LabelSpace:
    """ImageNetV2's rule (:data:`LabelRule`): 1000-way, label = ``int(folder)`` (:func:`v2_label`)."""
    return _imagenet_space(imagenet_classes, {f: v2_label(f, where) for f in folders})


def wnid_folders(folders: list[str], where: Path, imagenet_classes: Sequence[str], mappings=None) -> LabelSpace:
    """ImageNet val's and Sketch's rule: 1000-way, label = the WNID folder's ImageNet index."""
    index = {w: i for i, w in enumerate(imagenet_classes)}
    return _imagenet_space(imagenet_classes, {f: wnid_index(f, index, where) for f in folders})


def present_wnids(folders: list[str], where: Path, imagenet_classes: Sequence[str], mappings=None) -> LabelSpace:
    """ImageNet-R's and -A's rule: the classes are the WNID folders present, in ImageNet order
    (the ``mask`` projection); label = position among them."""
    index = {w: i for i, w in enumerate(imagenet_classes)}
    present = sorted(folders, key=lambda f: wnid_index(f, index, where))
    return LabelSpace(present, [[index[w]] for w in present], {w: k for k, w in enumerate(present)}, present)


def objectnet_mapping(folders: list[str], where: Path, imagenet_classes: Sequence[str],
                      mappings: Path | None) -> LabelSpace:
    """ObjectNet's rule: the mapped classes of its mapping files (:func:`objectnet_classes`);
    folders of unmapped classes are dropped; folders stay in name order."""
    mapped, classes, indices = objectnet_classes(mappings, imagenet_classes)
    labels = {f: classes.index(mapped[f]) for f in folders if f in mapped}
    return LabelSpace(classes, indices, labels, list(folders), "ObjectNet class not mapped to ImageNet-1k")


REGISTRY: dict[str, ShiftSet] = {s.name: s for s in (
    ShiftSet(ID_SET, "val", "<wnid>/*.JPEG (1000 folders)", "none", 50_000, wnid_folders),
    ShiftSet("imagenet-v2", "imagenetv2-matched-frequency", "<int>/*.jpeg, folders 0..999 (label = int(folder))",
             "none", 10_000, int_folders),
    ShiftSet("imagenet-sketch", "sketch", "<wnid>/* (1000 folders)", "none", 50_889, wnid_folders),
    ShiftSet("imagenet-r", "imagenet-r", "<wnid>/* (200 folders)", "mask", 30_000, present_wnids),
    ShiftSet("imagenet-a", "imagenet-a", "<wnid>/* (200 folders)", "mask", 7_500, present_wnids),
    ShiftSet("objectnet", "objectnet-1.0", "images/<folder>/*.png + mappings/*.json", "objectnet-max", 18_574,
             objectnet_mapping, images_dir="images", mappings="mappings", mapping_files=OBJECTNET_MAPPING_FILES,
             border_crop=2),
)}


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


# ----------------------------------------------------------------------------- a converted set's meta.json

def read_meta(set_dir: str | Path) -> dict:
    """Load ``set_dir/meta.json``, as ``data_prep.shifts`` writes it (``set``, ``classes``,
    ``imagenet_indices``, ``projection``, ``count``, ``per_class``, ``shards``, and the decoding
    opt-ins read by :func:`set_decoding`).

    Raises:
        FileNotFoundError: no meta.json; ValueError: unreadable. The message names the path and the
            converter to run.
    """
    return read_json(Path(set_dir) / "meta.json", f"{set_dir} is not a converted shift set; run "
                     "`python -m data_prep.shifts` to write its shards and meta.json")


def set_decoding(meta: dict) -> dict:
    """How a set's images are decoded before the evaluation transform, as its ``meta.json`` says
    (``data_prep.shifts`` records both at conversion):

    * ``exif_upright`` (bool): turn images by their EXIF orientation tag (``--exif-upright``);
    * ``border_crop`` (int, px): cut off every border first (``--objectnet-border-crop``: 2 px).

    A ``meta.json`` written before these fields existed reads as the default of both, the released
    code's: as stored, no crop (fastfc then turned images upright and cropped ObjectNet: convert
    again with the options to keep that). Returns ``{"exif_upright": bool, "border_crop": int}``.
    """
    return {"exif_upright": bool(meta.get("exif_upright", False)), "border_crop": int(meta.get("border_crop", 0))}


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
