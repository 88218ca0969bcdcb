"""How to train: :class:`TrainConfig`, the settings of :func:`fastfc.train.train`, without torch.

Kept apart from the loop so that commands check a run's config (``--set train.lr=abc``, a bad
schedule or precision) before torch is imported; :mod:`fastfc.train` re-exports it.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from fastfc.config import check_choices, option

# "bf16": bfloat16 autocast around the forward (the GPU default, fast). "fp32": no autocast
# anywhere, the paper's arithmetic (docs/recipe.md).
PRECISIONS = ("bf16", "fp32")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step")


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`; else raise ``ValueError`` naming them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(repr(p) for p in PRECISIONS)}")
    return precision


def start_args(parser, folder: str) -> None:
    """``--resume`` / ``--fresh`` (exclusive) on an argparse ``parser`` whose run folder is ``folder``:
    how a run begins when the folder already holds one (:meth:`fastfc.checkpoint.Checkpointer.start`)."""
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true",
                     help=f"continue from {folder}/checkpoint.pt; with no checkpoint there yet, start the run (so a "
                          "launcher may always pass it). A torchrun restart or SLURM requeue resumes by itself")
    how.add_argument("--fresh", action="store_true",
                     help=f"start over: move the run already in {folder} to {folder}/replaced-<UTC time>/ (nothing is "
                          "deleted). Without --resume or --fresh a folder holding a checkpoint is refused")


@dataclass
class TrainConfig:
    """How to train. Units: lr per step; batch sizes in images; steps are optimiser steps.

    ``optimizer``: "adamw" (``betas``, decoupled weight decay) or "sgd" (``momentum``, L2 weight
    decay). ``schedule``: "cosine" (:func:`fastfc.train.lr_at`) or "step" (lr × ``lr_gamma`` every
    ``lr_step_epochs`` epochs); both warm up over ``warmup_steps``.

    ``global_batch_size`` is kept whatever the number of ranks (the paper's 256); the per-rank batch
    is derived and an uneven split is refused. It is global, unlike the per-process ``[data]
    batch_size`` of ``features``, ``probe`` and ``eval``, hence its own name. ``compile=None`` means on for GPU, off for CPU.
    ``precision``: ``"bf16"`` (bf16 autocast, the default) or ``"fp32"`` (no autocast anywhere in
    the step, teacher included: the paper's arithmetic); the older ``bf16 = true/false`` key still
    loads, as ``"bf16"``/``"fp32"``. ``stop_after`` ends the run early at that step, as a preemption
    would (checkpoint saved), without changing the schedule; ``max_steps`` shortens the schedule itself.
    """

    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 10_000
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    optimizer: str = option("adamw", choices=OPTIMIZERS)
    momentum: float = 0.9
    schedule: str = option("cosine", choices=SCHEDULES)
    lr_step_epochs: int = 50
    lr_gamma: float = 0.1
    global_batch_size: int = 256
    max_steps: int | None = None
    stop_after: int | None = None
    seed: int = 0
    compile: bool | None = None
    precision: str = option("bf16", choices=PRECISIONS)
    channels_last: bool = True
    deterministic: bool = False
    out_dir: str = "runs/train"
    checkpoint_every: int = 1000
    keep_weights_every_epochs: int = 10
    log_every: int = 10

    def __post_init__(self):
        self.betas = tuple(self.betas)
        check_choices(self, "train.")
        if not (0 <= self.momentum < 1 and 0 < self.lr_gamma <= 1):
            raise ValueError(f"train.momentum must be in [0, 1) and train.lr_gamma in (0, 1], "
                             f"got {self.momentum} and {self.lr_gamma}")
        for name in ("epochs", "global_batch_size", "checkpoint_every", "log_every", "lr_step_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.lr <= 0:
            raise ValueError("train.warmup_steps must be >= 0 and train.lr > 0")
        for name in ("max_steps", "stop_after"):  # 0 would read as "not set" and run the whole schedule
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1 (or unset), got {getattr(self, name)}")

    @staticmethod
    def migrate_keys(data: dict) -> dict:
        """Older configs: ``bf16 = true|false`` becomes ``precision = "bf16"|"fp32"``.
        Raises ``ValueError`` when both are given and disagree."""
        if "bf16" not in data:
            return data
        data = dict(data)
        old = data.pop("bf16")
        if not isinstance(old, bool):
            raise ValueError(f"train.bf16 (now train.precision): expected true or false, got {old!r}")
        new = "bf16" if old else "fp32"
        if data.setdefault("precision", new) != new:
            raise ValueError(f"train.bf16 = {str(old).lower()} and train.precision = {data['precision']!r} "
                             "disagree; drop train.bf16 (replaced by train.precision)")
        return data

    def per_rank_batch(self, world_size: int) -> int:
        """The per-rank batch. Raises ``ValueError`` when the global batch does not split evenly."""
        if self.global_batch_size % world_size:
            raise ValueError(f"train.global_batch_size={self.global_batch_size} does not split evenly over "
                             f"{world_size} ranks; choose a multiple of {world_size} (e.g. "
                             f"{world_size * max(1, round(self.global_batch_size / world_size))})")
        return self.global_batch_size // world_size

    def steps_per_epoch(self, num_images: int) -> int:
        """Optimiser steps per epoch: ``ceil(num_images / global_batch_size)``, the last partial global
        batch kept as the original's ``DataLoader`` (``drop_last=False``) keeps it: 5,005 steps for
        1,281,167 images at 256. The same for any number of ranks, since each rank reads
        ``ceil(num_images / ranks)`` images (a ``DistributedSampler``'s padding) in batches of
        ``global_batch_size / ranks``. Raises ``ValueError`` when there are no images."""
        if num_images <= 0:
            raise ValueError(f"{num_images} training images: the training set is empty")
        return math.ceil(num_images / self.global_batch_size)

    def total_steps(self, num_images: int) -> int:
        """``max_steps`` if set, else ``epochs * steps_per_epoch(num_images)``."""
        return self.max_steps or self.epochs * self.steps_per_epoch(num_images)

    def plan(self, num_images: int, world_size: int) -> dict:
        """The run's counts: ``train_images``, ``global_batch``, ``per_rank_batch``,
        ``steps_per_epoch``, ``total_steps`` and ``world_size``. Only the last two depend on the
        world size through ``per_rank_batch``; the steps never do. Raises ``ValueError`` (see above)."""
        return {"train_images": num_images, "global_batch": self.global_batch_size,
                "per_rank_batch": self.per_rank_batch(world_size), "steps_per_epoch": self.steps_per_epoch(num_images),
                "total_steps": self.total_steps(num_images), "world_size": world_size}
