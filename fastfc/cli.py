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
  convert   imagenet | shifts: the one-time converters (python -m data_prep.imagenet | shifts)

distill, features, probe and eval read a TOML config (--config FILE, --set section.key=value; the
flags of features, probe and eval are shorthands for its fields, derived from them:
fastfc/stage_config.py; the same sections and keys in every command, older keys accepted with a
note: fastfc/config.py); each stage module's run() does the work; toy, cifar and convert read the
rest of the command line with their own parser. Each command has --help with examples. Bad input gives one error line;
FASTFC_TRACEBACK=1 shows the traceback. Installed as .venv/bin/fastfc; python -m fastfc is the same.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import NoReturn

from fastfc.atomic import check_apart, read_json

# Answering fast: only the standard library (and fastfc.atomic, which needs no more) is imported
# up here. --help, argument errors and each command's input checks run before torch, ffcv or
# open_clip are imported (5-15 s on a busy machine); a command imports them where its work starts
# (_start_work).


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


_positive = _int_at_least(1)


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples keep their line breaks; options with a real default show it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _field_default(cls, key: str):
    """The default of config field ``key`` (``section.name``) of dataclass ``cls``."""
    import dataclasses

    obj = cls()
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj if not dataclasses.is_dataclass(obj) else None


def _flag(p, *names: str, key: str, cls, **kw) -> None:
    """An option that sets config field ``key`` of ``cls`` (a shorthand for ``--set key=VALUE``): its
    default is the field's (shown in --help), so a flag not given leaves the config file's value."""
    default = _field_default(cls, key)
    if default is not None and default is not False and default != ():
        kw["help"] += f" (default: {default})"
    if kw.get("action") != "store_true" and "choices" not in kw:
        kw.setdefault("metavar", names[-1].lstrip("-").replace("-", "_").upper())
    p.add_argument(*names, dest=key, default=argparse.SUPPRESS, **kw)


def _config_args(p: argparse.ArgumentParser, sections: str) -> None:
    p.add_argument("--config", type=Path, help=f"TOML with {sections} (fastfc/stage_config.py); the flags "
                                               "below and --set override it")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")


def _comma_list(kind: type):
    """An argparse type: comma-separated values of ``kind`` as a list."""
    def parse(text: str) -> list:
        return [kind(v) for v in text.split(",")]
    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


def _flag_kwargs(meta: dict, hint) -> dict:
    """argparse's keywords for a config field's flag, from the field's type ``hint`` and metadata
    (:func:`fastfc.config.option`): a bool is a switch, choices are argparse's, a tuple reads
    comma-separated values (or ``nargs``/``action``'s), an int honours ``minimum``, ``path`` a Path."""
    import types
    import typing

    kw = dict(meta["flag_kw"])
    kw.pop("group", None)
    path, minimum = kw.pop("path", False), kw.pop("minimum", None)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = next(t for t in typing.get_args(hint) if t is not type(None)) if union else hint
    if base is bool:
        kw["action"] = "store_true"
    elif "choices" in meta:
        kw["choices"] = meta["choices"]
    elif typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        kw["type"] = (Path if path else item) if {"nargs", "action"} & set(kw) else _comma_list(item)
    elif base in (int, float):
        kw["type"] = _int_at_least(minimum) if base is int and minimum is not None else base
    elif path:
        kw["type"] = Path
    return kw


def _config_flags(p: argparse.ArgumentParser, cls) -> None:
    """The flags of config class ``cls``: one per field with a ``flag`` (:func:`fastfc.config.flag_fields`),
    in field order; the flags of one section sharing a ``group`` are mutually exclusive."""
    from fastfc.config import flag_fields

    groups: dict = {}
    for key, f, hint in flag_fields(cls):
        group = f.metadata["flag_kw"].get("group")
        target = p
        if group:  # e.g. --pretrained | --weights, per section
            section = (key.rsplit(".", 1)[0], group)
            if section not in groups:
                groups[section] = p.add_mutually_exclusive_group()
            target = groups[section]
        _flag(target, f.metadata["flag"], key=key, cls=cls, help=f.metadata["help"], **_flag_kwargs(f.metadata, hint))


def _config(args, cls, **flags):
    """The command's config: ``--config``, then the flags given (and ``flags``), then ``--set``."""
    from fastfc import config as configlib

    given = {key: value for key, value in vars(args).items() if "." in key}
    return configlib.load(cls, args.config, args.set or [], flags={**given, **flags})


def _require(args, values: dict) -> None:
    """argparse's error (exit 2) for the settings that neither the flags nor the config give."""
    missing = [flag for flag, value in values.items() if not value]
    if missing:
        args.parser.error(f"the following arguments are required: {', '.join(missing)} (or set them in --config)")


def distill(args) -> int:
    from fastfc import config as configlib
    from fastfc.distill_config import DistillConfig

    # A missing file, bad TOML, an unknown key, a bad value or encoder name: refused before torch.
    cfg = configlib.load(DistillConfig, args.config, args.set or [])
    _start_work()
    from fastfc.distill import main as distill_main
    return distill_main(args, cfg)


def _check_encoder_args(cfg) -> None:
    """The torch-free checks of the encoder options: a --weights file exists; the worker count fits.
    Neither --pretrained nor --weights is allowed (a random-init baseline) but said, once."""
    weights = cfg.encoder.weights
    if not weights and not cfg.encoder.pretrained:
        print(f"fastfc: warning: no --pretrained or --weights: {cfg.encoder.name} is a random-init encoder "
              "(seed 0, the same in every command), a baseline; for CLIP give --pretrained openai, for a "
              "distilled student --weights runs/<run>/weights.pt", file=sys.stderr)
    if weights and weights != "package" and not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file; give a weights file (a distilled "
                                "student's weights.pt, an original-code checkpoint) or 'package'")
    from fastfc.cpus import fit_workers
    cfg.data.workers = fit_workers(cfg.data.workers, "--workers")


def _check_source(source: Path) -> None:
    """A beton file or a folder (a shard set holding meta.json, or an ImageNet val folder of
    ``<wnid>/*`` class folders, whose listing is checked when it is read), else one error line
    (:func:`fastfc.data.source.source_kind`, torch-free)."""
    from fastfc.data.source import source_kind

    source_kind(source)


def features(args) -> int:
    from fastfc.stage_config import FeaturesConfig

    cfg = _config(args, FeaturesConfig, **({"sources": args.source} if args.source else {}))
    _require(args, {"--encoder": cfg.encoder.name, "source": cfg.sources})
    for source in cfg.sources:
        _check_source(Path(source))
    check_apart(cfg.extract.cache, [("source", s) for s in cfg.sources], "--cache")
    _check_encoder_args(cfg)
    _start_work()
    from fastfc.features import run
    run(cfg)
    return 0


def _check_train_source(train: Path) -> None:
    """``--train``: the ImageNet train folder (``<wnid>/*``), its ``imagenet-val``-layout shards, or a
    train beton with its ``meta.json`` beside it (the fast path). Raises ``FileNotFoundError`` naming
    what is missing, ``ValueError`` for shards of another set. Reads no listing (a train folder holds
    1.28M files): the folder's layout is checked when its features are extracted."""
    from fastfc.data.shifts import ID_SET
    from fastfc.data.source import open_source

    try:
        source = open_source(train)
    except FileNotFoundError:
        raise FileNotFoundError(f"--train {train}: no such file or folder; give the ImageNet train folder (<wnid>/*), "
                                "its shards, or a train.beton written by `python -m data_prep.imagenet` (its "
                                "meta.json lists the classes)") from None
    if source.kind == "shards" and source.name != ID_SET:
        raise ValueError(f"--train {train}: shards of {source.name}; give the ImageNet train folder, its shards "
                         f"(python -m data_prep.shifts --set {ID_SET} --src .../train) or a train.beton")
    if source.kind == "folder" and not any(d.is_dir() for d in train.iterdir()):
        raise FileNotFoundError(f"--train {train}: no <wnid>/ class folders in it; give the ImageNet train "
                                f"folder, its shards (python -m data_prep.shifts --set {ID_SET}) or a train.beton")
    if source.kind == "beton" and not (train.parent / "meta.json").is_file():
        raise FileNotFoundError(f"--train {train}: no meta.json beside it; give the ImageNet train folder (<wnid>/*), "
                                "its shards, or a train.beton written by `python -m data_prep.imagenet` (its "
                                "meta.json lists the classes)")


def _check_probe_args(cfg) -> None:
    """The torch-free checks of ``fastfc probe``."""
    p = cfg.probe
    if p.zero_shot and p.from_images:
        raise SystemExit("fastfc probe: --zero-shot initialises a head on cached features; drop --from-images")
    if p.epochs == 0 and (not p.zero_shot or p.wd_sweep):
        raise SystemExit("fastfc probe: --epochs 0 keeps the initial head: give --zero-shot TAG, and no --wd-sweep")
    _check_train_source(Path(p.train))
    if p.from_images and not Path(p.train).is_file():
        raise SystemExit("fastfc probe: --from-images reads a train beton; drop it to train on the folder's features")
    if Path(p.out).is_dir():
        raise IsADirectoryError(f"--out {p.out}: a folder; --out is the probe file to write, e.g. {Path(p.out) / 'probe.pt'}")
    check_apart(cfg.extract.cache, [("--train", Path(p.train))], "--cache")
    Path(p.out).parent.mkdir(parents=True, exist_ok=True)  # fail before training, not after
    _check_encoder_args(cfg)


def probe(args) -> int:
    from fastfc.stage_config import ProbeConfig

    cfg = _config(args, ProbeConfig)
    _require(args, {"--encoder": cfg.encoder.name, "--train": cfg.probe.train, "--out": cfg.probe.out})
    _check_probe_args(cfg)
    _start_work()
    from fastfc.probe import run
    run(cfg)
    return 0


def _check_runs(runs, flag: str) -> None:
    for run in map(Path, runs):
        if not (run / "results.json").is_file():
            raise FileNotFoundError(
                f"{flag} {run}: {'no results.json in this folder' if run.is_dir() else 'no such folder'}; "
                "give run folders written by `fastfc eval --out RUN`")


def _id_source(e) -> Path | None:
    """ID from ``--val`` (imagenet-val shards or a ``<wnid>/*`` val folder, whose listing is read
    here, torch-free) or ``--val-beton`` (opt-in)."""
    from fastfc.data.shifts import ID_SET
    from fastfc.data.source import open_source

    if e.val_beton:
        if not Path(e.val_beton).is_file():
            raise FileNotFoundError(f"--val-beton {e.val_beton}: no such beton")
        return Path(e.val_beton)
    if e.val:
        val = Path(e.val)
        if val.is_file():
            raise ValueError(f"--val {val}: a file; --val takes {ID_SET} shards (python -m data_prep.shifts "
                             f"--set {ID_SET}) or the val folder (<wnid>/*.JPEG). A val beton: --val-beton")
        if not val.is_dir():
            raise FileNotFoundError(f"--val {val}: no such folder")
        name = open_source(val).name  # a folder's listing is checked here, before any model is built
        if name != ID_SET:
            raise ValueError(f"--val {val}: shards of {name}, not {ID_SET}; give the {ID_SET} shards "
                             "or the val folder (<wnid>/*.JPEG)")
        return val
    return None


def _shard_sets(shards: Path) -> dict:
    """The shift sets under ``--shards``, by the set their ``meta.json`` names (not the folder's name).

    Raises:
        FileNotFoundError: no set folder. ValueError: two folders hold the same set (both named).
    """
    found: dict[str, Path] = {}
    for meta in sorted(shards.glob("*/meta.json")):
        name = read_json(meta, "write the set with `python -m data_prep.shifts`", keys=("set",))["set"]
        if name in found:
            raise ValueError(f"--shards {shards}: {found[name]} and {meta.parent} both hold {name} (their "
                             "meta.json); move one out of --shards, so that each set is scored once")
        if name != meta.parent.name:
            print(f"note: {meta.parent} holds {name} (its meta.json); scored as {name}", file=sys.stderr)
        found[name] = meta.parent
    if not found:
        raise FileNotFoundError(f"--shards {shards}: no shift-set folders (<set>/meta.json) in it; "
                                "write them with `python -m data_prep.shifts`")
    return found


def _eval_sets(e) -> dict:
    """The sets ``fastfc eval`` scores, by name; every path checked first."""
    from fastfc.data.shifts import ID_SET

    sets = {}
    if e.shards:
        shards = Path(e.shards)
        found = _shard_sets(shards)
        missing = sorted(set(e.sets or ()) - set(found))
        if missing:
            raise FileNotFoundError(f"--sets {','.join(missing)}: not in {shards} (it has {', '.join(found)})")
        sets.update((name, path) for name, path in found.items() if not e.sets or name in e.sets)
    id_source = _id_source(e)
    if id_source is not None:  # an explicit ID source wins over imagenet-val shards under --shards
        sets = {ID_SET: id_source, **{k: v for k, v in sets.items() if k != ID_SET}}
    if not sets:
        raise SystemExit("fastfc eval: nothing to evaluate; give --shards FOLDER and/or --val (or --val-beton)")
    if e.train is not None:
        _check_train_source(Path(e.train))
    return sets


def evaluate(args) -> int:
    from fastfc.stage_config import EvalConfig

    cfg = _config(args, EvalConfig)
    e = cfg.eval
    if e.compare:
        _check_runs(e.compare, "--compare")
        _check_runs(e.baseline or [], "--baseline")
        from fastfc.report import compare  # torch-free: --compare answers without importing torch

        print(compare([Path(r) for r in e.compare], [Path(r) for r in e.baseline or []],
                      plot=Path(e.plot) if e.plot else None))
        return 0
    if not e.probe or not cfg.encoder.name:
        raise SystemExit("fastfc eval: --encoder and --probe are required (or --compare RUN ...)")
    sets = _eval_sets(e)
    sources = [("the set", path) for path in sets.values()] + ([("--train", e.train)] if e.train else [])
    check_apart(e.out, sources, "--out")
    check_apart(cfg.extract.cache, sources, "--cache")
    if not Path(e.probe).is_file():
        raise FileNotFoundError(f"--probe {e.probe}: no such file; give a probe written by `fastfc probe --out`")
    _check_encoder_args(cfg)
    _start_work()
    from fastfc.evaluate import run
    run(cfg, sets)
    return 0


def toy(argv: list[str]) -> int:
    """``fastfc toy`` with ``argv`` (without the ``toy`` word); 0 on success, 2 on a bad config
    (argparse's message). Example: ``toy(["--preset", "paper", "--out", "runs/x"])``."""
    from fastfc import config as configlib
    from fastfc.toy_config import build_parser as toy_parser, describe, resolve_config

    parser = toy_parser()
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(args)
    except configlib.ConfigError as e:
        parser.error(str(e))
    from fastfc.toy import plot_run, run, save, summarize  # torch: imported only to run

    name = args.preset + (f"-sweep-{args.sweep}" if args.sweep else "")
    out = args.out or Path("runs/toy") / name
    print(f"[toy] {args.preset}: {describe(cfg)}; {cfg.steps} steps -> {out}", flush=True)
    if args.sweep:
        return _toy_sweep(cfg, args, out)
    result = run(cfg, log=lambda line: print(f"[toy] {line}", flush=True))
    save(result, out)
    plot_run(result, out / f"toy_{args.preset}.png", title=f"{args.preset}: {describe(cfg)}")
    s = summarize(result)
    print(f"[toy] background norm {s['background_norm_init']:.3f} -> {s['background_norm_end']:.3f} "
          f"(x{s['background_growth']:.2f}); ID loss {s['id/loss_end']:.3g}, OOD loss "
          f"{s['ood/loss_end']:.4f}; {s['seconds']:.1f} s; wrote {out}", flush=True)
    return 0


def _toy_sweep(cfg, args: argparse.Namespace, out: Path) -> int:
    from fastfc.toy import plot_sweep, save, sweep

    results = sweep(cfg, args.sweep, log=lambda line: print(f"[toy] {line}", flush=True))
    for value, result in results.items():
        save(result, out / f"{args.sweep}-{value}")
    plot_sweep(results, args.sweep, out / f"toy_{args.preset}_sweep_{args.sweep}.png")
    total = sum(r.seconds for r in results.values())
    print(f"[toy] {len(results)} runs in {total:.1f} s; wrote {out}", flush=True)
    return 0


def cifar(argv: list[str]) -> int:
    """``fastfc cifar train|visualize ...`` (:func:`fastfc.cifar.run.main`)."""
    from fastfc.cifar.run import main as cifar_main
    return cifar_main(argv)


CONVERTERS = {"imagenet": "ImageNet JPEG folders -> betons", "shifts": "a shift set's release folder -> shards"}


def convert(argv: list[str]) -> int:
    """``fastfc convert imagenet|shifts ...``: the one-time converters, ``python -m data_prep.imagenet``
    and ``python -m data_prep.shifts`` (the same ``main``, which reports its own input errors)."""
    if not argv or argv[0] not in CONVERTERS:
        p = argparse.ArgumentParser(prog="fastfc convert", formatter_class=_Help,
                                    description="The one-time converters; each has --help.")
        p.add_argument("converter", choices=CONVERTERS, help="; ".join(f"{k}: {v}" for k, v in CONVERTERS.items()))
        p.parse_args(argv[:1])  # --help, or argparse's one line for a missing or unknown converter
    import importlib

    return importlib.import_module(f"data_prep.{argv[0]}").main(argv[1:])


# Commands whose own parser reads the rest of the command line (each answers --help and bad input
# before torch); the others are build_parser's sub-commands. All run through main()'s error path.
_OWN_PARSER = {"toy": toy, "cifar": cifar, "convert": convert}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastfc", description=__doc__,
                                formatter_class=_Help)
    sub = p.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    _distill_parser(sub)
    sub.add_parser("toy", add_help=False,
                   help="the paper's synthetic feature-contamination experiment (see: fastfc toy --help)")
    sub.add_parser("cifar", add_help=False,
                   help="the CIFAR-10 experiment: train, visualize (see: fastfc cifar --help)")
    sub.add_parser("convert", add_help=False,
                   help="the one-time converters: imagenet (betons), shifts (shards) (see: fastfc convert --help)")
    _features_parser(sub)
    _probe_parser(sub)
    _eval_parser(sub)
    return p


def _demo_parser(sub) -> None:
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


def _distill_parser(sub) -> None:
    from fastfc.train_config import start_args

    t = sub.add_parser(
        "distill", help="representation distillation: a frozen teacher teaches a random-init student",
        description="Distil a frozen teacher's image embedding into a random-init student (MSE).",
        epilog="examples:\n"
               "  fastfc distill --config launch/configs/distill_rn50.toml --dry-run\n"
               "  torchrun --standalone --nproc-per-node 8 -m fastfc distill --config launch/configs/distill_rn50.toml\n"
               "  fastfc distill --config C.toml --set train.lr=5e-4 --set data.workers=4 --resume",
        formatter_class=_Help)
    t.add_argument("--config", type=Path, help="TOML with [encoder] [teacher] [data] [objective] [train] sections (the paper's "
                                               "runs: launch/configs/); without it, the defaults: RN50, openai "
                                               "teacher, data/betons/train.beton")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    start_args(t, "train.out_dir")
    t.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, per-rank batch and number of steps; do not train")
    t.set_defaults(func=distill)


def _features_parser(sub) -> None:
    from fastfc.stage_config import FeaturesConfig

    f = sub.add_parser("features", help="extract embeddings of betons / shard sets to the cache", formatter_class=_Help,
                       epilog="examples:\n  fastfc features --encoder RN50 --pretrained openai data/betons/train.beton "
                              "data/shards/imagenet-r\n"
                              "  fastfc features --config F.toml --set extract.precision=fp32")
    _config_args(f, "a top-level sources list and [encoder] [data] [extract] sections")
    _config_flags(f, FeaturesConfig)
    f.add_argument("source", nargs="*", type=Path, help="a .beton, a shard set folder (holding meta.json) or an ImageNet "
                                                        "val folder (<wnid>/*.JPEG); or sources in --config")
    f.set_defaults(func=features, parser=f)


def _probe_parser(sub) -> None:
    from fastfc.stage_config import ProbeConfig

    pr = sub.add_parser(
        "probe", help="train a linear probe on an encoder's cached features (or on images)",
        description="Linear probe, the paper's recipe: AdamW lr 1e-3, batch 256, 10 epochs, 500 warmup\n"
                    "steps then cosine; weight decay 0.1 for CLIP encoders, 1e-3 for distilled ones.",
        epilog="examples:\n  fastfc probe --encoder RN50 --pretrained openai --train data/imagenet/train --out runs/clip/probe.pt\n"
               "  fastfc probe ... --train data/betons/train.beton ...  # the fast path: ffcv's crop of the stored images\n"
               "  fastfc probe --encoder RN50 --weights runs/distill_rn50/weights.pt --kind distilled --train ... --out ...\n"
               "  fastfc probe ... --wd-sweep 1e-6,1e-5,1e-4,1e-3,1e-2,1e-1\n"
               "  fastfc probe --encoder RN50 --pretrained openai --zero-shot openai --epochs 0 ...  # CLIP zero-shot as the head\n"
               "  fastfc probe --config P.toml --set probe.seed=1 --set data.workers=4",
        formatter_class=_Help)
    _config_args(pr, "[encoder] [data] [extract] [probe] sections")
    _config_flags(pr, ProbeConfig)
    pr.set_defaults(func=probe, parser=pr)


def _eval_parser(sub) -> None:
    from fastfc.stage_config import EvalConfig

    ev = sub.add_parser("eval", help="top-1 on ImageNet val and the shift sets; --compare runs",
                        description="Score an encoder + probe on ImageNet val and the shift sets, each in its own\n"
                                    "label space (R and A: 200-class masks; ObjectNet: max over its ImageNet\n"
                                    "classes), or compare finished runs (ID, each OOD set, OOD average, gaps).\n"
                                    "ID is read like the shift sets, from the original JPEGs (the paper's path).\n"
                                    "With a teacher, each set also gets the student-teacher fit of the embeddings.",
                        epilog="examples:\n  fastfc eval --encoder RN50 --pretrained openai --probe runs/clip/probe.pt "
                               "--shards data/shards --train data/imagenet/train --out runs/clip\n"
                               "  fastfc eval --encoder RN50 --weights runs/distill_rn50/weights.pt "
                               "--probe runs/student/probe.pt --shards data/shards --train data/imagenet/train "
                               "--teacher-pretrained openai --out runs/student\n"
                               "  fastfc eval --compare runs/clip runs/distilled --plot runs/id_vs_ood.png\n"
                               "  fastfc eval --config E.toml --set eval.sets=imagenet-r,imagenet-a",
                        formatter_class=_Help)
    _config_args(ev, "[encoder] [data] [extract] [teacher] [eval] sections")
    _config_flags(ev, EvalConfig)
    ev.set_defaults(func=evaluate, parser=ev)


def _message(e: Exception) -> str:
    """One line for an error: an OSError of the system (``[Errno 2] ...``) names its file first; an
    error raised in a DataLoader worker (torch re-raises it as "Caught X in DataLoader worker process
    N.", then the worker's traceback) gives the worker's own message, which names the file."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    text = str(e)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def _end_process_group() -> bool:
    """Destroy the process group a command joined under torchrun; True if there was one."""
    dist = sys.modules.get("torch.distributed")  # imported only if the command did: --help stays light
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    dist.destroy_process_group()
    return True


def _exit_worker(status: int) -> NoReturn:
    """End a torchrun worker whose command has finished, with ``status``, skipping the interpreter's
    finalization. Once DDP has held the gloo group, ``destroy_process_group`` does not stop its
    worker threads (DDP's references to the group are never released), and a thread still
    releasing a collective's tensors while the interpreter finalizes aborts the process ("terminate
    called without an active exception", pytorch/pytorch#190489; 1 in 6 two-rank runs on a busy
    2-core machine), after the work was done and written. Every file is closed by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    """The one dispatcher: ``fastfc <command> ...``; returns the exit status. Bad input (a ValueError
    or an OSError) is one line, ``fastfc <command>: error: ...``, and status 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in _OWN_PARSER:  # named with its action, if any: "cifar visualize", "convert shifts"
        command = " ".join(argv[:2]) if len(argv) > 1 and not argv[1].startswith("-") else argv[0]
        work = functools.partial(_OWN_PARSER[argv[0]], argv[1:])
    else:
        args = build_parser().parse_args(argv)
        command, work = args.command, functools.partial(args.func, args)
    status = None  # stays None while an exception propagates: it then keeps its traceback
    try:
        status = work()
    except (ValueError, OSError) as e:  # bad input: unknown encoder, missing or unwritable file, bad checkpoint
        if os.environ.get("FASTFC_TRACEBACK"):
            raise
        print(f"fastfc {command}: error: {_message(e)}\n(FASTFC_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        status = 1
    finally:
        if _end_process_group() and status is not None:
            _exit_worker(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
