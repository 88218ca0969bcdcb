"""The synthetic experiment's settings, presets and command-line parser, without torch.

:class:`ToyConfig` and the presets are checked here, so ``fastfc toy --help`` and every config
error answer before torch is imported; the command is :func:`fastfc.cli.toy`, the experiment
itself (data, MLP, training, records, plots) is :mod:`fastfc.toy`, imported when a run starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from dataclasses import dataclass
from pathlib import Path

from fastfc import config as configlib

ACTIVATION_NAMES = ("relu", "gelu", "leakyrelu", "sigmoid", "tanh", "identity")
LOSS_NAMES = ("logistic", "hinge", "mse")
#: records of a run when ``record_every`` is not given: one every ``steps // RECORDS`` steps.
RECORDS = 50
OPTIMIZERS = ("sgd", "adam", "adamw")
SERIES = ("id/loss", "ood/loss", "id/acc", "ood/acc", "norm/core", "norm/background")


@dataclass(frozen=True)
class ToyConfig:
    """One run. Defaults are those of the paper's ``toy.py`` (its synthetic-data figures):
    non-linear core, ReLU, logistic loss, AdamW lr 1e-3 wd 1e-3, 20k full-batch steps, seed 2024.

    ``steps`` and ``record_every`` count optimiser updates; ``record_every=None`` (the default)
    records about :data:`RECORDS` times, every ``max(1, steps // RECORDS)``; ``momentum`` is SGD's only.
    ``freeze_output`` fixes the output layer's weights at +1/hidden (first half of the units) and
    -1/hidden (second half) and freezes its bias at its random init, as the paper's code does
    (the theory has no bias; see ``docs/recipe.md``). Raises ValueError naming the bad field."""

    n: int = 1000
    core_dim: int = 32
    bg_dim: int = 32
    input_dim: int = 256
    nonlinear: bool = True
    hidden: int = 256
    act: str = "relu"
    freeze_output: bool = False
    loss: str = "logistic"
    opt: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-3
    momentum: float = 0.9
    steps: int = 20_000
    record_every: int | None = None
    seed: int = 2024

    def __post_init__(self):
        if self.record_every is None and isinstance(self.steps, int):
            object.__setattr__(self, "record_every", max(1, self.steps // RECORDS))
        for name, allowed in (("act", ACTIVATION_NAMES), ("loss", LOSS_NAMES), ("opt", OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        for name in ("n", "core_dim", "bg_dim", "hidden", "steps", "record_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected a positive integer")
        if self.n < 2:
            raise ValueError(f"n={self.n}; need at least one positive and one negative point")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"lr={self.lr}, weight_decay={self.weight_decay}; need lr > 0, weight_decay >= 0")
        if self.input_dim < self.core_dim + self.bg_dim:
            raise ValueError(f"input_dim={self.input_dim} < core_dim + bg_dim = "
                             f"{self.core_dim + self.bg_dim}; the orthogonal embedding needs room")


PRESETS: dict[str, tuple[str, dict]] = {
    "paper": ("the paper's main setting: non-linear core (radius 1 vs 2), ReLU, logistic loss, "
              "AdamW lr 1e-3 wd 1e-3, 20000 steps, seed 2024", {}),
    "theory": ("the paper's theoretical setting: linear core, hinge loss, SGD (momentum 0.9), "
               "output layer frozen at ±1/hidden",
               {"nonlinear": False, "loss": "hinge", "opt": "sgd", "freeze_output": True}),
    "identity": ("control: the theory setting with the activation removed; the linear network "
                 "fits the data but its background norm does not grow, and OOD ≈ ID",
                 {"nonlinear": False, "loss": "hinge", "opt": "sgd", "freeze_output": True,
                  "act": "identity"}),
}
SWEEPS = {"act": ACTIVATION_NAMES, "loss": LOSS_NAMES, "opt": OPTIMIZERS}


def describe(cfg: ToyConfig, skip: str = "") -> str:
    """A one-line description of ``cfg`` for titles and logs (``skip``: a field to leave out)."""
    parts = {"nonlinear": f"{'non-linear' if cfg.nonlinear else 'linear'} core", "act": cfg.act,
             "loss": f"{cfg.loss} loss", "opt": cfg.opt, "lr": f"lr {cfg.lr:g}",
             "freeze_output": "frozen output" if cfg.freeze_output else "", "seed": f"seed {cfg.seed}"}
    return ", ".join(text for field, text in parts.items() if text and field != skip)


EPILOG = """presets (--preset, default paper; --set overrides any field):
{presets}

sweep (--sweep AXIS runs the preset once per value, same seed, and overlays them):
{sweeps}

outputs, under --out (default runs/toy/<preset>[-sweep-<axis>]):
  config.json      the resolved config
  metrics.jsonl    one line per record: step, id/loss, ood/loss, id/acc, ood/acc,
                   norm/core, norm/background (mean first-layer weight norm per subspace)
  summary.json     init -> end values and the wall time in seconds
  toy_<preset>.png ID/OOD loss and the core/background weight norms against steps
  with --sweep: one such folder per value (<axis>-<value>/) and toy_<preset>_sweep_<axis>.png

examples:
  fastfc toy --preset paper --out runs/toy/paper
  fastfc toy --preset theory --steps 5000 --seed 1
  fastfc toy --preset paper --sweep act --steps 2000
  fastfc toy --preset paper --set nonlinear=false --set loss=mse

fields for --set: {fields}

cost: 5-10 ms per full-batch step on one CPU core, ~2-3 min for 20000 steps;
1000 steps (~10 s) already show the finding.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``fastfc toy`` command line (its ``--help`` lists presets, sweeps, outputs)."""
    epilog = EPILOG.format(
        presets="\n".join(textwrap.fill(doc, 92, initial_indent=f"  {name:<10}", subsequent_indent=" " * 12)
                           for name, (doc, _) in PRESETS.items()),
        sweeps="\n".join(f"  {axis:<5} {', '.join(values)}" for axis, values in SWEEPS.items()),
        fields=", ".join(f.name for f in dataclasses.fields(ToyConfig)))
    p = argparse.ArgumentParser(
        prog="fastfc toy", epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Feature contamination on synthetic data (arXiv 2406.03345): a 2-layer "
            "MLP trained on 32 core dims and 32 background dims (U(0,1), uncorrelated with the label) "
            "grows its first-layer weights along the background, so its loss rises when the "
            "background shifts to -U(0,1) (OOD).", 92))
    p.add_argument("--preset", choices=PRESETS, default="paper", help="setting to run (default: %(default)s)")
    p.add_argument("--sweep", choices=SWEEPS, help="run the preset once per activation, loss or optimiser")
    p.add_argument("--steps", type=int, help="full-batch training steps (preset: 20000)")
    p.add_argument("--record-every", type=int, help=f"steps between records (default: steps // {RECORDS}, "
                                                    f"so about {RECORDS} records)")
    p.add_argument("--seed", type=int, help="seed of data and model (preset: 2024)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. act=gelu, nonlinear=false (repeatable)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/toy/<preset>[-sweep-<axis>])")
    return p


def resolve_config(args: argparse.Namespace) -> ToyConfig:
    """Preset, then ``--steps/--record-every/--seed``, then ``--set`` (a later source wins, as in
    every fastfc command). Raises ConfigError."""
    data = dict(PRESETS[args.preset][1])
    for name in ("steps", "record_every", "seed"):
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    configlib.apply_overrides(data, args.set)
    return configlib.from_dict(ToyConfig, data)
