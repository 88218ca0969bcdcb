"""``make demo``: the whole pipeline on real photographs that ship inside packages, on CPU.

A small-scale demonstration on stand-in sets, not the paper's experiment (that is ``launch/``):

1. data: an ImageNet-style tree (:func:`fastfc.fixtures.photos.make_imagenet_tree`) and five shift-like
   stand-in sets in the real datasets' on-disk layouts (:func:`fastfc.demo.standins.make_shift_sets`:
   the registered sets with a stand-in maker), so the real converters run on them unchanged;
2. conversion: ``data_prep.imagenet`` → betons (train), ``data_prep.shifts`` → shards (val, read
   like the shift sets as the paper does, and the five stand-ins);
3. distillation: ``torchrun --nproc-per-node 2 -m fastfc distill`` (gloo), teacher = the
   package-shipped ImageNet MobileNetV2 (real weights), student = a random-init MobileNetV2, for
   :class:`DemoRecipe`'s schedule;
4. features + linear probes for the teacher and the distilled student;
5. evaluation on ID and the five stand-ins, the student's fit to the teacher per set, and
   ``runs/demo/results.{md,json}`` with the check of the paper's finding (:func:`report`), plus
   the ID-vs-OOD and fit-vs-top-1 plots.

A second run reuses the prepared data, the feature caches and a finished distillation of the
same recipe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from fastfc.data import shifts
from fastfc.demo.standins import SHIFT_DIRS, STAND_INS, make_shift_sets
from fastfc.fixtures.photos import make_imagenet_tree

# ----------------------------------------------------------------------------- the pipeline

# One loader worker beside the encoder's threads: on 2 cores, 2 workers made extraction 2.7x slower
# (10 against 29 img/s for MobileNetV2 on the demo's betons and shards, measured with other jobs running).
LOADER_WORKERS = 1
ID_ENTRY = shifts.get(shifts.ID_SET)  # the ImageNet tree's val split, read like the shift sets
REAL_RUNS = "launch/single_node.sh launch/configs/distill_rn50.toml && launch/probe_and_eval.sh RN50"


@dataclass(frozen=True)
class DemoRecipe:
    """The demo's distillation schedule (2 CPU ranks). Units: steps are optimiser steps, the batch
    is global (images per step over all ranks), lr per step (linear warmup, then cosine to 0)."""

    steps: int = 600
    global_batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.05
    seed: int = 0

    def key(self) -> str:
        """A folder name that differs whenever the schedule does: a finished run is reused only as is."""
        return (f"seed{self.seed}-{self.steps}steps-b{self.global_batch_size}-lr{self.lr:g}"
                f"-w{self.warmup_steps}-wd{self.weight_decay:g}")


DISTILL_TOML = """[encoder]
name = "mobilenet_v2"
seed = {r.seed}
[teacher]
pretrained = ""
weights = "package"
[data]
train_beton = "{beton}"
workers = 1
augment = true
[train]
epochs = 1000
max_steps = {r.steps}
lr = {r.lr}
weight_decay = {r.weight_decay}
warmup_steps = {r.warmup_steps}
global_batch_size = {r.global_batch_size}
precision = "fp32"
channels_last = true
compile = false
log_every = 10
seed = {r.seed}
out_dir = "{out}"
"""

def prepare_data(data: Path, *, train_per_class: int = 30, val_per_class: int = 10,
                 shift_per_class: int = 8) -> tuple[Path, dict[str, Path]]:
    """Build (once) and convert (once) the demo data.

    Returns:
        ``(beton folder, {set: shard folder})``; the sets are ``imagenet-val`` (the ImageNet tree's
        val split, read like the shift sets) and the five stand-ins.
    """
    from data_prep.beton import WriterSettings
    from data_prep.imagenet import convert
    from data_prep.shifts import list_set, read_imagenet_classes, write_set

    if not (data / "imagenet" / "train").is_dir():
        print(f"[demo] building real-photo ImageNet and shift-like trees in {data}")
        make_imagenet_tree(data / "imagenet", quirks=True, train_per_class=train_per_class,
                           val_per_class=val_per_class)
        make_shift_sets(data / "shifts", per_class=shift_per_class)
    else:
        print(f"[demo] reusing the photo trees in {data} (delete it to rebuild)")
    betons = data / "betons"
    if not (betons / "meta.json").is_file():
        print("[demo] converting ImageNet → betons")
        convert(data / "imagenet", betons, settings=WriterSettings(max_resolution=320))
    imagenet, shards = read_imagenet_classes(), {}
    sources = {ID_ENTRY.name: data / "imagenet" / ID_ENTRY.release, **{n: data / "shifts" / d for n, d in SHIFT_DIRS.items()}}
    for name, src in sources.items():
        if not (data / "shards" / name / "meta.json").is_file():
            print(f"[demo] converting {name} → shards")
            write_set(list_set(name, src, imagenet), src, data / "shards", workers=len(os.sched_getaffinity(0)))
        shards[name] = data / "shards" / name
    return betons, shards


def distill(out: Path, beton: Path, recipe: DemoRecipe, nproc: int) -> Path:
    """Distil the shipped MobileNetV2 into a random-init one under torchrun (gloo), once per recipe
    (an interrupted distillation continues: ``--resume``). Returns the student's ``weights.pt``."""
    run_dir = out / "distill" / recipe.key()
    if (run_dir / "weights.pt").is_file():
        print(f"[demo] reusing the student distilled by an earlier run with this recipe: {run_dir / 'weights.pt'}")
        return run_dir / "weights.pt"
    print(f"[demo] distilling MobileNetV2 → random-init MobileNetV2: {recipe.steps} steps of "
          f"{recipe.global_batch_size} images, lr {recipe.lr:g}, seed {recipe.seed}, torchrun x{nproc} (gloo)")
    run_dir.mkdir(parents=True, exist_ok=True)
    toml = run_dir / "distill.toml"
    toml.write_text(DISTILL_TOML.format(beton=beton, r=recipe, out=run_dir))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                    "-m", "fastfc", "distill", "--config", str(toml), "--resume"],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return run_dir / "weights.pt"


def _probe_and_eval(out: Path, name: str, kind: str, encoder, betons: Path, shards: dict[str, Path],
                    seed: int, teacher=None) -> None:
    """Features, the linear probe (the paper's recipe, scaled to 300 images) and evaluation of one run."""
    from fastfc.data.betons import read_beton_meta
    from fastfc.evaluate import evaluate
    from fastfc.features import extract
    from fastfc.probe import WEIGHT_DECAY, ProbeRecipe, top1, train_heads
    from fastfc.probe_files import save_probe
    from fastfc.result_files import write_results

    classes = read_beton_meta(betons)["classes"]
    recipe = ProbeRecipe(epochs=10, batch_size=32, warmup_steps=20, weight_decay=WEIGHT_DECAY[kind], seed=seed)
    print(f"[demo] {name}: features, probe, evaluation" + (" and fit to the teacher" if teacher else ""))
    train = extract(encoder, betons / "train.beton", out / "cache", batch_size=32, num_workers=LOADER_WORKERS)
    w, b = train_heads(train.features, train.labels, len(classes), [recipe.weight_decay], recipe, progress=False)
    save_probe(out / name / "probe.pt", w[0], b[0], {"encoder": encoder.name, "classes": classes,
                                                      "train_top1": top1(train.features, train.labels, w[0], b[0])})
    results = evaluate(encoder, w[0], b[0], classes, shards, out / "cache", teacher=teacher,
                       train=betons / "train.beton", batch_size=32, num_workers=LOADER_WORKERS)
    write_results(out / name, results, labels=STAND_INS)


def run(out: Path, *, recipe: DemoRecipe = DemoRecipe(), nproc: int = 2, **sizes) -> str:
    """The whole demo; returns the report (also in ``out/results.md``; every figure in
    ``out/results.json``). ``sizes``: ``train_per_class``, ``val_per_class``, ``shift_per_class``
    (a reduced demo for tests)."""
    from fastfc.models import build_teacher

    betons, shards = prepare_data(out / "data", **sizes)
    weights = distill(out, betons / "train.beton", recipe, nproc)
    teacher = build_teacher("mobilenet_v2", weights="package")
    _probe_and_eval(out, "teacher", "clip", teacher, betons, shards, recipe.seed)
    _probe_and_eval(out, "student", "distilled", build_teacher("mobilenet_v2", weights=weights), betons, shards,
                    recipe.seed, teacher=teacher)
    return report(out, recipe)


def report(out: Path, recipe: DemoRecipe) -> str:
    """``results.json`` (every figure and the check), ``results.md``, ``id_vs_ood.png`` and
    ``fit_vs_top1.png`` from the teacher and student runs in ``out``. Returns the markdown."""
    from fastfc import report as reportlib
    from fastfc.atomic import atomic_path, write_json

    summary = reportlib.summarize([out / "teacher", out / "student"])
    check = reportlib.check_finding(summary)
    reportlib.plot_id_vs_ood(summary, out / "id_vs_ood.png")
    reportlib.plot_fit(summary, out / "fit_vs_top1.png", labels=STAND_INS)
    write_json(out / "results.json", {"what": WHAT, "real_runs": REAL_RUNS, "recipe": asdict(recipe),
                                      "stand_ins": STAND_INS, "check": check, **summary})
    verdict = "holds" if check["holds"] else "does NOT hold"
    text = (f"# fastfc demo: a small-scale demonstration on stand-in sets\n\n{WHAT}\n\n"
            f"Distillation: {recipe.steps} steps of {recipe.global_batch_size} images, lr {recipe.lr:g}, "
            f"seed {recipe.seed}. Top-1 % with Wilson 95% intervals; ΔID and ΔOOD are student − teacher "
            f"(OOD: the average over the five stand-ins).\n\n{reportlib.comparison_table(summary, STAND_INS)}\n\n"
            f"**The finding {verdict}** — {check['criterion']}: ID gap {check['id_gap'] * 100:.1f}, "
            f"OOD gap {check['ood_gap'] * 100:.1f}"
            + (f" ({check['drop_ratio']:.2f} × the ID gap)" if check["drop_ratio"] is not None else "") + ".\n\n"
            f"Representation fit of the student to the teacher on the same images (cosine: mean "
            f"cos(s, t), 1 = aligned; rel. sq. error: Σ‖s−t‖²/Σ‖t‖², 0 = identical):\n\n"
            f"{reportlib.fit_table(summary, STAND_INS)}\n\nReal runs: `{REAL_RUNS}` (see README).\n")
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(text)
    return text


WHAT = ("A small-scale demonstration on stand-in sets, not the paper's experiment: a MobileNetV2 teacher "
        "(ImageNet weights) and a MobileNetV2 student distilled from it on CPU, both probed on 10 ImageNet "
        "classes of real photographs. ID is a held-out split of views of the training photographs, read like "
        "every other set; the OOD sets are stand-ins made from the same photographs (v2-like: fresh views, "
        "sketch-like: edge renderings, r-like: posterised renditions, a-like: small hard crops, objectnet-like: "
        "framed views), not ImageNetV2, -Sketch, -R, -A or ObjectNet.")
