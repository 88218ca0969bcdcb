"""Top-1 of an encoder + linear probe on ImageNet val and the shift sets, the student-teacher fit,
and the paper's comparison.

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

Outputs: ``results.json`` (per set: top-1, correct, n, Wilson 95% interval, chance level,
projection, source, decoding (EXIF upright, border crop), fit; the encoder, teacher, probe and
data fingerprints) and ``results.md``.
:func:`summarize` gathers runs (the first is the teacher) into every figure of the comparison:
ID, each OOD set, the OOD average, the teacher−student gaps, the OOD drop relative to the ID drop
(the finding as one number) and, given baseline runs, effective robustness in Taori et al.'s
sense (2020): the OOD average above a logit-linear fit of OOD on ID over the baselines.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from fastfc.atomic import atomic_path, read_json, write_json
from fastfc.data import shards, shifts
from fastfc.data.betons import check_beton
from fastfc.data.folder import source_decoding, source_meta
from fastfc.features import encoder_fingerprint, extract, source_fingerprint
from fastfc.models import Encoder
from fastfc.probe_files import head_inputs, load_probe
from fastfc.runtime import Runtime
from fastfc.stage_config import EvalConfig

ID_SET = "imagenet-val"
ID_LABEL = "ID"  # the ID set's name in every table
Z95 = 1.959963984540054  # two-sided 95% normal quantile
MAX_ID_GAP = 0.10  # the finding, as the demo checks it: the student within 10 points of the teacher on ID,
MIN_DROP_RATIO = 2.0  # ... and an OOD-average gap at least twice the ID gap
_CHUNK = 65_536  # rows per scoring / fit chunk: bounded memory on ImageNet train


# ----------------------------------------------------------------------------- statistics

def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n`` (fractions in [0, 1]; 95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0% and 100%, which
    matter on sets of ~100 images. ``n == 0`` gives ``(nan, nan)``.
    """
    if n == 0:
        return float("nan"), float("nan")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (0.0 if correct == 0 else max(0.0, centre - half)), (1.0 if correct == n else min(1.0, centre + half))


def chance_level(columns: list[list[int]]) -> float:
    """Top-1 of a uniform random guess among the set classes the probe can predict (those with a
    probe column): 1/10 for the demo's 10-class probe on any set, 1/200 for a 1000-way probe on R/A."""
    scorable = sum(1 for c in columns if c)
    return 1 / scorable if scorable else float("nan")


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

def set_space(source: Path) -> dict:
    """The label space of ``source``: ``{"set", "classes", "imagenet_indices", "projection"}``, from a
    shard set's or image folder's meta, or for a beton the classes of the ``meta.json`` beside it
    (``set`` is then the beton's file name)."""
    meta = source_meta(source)
    if meta is not None:
        return {k: meta[k] for k in ("set", "classes", "imagenet_indices", "projection")}
    classes = check_beton(source)["classes"]
    return {"set": source.name, "classes": classes, "imagenet_indices": None, "projection": "none"}


def space_id(space: dict) -> str:
    """A short fingerprint of a label space (:func:`set_space`: classes, ImageNet indices,
    projection): two results of one set are comparable only when these agree. A 1000-way space
    (class k ↔ ImageNet index k) is the same whether read from shards, a folder or a beton."""
    indices = space["imagenet_indices"]
    identity = indices is None or indices == [[k] for k in range(len(space["classes"]))]
    key = json.dumps([space["classes"], None if identity else indices, space["projection"]])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def set_columns(source: Path, probe_classes: list[str], space: dict | None = None) -> tuple[list[list[int]], str]:
    """For each class of ``source`` (a beton with its ``meta.json`` beside it, a shard set or an
    image folder), the probe columns it is scored on, and the projection kind. ``space``: its
    :func:`set_space`, when already read."""
    col = {w: i for i, w in enumerate(probe_classes)}
    space = space or set_space(source)
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
        "decoding"}`` (fractions in [0, 1]; ``decoding``: :func:`source_decoding`) plus ``"fit": {"cosine", "rel_sq_error", "n"}`` with a teacher.

    Raises:
        ValueError: teacher and student embeddings differ in width.
    """
    rt = rt or Runtime()
    if teacher is not None and teacher.embed_dim != encoder.embed_dim:
        raise ValueError(f"teacher {teacher.name} embeds in {teacher.embed_dim} dims, the student {encoder.name} "
                         f"in {encoder.embed_dim}: fit compares embeddings of the same width")
    kw = {"batch_size": batch_size, "num_workers": num_workers, "precision": precision}
    sources = {**({"train": Path(train)} if train is not None else {}), **{k: Path(v) for k, v in sets.items()}}
    entries, data_fp = {}, {}
    for name, source in sources.items():
        feats = extract(encoder, source, cache_dir, rt, **kw)
        space = set_space(source)
        columns, projection = set_columns(source, probe_classes, space)
        correct = count_correct(feats.features, feats.labels, weight, bias, columns, rt.device, normalize=normalize)
        entries[name] = {**_entry(correct, len(feats.labels), columns, projection, source),
                         "label_space": space_id(space), "decoding": source_decoding(source)}
        if teacher is not None:
            entries[name]["fit"] = fit(feats.features, extract(teacher, source, cache_dir, rt, **kw).features)
        data_fp[name] = source_fingerprint(source)
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
    with a ``[teacher]``, the fit to it; the main rank writes ``cfg.eval.out`` (:func:`write_results`)
    and prints the table. Collective under torchrun. Returns the results.

    Raises:
        FileNotFoundError / ValueError: an unreadable probe file (:func:`fastfc.probe_files.load_probe`), an
            unknown encoder or unreadable weights, a teacher of another width.
    """
    from fastfc.runtime import setup_runtime

    weight, bias, info = load_probe(cfg.eval.probe)
    teacher = cfg.teacher_encoder()
    rt, encoder, teacher = rt or setup_runtime(), cfg.encoder.build(), teacher.build() if teacher else None
    classes = info.get("classes") or shifts.imagenet_wnids()  # the original probes are 1000-way
    normalize = bool((info.get("recipe") or {}).get("normalize", False))  # recorded by `fastfc probe`
    results = evaluate(encoder, weight, bias, classes, sets, Path(cfg.extract.cache), rt, teacher=teacher,
                       train=cfg.eval.train, normalize=normalize, **cfg.extract.options())
    if rt.is_main:
        out = Path(cfg.eval.out)
        write_results(out, results)
        print((out / "results.md").read_text())
        if ID_SET not in sets:
            print("note: no ID set; add imagenet-val shards to --shards (python -m data_prep.shifts --set "
                  "imagenet-val) or give --val, so that --compare can compute the gaps")
    return results


# ----------------------------------------------------------------------------- tables

def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 100:.{digits}f}"


def _delta(gap: float) -> str:
    """A teacher − run gap shown as run − teacher in points (``+0.0`` for the teacher itself)."""
    return f"{0.0 - gap * 100 + 0.0:+.1f}"


def _cell(entry: dict | None) -> str:
    """``top-1 (lo–hi)`` in %, the Wilson 95% interval in brackets."""
    if entry is None:
        return "—"
    lo, hi = entry.get("ci95") or wilson(entry["correct"], entry["n"])
    return f"{_pct(entry['top1'])} ({_pct(lo)}–{_pct(hi)})"


def set_label(name: str, labels: dict[str, str] | None = None) -> str:
    """A set's name in tables: :data:`ID_LABEL` for ImageNet val, else ``labels[name]`` or ``name``."""
    return ID_LABEL if name == ID_SET else (labels or {}).get(name, name)


def write_results(out_dir: Path, results: dict, labels: dict[str, str] | None = None) -> None:
    """``results.json`` and a ``results.md`` table in ``out_dir`` (atomic writes). ``labels``: table
    names of the sets (e.g. the demo's stand-ins); ImageNet val is always "ID"."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    rows = [("ID-train", results["train"])] if results.get("train") else []
    rows += [(set_label(name, labels), r) for name, r in results["sets"].items()]
    has_fit = any("fit" in r for _, r in rows)
    head = "| set | top-1 % (95% CI) | n | chance % | projection |" + (" cosine | rel. sq. error |" if has_fit else "")
    lines = [head, "|" + "---|" * head.count(" |")]
    for label, r in rows:
        line = f"| {label} | {_cell(r)} | {r['n']} | {_pct(r.get('chance'), 2)} | {r['projection']} |"
        if has_fit:
            f = r.get("fit") or {}
            line += f" {f.get('cosine', float('nan')):.4f} | {f.get('rel_sq_error', float('nan')):.4f} |"
        lines.append(line)
    title = results.get("encoder", "") + (f" (fit to teacher {results['teacher']})" if results.get("teacher") else "")
    with atomic_path(out_dir / "results.md") as tmp:
        tmp.write_text(f"# {title}\n\n" + "\n".join(lines) + "\n")


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _id_ood(sets: dict, ood_names: list[str]) -> tuple[float, float]:
    ood = [sets[n]["top1"] for n in ood_names]
    return sets[ID_SET]["top1"], (sum(ood) / len(ood) if ood else float("nan"))


def _load_run(run: Path) -> tuple[str, dict]:
    path = Path(run) / "results.json"
    results = read_json(path, f"run `fastfc eval ... --out {run}` first", keys=("sets",))
    if ID_SET not in results["sets"]:
        raise ValueError(f"{path}: no {ID_SET} (ID) result; evaluate with imagenet-val shards or --val")
    return Path(run).name, results


def shared_sets(loaded: list[tuple[str, dict]]) -> tuple[list[str], list[str]]:
    """The OOD sets every run scored in the same label space (in the first run's order), and one
    line per set left out saying why (missing from a run, or scored in another label space).

    Raises:
        ValueError: the runs' ID sets differ in label space (no gap can be computed).
    """
    notes, shared = [], []
    names = list(dict.fromkeys(n for _, r in loaded for n in r["sets"]))
    for name in names:
        missing = [run for run, r in loaded if name not in r["sets"]]
        spaces = {r["sets"][name].get("label_space") for _, r in loaded if name in r["sets"]} - {None}
        if len(spaces) > 1:
            why = (f"{name} was scored in different label spaces ("
                   + ", ".join(f"{run}: {r['sets'][name].get('label_space')}" for run, r in loaded if name in r["sets"])
                   + "): the same name, other classes; re-evaluate on one conversion of the set")
            if name == ID_SET:
                raise ValueError(f"--compare: {why}")
            notes.append(f"note: {why}; left out of every figure")
        elif missing:
            notes.append(f"note: {name} is not in {', '.join(missing)}; left out of every figure "
                         f"(gaps and OOD averages are over the sets all runs share)")
        elif name != ID_SET:
            shared.append(name)
    return shared, notes


def summarize(runs: list[Path], baselines: list[Path] = ()) -> dict:
    """Every figure of the comparison of ``runs`` (folders holding ``results.json``; the first is the
    teacher), machine-readable. Fractions in [0, 1]; gaps are teacher minus run (positive = a drop).
    Every figure is over the OOD sets all runs and baselines share in the same label space
    (:func:`shared_sets`); the others are named in ``notes``, never averaged in.

    Returns:
        ``{"id_set", "ood_sets", "notes", "teacher", "runs": [{"name", "sets", "train", "id_top1", "ood_avg",
        "id_gap", "ood_gap", "drop_ratio", "eff_robustness"}]}``. ``drop_ratio`` = ``ood_gap / id_gap``
        (``None`` unless ``id_gap > 0``); ``eff_robustness`` needs ≥ 2 ``baselines`` (else ``None``).

    Raises:
        FileNotFoundError / ValueError: a run without ``results.json`` or without an ID result (named),
            or runs whose ID sets differ in label space.
    """
    loaded, base = [_load_run(r) for r in runs], [_load_run(b) for b in baselines]
    ood_names, notes = shared_sets(loaded + base)
    trend = None
    if len(base) >= 2:
        pts = [_id_ood(results["sets"], ood_names) for _, results in base]
        trend = np.polyfit([_logit(i) for i, _ in pts], [_logit(o) for _, o in pts], 1)
    teacher_id, teacher_ood = _id_ood(loaded[0][1]["sets"], ood_names)
    out = []
    for name, results in loaded:
        id_acc, ood_avg = _id_ood(results["sets"], ood_names)
        id_gap, ood_gap = teacher_id - id_acc, teacher_ood - ood_avg
        eff = None if trend is None else ood_avg - 1 / (1 + math.exp(-np.polyval(trend, _logit(id_acc))))
        out.append({"name": name, "sets": results["sets"], "train": results.get("train"), "id_top1": id_acc,
                    "ood_avg": ood_avg, "id_gap": id_gap, "ood_gap": ood_gap,
                    "drop_ratio": ood_gap / id_gap if id_gap > 0 else None, "eff_robustness": eff})
    return {"id_set": ID_SET, "ood_sets": ood_names, "notes": notes, "teacher": loaded[0][0], "runs": out}


def check_finding(summary: dict, run: int = 1) -> dict:
    """The paper's pattern for ``summary["runs"][run]`` (the student) against the teacher: ID gap at
    most :data:`MAX_ID_GAP` and OOD-average gap positive and at least :data:`MIN_DROP_RATIO` × the ID gap.

    Returns:
        ``{"run", "id_gap", "ood_gap", "drop_ratio", "criterion", "id_gap_ok", "ood_gap_ok", "holds"}``.
    """
    r = summary["runs"][run]
    id_ok = r["id_gap"] <= MAX_ID_GAP
    ood_ok = r["ood_gap"] > 0 and r["ood_gap"] >= MIN_DROP_RATIO * r["id_gap"]
    return {"run": r["name"], "id_gap": r["id_gap"], "ood_gap": r["ood_gap"], "drop_ratio": r["drop_ratio"],
            "criterion": f"teacher − student: ID gap ≤ {MAX_ID_GAP * 100:g} points and OOD-average gap > 0 "
                         f"and ≥ {MIN_DROP_RATIO:g} × the ID gap",
            "id_gap_ok": id_ok, "ood_gap_ok": ood_ok, "holds": id_ok and ood_ok}


def comparison_table(summary: dict, labels: dict[str, str] | None = None) -> str:
    """Markdown: per run ID and each OOD top-1 with Wilson 95% intervals, the OOD average, the gaps
    to the teacher, the OOD drop ÷ ID drop (∞: an OOD drop without an ID drop; and effective
    robustness with baselines); then rows of n and chance level per set."""
    names = [ID_SET] + summary["ood_sets"]
    with_eff = any(r["eff_robustness"] is not None for r in summary["runs"])
    header = (["run"] + [set_label(n, labels) for n in names]
              + ["OOD avg", "ΔID", "ΔOOD", "ΔOOD ÷ ΔID"] + (["eff. robustness"] if with_eff else []))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in summary["runs"]:
        ratio = f"{r['drop_ratio']:.2f}" if r["drop_ratio"] is not None else "∞" if r["id_gap"] <= 0 < r["ood_gap"] else "—"
        cells = [r["name"]] + [_cell(r["sets"].get(n)) for n in names]
        cells += [_pct(r["ood_avg"]), _delta(r["id_gap"]), _delta(r["ood_gap"]), ratio]
        if with_eff:
            cells.append("—" if r["eff_robustness"] is None else f"{r['eff_robustness'] * 100:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    first = summary["runs"][0]["sets"]
    pad = [""] * (len(header) - len(names) - 1)
    lines.append("| n | " + " | ".join([str(first[n]["n"]) if n in first else "—" for n in names] + pad) + " |")
    lines.append("| chance | " + " | ".join([_pct(first[n].get("chance")) if n in first else "—" for n in names]
                                             + pad) + " |")
    return "\n".join(lines)


def fit_table(summary: dict, labels: dict[str, str] | None = None, run: int = 1) -> str:
    """Markdown: the fit of ``summary["runs"][run]`` (evaluated with a teacher) on the train split and
    every set, beside its top-1 and the teacher's."""
    r, teacher = summary["runs"][run], summary["runs"][0]
    rows = [("ID-train", r.get("train"), summary["runs"][0].get("train"))]
    rows += [(set_label(n, labels), r["sets"].get(n), teacher["sets"].get(n)) for n in [ID_SET] + summary["ood_sets"]]
    lines = [f"| data | cosine | rel. sq. error | {r['name']} top-1 % | {teacher['name']} top-1 % |",
             "|---|---|---|---|---|"]
    for label, entry, t in rows:
        f = (entry or {}).get("fit")
        if f is not None:
            lines.append(f"| {label} | {f['cosine']:.3f} | {f['rel_sq_error']:.3f} | {_pct(entry['top1'])} | "
                         f"{_pct(t['top1']) if t else '—'} |")
    return "\n".join(lines)


def compare(runs: list[Path], baselines: list[Path] = (), plot: Path | None = None,
            labels: dict[str, str] | None = None) -> str:
    """:func:`comparison_table` of :func:`summarize` (the CLI's ``--compare``), then its notes (the
    sets left out, one line each); draws OOD average
    against ID top-1 to ``plot`` (PNG) when given."""
    summary = summarize(runs, baselines)
    if plot is not None:
        plot_id_vs_ood(summary, plot)
    return "\n".join([comparison_table(summary, labels)] + summary["notes"])


# ----------------------------------------------------------------------------- plots

def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_id_vs_ood(summary: dict, path: Path) -> None:
    """OOD average against ID top-1, one point per run, with the y = x line (PNG, atomic)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for r in summary["runs"]:
        ax.scatter(r["id_top1"] * 100, r["ood_avg"] * 100)
        ax.annotate(r["name"], (r["id_top1"] * 100, r["ood_avg"] * 100), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.plot([0, 100], [0, 100], "k--", lw=0.8, label="y = x")
    ax.set_xlabel("ID top-1 (%)")
    ax.set_ylabel("OOD top-1, average (%)")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, plt, path)


def plot_fit(summary: dict, path: Path, labels: dict[str, str] | None = None, run: int = 1) -> None:
    """Per set (and the train split): the run's relative squared error to the teacher (x) against its
    top-1 and the teacher's top-1 (y), PNG, atomic. Sets without a fit are left out."""
    r, teacher = summary["runs"][run], summary["runs"][0]
    points = [("ID-train", r.get("train"), teacher.get("train"))]
    points += [(set_label(n, labels), r["sets"].get(n), teacher["sets"].get(n)) for n in [ID_SET] + summary["ood_sets"]]
    points = [(label, e, t) for label, e, t in points if e and "fit" in e]
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    span = max([e["fit"]["rel_sq_error"] for _, e, _ in points] + [1e-9])
    placed: list[float] = []
    for label, e, t in points:
        x = e["fit"]["rel_sq_error"]
        stack = sum(abs(x - p) < 0.04 * span for p in placed)  # labels of nearby points go below each other
        placed.append(x)
        ax.scatter(x, e["top1"] * 100, color="C1", label=r["name"] if label == points[0][0] else None)
        if t is not None:
            ax.scatter(x, t["top1"] * 100, color="C0", marker="s", label=teacher["name"] if label == points[0][0] else None)
            ax.plot([x, x], [e["top1"] * 100, t["top1"] * 100], color="0.7", lw=0.8, zorder=0)
        ax.annotate(label, (x, e["top1"] * 100), textcoords="offset points", xytext=(6, -10 - 9 * stack), fontsize=8)
    ax.set_xlabel(f"{r['name']} fit to {teacher['name']}: relative squared error Σ‖s−t‖²/Σ‖t‖²")
    ax.set_ylabel("top-1 (%)")
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, plt, path)
