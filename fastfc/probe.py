"""Linear probes: heads trained on cached embeddings.

The original code ran the frozen encoder over every image in every probe epoch. Here the embeddings
come once from the feature cache (:func:`fastfc.features.extract`); :func:`train_heads` then trains
K linear heads for K weight decays in one batched pass (one einsum for all heads). The recipe is the
paper's (docs/recipe.md): AdamW, lr 1e-3, batch 256, 10 epochs, 500 warmup steps then cosine,
no augmentation, label smoothing 0, bias initialised to zero, weight decay 0.1 for CLIP
encoders and 1e-3 for distilled ones. The image path of the original (``--from-images``) is
:class:`ProbeTask` on :func:`fastfc.train.train`. :func:`run` is ``fastfc probe``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fastfc.cpus import one_thread
from fastfc.data.shifts import ID_SET
from fastfc.data.source import Source, open_source
from fastfc.features import extract
from fastfc.models import Encoder
from fastfc.probe_files import head_inputs, load_probe, save_probe  # noqa: F401  (load_probe re-exported)
from fastfc.runtime import Runtime
from fastfc.stage_config import ProbeConfig
from fastfc.train import lr_at

WEIGHT_DECAY = {"clip": 0.1, "distilled": 1e-3}  # the paper's probe weight decays


@dataclass(frozen=True)
class ProbeRecipe:
    """The probe's optimisation (docs/recipe.md). Units: lr per step, batch in samples."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 500
    weight_decay: float = 0.1
    seed: int = 0
    grad_clip: float = 1.0
    normalize: bool = False  # L2-normalised features into the head, in training and evaluation


# ----------------------------------------------------------------------------- heads

def init_head(dim: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.Linear(dim, num_classes)``'s default init of the weight under ``seed``; the bias is zero
    (as the original probe). Returns ``(weight [C, D], bias [C])`` float32."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        weight = nn.Linear(dim, num_classes).weight.detach().clone()
    return weight, torch.zeros(num_classes)


def train_heads(features: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, num_classes: int,
                weight_decays: Sequence[float], recipe: ProbeRecipe = ProbeRecipe(),
                device: str | torch.device = "cpu", progress: bool = True,
                init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Train one linear head per weight decay, all in one pass over the same minibatches.

    AdamW with decoupled weight decay, as ``torch.optim.AdamW`` does it (decay ``p *= 1 - lr*wd``
    after the backward, then the Adam update) but with a per-head ``wd``, and each head's gradient
    norm clipped at ``recipe.grad_clip`` as ``nn.utils.clip_grad_norm_`` would clip it alone (the
    paper's probe clips at 1.0): so head k equals a separate run with
    ``weight_decay=weight_decays[k]`` and the same seed. ``recipe.normalize``: the heads see
    L2-normalised features (:func:`head_inputs`), as the original's head around a zero-shot init. Per-step warmup then
    cosine (:func:`fastfc.train.lr_at`); minibatches in a seeded random order; the last one may be small.
    Torch runs on one CPU thread meanwhile (:func:`fastfc.cpus.one_thread`: 10x faster on a busy machine).

    Args:
        features: ``[N, D]`` (float16 is fine; batches are cast to float32).
        labels: ``[N]`` int64 in ``0..num_classes-1``.
        init: ``(weight [C, D], bias [C])`` every head starts from, e.g. a zero-shot head
            (:func:`fastfc.zeroshot.zero_shot_head`); default :func:`init_head`. With
            ``recipe.epochs == 0`` the heads are ``init`` itself.

    Returns:
        ``(weight [K, C, D], bias [K, C])`` float32 on the CPU.

    Raises:
        ValueError: ``init`` is not ``[num_classes, D]`` and ``[num_classes]``.
    """
    device = torch.device(device)
    x_all = torch.tensor(np.asarray(features), device=device)  # a copy: the cache is a read-only memmap
    y_all = torch.tensor(np.asarray(labels), device=device)
    n, dim = x_all.shape
    k = len(weight_decays)
    weight, bias = _initial_heads(init, k, dim, num_classes, recipe.seed, device)
    wd = torch.tensor(list(weight_decays), dtype=torch.float32, device=device)
    optimizer = torch.optim.AdamW([weight, bias], lr=recipe.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(recipe.seed)
    step = 0
    with one_thread(), tqdm(total=total, desc=f"probe x{k}", unit="step", disable=not progress) as bar:
        for _ in range(recipe.epochs):
            order = torch.randperm(n, generator=generator).to(device)
            for i in range(steps_per_epoch):
                idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
                x, y = head_inputs(x_all[idx].float(), recipe.normalize), y_all[idx]
                lr = lr_at(step, base=recipe.lr, warmup=recipe.warmup_steps, total=total)
                logits = torch.einsum("nd,kcd->knc", x, weight) + bias[:, None, :]
                loss = F.cross_entropy(logits.reshape(-1, num_classes), y.repeat(k), reduction="sum") / len(y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip_per_head(weight.grad, bias.grad, recipe.grad_clip)
                optimizer.param_groups[0]["lr"] = lr
                with torch.no_grad():  # decoupled weight decay, per head
                    weight.mul_((1 - lr * wd)[:, None, None])
                    bias.mul_((1 - lr * wd)[:, None])
                optimizer.step()
                step += 1
                bar.update()
    return weight.detach().cpu(), bias.detach().cpu()


def _initial_heads(init: tuple[torch.Tensor, torch.Tensor] | None, k: int, dim: int, num_classes: int, seed: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` trainable copies of ``init`` (default :func:`init_head` under ``seed``) on ``device``:
    ``(weight [K, C, D], bias [K, C])``. Raises ``ValueError`` when ``init`` does not fit."""
    w0, b0 = init_head(dim, num_classes, seed) if init is None else (init[0].float(), init[1].float())
    if w0.shape != (num_classes, dim) or b0.shape != (num_classes,):
        raise ValueError(f"initial head is {tuple(w0.shape)} + {tuple(b0.shape)}; these features need "
                         f"({num_classes}, {dim}) + ({num_classes},)")
    weight = w0.to(device).expand(k, -1, -1).clone().requires_grad_(True)
    bias = b0.to(device).expand(k, -1).clone().requires_grad_(True)
    return weight, bias


def clip_per_head(weight_grad: torch.Tensor, bias_grad: torch.Tensor, max_norm: float) -> None:
    """Clip, in place, each head's gradient ``(weight_grad [K, C, D], bias_grad [K, C])`` to the norm
    ``max_norm``, exactly as ``torch.nn.utils.clip_grad_norm_`` clips one head's parameters
    (scale ``min(1, max_norm / (norm + 1e-6))``)."""
    norms = torch.sqrt(weight_grad.pow(2).sum((1, 2)) + bias_grad.pow(2).sum(1))
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    weight_grad.mul_(scale[:, None, None])
    bias_grad.mul_(scale[:, None])


def top1(features, labels, weight: torch.Tensor, bias: torch.Tensor, batch_size: int = 4096, *,
         normalize: bool = False) -> float:
    """Top-1 accuracy (0..1) of ``head_inputs(features [N, D], normalize) @ weight [C, D].T + bias [C]``
    against ``labels``."""
    x_all, y_all = torch.tensor(np.asarray(features)), torch.tensor(np.asarray(labels))
    correct = 0
    for i in range(0, len(y_all), batch_size):
        logits = head_inputs(x_all[i:i + batch_size].float(), normalize) @ weight.T + bias
        correct += int((logits.argmax(1) == y_all[i:i + batch_size]).sum())
    return correct / max(1, len(y_all))


def sweep(features, labels, num_classes: int, weight_decays: Sequence[float], recipe: ProbeRecipe,
          *, holdout: float = 0.1, device="cpu", init=None) -> tuple[float, dict[float, float]]:
    """Choose the weight decay on a held-out slice of the *train* features (never on test data).
    ``init``: as in :func:`train_heads`.

    Returns:
        ``(best weight decay, {weight decay: held-out top-1})``.
    """
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(recipe.seed + 1)).numpy()
    cut = max(1, int(n * holdout))
    held, kept = np.sort(perm[:cut]), np.sort(perm[cut:])
    x, y = np.asarray(features), np.asarray(labels)
    weights, biases = train_heads(x[kept], y[kept], num_classes, weight_decays, recipe, device, init=init)
    scores = {wd: top1(x[held], y[held], weights[i], biases[i], normalize=recipe.normalize)
              for i, wd in enumerate(weight_decays)}
    return max(scores, key=lambda wd: (scores[wd], -wd)), scores


class ProbeTask:
    """``--from-images``: the original way, the frozen encoder runs over the images every step.

    A task for :func:`fastfc.train.train`: ``model`` is the linear head, ``loss(images, labels)`` is
    the cross-entropy of ``head(encoder(images))`` (encoder in eval mode, no grad).
    """

    def __init__(self, encoder: Encoder, num_classes: int, seed: int = 0):
        self.encoder = encoder
        weight, bias = init_head(encoder.embed_dim, num_classes, seed)
        self.model = nn.Linear(encoder.embed_dim, num_classes)
        with torch.no_grad():
            self.model.weight.copy_(weight), self.model.bias.copy_(bias)
        self.flops_per_image = None

    def loss(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            emb = self.encoder.visual(images)
        return F.cross_entropy(self.model(emb.float()), labels)


def train_from_images(encoder: Encoder, beton: Path, num_classes: int, recipe: ProbeRecipe, rt: Runtime, *,
                      out_dir: Path, num_workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The original probe: :class:`ProbeTask` on :func:`fastfc.train.train` over the train beton
    (no augmentation, shuffled, the last partial batch kept). Returns ``(weight [C, D], bias [C])``."""
    from fastfc.data.ffcv import make_loader
    from fastfc.train import TrainConfig, train

    cfg = TrainConfig(epochs=recipe.epochs, lr=recipe.lr, weight_decay=recipe.weight_decay,
                      warmup_steps=recipe.warmup_steps, global_batch_size=recipe.batch_size, grad_clip=recipe.grad_clip,
                      seed=recipe.seed, compile=False, precision="bf16" if rt.device.type == "cuda" else "fp32",
                      channels_last=False,
                      out_dir=str(out_dir), log_every=50)
    task = ProbeTask(encoder, num_classes, recipe.seed)
    encoder.visual.to(rt.device)
    loader = make_loader(beton, train=True, augment=False, batch_size=cfg.per_rank_batch(rt.world_size),
                         resolution=encoder.input_size, mean=encoder.mean, std=encoder.std, num_workers=num_workers,
                         device=rt.device, distributed=rt.distributed, seed=recipe.seed)
    train(task, loader, cfg, rt, fresh=True)  # a new probe each time; a torchrun restart resumes it
    return task.model.weight.detach().cpu(), task.model.bias.detach().cpu()


# ----------------------------------------------------------------------------- the train source

def train_classes(train: Path | Source) -> tuple[list[str], np.ndarray | None]:
    """The probe's classes for a train source (a path, or an open :class:`fastfc.data.source.Source`),
    and the map from the source's labels to probe labels.

    * a beton (the fast path: ffcv's centre crop of the images stored at conversion): its
      ``meta.json``'s classes; its labels are the probe's (map ``None``);
    * an ImageNet train folder (``<wnid>/*``) or shards of one (``data_prep.shifts --set
      imagenet-val --src .../train``), read through :func:`fastfc.data.shards.eval_transform` as the
      released code trained its probe: the WNIDs with at least one image, in ImageNet order (all
      1000 for ImageNet; shards written before ``per_class`` existed count as holding every class);
      the map (int64 ``[1000]``) takes an ImageNet index to its probe label, -1 for an absent class.

    Raises:
        ValueError: shards of another set than ``imagenet-val`` (the 1000-way WNID layout).
    """
    source = train if isinstance(train, Source) else open_source(train)
    meta = source.meta
    if source.kind == "beton":
        return meta["classes"], None
    if source.name != ID_SET:
        raise ValueError(f"--train {source.path}: shards of {source.name}; a probe trains on the ImageNet train "
                         f"folder (<wnid>/*), its {ID_SET}-layout shards, or the train beton")
    present = [i for i, n in enumerate(meta.get("per_class") or [1] * len(meta["classes"])) if n]
    lut = np.full(len(meta["classes"]), -1, dtype=np.int64)
    lut[present] = np.arange(len(present))
    return [meta["classes"][i] for i in present], lut


def train_source_info(train: Path | Source) -> dict:
    """The probe's record of its train source (a path, or an open :class:`fastfc.data.source.Source`):
    path, kind (``beton`` / ``folder`` / ``shards``), how its images became inputs and their decoding
    (:attr:`fastfc.data.source.Source.decoding`)."""
    source = train if isinstance(train, Source) else open_source(train)
    how = ("ffcv centre crop of the images stored in the beton (fast path, not the released code's)"
           if source.kind == "beton" else "the original images through Resize(n_px, bicubic) + CenterCrop, "
                                          "the released code's evaluation transform")
    return {"path": str(source.path), "kind": source.kind, "transform": how, "decoding": source.decoding}


# ----------------------------------------------------------------------------- the command

def run(cfg: ProbeConfig, rt: Runtime | None = None) -> None:
    """``fastfc probe``: the probe of ``cfg`` (a :class:`fastfc.stage_config.ProbeConfig`) on the
    classes of ``cfg.probe.train`` (:func:`train_classes`). Trained on the cached features of the
    train source (:func:`fastfc.features.extract`: the ImageNet train folder or its shards through
    the evaluation transform, as the released code, or the beton, the fast path; with ``wd_sweep``,
    the weight decay chosen by :func:`sweep` first), on its images (``from_images``), or CLIP's zero-shot head kept as it is
    (``epochs == 0``). The main rank writes ``cfg.probe.out`` (:func:`save_probe`) and its ``.json``:
    encoder, classes, train source (:func:`train_source_info`), init, sweep, train top-1 and recipe.
    Collective under torchrun.

    Raises:
        ValueError / OSError: an unknown encoder, unreadable weights or a beton stored below the
            encoder's input size (from the builders and :func:`fastfc.features.extract`).
    """
    from fastfc.models import canonical_name
    from fastfc.runtime import setup_runtime

    p, rt = cfg.probe, rt or setup_runtime()
    encoder = None if p.epochs == 0 else cfg.encoder.build()  # a zero-shot head needs no image features
    train = open_source(p.train)  # one source: its classes, its record, its features
    classes, relabel = train_classes(train)
    recipe = ProbeRecipe(p.epochs, cfg.data.batch_size, p.lr, p.warmup,
                         p.wd if p.wd is not None else WEIGHT_DECAY[p.kind], p.seed, normalize=bool(p.zero_shot))
    info = {"encoder": canonical_name(cfg.encoder.name), "classes": classes, "train": train_source_info(train)}
    init = _zero_shot_init(cfg, classes, rt, info) if p.zero_shot else None
    if p.epochs == 0:
        weight, bias = init
    elif p.from_images:
        weight, bias = train_from_images(encoder, Path(p.train), len(classes), recipe, rt,
                                         out_dir=Path(p.out).parent / "from_images", num_workers=cfg.data.workers)
    else:
        trained = _train_cached(cfg, encoder, train, relabel, len(classes), recipe, rt, init, info)
        if trained is None:  # not the main rank: it only helped extract
            return
        weight, bias, recipe = trained
    if rt.is_main:
        info["recipe"] = asdict(recipe)
        save_probe(p.out, weight, bias, info)
        print(f"probe [{weight.shape[0]} x {weight.shape[1]}] → {p.out}")


def _zero_shot_init(cfg: ProbeConfig, classes: list[str], rt: Runtime, info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's zero-shot head for ``classes`` (:mod:`fastfc.zeroshot`), recorded in ``info``."""
    from fastfc import zeroshot

    clip, tokenizer = zeroshot.build_clip(cfg.encoder.name, cfg.probe.zero_shot)
    init = zeroshot.zero_shot_head(clip, tokenizer, zeroshot.classnames_for(classes), progress=rt.is_main)
    info["init"] = {"zero_shot": cfg.probe.zero_shot, "templates": "open_clip OPENAI_IMAGENET_TEMPLATES"}
    return init


def _train_cached(cfg: ProbeConfig, encoder: Encoder, train: Source, relabel: np.ndarray | None, num_classes: int,
                  recipe: ProbeRecipe, rt: Runtime, init, info: dict) -> tuple[torch.Tensor, torch.Tensor, ProbeRecipe] | None:
    """The head on the cached features of ``train`` (labels through ``relabel``, :func:`train_classes`):
    ``(weight [C, D], bias [C], recipe)`` on the main rank, the recipe's weight decay replaced by the
    sweep's choice (recorded in ``info`` with the train top-1); ``None`` on the other ranks, once the
    features are extracted."""
    feats = extract(encoder, train, cfg.extract.cache, rt, **cfg.extract_options())
    if not rt.is_main:
        return None
    if relabel is not None:
        feats = replace(feats, labels=relabel[feats.labels])
    if cfg.probe.wd_sweep:
        wd, scores = sweep(feats.features, feats.labels, num_classes, cfg.probe.wd_sweep, recipe, init=init)
        info["sweep"] = {"held_out_top1": {str(k): v for k, v in scores.items()}, "chosen": wd}
        print(f"weight decay {wd:g} chosen on a held-out 10% of train: "
              + ", ".join(f"{k:g}: {v:.3f}" for k, v in scores.items()))
        recipe = replace(recipe, weight_decay=wd)
    w, b = train_heads(feats.features, feats.labels, num_classes, [recipe.weight_decay], recipe, init=init)
    info["train_top1"] = top1(feats.features, feats.labels, w[0], b[0], normalize=recipe.normalize)
    return w[0], b[0], recipe
