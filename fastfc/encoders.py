"""The encoder registry, without torch: one :class:`EncoderSpec` per encoder (name, aliases, input
size, embedding width, normalisation, the builder's dotted path, which initialisations apply), so
that configs and the CLI are checked before torch is imported and a new architecture is one entry
here plus its launch config (``launch/configs/distill_<arch>.toml``).

:func:`fastfc.models.build_encoder` builds an entry by importing its builder. Sizes and widths are
open_clip's model configs (``vision_cfg.image_size``, ``embed_dim``) and docs/recipe.md;
``tests/test_models.py`` checks them against open_clip and torchvision.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP (= open_clip.constants.OPENAI_DATASET_MEAN)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision ImageNet classifiers (the ERM baselines)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A student's initialisation: the paper's code (fastfc.models.paper_init) or open_clip's own.
INITS = ("paper", "open_clip")


@dataclass(frozen=True)
class EncoderSpec:
    """A registry entry.

    Attributes:
        name: the canonical name, e.g. ``"RN50"``.
        backend: ``"open_clip"``, ``"torchvision"`` or ``"tiny"``.
        input_size: native resolution in px (CLIP RN attention pools have a fixed grid).
        embed_dim: width of the embedding the image tower returns.
        mean, std: per-channel RGB normalisation on the 0..1 scale.
        builder: ``"module:function"``; ``function(name, pretrained_tag_or_None)`` returns
            ``(visual, head_or_None)`` (torch modules).
        head_prefix: key prefix of the classifier in the backend's full-model checkpoints.
        aliases: the original code's model flags (and open_clip's slash spelling) for this entry.
        paper_init: ``init="paper"`` re-initialises a random-init tower with
            :func:`fastfc.models.paper_init` (the paper's CLIP students); otherwise the library's init stays.
    """

    name: str
    backend: str
    input_size: int
    embed_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    builder: str
    head_prefix: str | None = None
    aliases: tuple[str, ...] = ()
    paper_init: bool = False

    def builder_function(self) -> Callable[[str, str | None], tuple[Any, Any]]:
        """The builder named by :attr:`builder`, imported (this imports torch)."""
        module, function = self.builder.split(":")
        return getattr(importlib.import_module(module), function)


def _clip(name: str, size: int, dim: int, *aliases: str) -> EncoderSpec:
    return EncoderSpec(name, "open_clip", size, dim, CLIP_MEAN, CLIP_STD, "fastfc.models:build_open_clip",
                       aliases=aliases, paper_init=True)


ENCODERS: dict[str, EncoderSpec] = {s.name: s for s in (
    _clip("RN50", 224, 1024, "CLIP_RN50"), _clip("RN101", 224, 512, "CLIP_RN101"),
    _clip("RN50x4", 288, 640, "CLIP_RN50x4"), _clip("RN50x16", 384, 768, "CLIP_RN50x16"),
    _clip("ViT-B-16", 224, 512, "CLIP_ViT-B/16", "CLIP_ViT-B-16", "ViT-B/16"),
    EncoderSpec("resnet50", "torchvision", 224, 2048, IMAGENET_MEAN, IMAGENET_STD, "fastfc.models:build_resnet50",
                "fc.", aliases=("ERM_ResNet50",)),
    EncoderSpec("mobilenet_v2", "torchvision", 224, 1280, IMAGENET_MEAN, IMAGENET_STD,
                "fastfc.models:build_mobilenet_v2", "classifier."),
    EncoderSpec("tiny", "tiny", 32, 32, CLIP_MEAN, CLIP_STD, "fastfc.models:build_tiny"),
)}

# alias -> registry name
ALIASES = {alias: spec.name for spec in ENCODERS.values() for alias in spec.aliases}


def canonical_name(name: str) -> str:
    """Registry name for ``name`` (a registry name or an alias of the original code, e.g.
    ``"CLIP_RN50"`` -> ``"RN50"``, ``"CLIP_ViT-B/16"`` -> ``"ViT-B-16"``, ``"ERM_ResNet50"`` ->
    ``"resnet50"``). Raises ValueError listing the known names and aliases."""
    if name in ENCODERS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)} "
                     f"(aliases: {', '.join(ALIASES)})")

