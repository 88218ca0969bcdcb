"""The safe reader of every weights file fastfc reads: checkpoints, students, probes, released encoders.

:func:`read_file` is ``torch.load(..., weights_only=True)`` (no arbitrary code runs on load) with
one-line errors that name the file and say what to do. Used by :mod:`fastfc.models` (``--weights``),
:mod:`fastfc.checkpoint` (resume) and the probe files (:mod:`fastfc.probe_files`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file and what to do."""


def _numpy_globals() -> list:
    """What a numpy array inside a pickle needs (fastfc checkpoints before RNG states were stored
    as plain values): array reconstruction and dtypes only, no arbitrary callables."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    dtypes = [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.float32)]
    return [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtypes]


def _reason(error: Exception) -> str:
    """A one-line cause for a failed ``torch.load``."""
    text = str(error)
    if isinstance(error, EOFError) or not text.strip():
        return "the file is empty or cut short"
    if "central directory" in text or "zip archive" in text:
        return "cut short or damaged (its zip index is missing)"
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (f"it holds Python objects ({found.group(1)}) that a safe weights-only load refuses (save only "
                "tensors and plain values, e.g. torch.save(model.state_dict(), path))")
    if "Weights only load failed" in text:
        return "not a file written by torch.save"
    return text.strip().splitlines()[0][:200]


def read_file(path: str | Path, *, what_to_do: str = "check the path, or copy the file again") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, with one-line errors.

    Checkpoints of older fastfc versions (numpy RNG state inside) load too: only numpy's array and
    dtype reconstruction is allowed on top of the weights-only defaults.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: damaged, cut short, empty, or not a weights file; names ``path`` and
            ends with ``what_to_do``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # unpickling refused, damaged or cut-short file
        if "numpy" in str(first):
            try:
                with torch.serialization.safe_globals(_numpy_globals()):
                    return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:
                pass
        raise CheckpointError(f"{path}: cannot be read: {_reason(first)}; {what_to_do}") from None
