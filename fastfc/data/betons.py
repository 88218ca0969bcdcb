"""A beton folder, as ``python -m data_prep.imagenet`` writes it: ``train.beton``, ``val.beton`` and
``meta.json`` (classes, counts per split and class, writer settings, skipped files). Torch-free.

Its ``meta.json`` is read here, as a shard set's is by :func:`fastfc.data.shards.read_meta`.
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
    """The number of samples in ``beton`` (read from its header by ffcv; imports ffcv).

    Raises:
        ValueError: the file is not a readable .beton (ffcv fails with an IndexError or worse on
            another file); the message names it and the converter that writes one.
    """
    from ffcv.reader import Reader

    try:
        return int(Reader(str(beton)).num_samples)
    except Exception as e:  # ffcv's reader has no error of its own for a file that is not a beton
        raise ValueError(f"{beton}: not a readable .beton ({type(e).__name__}: {e}); give a .beton written by "
                         "`python -m data_prep.imagenet`") from None
