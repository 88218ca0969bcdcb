"""The CIFAR experiment's settings, without torch: the data, attack and train sections of a run,
the presets, the TOML + ``--set`` resolution, the dry-run plan and the visualisation recipe.

Everything here is checked before torch is imported, so ``fastfc cifar --help`` and every config
error answer fast (as :mod:`fastfc.toy_config` does for ``fastfc toy``); the work itself is
:mod:`fastfc.cifar.run` and the modules it imports when a run starts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from fastfc import config as configlib
from fastfc.train_config import TrainConfig

VARIANTS = ("raw", "background")
SOURCES = ("cifar10", "photos")

CIFAR_TRAIN_IMAGES = 50_000

# The smoothing-adversarial recipe (docs/recipe.md): SGD lr 0.1, momentum 0.9, wd 1e-4, lr x 0.1 every
# 50 epochs, 250 epochs; "2 chunks of 64 per loaded batch of 128, one step per chunk" = 64 per step.
PAPER = {"train": {"epochs": 250, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                   "schedule": "step", "lr_step_epochs": 50, "lr_gamma": 0.1, "warmup_steps": 0,
                   "global_batch_size": 64, "grad_clip": float("inf"), "checkpoint_every": 1000,
                   "keep_weights_every_epochs": 50, "log_every": 50}}
# CPU, offline: both trainings and the visualisation in under 3 minutes on 2 shared cores. One
# intra-op thread: with other processes on the cores, 2 OpenMP threads made a step 4-6x slower.
SMOKE = {"cpu_threads": 1,
         "data": {"source": "photos", "train_per_class": 16, "test_per_class": 3, "workers": 0},
         "attack": {"ramp_epochs": 2},
         "train": {"epochs": 2, "global_batch_size": 32, "lr_step_epochs": 1, "precision": "fp32", "compile": False,
                   "log_every": 1}}
PRESETS = {"paper": {}, "smoke": SMOKE}


@dataclass
class AttackConfig:
    """The smoothing-adversarial recipe. ``epsilon``: the L2 radius at full ramp, in [0, 1] pixel
    units over the 3×32×32 image; ``ramp_epochs``: epochs of the linear ε ramp; ``steps``: PGD steps;
    ``noise_sd``: σ of the Gaussian noise; ``noise_copies``: noisy copies per image."""

    epsilon: float = 255 / 256
    ramp_epochs: int = 10
    steps: int = 4
    noise_sd: float = 0.25
    noise_copies: int = 2

    def __post_init__(self):
        if self.epsilon <= 0 or self.noise_sd < 0:
            raise ValueError(f"attack.epsilon must be > 0 and attack.noise_sd >= 0, got {self.epsilon}, {self.noise_sd}")
        for name in ("ramp_epochs", "steps", "noise_copies"):
            if getattr(self, name) < 1:
                raise ValueError(f"attack.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class DataConfig:
    """``variant``: "raw" or "background". ``source``: "cifar10" (torchvision, in ``root``, downloaded
    when ``download``) or "photos" (the offline stand-in, ``train_per_class`` / ``test_per_class``).
    ``workers``: loader workers per rank (``num_workers`` in older configs)."""

    variant: str = ""
    source: str = "cifar10"
    root: str = "data/cifar10"
    download: bool = True
    train_per_class: int = 50
    test_per_class: int = 10
    workers: int = 4

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"data.variant = {self.variant!r}: give --variant raw or --variant background")
        if self.source not in SOURCES:
            raise ValueError(f"data.source = {self.source!r}: choose one of {', '.join(SOURCES)}")
        if min(self.train_per_class, self.test_per_class) < 1 or self.workers < 0:
            raise ValueError("data.train_per_class and data.test_per_class must be >= 1, data.workers >= 0")


@dataclass
class CifarConfig:
    """A train run: ``[data]``, ``[attack]`` and ``[train]`` sections (the paper's values: :data:`PAPER`).
    ``cpu_threads``: torch's intra-op threads on a CPU run (0: torch's default, one per core)."""

    COMMAND: ClassVar[str] = "cifar"  # its older keys: fastfc.config.RENAMED["cifar"]
    data: DataConfig
    attack: AttackConfig = field(default_factory=AttackConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cpu_threads: int = 0

    def __post_init__(self):
        if self.cpu_threads < 0:
            raise ValueError(f"cpu_threads must be >= 0 (0: torch's default), got {self.cpu_threads}")


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file (see launch/configs/cifar_*.toml)")
    try:
        return configlib.tomllib.loads(path.read_text())
    except configlib.tomllib.TOMLDecodeError as e:
        raise configlib.ConfigError(f"{path}: {e}") from None


def resolve(preset: str, config: Path | None = None, overrides: list[str] = (), *, variant: str | None = None,
            out: Path | None = None) -> CifarConfig:
    """The paper's recipe, then ``preset``, the TOML ``config``, ``--set`` overrides, ``variant`` and ``out``;
    older keys in ``config`` and ``overrides`` are accepted with a note (:func:`fastfc.config.upgrade`).

    Without an out dir anywhere, ``runs/cifar_<variant>``. Raises ``FileNotFoundError`` (config) and
    :class:`fastfc.config.ConfigError` (unknown keys, bad values).
    """
    data = _merge(PAPER, PRESETS[preset])
    if config is not None:
        try:
            data = _merge(data, configlib.upgrade(_read_toml(config), CifarConfig.COMMAND, str(config)))
        except configlib.ConfigError as e:
            raise configlib.ConfigError(f"{config}: {e}") from None
    configlib.apply_overrides(data, configlib.upgrade_overrides(list(overrides), CifarConfig.COMMAND))
    if variant:
        configlib.set_key(data, "data.variant", variant, "--variant")
    if out is not None:
        configlib.set_key(data, "train.out_dir", str(out), "--out")
    if isinstance(data.get("train"), dict):  # otherwise from_dict names the section given a value
        variant_now = data["data"].get("variant", "run") if isinstance(data.get("data"), dict) else "run"
        data["train"].setdefault("out_dir", f"runs/cifar_{variant_now}")
    return configlib.from_dict(CifarConfig, data)


def plan(cfg: CifarConfig, world_size: int) -> dict:
    """What a run will do (``--dry-run``): images, per-rank batch, steps, model passes per image."""
    per_rank = cfg.train.per_rank_batch(world_size)
    images = CIFAR_TRAIN_IMAGES if cfg.data.source == "cifar10" else 10 * cfg.data.train_per_class
    steps_per_epoch = cfg.train.steps_per_epoch(images)  # the last partial batch kept, as the original
    return {"world_size": world_size, "train_images": images, "per_rank_batch": per_rank,
            "steps_per_epoch": steps_per_epoch, "total_steps": cfg.train.max_steps or cfg.train.epochs * steps_per_epoch,
            "passes_per_image": cfg.attack.noise_copies * (cfg.attack.steps + 1)}


@dataclass
class VisualizeConfig:
    """The visualisation recipe (:func:`fastfc.cifar.visualize.visualize_channels`)."""

    rounds: int = 10
    steps: int = 200
    lr: float = 0.05
    l2: float = 0.01
    blur: int = 5
    seed: int = 0
    double_normalize: bool = True  # the paper's code: ImageNet mean/std on top of the model's own
    cpu_threads: int = 0


VISUALIZE_PRESETS = {"paper": {}, "smoke": {"rounds": 2, "steps": 8, "cpu_threads": 1}}
