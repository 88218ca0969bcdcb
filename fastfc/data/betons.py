"""A beton folder, as ``python -m data_prep.imagenet`` writes it: ``train.beton``, ``val.beton`` and
``meta.json`` (classes, counts per split and class, writer settings, skipped files). Torch-free.

Its ``meta.json`` is read here, as a shard set's is by :func:`fastfc.data.shards.read_meta`.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_beton_meta(folder: str | Path) -> dict:
    """Load ``folder/meta.json`` (``folder``: the beton folder, i.e. a beton's parent).

    Returns:
        the parsed JSON object (``classes``: list of the sorted WNIDs, ``splits``, ``writer``, ...).

    Raises:
        FileNotFoundError: no such file; the message names it and the converter to run.
        ValueError: unreadable or not JSON; the message names the file.
    """
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a beton folder; "
                                "run `python -m data_prep.imagenet` to write its betons and meta.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable beton meta ({e}); rewrite it with `python -m data_prep.imagenet`") from None
