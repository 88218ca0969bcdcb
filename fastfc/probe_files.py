"""Probe files: a linear head ``{"weight": [C, D], "bias": [C]}`` (the original probe files' keys)
and its record ``<path>.json`` (classes, encoder, recipe), and how a head takes its inputs
(:func:`head_inputs`). Written by :mod:`fastfc.probe` and the demo, read by :mod:`fastfc.evaluate`,
which needs nothing else of the probe module.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastfc.atomic import atomic_path, read_json, write_json
from fastfc.checkpoint import Diverged
from fastfc.safe_load import read_file


def save_probe(path: str | Path, weight: torch.Tensor, bias: torch.Tensor, info: dict) -> None:
    """Write ``{"weight": [C, D], "bias": [C]}`` (the original probe files' keys) and ``<path>.json``.

    Raises:
        Diverged: a weight or bias is not finite (training diverged; nothing is written).
    """
    path = Path(path)
    bad = int((~torch.isfinite(weight)).sum() + (~torch.isfinite(bias)).sum())
    if bad:
        raise Diverged(f"{path}: the trained probe has {bad} non-finite weights (NaN/inf); stopped without saving; "
                       "train again with a lower --lr (non-finite features are refused by `fastfc features`)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"weight": weight.contiguous(), "bias": bias.contiguous()}, tmp)
    write_json(path.with_suffix(".json"), info)


def load_probe(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Read a probe file, fastfc's or the original code's (``weight`` [C, D], ``bias`` [C], possibly
    under ``state_dict`` or with ``module.``/``head.`` prefixes). Returns ``(weight, bias, info)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is unreadable (a ``CheckpointError``), holds no ``weight``/``bias``
            pair, or non-finite ones; the message names it.
    """
    path = Path(path)
    state = read_file(path, what_to_do="train the probe again with `fastfc probe`")
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    found = {key.rsplit(".", 1)[-1]: value for key, value in state.items() if key.rsplit(".", 1)[-1] in ("weight", "bias")}
    if set(found) != {"weight", "bias"} or found["weight"].ndim != 2:
        raise ValueError(f"{path}: not a linear probe file (expected keys weight [C, D] and bias [C])")
    if not (torch.isfinite(found["weight"]).all() and torch.isfinite(found["bias"]).all()):
        raise ValueError(f"{path}: the probe's weights are not finite (NaN/inf), so its scores would be chance; "
                         "train it again with `fastfc probe`")
    info_path = path.with_suffix(".json")
    info = read_json(info_path, f"the probe's record; rewrite it with `fastfc probe --out {path}`") \
        if info_path.is_file() else {}
    return found["weight"].float(), found["bias"].float(), info


def head_inputs(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The head's input: ``x [N, D]`` as it is, or with ``normalize`` each row divided by its L2 norm
    (``x / x.norm(dim=-1, keepdim=True)``, the original's ``ClassificationHead(normalize=True)``,
    ``models/mlp.py``, which it builds around a zero-shot head in ``models/utils.py``)."""
    return x / x.norm(dim=-1, keepdim=True) if normalize else x
