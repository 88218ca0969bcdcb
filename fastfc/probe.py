"""Linear probes: embeddings extracted once to a memory-mapped cache, heads trained on the cache.

The original code ran the frozen encoder over every image in every probe epoch. Here
:func:`extract` writes ``features.npy`` (float16 ``[N, D]``), ``labels.npy`` (int64 ``[N]``) and
``meta.json`` per (encoder fingerprint, source) once; :func:`train_heads` then trains K linear
heads for K weight decays in one batched pass (one einsum for all heads). The recipe is the
paper's (docs/recipe.md): AdamW, lr 1e-3, batch 256, 10 epochs, 500 warmup steps then cosine,
no augmentation, label smoothing 0, bias initialised to zero, weight decay 0.1 for CLIP
encoders and 1e-3 for distilled ones. The image path of the original (``--from-images``) is
:class:`ProbeTask` on :func:`fastfc.train.train`.

Under torchrun every rank extracts a contiguous slice and writes its rows in place: the cache holds
the rows of a one-process run, in its order (no padded duplicates; ffcv's distributed order would
pad); values may differ by the kernels' batch-size rounding.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fastfc import shifts
from fastfc.atomic import atomic_path, publish, write_json
from fastfc.checkpoint import read_file
from fastfc.models import Encoder
from fastfc.runtime import Runtime, prepare_model
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


# ----------------------------------------------------------------------------- fingerprints

def encoder_fingerprint(encoder: Encoder) -> str:
    """sha256 of the encoder's name, input size, normalisation and every weight's bytes."""
    h = hashlib.sha256(json.dumps([encoder.name, encoder.input_size, encoder.mean, encoder.std]).encode())
    for key, value in sorted(encoder.visual.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def source_fingerprint(source: Path) -> str:
    """A beton by path, size and mtime; a shard set by its ``meta.json`` (which holds shard sha256s);
    an image folder by every file's path, size and mtime (:func:`fastfc.data.folder.fingerprint`)."""
    from fastfc.data import folder

    source = Path(source)
    if folder.is_image_folder(source):
        return folder.fingerprint(folder.read_folder(source))
    if source.is_dir():
        return hashlib.sha256((source / "meta.json").read_bytes()).hexdigest()
    st = source.stat()
    return hashlib.sha256(f"{source.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


# ----------------------------------------------------------------------------- extraction

@dataclass
class Features:
    """A cached extraction: ``features`` float16 or float32 ``[N, D]`` (memory-mapped), ``labels`` int64 ``[N]``."""

    features: np.ndarray
    labels: np.ndarray
    meta: dict
    path: Path


def _batches(encoder: Encoder, source: Path, rt: Runtime, *, batch_size: int, num_workers: int):
    """This rank's ``(rows [B] int64, images [B,3,S,S], labels [B])``; rows index the whole set."""
    from fastfc.data import folder

    if folder.is_image_folder(source):  # ImageNet val straight from its folder, through the shard path's transform
        from fastfc.data.shards import eval_transform

        transform = eval_transform(encoder.input_size, encoder.mean, encoder.std)
        yield from folder.folder_batches(folder.read_folder(source), transform, rank=rt.rank,
                                         world_size=rt.world_size, batch_size=batch_size, num_workers=num_workers)
        return
    if source.is_dir():  # a shift-set shard folder: keys are the row numbers
        from fastfc.data.shards import eval_transform, make_shard_loader, read_meta

        name = read_meta(source)["set"]
        crop = shifts.REGISTRY[name].border_crop if name in shifts.REGISTRY else 0
        loader = make_shard_loader(source, transform=eval_transform(encoder.input_size, encoder.mean, encoder.std,
                                                                    border_crop=crop),
                                   batch_size=batch_size, num_workers=num_workers, rank=rt.rank,
                                   world_size=rt.world_size)
        for images, labels, keys in loader:
            yield torch.tensor([int(k) for k in keys]), images, labels
        return
    from ffcv.reader import Reader

    from fastfc.data.ffcv import make_loader

    n = int(Reader(str(source)).num_samples)
    start, stop = n * rt.rank // rt.world_size, n * (rt.rank + 1) // rt.world_size
    if start == stop:
        return
    loader = make_loader(source, train=False, batch_size=batch_size, resolution=encoder.input_size,
                         mean=encoder.mean, std=encoder.std, num_workers=num_workers, device=rt.device,
                         indices=range(start, stop))
    row = start
    for images, labels in loader:
        yield torch.arange(row, row + len(labels)), images, labels
        row += len(labels)


def _count(source: Path) -> int:
    from fastfc.data import folder

    if folder.is_image_folder(source):
        return len(folder.read_folder(source).files)
    if source.is_dir():
        return int(json.loads((source / "meta.json").read_text())["count"])
    from ffcv.reader import Reader
    return int(Reader(str(source)).num_samples)


CACHE_DTYPES = {"bf16": np.float16, "fp32": np.float32}  # precision -> the cache's dtype


def extract(encoder: Encoder, source: str | Path, cache_dir: str | Path, rt: Runtime | None = None, *,
            batch_size: int = 256, num_workers: int | None = None, compile: bool | None = None,
            precision: str = "bf16") -> Features:
    """Embeddings of every image of ``source``, cached. ``source``: a beton (ffcv's centre-crop
    decoder), a shard set folder, or an ImageNet-layout image folder (``<wnid>/*``; both read through
    :func:`fastfc.data.shards.eval_transform`, the paper's evaluation transform).

    The cache folder is ``cache_dir/<encoder fp>-<source fp>[-fp32]/``; one that exists and matches
    both fingerprints and the precision is reused, anything else is rebuilt. Eval transform,
    channels_last, ``torch.compile`` on GPU by default. ``precision="bf16"``: bf16 autocast on GPU
    (fp32 on CPU) and a float16 cache; ``"fp32"``: no autocast anywhere and a float32 cache, the
    paper's arithmetic (``docs/recipe.md`` gives the measured difference).

    Returns:
        :class:`Features` with ``features`` ``[N, D]`` (float16, or float32 for ``"fp32"``) and
        ``labels`` int64 ``[N]`` in set order.

    Raises:
        ValueError: unknown ``precision``, a beton stored below the encoder's input size
            (:func:`fastfc.data.ffcv.check_stored_size`), or an image folder not in ``<wnid>/*`` layout.
    """
    if precision not in CACHE_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(CACHE_DTYPES)}, got {precision!r}")
    rt = rt or Runtime()
    source = Path(source)
    if source.is_file():  # refused before any work, not from inside the loader
        from fastfc.data.ffcv import check_stored_size
        check_stored_size(source, encoder.input_size)
    enc_fp, src_fp = encoder_fingerprint(encoder), source_fingerprint(source)
    folder = Path(cache_dir) / (f"{enc_fp[:16]}-{src_fp[:16]}" + ("-fp32" if precision == "fp32" else ""))
    want = {"encoder": enc_fp, "source": src_fp, "source_path": str(source), "encoder_name": encoder.name,
            "transform": {"resolution": encoder.input_size, "mean": list(encoder.mean), "std": list(encoder.std)},
            "precision": precision}
    dtype = CACHE_DTYPES[precision]
    cached = _load(folder, want)
    if cached is not None:
        return cached
    n, dim = _count(source), encoder.embed_dim
    feats_tmp, labels_tmp = folder / ".features.npy.tmp", folder / ".labels.npy.tmp"
    if rt.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(feats_tmp, mode="w+", dtype=dtype, shape=(n, dim)).flush()
        np.lib.format.open_memmap(labels_tmp, mode="w+", dtype=np.int64, shape=(n,)).flush()
    if rt.distributed:
        dist.barrier()
    feats = np.lib.format.open_memmap(feats_tmp, mode="r+")
    labels = np.lib.format.open_memmap(labels_tmp, mode="r+")
    gpu = rt.device.type == "cuda"  # bf16 on GPU; fp32 on CPU, where bf16 ran 3-4x slower here (no AVX512-BF16)
    model = prepare_model(encoder.visual, rt, training=False, precision=precision if gpu else "fp32",
                          channels_last=gpu, compile=compile)
    seen = 0
    with torch.no_grad(), model.autocast(), \
            tqdm(total=n, desc=f"features {source.name}", unit="img", disable=not rt.is_main) as bar:
        for rows, images, y in _batches(encoder, source, rt, batch_size=batch_size, num_workers=num_workers):
            emb = model.module(model.inputs(images))
            feats[rows.numpy()] = emb.float().cpu().numpy().astype(dtype)
            labels[rows.numpy()] = y.cpu().numpy()
            seen += len(rows)
            bar.update(len(rows) * rt.world_size)
    feats.flush()
    labels.flush()
    del feats, labels
    total = torch.tensor([seen], device=rt.device)
    if rt.distributed:
        dist.all_reduce(total)
    if int(total) != n:
        raise RuntimeError(f"{source}: extracted {int(total)} embeddings, expected {n}")
    if rt.is_main:
        publish(feats_tmp, folder / "features.npy")
        publish(labels_tmp, folder / "labels.npy")
        write_json(folder / "meta.json", {**want, "count": n, "dim": dim})
    if rt.distributed:
        dist.barrier()
    return _load(folder, want)


def _load(folder: Path, want: dict) -> Features | None:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if any(meta.get(k) != v for k, v in want.items()):
        return None
    return Features(np.load(folder / "features.npy", mmap_mode="r"), np.load(folder / "labels.npy"), meta, folder)


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
    ``weight_decay=weight_decays[k]`` and the same seed. Per-step warmup then
    cosine (:func:`fastfc.train.lr_at`); minibatches in a seeded random order; the last one may be small.

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
    w0, b0 = init_head(dim, num_classes, recipe.seed) if init is None else (init[0].float(), init[1].float())
    if w0.shape != (num_classes, dim) or b0.shape != (num_classes,):
        raise ValueError(f"initial head is {tuple(w0.shape)} + {tuple(b0.shape)}; these features need "
                         f"({num_classes}, {dim}) + ({num_classes},)")
    weight = w0.to(device).expand(k, -1, -1).clone().requires_grad_(True)
    bias = b0.to(device).expand(k, -1).clone().requires_grad_(True)
    wd = torch.tensor(list(weight_decays), dtype=torch.float32, device=device)
    optimizer = torch.optim.AdamW([weight, bias], lr=recipe.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(recipe.seed)
    step = 0
    with tqdm(total=total, desc=f"probe x{k}", unit="step", disable=not progress) as bar:
        for _ in range(recipe.epochs):
            order = torch.randperm(n, generator=generator).to(device)
            for i in range(steps_per_epoch):
                idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
                x, y = x_all[idx].float(), y_all[idx]
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


def clip_per_head(weight_grad: torch.Tensor, bias_grad: torch.Tensor, max_norm: float) -> None:
    """Clip, in place, each head's gradient ``(weight_grad [K, C, D], bias_grad [K, C])`` to the norm
    ``max_norm``, exactly as ``torch.nn.utils.clip_grad_norm_`` clips one head's parameters
    (scale ``min(1, max_norm / (norm + 1e-6))``)."""
    norms = torch.sqrt(weight_grad.pow(2).sum((1, 2)) + bias_grad.pow(2).sum(1))
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    weight_grad.mul_(scale[:, None, None])
    bias_grad.mul_(scale[:, None])


def top1(features, labels, weight: torch.Tensor, bias: torch.Tensor, batch_size: int = 4096) -> float:
    """Top-1 accuracy (0..1) of ``features [N, D] @ weight [C, D].T + bias [C]`` against ``labels``."""
    x_all, y_all = torch.tensor(np.asarray(features)), torch.tensor(np.asarray(labels))
    correct = 0
    for i in range(0, len(y_all), batch_size):
        logits = x_all[i:i + batch_size].float() @ weight.T + bias
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
    scores = {wd: top1(x[held], y[held], weights[i], biases[i]) for i, wd in enumerate(weight_decays)}
    return max(scores, key=lambda wd: (scores[wd], -wd)), scores


# ----------------------------------------------------------------------------- probe files

def save_probe(path: str | Path, weight: torch.Tensor, bias: torch.Tensor, info: dict) -> None:
    """Write ``{"weight": [C, D], "bias": [C]}`` (the original probe files' keys) and ``<path>.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"weight": weight.contiguous(), "bias": bias.contiguous()}, tmp)
    write_json(path.with_suffix(".json"), info)


def load_probe(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Read a probe file, fastfc's or the original code's (``weight`` [C, D], ``bias`` [C], possibly
    under ``state_dict`` or with ``module.``/``head.`` prefixes). Returns ``(weight, bias, info)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is unreadable (a ``CheckpointError``) or holds no ``weight``/``bias``
            pair; the message names it.
    """
    path = Path(path)
    state = read_file(path, what_to_do="train the probe again with `fastfc probe`")
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    found = {key.rsplit(".", 1)[-1]: value for key, value in state.items() if key.rsplit(".", 1)[-1] in ("weight", "bias")}
    if set(found) != {"weight", "bias"} or found["weight"].ndim != 2:
        raise ValueError(f"{path}: not a linear probe file (expected keys weight [C, D] and bias [C])")
    info_path = path.with_suffix(".json")
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return found["weight"].float(), found["bias"].float(), info


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
    (no augmentation, shuffled, last partial batch dropped). Returns ``(weight [C, D], bias [C])``."""
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
    train(task, loader, cfg, rt)
    return task.model.weight.detach().cpu(), task.model.bias.detach().cpu()
