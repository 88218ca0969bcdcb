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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from fastfc.atomic import allocate_npy, publish, write_json
from fastfc.data.source import Source, open_source
from fastfc.models import Encoder
from fastfc.runtime import Runtime, output_lock_all_ranks, prepare_model
from fastfc.stage_config import FeaturesConfig

CACHE_DTYPES = {"bf16": np.float16, "fp32": np.float32}  # precision -> the cache's dtype
_CHUNK = 65_536  # rows per finiteness check of a cache


# ----------------------------------------------------------------------------- fingerprints

def encoder_fingerprint(encoder: Encoder) -> str:
    """sha256 of the encoder's name, input size, normalisation and every weight's bytes."""
    h = hashlib.sha256(json.dumps([encoder.name, encoder.input_size, encoder.mean, encoder.std]).encode())
    for key, value in sorted(encoder.visual.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- extraction

@dataclass
class Features:
    """A cached extraction: ``features`` float16 or float32 ``[N, D]`` (memory-mapped), ``labels`` int64 ``[N]``."""

    features: np.ndarray
    labels: np.ndarray
    meta: dict
    path: Path


def extract(encoder: Encoder, source: str | Path | Source, cache_dir: str | Path, rt: Runtime | None = None, *,
            batch_size: int = 256, num_workers: int | None = None, compile: bool | None = None,
            precision: str = "bf16") -> Features:
    """Embeddings of every image of ``source``, cached. ``source`` (a path, or a
    :class:`fastfc.data.source.Source` already open): a beton (ffcv's centre-crop decoder), a shard
    set folder, or an ImageNet-layout image folder (``<wnid>/*``, val or train; both read through
    :func:`fastfc.data.shards.eval_transform`, the paper's evaluation transform).

    The cache folder is ``cache_dir/<encoder fp>-<source fp>[-fp32]/`` (:func:`encoder_fingerprint`,
    :meth:`fastfc.data.source.Source.fingerprint`); one that exists and matches
    both fingerprints and the precision is reused, anything else is rebuilt. Eval transform,
    channels_last, ``torch.compile`` on GPU by default. ``precision="bf16"``: bf16 autocast on GPU
    (fp32 on CPU) and a float16 cache; ``"fp32"``: no autocast anywhere and a float32 cache, the
    paper's arithmetic (``docs/recipe.md`` gives the measured difference).

    Returns:
        :class:`Features` with ``features`` ``[N, D]`` (float16, or float32 for ``"fp32"``) and
        ``labels`` int64 ``[N]`` in set order.

    Every value cached equals a finite float32 embedding: a cache holding ``inf``/``NaN`` (an older
    fastfc's) is rebuilt, and nothing is cached (temporaries removed) when the encoder gives a
    non-finite embedding or one beyond float16's range (65504) under ``"bf16"``.

    Raises:
        FileNotFoundError: ``source`` is no file or folder (:func:`fastfc.data.source.source_kind`).
        ValueError: unknown ``precision``, a beton stored below the encoder's input size
            (:func:`fastfc.data.ffcv.check_stored_size`), an image folder not in ``<wnid>/*`` layout,
            non-finite embeddings, or embeddings too large for a float16 cache (names the largest
            magnitude; use ``precision="fp32"``).
        FileExistsError: another command is filling the same cache folder (its lock names it).
        fastfc.atomic.WriteError: no room for the cache (disk full, file-size limit); its
            temporaries are removed, as on any error.
    """
    if precision not in CACHE_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(CACHE_DTYPES)}, got {precision!r}")
    rt = rt or Runtime()
    source = source if isinstance(source, Source) else open_source(source)
    if source.kind == "beton":  # refused before any work, not from inside the loader
        from fastfc.data.ffcv import check_stored_size
        check_stored_size(source.path, encoder.input_size)
    enc_fp, src_fp = encoder_fingerprint(encoder), source.fingerprint()
    folder = Path(cache_dir) / (f"{enc_fp[:16]}-{src_fp[:16]}" + ("-fp32" if precision == "fp32" else ""))
    want = {"encoder": enc_fp, "source": src_fp, "source_path": str(source.path), "encoder_name": encoder.name,
            "transform": {"resolution": encoder.input_size, "mean": list(encoder.mean), "std": list(encoder.std)},
            "precision": precision}
    cached = _load(folder, want)
    if cached is not None:
        return cached
    if rt.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    with output_lock_all_ranks(folder, rt), _temporaries_removed(folder, rt):
        n = _fill(encoder, source, folder, rt, precision=precision, batch_size=batch_size, num_workers=num_workers,
                  compile=compile)
        if rt.is_main:
            write_json(folder / "meta.json", {**want, "count": n, "dim": encoder.embed_dim})
    if rt.distributed:
        dist.barrier()
    return _load(folder, want)


@contextmanager
def _temporaries_removed(folder: Path, rt: Runtime):
    """On an error while filling ``folder`` (one command at a time: :func:`fastfc.runtime.output_lock_all_ranks`),
    the main rank removes the cache's temporaries."""
    try:
        yield
    except BaseException:
        if rt.is_main:
            for tmp in (folder / ".features.npy.tmp", folder / ".labels.npy.tmp"):
                tmp.unlink(missing_ok=True)
        raise


def _fill(encoder: Encoder, source: Source, folder: Path, rt: Runtime, *, precision: str, batch_size: int,
          num_workers: int | None, compile: bool | None) -> int:
    """Embed every image of ``source`` into ``folder``'s ``features.npy`` and ``labels.npy``: written
    under temporary names, each rank its rows, published by the main rank once all are counted.
    Collective under torchrun. Returns N. Raises ``RuntimeError`` when the ranks' rows miss some."""
    dtype = CACHE_DTYPES[precision]
    n, dim = source.count, encoder.embed_dim
    feats_tmp, labels_tmp = folder / ".features.npy.tmp", folder / ".labels.npy.tmp"
    if rt.is_main:
        allocate_npy(feats_tmp, dtype, (n, dim))
        allocate_npy(labels_tmp, np.int64, (n,))
    if rt.distributed:
        dist.barrier()
    feats = np.lib.format.open_memmap(feats_tmp, mode="r+")
    labels = np.lib.format.open_memmap(labels_tmp, mode="r+")
    gpu = rt.device.type == "cuda"  # bf16 on GPU; fp32 on CPU, where bf16 ran 3-4x slower here (no AVX512-BF16)
    model = prepare_model(encoder.visual, rt, training=False, precision=precision if gpu else "fp32",
                          channels_last=gpu, compile=compile)
    seen, bad, peak = 0, 0, 0.0
    with torch.no_grad(), model.autocast(), \
            tqdm(total=n, desc=f"features {source.path.name}", unit="img", disable=not rt.is_main) as bar:
        for rows, images, y in source.batches(resolution=encoder.input_size, mean=encoder.mean, std=encoder.std,
                                              batch_size=batch_size, num_workers=num_workers, rank=rt.rank,
                                              world_size=rt.world_size, device=rt.device):
            emb = model.module(model.inputs(images)).float().cpu().numpy()
            finite = np.isfinite(emb).all(axis=1)
            bad += int((~finite).sum())
            peak = max(peak, float(np.abs(emb[finite]).max(initial=0.0)))
            feats[rows.numpy()] = emb.astype(dtype)
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
        raise RuntimeError(f"{source.path}: extracted {int(total)} embeddings, expected {n}")
    problem = _range_problem(source.path, n, dtype, bad, peak, rt)
    if problem:
        if rt.is_main:
            feats_tmp.unlink(missing_ok=True)
            labels_tmp.unlink(missing_ok=True)
        raise ValueError(problem)
    if rt.is_main:
        publish(feats_tmp, folder / "features.npy")
        publish(labels_tmp, folder / "labels.npy")
    return n


def _range_problem(source: Path, n: int, dtype, bad: int, peak: float, rt: Runtime) -> str | None:
    """Over all ranks: why the embeddings cannot be cached in ``dtype`` (non-finite ones, or a
    magnitude beyond float16's range), or None. Collective under torchrun."""
    stats = torch.tensor([float(bad), peak], dtype=torch.float64)
    if rt.distributed:
        counts, peaks = stats[:1].clone(), stats[1:].clone()
        dist.all_reduce(counts)
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
        stats = torch.cat([counts, peaks])
    bad, peak = int(stats[0]), float(stats[1])
    if bad:
        return (f"{source}: the encoder gave non-finite (NaN/inf) embeddings for {bad} of {n} images; nothing "
                "cached; check its weights (a diverged or damaged --weights file?)")
    limit = float(np.finfo(dtype).max)
    if peak > limit:
        return (f"{source}: embeddings reach |x| = {peak:.4g}, beyond the {np.dtype(dtype).name} cache's range "
                f"({limit:g}); nothing cached; extract with --precision fp32 (--set extract.precision=fp32), "
                "a float32 cache")
    return None


def first_nonfinite(array: np.ndarray) -> int | None:
    """The first row of ``array`` ``[N, D]`` holding a NaN or inf, or None; read in chunks (memory-mapped
    caches stay out of memory)."""
    for start in range(0, len(array), _CHUNK):
        rows = ~np.isfinite(np.asarray(array[start:start + _CHUNK])).all(axis=1)
        if rows.any():
            return start + int(rows.argmax())
    return None


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
    features = np.load(folder / "features.npy", mmap_mode="r")
    row = first_nonfinite(features)
    if row is not None:  # an older fastfc's float16 overflow, or a damaged file: rebuilt
        print(f"[features] {folder / 'features.npy'}: row {row} is not finite; extracting again", flush=True)
        return None
    return Features(features, np.load(folder / "labels.npy"), meta, folder)


def run(cfg: FeaturesConfig, rt: Runtime | None = None) -> list[Features]:
    """``fastfc features``: :func:`extract` every source of ``cfg`` (a
    :class:`fastfc.stage_config.FeaturesConfig`) with its encoder; the main rank prints one line per
    source. Collective under torchrun. Returns the :class:`Features`, in ``cfg.sources`` order."""
    from fastfc.runtime import setup_runtime

    rt, encoder = rt or setup_runtime(), cfg.encoder.build()
    done = []
    for source in cfg.sources:
        f = extract(encoder, source, cfg.extract.cache, rt, **cfg.extract_options())
        if rt.is_main:
            print(f"{source}: {f.features.shape[0]} x {f.features.shape[1]} {f.features.dtype} → {f.path}")
        done.append(f)
    return done
