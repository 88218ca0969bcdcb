"""Zero-shot heads: a CLIP text tower turns class names into a linear head on the image embedding.

The recipe is CLIP's (Radford et al., 2021) as open_clip implements it
(``open_clip.build_zero_shot_classifier``): each class name is written into every prompt template
(open_clip's 80 OpenAI ImageNet templates, "a bad photo of a {c}." ...), the text tower embeds
them, and the L2-normalised embeddings are averaged per class and normalised again. Class names
are open_clip's ImageNet names, looked up by WNID, so a subset of ImageNet (a beton's
``meta.json`` classes) gets the right name for each label.

The head is ``weight = logit_scale * text_embeddings`` ``[C, D]`` and ``bias = 0``. fastfc's probes
read the raw image embedding (no normalisation, docs/recipe.md); normalising an embedding only
divides all its logits by the same positive number, so this head's top-1 equals CLIP's zero-shot
top-1. It serves as the head itself (``fastfc probe --zero-shot TAG --epochs 0``) or as the
initialisation of a linear probe (the original code's option, docs/recipe.md). A distilled student
learns its teacher's image embedding, so the teacher's text tower gives the student a head too.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["build_clip", "classnames_for", "zero_shot_head"]


def classnames_for(wnids: Sequence[str]) -> list[str]:
    """open_clip's ImageNet class name for each WNID (``"n01440764"`` -> ``"tench"``), in order.

    Raises:
        ValueError: a WNID that is not one of the 1000 ImageNet-1k classes (named).
    """
    from open_clip import IMAGENET_CLASSNAMES

    from fastfc.data.shifts import imagenet_wnids

    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    unknown = [w for w in wnids if w not in index]
    if unknown:
        raise ValueError(f"not ImageNet-1k WNIDs, so no class name to prompt with: {', '.join(unknown[:5])}"
                         + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""))
    return [IMAGENET_CLASSNAMES[index[w]] for w in wnids]


def build_clip(name: str, pretrained: str) -> tuple[nn.Module, Callable]:
    """The whole open_clip CLIP model (image and text towers) and its tokenizer.

    Args:
        name: a CLIP encoder name or alias of :mod:`fastfc.models` (``RN50``, ``CLIP_ViT-B/16``, ...).
        pretrained: an open_clip tag (``openai``; downloaded once, needs network) or a local file
            holding a whole CLIP model's state_dict; a file is built with QuickGELU, as OpenAI's
            weights need (:func:`fastfc.models.open_clip_model_name`).

    Raises:
        ValueError: ``name`` is not a CLIP encoder (it has no text tower).
        RuntimeError: from open_clip, when the tag is unknown or the download fails.
    """
    import open_clip

    from fastfc.models import ENCODERS, canonical_name, open_clip_model_name

    spec = ENCODERS[canonical_name(name)]
    if spec.backend != "open_clip":
        raise ValueError(f"--zero-shot needs a CLIP encoder's text tower; {spec.name} has none "
                         f"(CLIP encoders: {', '.join(n for n, s in ENCODERS.items() if s.backend == 'open_clip')})")
    model_name = open_clip_model_name(spec.name, pretrained)
    model = open_clip.create_model(model_name, pretrained=pretrained)
    return model.eval(), open_clip.get_tokenizer(model_name)


@torch.no_grad()
def zero_shot_head(model: nn.Module, tokenizer: Callable, classnames: Sequence[str],
                   templates: Sequence[str | Callable[[str], str]] | None = None, *,
                   device: str | torch.device = "cpu", progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear head from CLIP's text tower.

    Args:
        model: an open_clip ``CLIP`` (needs ``encode_text`` and ``logit_scale``).
        tokenizer: its tokenizer (``open_clip.get_tokenizer``).
        classnames: one name per class, in label order (:func:`classnames_for`).
        templates: prompt templates, format strings or callables; default open_clip's
            ``OPENAI_IMAGENET_TEMPLATES`` (80).
        device: where the text tower runs.

    Returns:
        ``(weight [C, D], bias [C])`` float32 on the CPU; ``weight``'s rows have norm
        ``exp(logit_scale)`` (100 for OpenAI's CLIP) and ``bias`` is zero.
    """
    import open_clip

    if templates is None:
        templates = open_clip.OPENAI_IMAGENET_TEMPLATES
    model = model.to(device)
    templates = [t.format if isinstance(t, str) else t for t in templates]  # open_clip wants one kind
    text = open_clip.build_zero_shot_classifier(model, tokenizer, list(classnames), templates,
                                                num_classes_per_batch=10, device=device, use_tqdm=progress)
    weight = (model.logit_scale.exp().float() * text.T.float()).cpu()
    return weight.contiguous(), torch.zeros(weight.shape[0])
