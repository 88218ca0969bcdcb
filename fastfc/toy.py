"""The synthetic experiment of *Feature Contamination* (arXiv 2406.03345; docs/recipe.md,
"Synthetic experiment"): a 2-layer MLP learns a background that is uncorrelated with the label.

Data: ``n`` points with labels ±1. Each has ``core_dim`` core features (positives on the unit
sphere, negatives on the radius-2 sphere; or ±U(0,1) in the linear setting) and ``bg_dim``
background features drawn U(0,1) independently of the label. A random orthogonal map embeds the
``core_dim + bg_dim`` coordinates in ``input_dim`` input dims. The OOD test set keeps the core
features and draws the background from -U(0,1). A 2-layer MLP (``hidden`` units) is trained on
the full batch; every ``record_every`` steps we record the ID loss (training set), the OOD loss,
and the mean norm of the first-layer weight rows projected onto the core and background subspaces.

The finding: the background norm grows although the background carries no label information, and
the OOD loss climbs above the ID loss. The ``identity`` preset (a linear network) is the control:
its background norm stays near its initial value and OOD matches ID.

    fastfc toy --preset paper --out runs/toy/paper       # the paper's 20k steps
    fastfc toy --preset theory --steps 5000 --seed 1     # hinge + SGD + frozen output
    fastfc toy --preset paper --sweep act --steps 2000   # every activation, one plot

Settings, presets and the command line: :mod:`fastfc.toy_config` (torch-free).

Cost: 5-10 ms per full-batch step on one CPU core (two 1000x256x256 matmuls), so ~2-3 minutes
for the paper's 20k steps; the finding is plain after 1000 steps (~10 s).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastfc import config as configlib
from fastfc.atomic import atomic_path, write_json
from fastfc.cpus import one_thread
from fastfc.toy_config import (OPTIMIZERS, PRESETS, SERIES, SWEEPS, ToyConfig, build_parser, describe,
                               resolve_config)

__all__ = ["ACTIVATIONS", "LOSSES", "OPTIMIZERS", "PRESETS", "SERIES", "SWEEPS", "ToyConfig", "ToyData", "ToyResult",
           "build_parser", "make_data", "resolve_config", "run", "summarize", "sweep"]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "leakyrelu": lambda: nn.LeakyReLU(0.1),
               "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "identity": nn.Identity}
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "logistic": lambda f, y: F.softplus(-y * f).mean(),  # log(1 + exp(-y f)), overflow-safe
    "hinge": lambda f, y: (1 - y * f).clamp(min=0).mean(),
    "mse": lambda f, y: ((f - y) ** 2).mean(),
}


@dataclass
class ToyData:
    """Tensors of one draw, all float32 on the CPU.

    ``x_train`` / ``x_ood``: (n, input_dim), the same core features, background U(0,1) / -U(0,1).
    ``y``: (n,), +1 for the first n//2 points, -1 after. ``basis``: (core_dim + bg_dim, input_dim)
    with orthonormal rows; ``x = [core, background] @ basis``, so rows ``[:core_dim]`` span the
    core subspace and the rest the background subspace."""

    x_train: torch.Tensor
    x_ood: torch.Tensor
    y: torch.Tensor
    basis: torch.Tensor


def make_data(cfg: ToyConfig, gen: torch.Generator) -> ToyData:
    """Draw the data of docs/recipe.md from ``gen``, as the original toy.py's ``generate_data``
    does (orthogonal basis from QR instead of SVD). Shapes and dtypes: :class:`ToyData`."""
    n_pos = cfg.n // 2
    n_neg = cfg.n - n_pos
    basis = torch.linalg.qr(torch.randn(cfg.input_dim, cfg.core_dim + cfg.bg_dim, generator=gen))[0].T
    if cfg.nonlinear:
        g = torch.randn(cfg.n, cfg.core_dim, generator=gen)
        radius = torch.cat([torch.ones(n_pos), 2 * torch.ones(n_neg)])
        core = g / g.norm(dim=1, keepdim=True) * radius[:, None]
    else:
        sign = torch.cat([torch.ones(n_pos), -torch.ones(n_neg)])
        core = torch.rand(cfg.n, cfg.core_dim, generator=gen) * sign[:, None]
    bg_train = torch.rand(cfg.n, cfg.bg_dim, generator=gen)
    bg_ood = -torch.rand(cfg.n, cfg.bg_dim, generator=gen)
    y = torch.cat([torch.ones(n_pos), -torch.ones(n_neg)])
    embed = lambda bg: torch.cat([core, bg], dim=1) @ basis
    return ToyData(embed(bg_train), embed(bg_ood), y, basis.contiguous())


def build_model(cfg: ToyConfig, gen: torch.Generator) -> nn.Sequential:
    """``Linear(input_dim, hidden) -> act -> Linear(hidden, 1)``, float32; maps (B, input_dim) to
    (B, 1). Initialised from ``gen`` like ``nn.Linear`` (U(±1/sqrt(fan_in)) for weight and bias)."""
    model = nn.Sequential(nn.Linear(cfg.input_dim, cfg.hidden), ACTIVATIONS[cfg.act](),
                          nn.Linear(cfg.hidden, 1))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            bound = 1.0 / float(np.sqrt(layer.in_features))
            for p in (layer.weight, layer.bias):
                p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
    if cfg.freeze_output:
        _freeze_output(model[2], cfg.hidden)
    return model


def _freeze_output(layer: nn.Linear, hidden: int) -> None:
    with torch.no_grad():
        layer.weight[:, : hidden // 2] = 1.0 / hidden
        layer.weight[:, hidden // 2:] = -1.0 / hidden
    layer.requires_grad_(False)  # the bias keeps its random init, frozen (the original code)


def make_optimizer(cfg: ToyConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum ``cfg.momentum``), Adam (L2 ``weight_decay``) or AdamW (decoupled), over the
    trainable parameters, all with ``cfg.lr`` and ``cfg.weight_decay`` as in the original."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.opt == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.opt == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def measure(model: nn.Sequential, data: ToyData, cfg: ToyConfig) -> dict[str, float]:
    """The recorded quantities (keys :data:`SERIES`): ID/OOD loss (``cfg.loss``) and accuracy
    (fraction of ``sign(f) == y``), and the mean over hidden units of the L2 norm of the unit's
    first-layer weight row projected onto the core and the background subspaces."""
    out = {}
    for split, x in (("id", data.x_train), ("ood", data.x_ood)):
        f = model(x).squeeze(1)
        out[f"{split}/loss"] = LOSSES[cfg.loss](f, data.y).item()
        out[f"{split}/acc"] = (torch.sign(f) == data.y).float().mean().item()
    coords = model[0].weight @ data.basis.T  # (hidden, core_dim + bg_dim)
    out["norm/core"] = coords[:, : cfg.core_dim].norm(dim=1).mean().item()
    out["norm/background"] = coords[:, cfg.core_dim:].norm(dim=1).mean().item()
    return out


@dataclass
class ToyResult:
    """A finished run. ``steps``: (R,) int64 update counts of the records (0 = initialisation, the
    last = ``cfg.steps``); ``series[key]``: (R,) float64 per :data:`SERIES` key; ``seconds``: wall
    time of data, model and training."""

    config: ToyConfig
    steps: np.ndarray
    series: dict[str, np.ndarray]
    seconds: float

    def at(self, key: str, index: int = -1) -> float:
        """One recorded value, e.g. ``at("norm/background", 0)`` (initial) or ``at("ood/loss")`` (end)."""
        return float(self.series[key][index])


def run(cfg: ToyConfig, log: Callable[[str], None] | None = None) -> ToyResult:
    """Train one model and record :data:`SERIES` at step 0, every ``record_every`` and at the end.

    Deterministic: data, then model, are drawn from one ``torch.Generator`` seeded with ``cfg.seed``
    and the CPU ops used are deterministic, so a seed gives a bit-identical result on a machine."""
    start = time.perf_counter()
    with one_thread():
        gen = torch.Generator().manual_seed(cfg.seed)
        data = make_data(cfg, gen)
        model = build_model(cfg, gen)
        optimizer = make_optimizer(cfg, model)
        records = [(0, measure(model, data, cfg))]
        for step in range(1, cfg.steps + 1):
            loss = LOSSES[cfg.loss](model(data.x_train).squeeze(1), data.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % cfg.record_every == 0 or step == cfg.steps:
                records.append((step, measure(model, data, cfg)))
                if log:
                    log(_format_record(*records[-1]))
    steps = np.array([s for s, _ in records], dtype=np.int64)
    series = {k: np.array([r[k] for _, r in records], dtype=np.float64) for k in SERIES}
    return ToyResult(cfg, steps, series, time.perf_counter() - start)


def _format_record(step: int, rec: dict[str, float]) -> str:
    return (f"step {step:>6}: ID loss {rec['id/loss']:.3g} acc {rec['id/acc']:.3f} | OOD loss "
            f"{rec['ood/loss']:.3g} acc {rec['ood/acc']:.3f} | norm core {rec['norm/core']:.3f} "
            f"background {rec['norm/background']:.3f}")


def summarize(result: ToyResult) -> dict:
    """Init and end values that state the finding, plus the wall time in seconds."""
    bg0, bg1 = result.at("norm/background", 0), result.at("norm/background")
    return {"steps": int(result.steps[-1]), "seconds": round(result.seconds, 2),
            "background_norm_init": bg0, "background_norm_end": bg1, "background_growth": bg1 / bg0,
            "core_norm_init": result.at("norm/core", 0), "core_norm_end": result.at("norm/core"),
            **{f"{k}_end": result.at(k) for k in ("id/loss", "ood/loss", "id/acc", "ood/acc")}}


def save(result: ToyResult, out: Path) -> None:
    """Write ``out/config.json`` (resolved config), ``out/metrics.jsonl`` (one record per line:
    ``step`` + :data:`SERIES` keys) and ``out/summary.json`` (:func:`summarize`), each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", configlib.to_dict(result.config))
    lines = [json.dumps({"step": int(s), **{k: float(result.series[k][i]) for k in SERIES}})
             for i, s in enumerate(result.steps)]
    with atomic_path(out / "metrics.jsonl") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(out / "summary.json", summarize(result))


def _figure(ncols: int):
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend (Agg on save)

    fig = Figure(figsize=(5 * ncols, 4), dpi=100, layout="constrained")
    return fig, fig.subplots(1, ncols)


def _save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_run(result: ToyResult, path: Path, title: str = "") -> None:
    """The paper's two panels as a PNG: ID and OOD loss; mean core and background weight norms."""
    fig, (ax_loss, ax_norm) = _figure(2)
    for ax, keys, labels, ylabel in (
            (ax_loss, ("id/loss", "ood/loss"), ("ID loss", "OOD loss"), f"{result.config.loss} loss"),
            (ax_norm, ("norm/core", "norm/background"), ("core", "background"),
             "mean first-layer weight norm")):
        for key, label in zip(keys, labels):
            ax.plot(result.steps, result.series[key], label=label, linewidth=2)
        ax.set(xlabel="training step", ylabel=ylabel)
        ax.grid(alpha=0.4)
    bg0 = result.at("norm/background", 0)
    ax_norm.axhline(bg0, color="grey", linestyle=":", label="background at init")
    ax_norm.set_title(f"background norm x{result.at('norm/background') / bg0:.1f} over its init", fontsize=10)
    ax_loss.set_title(f"end: ID {result.at('id/loss'):.3g}, OOD {result.at('ood/loss'):.3g}", fontsize=10)
    for ax in (ax_loss, ax_norm):
        ax.legend()
    fig.suptitle(title or describe(result.config))
    _save_figure(fig, path)


def sweep(base: ToyConfig, axis: str, values: tuple[str, ...] | None = None,
          log: Callable[[str], None] | None = None) -> dict[str, ToyResult]:
    """Run ``base`` once per value of ``axis`` (a :data:`SWEEPS` key: act, loss or opt), same seed.
    Returns value -> result, in order. Raises ValueError for an unknown axis or value."""
    if axis not in SWEEPS:
        raise ValueError(f"sweep axis {axis!r}; choose one of {', '.join(SWEEPS)}")
    results = {}
    for value in values or SWEEPS[axis]:
        results[value] = run(dataclasses.replace(base, **{axis: value}))
        if log:
            log(f"{axis}={value}: " + _format_record(int(results[value].steps[-1]),
                                                     {k: v[-1] for k, v in results[value].series.items()}))
    return results


def plot_sweep(results: dict[str, ToyResult], axis: str, path: Path) -> None:
    """Background weight norm and OOD accuracy against steps, one line per swept value (PNG)."""
    fig, (ax_bg, ax_acc) = _figure(2)
    for value, res in results.items():
        ax_bg.plot(res.steps, res.series["norm/background"], label=value, linewidth=2)
        ax_acc.plot(res.steps, res.series["ood/acc"], label=value, linewidth=2)
    ax_bg.set(xlabel="training step", ylabel="mean background weight norm")
    ax_acc.set(xlabel="training step", ylabel="OOD accuracy")
    for ax in (ax_bg, ax_acc):
        ax.grid(alpha=0.4)
        ax.legend(title=axis)
    fig.suptitle(f"sweep over {axis}; " + describe(next(iter(results.values())).config, skip=axis))
    _save_figure(fig, path)
