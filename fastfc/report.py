"""The report of finished evaluations, without torch: the comparison of runs (``fastfc eval
--compare``), the check of the paper's finding, the tables and the plots.

It reads the ``results.json`` each run's evaluation wrote (:mod:`fastfc.result_files`, by
:func:`fastfc.evaluate.run`). :func:`summarize` gathers runs (the first is the teacher) into every
figure of the comparison: ID, each OOD set, the OOD average, the teacher−student gaps, the OOD drop
relative to the ID drop (the finding as one number) and, given baseline runs, effective robustness
in Taori et al.'s sense (2020): the OOD average above a logit-linear fit of OOD on ID over the
baselines. Imports numpy, and matplotlib only to draw a plot.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fastfc.atomic import atomic_path, read_json
from fastfc.data.shifts import ID_SET
from fastfc.result_files import cell, pct, set_label

MAX_ID_GAP = 0.10  # the finding, as the demo checks it: the student within 10 points of the teacher on ID,
MIN_DROP_RATIO = 2.0  # ... and an OOD-average gap at least twice the ID gap


# ----------------------------------------------------------------------------- summary and tables

def _delta(gap: float) -> str:
    """A teacher − run gap shown as run − teacher in points (``+0.0`` for the teacher itself)."""
    return f"{0.0 - gap * 100 + 0.0:+.1f}"


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
        cells = [r["name"]] + [cell(r["sets"].get(n)) for n in names]
        cells += [pct(r["ood_avg"]), _delta(r["id_gap"]), _delta(r["ood_gap"]), ratio]
        if with_eff:
            cells.append("—" if r["eff_robustness"] is None else f"{r['eff_robustness'] * 100:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    first = summary["runs"][0]["sets"]
    pad = [""] * (len(header) - len(names) - 1)
    lines.append("| n | " + " | ".join([str(first[n]["n"]) if n in first else "—" for n in names] + pad) + " |")
    lines.append("| chance | " + " | ".join([pct(first[n].get("chance")) if n in first else "—" for n in names]
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
            lines.append(f"| {label} | {f['cosine']:.3f} | {f['rel_sq_error']:.3f} | {pct(entry['top1'])} | "
                         f"{pct(t['top1']) if t else '—'} |")
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
