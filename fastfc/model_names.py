"""The model registry's names, without torch: encoder names, the original code's aliases and the
student initialisations, so that configs and the CLI can be checked before torch is imported.

The registry itself (builders, input sizes, embedding widths) is :data:`fastfc.models.ENCODERS`;
``tests/test_models.py`` keeps its keys equal to :data:`ENCODER_NAMES`.
"""

from __future__ import annotations

ENCODER_NAMES = ("RN50", "RN101", "RN50x4", "RN50x16", "ViT-B-16", "resnet50", "mobilenet_v2", "tiny")

# The original code's model flags (and open_clip's slash spelling) -> registry names.
ALIASES = {"CLIP_RN50": "RN50", "CLIP_RN101": "RN101", "CLIP_RN50x4": "RN50x4", "CLIP_RN50x16": "RN50x16",
           "CLIP_ViT-B/16": "ViT-B-16", "CLIP_ViT-B-16": "ViT-B-16", "ViT-B/16": "ViT-B-16",
           "ERM_ResNet50": "resnet50"}

# A student's initialisation: the paper's code (fastfc.models.paper_init) or open_clip's own.
INITS = ("paper", "open_clip")


def canonical_name(name: str) -> str:
    """Registry name for ``name`` (a registry name or an alias of the original code, e.g.
    ``"CLIP_RN50"`` -> ``"RN50"``, ``"CLIP_ViT-B/16"`` -> ``"ViT-B-16"``, ``"ERM_ResNet50"`` ->
    ``"resnet50"``). Raises ValueError listing the known names and aliases."""
    if name in ENCODER_NAMES:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODER_NAMES)} "
                     f"(aliases: {', '.join(ALIASES)})")
