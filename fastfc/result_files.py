"""The results files of one evaluation (``results.json``, ``results.md``) and the statistics in them,
without torch: written by the scoring (:func:`fastfc.evaluate.run`) and the demo, read by the report
of finished runs (:mod:`fastfc.report`).

A set's entry is ``{"top1", "correct", "n", "ci95": [lo, hi], "chance", "projection", "source", ...}``
(fractions in [0, 1]; :func:`fastfc.evaluate.evaluate` lists every key). In every table ImageNet val
is "ID" and a top-1 is shown as ``top-1 (lo–hi)`` in %, the Wilson 95% interval in brackets.
"""

from __future__ import annotations

import math
from pathlib import Path

from fastfc.atomic import atomic_path, write_json
from fastfc.data.shifts import ID_SET
ID_LABEL = "ID"  # the ID set's name in every table
Z95 = 1.959963984540054  # two-sided 95% normal quantile


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


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction in % with ``digits`` decimals; ``—`` for ``None`` or NaN."""
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 100:.{digits}f}"


def cell(entry: dict | None) -> str:
    """``top-1 (lo–hi)`` in %, the Wilson 95% interval in brackets; ``—`` for no entry."""
    if entry is None:
        return "—"
    lo, hi = entry.get("ci95") or wilson(entry["correct"], entry["n"])
    return f"{pct(entry['top1'])} ({pct(lo)}–{pct(hi)})"


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
        line = f"| {label} | {cell(r)} | {r['n']} | {pct(r.get('chance'), 2)} | {r['projection']} |"
        if has_fit:
            f = r.get("fit") or {}
            line += f" {f.get('cosine', float('nan')):.4f} | {f.get('rel_sq_error', float('nan')):.4f} |"
        lines.append(line)
    title = results.get("encoder", "") + (f" (fit to teacher {results['teacher']})" if results.get("teacher") else "")
    with atomic_path(out_dir / "results.md") as tmp:
        tmp.write_text(f"# {title}\n\n" + "\n".join(lines) + "\n")
