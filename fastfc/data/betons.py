"""A beton folder, as ``python -m data_prep.imagenet`` writes it: ``train.beton``, ``val.beton`` and
``meta.json`` (classes, counts per split and class, writer settings, skipped files). Torch-free.

Its ``meta.json`` is read here, as a shard set's is by :func:`fastfc.data.shifts.read_meta`, and it
describes every beton in the folder: ``splits[<split>]`` holds the beton's ``count``, its
``per_class`` counts (whose keys, in label order, are the class list it was written with) and its
size in ``bytes``. Every reader opens a beton through :func:`beton_samples` (directly, or through
:func:`check_beton`), which refuses a beton that its ``meta.json`` does not describe. A ``meta.json``
from before the sizes were recorded is accepted: its class lists and counts are still checked.
"""

from __future__ import annotations

from pathlib import Path

from fastfc.atomic import read_json


def read_beton_meta(folder: str | Path) -> dict:
    """Load ``folder/meta.json`` (``folder``: the beton folder, i.e. a beton's parent).

    Returns:
        the parsed JSON object (``classes``: list of the sorted WNIDs, ``splits``, ``writer``, ...).

    Raises:
        FileNotFoundError: no such file; the message names it and the converter to run.
        ValueError: unreadable or not JSON; the message names the file.
    """
    return read_json(Path(folder) / "meta.json", f"{folder} is not a beton folder; run "
                     "`python -m data_prep.imagenet` to write its betons and meta.json")


def beton_samples(beton: str | Path) -> int:
    """The number of samples in ``beton`` (read from its header by ffcv; imports ffcv), checked
    against the ``meta.json`` beside it when there is one (:func:`check_record`).

    Raises:
        ValueError: the file is not a readable .beton (ffcv fails with an IndexError or worse on
            another file), or its ``meta.json`` does not describe it; the message names it and the
            converter that writes one.
    """
    from ffcv.reader import Reader

    try:
        n = int(Reader(str(beton)).num_samples)
    except Exception as e:  # ffcv's reader has no error of its own for a file that is not a beton
        raise ValueError(f"{beton}: not a readable .beton ({type(e).__name__}: {e}); give a .beton written by "
                         "`python -m data_prep.imagenet`") from None
    if (Path(beton).parent / "meta.json").is_file():
        check_record(beton, n, read_beton_meta(Path(beton).parent))
    return n


def check_beton(beton: str | Path) -> dict:
    """The ``meta.json`` of the folder holding ``beton``, once the beton is checked against it
    (:func:`beton_samples`). Raises ``FileNotFoundError`` / ``ValueError`` as those two do."""
    meta = read_beton_meta(Path(beton).parent)
    beton_samples(beton)
    return meta


def check_record(beton: str | Path, samples: int, meta: dict) -> None:
    """Refuse ``beton`` (holding ``samples``) unless ``meta`` (its folder's ``meta.json``) describes
    it: a record for its split, written with ``meta``'s class list, of the recorded size and count.

    Raises:
        ValueError: one line naming the beton, what differs and the conversion to run.
    """
    beton = Path(beton)
    where, split = beton.parent / "meta.json", beton.stem
    fix = (f"the beton and {where} come from different conversions; re-convert it: python -m data_prep.imagenet "
           f"--src SRC --out {beton.parent} --splits {split} --overwrite")
    record = (meta.get("splits") or {}).get(split)
    if record is None:
        described = ", ".join(meta.get("splits") or {}) or "no beton"
        raise ValueError(f"{beton}: not described by {where} (it describes {described}); {fix}")
    written = list(record.get("per_class") or meta["classes"])
    if written != meta["classes"]:
        raise ValueError(f"{beton}: written with {len(written)} classes, but {where} lists {len(meta['classes'])} "
                         f"(classes differ first at label {_first_difference(written, meta['classes'])}); {fix}")
    size = beton.stat().st_size
    if (record.get("bytes", size), record["count"]) != (size, samples):
        raise ValueError(f"{beton}: {samples} samples in {size} bytes, but {where} records {record['count']} in "
                         f"{record.get('bytes', size)}; {fix}")


def _first_difference(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
