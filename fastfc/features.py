"""Features: embeddings extracted once to a memory-mapped cache, keyed by input fingerprints.

The original code ran the frozen encoder over every image in every probe epoch. Here
:func:`extract` writes ``features.npy`` (float16 ``[N, D]``, or float32 under ``precision="fp32"``),
``labels.npy`` (int64 ``[N]``) and ``meta.json`` per (encoder fingerprint, source) once; the probe
(:mod:`fastfc.probe`) and the evaluation (:mod:`fastfc.evaluate`) read the cache.

Under torchrun every rank extracts a contiguous slice and writes its rows in place: the cache holds
the rows of a one-process run, in its order (no padded duplicates; ffcv's distributed order would
pad); values may differ by the kernels' batch-size rounding.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from fastfc.atomic import publish, write_json
from fastfc.data import shifts
from fastfc.models import Encoder
from fastfc.runtime import Runtime, prepare_model
from fastfc.stage_config import FeaturesConfig

CACHE_DTYPES = {"bf16": np.float16, "fp32": np.float32}  # precision -> the cache's dtype


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
    from fastfc.data.betons import beton_samples
    from fastfc.data.ffcv import make_loader

    n = beton_samples(source)
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
        from fastfc.data.shards import read_meta
        return int(read_meta(source)["count"])
    from fastfc.data.betons import beton_samples
    return beton_samples(source)


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
    cached = _load(folder, want)
    if cached is not None:
        return cached
    n = _fill(encoder, source, folder, rt, precision=precision, batch_size=batch_size, num_workers=num_workers,
              compile=compile)
    if rt.is_main:
        write_json(folder / "meta.json", {**want, "count": n, "dim": encoder.embed_dim})
    if rt.distributed:
        dist.barrier()
    return _load(folder, want)


def _fill(encoder: Encoder, source: Path, folder: Path, rt: Runtime, *, precision: str, batch_size: int,
          num_workers: int | None, compile: bool | None) -> int:
    """Embed every image of ``source`` into ``folder``'s ``features.npy`` and ``labels.npy``: written
    under temporary names, each rank its rows, published by the main rank once all are counted.
    Collective under torchrun. Returns N. Raises ``RuntimeError`` when the ranks' rows miss some."""
    dtype = CACHE_DTYPES[precision]
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
    return n


def _load(folder: Path, want: dict) -> Features | None:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):  # a damaged cache record: not a usable cache, so it is rebuilt
        return None
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in want.items()):
        return None
    return Features(np.load(folder / "features.npy", mmap_mode="r"), np.load(folder / "labels.npy"), meta, folder)


def run(cfg: FeaturesConfig, rt: Runtime | None = None) -> list[Features]:
    """``fastfc features``: :func:`extract` every source of ``cfg`` (a
    :class:`fastfc.stage_config.FeaturesConfig`) with its encoder; the main rank prints one line per
    source. Collective under torchrun. Returns the :class:`Features`, in ``cfg.sources`` order."""
    from fastfc.runtime import setup_runtime

    rt, encoder = rt or setup_runtime(), cfg.encoder.build()
    done = []
    for source in cfg.sources:
        f = extract(encoder, source, cfg.extract.cache, rt, **cfg.extract.options())
        if rt.is_main:
            print(f"{source}: {f.features.shape[0]} x {f.features.shape[1]} {f.features.dtype} → {f.path}")
        done.append(f)
    return done
