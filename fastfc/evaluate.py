"""The scoring: top-1 of an encoder + linear probe on ImageNet val and the shift sets, and the
student-teacher fit.

Each set is scored in its own label space (:mod:`fastfc.data.shifts`). The probe's classes are WNIDs
(the 1000 ImageNet classes, or a subset such as the demo's); each set class is mapped to the
probe columns of its ImageNet indices, so a subset probe is scored like a mask. Embeddings come
from the feature cache (:func:`fastfc.features.extract`), which counts every image exactly once,
also under torchrun. ID (ImageNet val) is read like every shift set, from the original JPEGs
(``imagenet-val`` shards or the val folder); a val beton is an explicit opt-in (docs/recipe.md).

Given a teacher, every set (and the train split, the reference level) also gets the
*representation fit* of the student to the teacher on the same images: the mean cosine
similarity of the two embeddings and the relative squared error ``Σ‖s−t‖² / Σ‖t‖²`` (the
distillation loss as a share of the teacher embedding's energy; 0 = a perfect fit). The teacher's
embeddings are cached like any encoder's.

Outputs (:mod:`fastfc.result_files`): ``results.json`` (per set: top-1, correct, n, Wilson 95%
interval, chance level, projection, source, decoding (EXIF upright, border crop), fit; the encoder,
teacher, probe and data fingerprints) and ``results.md``. The comparison of finished runs, the check
of the paper's finding and the plots are the torch-free report, :mod:`fastfc.report`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from fastfc.data import shifts
from fastfc.data.shifts import ID_SET
from fastfc.data.source import Source, open_source
from fastfc.features import encoder_fingerprint, extract
from fastfc.models import Encoder
from fastfc.probe_files import head_inputs, load_probe
from fastfc.result_files import chance_level, wilson, write_results
from fastfc.runtime import Runtime, output_lock_all_ranks
from fastfc.stage_config import EvalConfig

_CHUNK = 65_536  # rows per scoring / fit chunk: bounded memory on ImageNet train


# ----------------------------------------------------------------------------- fit

def fit(student: np.ndarray, teacher: np.ndarray, chunk: int = _CHUNK) -> dict:
    """Representation fit of ``student`` to ``teacher`` embeddings of the same images.

    Args:
        student, teacher: ``[N, D]`` (float16 caches are fine; sums run in float64, in chunks).

    Returns:
        ``{"cosine": mean over images of cos(s_i, t_i), "rel_sq_error": Σ‖s_i − t_i‖² / Σ‖t_i‖²,
        "n": N}``; an all-zero embedding counts as cosine 0. Identical inputs give 1 and 0.

    Raises:
        ValueError: the shapes differ (not the same images, or encoders of other widths).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student embeddings {tuple(student.shape)} and teacher embeddings "
                         f"{tuple(teacher.shape)} differ: fit needs the same images and embedding width")
    cos_sum = err = energy = 0.0
    for i in range(0, len(student), chunk):
        s = np.asarray(student[i:i + chunk], dtype=np.float64)
        t = np.asarray(teacher[i:i + chunk], dtype=np.float64)
        norms = np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1)
        cos_sum += float(np.where(norms > 0, (s * t).sum(1) / np.where(norms > 0, norms, 1), 0).sum())
        err += float(((s - t) ** 2).sum())
        energy += float((t ** 2).sum())
    n = len(student)
    return {"cosine": cos_sum / n if n else float("nan"),
            "rel_sq_error": err / energy if energy else float("nan"), "n": n}


# ----------------------------------------------------------------------------- scoring

def space_id(space: dict) -> str:
    """A short fingerprint of a label space (:attr:`fastfc.data.source.Source.space`: classes, ImageNet
    indices, projection): two results of one set are comparable only when these agree. A 1000-way space
    (class k ↔ ImageNet index k) is the same whether read from shards, a folder or a beton."""
    indices = space["imagenet_indices"]
    identity = indices is None or indices == [[k] for k in range(len(space["classes"]))]
    key = json.dumps([space["classes"], None if identity else indices, space["projection"]])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def set_columns(source: Path | Source, probe_classes: list[str]) -> tuple[list[list[int]], str]:
    """For each class of ``source`` (a beton with its ``meta.json`` beside it, a shard set or an
    image folder; a path or an open :class:`fastfc.data.source.Source`), the probe columns it is
    scored on (in its label space, :attr:`fastfc.data.source.Source.space`), and the projection kind."""
    col = {w: i for i, w in enumerate(probe_classes)}
    space = (source if isinstance(source, Source) else open_source(source)).space
    if space["imagenet_indices"] is not None:
        wnids = shifts.imagenet_wnids()
        return ([[col[wnids[i]] for i in ix if wnids[i] in col] for ix in space["imagenet_indices"]],
                space["projection"])
    return [[col[w]] if w in col else [] for w in space["classes"]], "none"


def score(logits: torch.Tensor, labels: torch.Tensor, columns: list[list[int]]) -> int:
    """Correct top-1 predictions: ``logits [N, C_probe]`` projected to the set's classes (max over
    each class's columns; a class with no column scores -inf and is never predicted)."""
    return shifts.top1_correct(logits, labels, columns) if any(columns) else 0


def count_correct(features: np.ndarray, labels: np.ndarray, weight: torch.Tensor, bias: torch.Tensor,
                  columns: list[list[int]], device: torch.device | str = "cpu", chunk: int = _CHUNK, *,
                  normalize: bool = False) -> int:
    """:func:`score` of ``features [N, D] @ weight [C, D].T + bias [C]`` in chunks of rows (float32 on
    ``device``), so ImageNet train fits in memory. ``normalize``: each feature row L2-normalised first
    (a head trained that way, :func:`fastfc.probe_files.head_inputs`)."""

    weight, bias, correct = weight.to(device), bias.to(device), 0
    for i in range(0, len(labels), chunk):
        x = head_inputs(torch.from_numpy(np.asarray(features[i:i + chunk], dtype=np.float32)).to(device), normalize)
        correct += score(x @ weight.T + bias, torch.from_numpy(np.asarray(labels[i:i + chunk])).to(device), columns)
    return correct


def _entry(correct: int, n: int, columns: list[list[int]], projection: str, source: Path) -> dict:
    lo, hi = wilson(correct, n)
    return {"top1": correct / n if n else float("nan"), "correct": correct, "n": n, "ci95": [lo, hi],
            "chance": chance_level(columns), "projection": projection, "source": str(source)}


def evaluate(encoder: Encoder, weight: torch.Tensor, bias: torch.Tensor, probe_classes: list[str],
             sets: dict[str, Path], cache_dir: Path, rt: Runtime | None = None, *, teacher: Encoder | None = None,
             train: Path | None = None, batch_size: int = 256, num_workers: int | None = None,
             precision: str = "bf16", normalize: bool = False) -> dict:
    """Top-1 on every set in ``sets`` (name → beton, shard folder or image folder), and with a
    ``teacher`` the student-teacher fit per set (:func:`fit`). ``train`` (the ImageNet train folder,
    its shards or a beton) adds the same figures on the train split, the reference level.
    ``precision`` as in :func:`fastfc.features.extract`. ``normalize``: the head takes L2-normalised
    features (a probe file recording ``recipe.normalize``, trained from a zero-shot head).
    Collective under torchrun: every rank calls it.

    Returns:
        ``{"sets": {name: entry}, "train": entry or None, "encoder", "teacher", "fingerprints"}``;
        an entry is ``{"top1", "correct", "n", "ci95": [lo, hi], "chance", "projection", "source",
        "decoding"}`` (fractions in [0, 1]; ``decoding``: :attr:`fastfc.data.source.Source.decoding`) plus
        ``"fit": {"cosine", "rel_sq_error", "n"}`` with a teacher.

    Raises:
        ValueError: teacher and student embeddings differ in width.
    """
    rt = rt or Runtime()
    if teacher is not None and teacher.embed_dim != encoder.embed_dim:
        raise ValueError(f"teacher {teacher.name} embeds in {teacher.embed_dim} dims, the student {encoder.name} "
                         f"in {encoder.embed_dim}: fit compares embeddings of the same width")
    kw = {"batch_size": batch_size, "num_workers": num_workers, "precision": precision}
    paths = {**({"train": train} if train is not None else {}), **sets}
    sources = {name: open_source(path) for name, path in paths.items()}
    entries, data_fp = {}, {}
    for name, source in sources.items():
        feats = extract(encoder, source, cache_dir, rt, **kw)
        columns, projection = set_columns(source, probe_classes)
        correct = count_correct(feats.features, feats.labels, weight, bias, columns, rt.device, normalize=normalize)
        entries[name] = {**_entry(correct, len(feats.labels), columns, projection, source.path),
                         "label_space": space_id(source.space), "decoding": source.decoding}
        if teacher is not None:
            entries[name]["fit"] = fit(feats.features, extract(teacher, source, cache_dir, rt, **kw).features)
        data_fp[name] = source.fingerprint()
    fingerprints = {"encoder": encoder_fingerprint(encoder), "data": data_fp,
                    "probe": hashlib.sha256(weight.numpy().tobytes() + bias.numpy().tobytes()).hexdigest()}
    if teacher is not None:
        fingerprints["teacher"] = encoder_fingerprint(teacher)
    train_entry = entries.pop("train") if train is not None else None
    return {"sets": entries, "train": train_entry, "encoder": encoder.name,
            "teacher": teacher.name if teacher is not None else None, "normalized_features": normalize,
            "fingerprints": fingerprints}


def run(cfg: EvalConfig, sets: dict[str, Path], rt: Runtime | None = None) -> dict:
    """``fastfc eval``: :func:`evaluate` the encoder and probe of ``cfg`` (a
    :class:`fastfc.stage_config.EvalConfig`) on ``sets`` (name → source, checked by the caller) and,
    with a ``[teacher]``, the fit to it; the main rank writes ``cfg.eval.out``
    (:func:`fastfc.result_files.write_results`), holding its lock (:func:`fastfc.atomic.output_lock`)
    from before the scoring, and prints the table. Collective under torchrun. Returns the results.

    Raises:
        FileNotFoundError / ValueError: an unreadable probe file (:func:`fastfc.probe_files.load_probe`), an
            unknown encoder or unreadable weights, a teacher of another width.
        FileExistsError: another eval is writing ``cfg.eval.out`` (the message names the folder and the
            holder); nothing is scored or written.
    """
    from fastfc.runtime import setup_runtime

    weight, bias, info = load_probe(cfg.eval.probe)
    teacher, out = cfg.teacher_encoder(), Path(cfg.eval.out)
    rt, encoder, teacher = rt or setup_runtime(), cfg.encoder.build(), teacher.build() if teacher else None
    classes = info.get("classes") or shifts.imagenet_wnids()  # the original probes are 1000-way
    normalize = bool((info.get("recipe") or {}).get("normalize", False))  # recorded by `fastfc probe`
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
    with output_lock_all_ranks(out, rt):  # one eval writing `out` at a time
        results = evaluate(encoder, weight, bias, classes, sets, Path(cfg.extract.cache), rt, teacher=teacher,
                           train=cfg.eval.train, normalize=normalize, **cfg.extract_options())
        if rt.is_main:
            write_results(out, results)
    if rt.is_main:
        print((out / "results.md").read_text())
        if ID_SET not in sets:
            print("note: no ID set; add imagenet-val shards to --shards (python -m data_prep.shifts --set "
                  "imagenet-val) or give --val, so that --compare can compute the gaps")
    return results
