"""Top-1 of an encoder + linear probe on ImageNet val and the shift sets, and the paper's comparison.

Each set is scored in its own label space (:mod:`fastfc.shifts`). The probe's classes are WNIDs
(the 1000 ImageNet classes, or a subset such as the demo's); each set class is mapped to the
probe columns of its ImageNet indices, so a subset probe is scored like a mask. Embeddings come
from the feature cache (:func:`fastfc.probe.extract`), which counts every image exactly once,
also under torchrun.

Outputs: ``results.json`` (per set: top-1, n, projection; the encoder, probe and data
fingerprints) and ``results.md``. :func:`compare` prints the ID/OOD table with the OOD average,
the gap to the first run (the teacher) and, given baseline runs, effective robustness: the OOD
average above a linear fit of OOD on ID over the baselines, in logit space (Taori et al. 2020).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from fastfc import shifts
from fastfc.atomic import atomic_path, write_json
from fastfc.models import Encoder
from fastfc.probe import encoder_fingerprint, extract, source_fingerprint
from fastfc.runtime import Runtime

ID_SET = "imagenet-val"


def set_columns(source: Path, probe_classes: list[str]) -> tuple[list[list[int]], str]:
    """For each class of ``source`` (a beton with its ``meta.json`` beside it, or a shard set), the
    probe columns it is scored on, and the projection kind."""
    col = {w: i for i, w in enumerate(probe_classes)}
    if source.is_dir():
        meta = json.loads((source / "meta.json").read_text())
        wnids = shifts.imagenet_wnids()
        return ([[col[wnids[i]] for i in ix if wnids[i] in col] for ix in meta["imagenet_indices"]],
                meta["projection"])
    classes = json.loads((source.parent / "meta.json").read_text())["classes"]
    return [[col[w]] if w in col else [] for w in classes], "none"


def score(logits: torch.Tensor, labels: torch.Tensor, columns: list[list[int]]) -> int:
    """Correct top-1 predictions: ``logits [N, C_probe]`` projected to the set's classes (max over
    each class's columns; a class with no column scores -inf and is never predicted)."""
    return shifts.top1_correct(logits, labels, columns) if any(columns) else 0


def evaluate(encoder: Encoder, weight: torch.Tensor, bias: torch.Tensor, probe_classes: list[str],
             sets: dict[str, Path], cache_dir: Path, rt: Runtime | None = None, *, batch_size: int = 256,
             num_workers: int | None = None, precision: str = "bf16") -> dict:
    """Top-1 on every set in ``sets`` (name → beton or shard folder); ``precision`` as in
    :func:`fastfc.probe.extract`.

    Returns:
        ``{"sets": {name: {"top1", "correct", "n", "projection"}}, "fingerprints": {...}}``;
        ``top1`` is a fraction in [0, 1].
    """
    rt = rt or Runtime()
    results, data_fp = {}, {}
    for name, source in sets.items():
        source = Path(source)
        feats = extract(encoder, source, cache_dir, rt, batch_size=batch_size, num_workers=num_workers,
                        precision=precision)
        columns, projection = set_columns(source, probe_classes)
        x = torch.from_numpy(np.asarray(feats.features, dtype=np.float32))
        logits = x @ weight.T + bias
        correct = score(logits, torch.from_numpy(feats.labels), columns)
        n = len(feats.labels)
        results[name] = {"top1": correct / n if n else float("nan"), "correct": correct, "n": n,
                         "projection": projection}
        data_fp[name] = source_fingerprint(source)
    probe_fp = hashlib.sha256(weight.numpy().tobytes() + bias.numpy().tobytes()).hexdigest()
    return {"sets": results, "fingerprints": {"encoder": encoder_fingerprint(encoder), "probe": probe_fp,
                                              "data": data_fp}, "encoder": encoder.name}


def write_results(out_dir: Path, results: dict) -> None:
    """``results.json`` and a ``results.md`` table in ``out_dir`` (atomic writes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    rows = ["| set | top-1 (%) | n | projection |", "|---|---|---|---|"]
    rows += [f"| {name} | {r['top1'] * 100:.2f} | {r['n']} | {r['projection']} |" for name, r in results["sets"].items()]
    with atomic_path(out_dir / "results.md") as tmp:
        tmp.write_text(f"# {results.get('encoder', '')}\n\n" + "\n".join(rows) + "\n")


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def compare(runs: list[Path], baselines: list[Path] = (), plot: Path | None = None) -> str:
    """The paper's comparison of runs (folders holding ``results.json``), the first being the teacher.

    Returns a markdown table: ID top-1, each OOD top-1, the OOD average, the gap of ID and OOD
    average to the first run, and effective robustness when ``baselines`` (≥ 2) are given. Draws
    OOD average against ID top-1 to ``plot`` (PNG) when given.
    """
    loaded = [(Path(r).name, json.loads((Path(r) / "results.json").read_text())["sets"]) for r in runs]
    ood_names = [n for n in loaded[0][1] if n != ID_SET]

    def summary(sets):
        ood = [sets[n]["top1"] for n in ood_names if n in sets]
        return sets[ID_SET]["top1"], (sum(ood) / len(ood) if ood else float("nan"))

    fit = None
    if len(baselines) >= 2:
        pts = [summary(json.loads((Path(b) / "results.json").read_text())["sets"]) for b in baselines]
        fit = np.polyfit([_logit(i) for i, _ in pts], [_logit(o) for _, o in pts], 1)
    header = ["run", "ID"] + ood_names + ["OOD avg", "ΔID vs teacher", "ΔOOD vs teacher"] + (["eff. robustness"] if fit is not None else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    teacher_id, teacher_ood = summary(loaded[0][1])
    points = []
    for name, sets in loaded:
        id_acc, ood_avg = summary(sets)
        points.append((name, id_acc, ood_avg))
        cells = [name, f"{id_acc * 100:.2f}"] + [f"{sets[n]['top1'] * 100:.2f}" if n in sets else "—" for n in ood_names]
        cells += [f"{ood_avg * 100:.2f}", f"{(id_acc - teacher_id) * 100:+.2f}", f"{(ood_avg - teacher_ood) * 100:+.2f}"]
        if fit is not None:
            expected = 1 / (1 + math.exp(-np.polyval(fit, _logit(id_acc))))
            cells.append(f"{(ood_avg - expected) * 100:+.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    if plot is not None:
        _plot(points, plot)
    return "\n".join(lines)


def _plot(points: list[tuple[str, float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, id_acc, ood in points:
        ax.scatter(id_acc * 100, ood * 100)
        ax.annotate(name, (id_acc * 100, ood * 100), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.plot([0, 100], [0, 100], "k--", lw=0.8, label="y = x")
    ax.set_xlabel("ID top-1 (%)")
    ax.set_ylabel("OOD top-1, average (%)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
