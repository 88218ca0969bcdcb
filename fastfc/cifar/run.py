"""``fastfc cifar train | visualize``: the paper's CIFAR-10 experiment as commands.

    fastfc cifar train --variant background --out runs/cifar_background         # the paper's run
    fastfc cifar train --variant raw --out runs/cifar_raw
    torchrun --standalone --nproc-per-node 1 -m fastfc cifar train --config launch/configs/cifar_background.toml
    fastfc cifar visualize runs/cifar_raw runs/cifar_background --out runs/cifar_features
    fastfc cifar train --variant raw --out runs/smoke/raw --preset smoke        # CPU, offline

A train run is :func:`fastfc.train.train` on :class:`~fastfc.cifar.attack.SmoothedPGDTask`; its folder
holds ``config.json``, ``metrics.jsonl`` (``train/loss``, and per epoch ``eval/clean/top1``,
``eval/pgd/top1``), ``checkpoint.pt`` and, when finished, ``weights.pt`` (the last epoch's). The
visualisation writes ``features_<variant>.npy`` (``[64, 32, 32, 3]`` float32 RGB in [0, 1]),
``features.png`` / ``features.pdf`` (the two 8×8 grids side by side) and ``measures.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from fastfc import config as configlib
from fastfc.atomic import read_json
from fastfc.train_config import start_args
from fastfc.cifar.config import (PRESETS, VARIANTS, VISUALIZE_PRESETS, CifarConfig, DataConfig, VisualizeConfig, plan,
                                 resolve)

if TYPE_CHECKING:
    import torch

# Answering fast: torch (and the modules built on it) is imported inside the functions that do the
# work, so --help and every argument or config error answer before it (fastfc/cli.py).


# ----------------------------------------------------------------------------- training

def forward_flops(net: torch.nn.Module, size: int = 32) -> float:
    """FLOPs of one forward pass on a ``size``×``size`` image (multiply and add counted apart)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size, device=next(net.parameters()).device))
    return float(counter.get_total_flops())


def _datasets(cfg: DataConfig, rt):
    """(train set, test set); rank 0 first, so that only it downloads."""
    from fastfc.cifar.data import build_dataset, test_transform, train_transform

    def build():
        kw = {"root": cfg.root, "download": cfg.download}
        return (build_dataset(cfg.source, train=True, transform=train_transform(cfg.variant),
                              per_class=cfg.train_per_class, **kw),
                build_dataset(cfg.source, train=False, transform=test_transform(), per_class=cfg.test_per_class,
                              **kw))
    if not rt.distributed:
        return build()
    import torch.distributed as dist
    if rt.is_main:
        sets = build()
    dist.barrier()
    return sets if rt.is_main else build()


def train_run(cfg: CifarConfig, *, resume: bool = False, fresh: bool = False, rt=None) -> dict:
    """Train one model of the experiment; returns :func:`fastfc.train.train`'s summary (``resume``/
    ``fresh``: :meth:`fastfc.checkpoint.Checkpointer.start`)."""
    import torch

    from fastfc.cifar.attack import SmoothedPGDTask
    from fastfc.cifar.data import EpochLoader, rank_share
    from fastfc.cifar.model import resnet32
    from fastfc.runtime import setup_runtime
    from fastfc.train import train

    rt = rt or setup_runtime()
    if rt.device.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    train_set, test_set = _datasets(cfg.data, rt)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    net = resnet32(num_classes=len(train_set.classes))
    task = SmoothedPGDTask(net, cfg.attack, forward_flops(net), rank_share(test_set, rt.rank, rt.world_size),
                           seed=cfg.train.seed)
    loader = EpochLoader(train_set, cfg.train.per_rank_batch(rt.world_size), rank=rt.rank,
                         world_size=rt.world_size, seed=cfg.train.seed, num_workers=cfg.data.workers,
                         pin_memory=rt.device.type == "cuda", on_epoch=[task.set_epoch])
    return train(task, loader, cfg.train, rt, resume=resume, fresh=fresh, run_config=configlib.to_dict(cfg),
                 command=cfg.COMMAND)


# ----------------------------------------------------------------------------- visualisation

def load_run(run: Path, variant: str):
    """The trained ResNet-32 of run folder ``run`` (``weights.pt``), in eval mode on the CPU.

    Raises ``FileNotFoundError`` when ``run`` has no weights, ``ValueError`` when they do not load or
    the run's ``config.json`` names another variant than ``variant``.
    """
    weights, config = run / "weights.pt", run / "config.json"
    if not weights.is_file():
        hint = " (a stopped run: resume it with --resume)" if (run / "checkpoint.pt").is_file() else ""
        raise FileNotFoundError(f"{weights}: no trained weights{hint}; train it with `fastfc cifar "
                                f"train --variant {variant} --out {run}`")
    trained = read_json(config, f"the run's config; retrain with `fastfc cifar train --variant {variant} --out {run}`") \
        .get("data", {}).get("variant") if config.is_file() else None
    if trained not in (None, variant):
        raise ValueError(f"{run}: trained with --variant {trained}, but given as the {variant} run; "
                         "pass the raw run first, then the background run")
    import torch

    from fastfc.cifar.model import resnet32

    net = resnet32()
    try:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as e:  # truncated file, pickle error, other architecture
        raise ValueError(f"{weights}: not a ResNet-32 state dict written by `fastfc cifar train` ({e})") from None
    return net.eval()


def visualize_runs(runs: dict[str, Path], out: Path, cfg: VisualizeConfig) -> dict:
    """Visualise the 64 channels of ``layer3[-1].conv2`` of each run, measure them, write the files.

    ``runs``: ``{"raw": folder, "background": folder}``. Returns the measures (also ``measures.json``).
    Raises ``FileNotFoundError`` and ``ValueError`` as :func:`load_run` does, before any work.
    """
    nets = {variant: load_run(run, variant) for variant, run in runs.items()}  # fail before any work
    import numpy as np
    import torch

    from fastfc.atomic import atomic_path, write_json
    from fastfc.cifar.data import BACKGROUND
    from fastfc.cifar.visualize import colour_measures, plot_grids, uniform_response_ratio, visualize_channels

    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    out.mkdir(parents=True, exist_ok=True)
    measures, grids = {}, {}
    for variant, net in nets.items():
        layer = net.layer3[-1].conv2
        vis = visualize_channels(net, layer, list(range(layer.out_channels)), rounds=cfg.rounds, steps=cfg.steps,
                                 lr=cfg.lr, l2=cfg.l2, blur=cfg.blur, seed=cfg.seed,
                                 double_normalize=cfg.double_normalize)
        grids[variant] = vis.images
        with atomic_path(out / f"features_{variant}.npy") as tmp, tmp.open("wb") as f:
            np.save(f, vis.images)
        measures[variant] = {**colour_measures(vis.images, BACKGROUND),
                             "stage3_response_background_over_grey": uniform_response_ratio(net, BACKGROUND),
                             "activation_raised": float(np.mean(vis.activation_end > vis.activation_start)),
                             "run": str(runs[variant])}
    result = {"background_colour": list(BACKGROUND), "visualisation": asdict(cfg), "models": measures}
    write_json(out / "measures.json", result)
    plot_grids(grids, measures, out / "features")
    return result


# ----------------------------------------------------------------------------- command line

DESCRIPTION = """The paper's CIFAR-10 experiment (docs/recipe.md): a ResNet-32 trained with PGD on a
noise-smoothed classifier, on raw CIFAR-10 or with a brick-red (150,50,50) background, then the
feature visualisation of both models and two measures of the background colour in their features.

examples:
  fastfc cifar train --variant background --out runs/cifar_background   # the paper's run (GPU)
  fastfc cifar train --variant raw --out runs/cifar_raw
  torchrun --standalone --nproc-per-node 1 -m fastfc cifar train --config launch/configs/cifar_raw.toml
  fastfc cifar visualize runs/cifar_raw runs/cifar_background --out runs/cifar_features
  fastfc cifar train --variant raw --out runs/smoke/raw --preset smoke  # CPU, offline

A train run folder holds config.json, metrics.jsonl (train/loss; per epoch eval/clean/top1 and
eval/pgd/top1), checkpoint.pt and, once finished, weights.pt (the last epoch's weights)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``fastfc cifar`` command line."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="fastfc cifar", description=DESCRIPTION, formatter_class=fmt)
    sub = p.add_subparsers(dest="action", required=True)
    t = sub.add_parser("train", help="adversarially train one ResNet-32 (raw or with the brick-red background)",
                       formatter_class=fmt, description=
                       "PGD training of a noise-smoothed ResNet-32 on CIFAR-10 (the paper's recipe:\n"
                       "docs/recipe.md); --preset smoke: the offline photo stand-in, a few epochs, CPU.")
    t.add_argument("--variant", choices=VARIANTS, help="raw: flip only; background: 8-px (150,50,50) padding + "
                                                       "random 32-px crop + flip (required unless --config sets it)")
    t.add_argument("--out", type=Path, help="run folder (default: the config's train.out_dir, else runs/cifar_VARIANT)")
    t.add_argument("--preset", choices=PRESETS, default="paper", help="paper (default): 250 epochs on CIFAR-10; "
                                                                      "smoke: CPU, offline, ~1 min")
    t.add_argument("--config", type=Path, help="TOML with [data] [attack] [train] sections (launch/configs/cifar_*.toml)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override (repeatable)")
    start_args(t, "OUT")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan; do not train")
    v = sub.add_parser("visualize", help="feature visualisation of both models, one figure, and the measures",
                       formatter_class=fmt, description=
                       "Optimise one image per channel of layer3[-1].conv2 for each model; write the\n"
                       "two 8x8 grids side by side (features.png/.pdf), the images (features_*.npy)\n"
                       "and measures.json (mean colour, its distance to (150,50,50), tint, response).")
    v.add_argument("raw_run", type=Path, metavar="RAW_RUN", help="run folder of the raw model")
    v.add_argument("background_run", type=Path, metavar="BACKGROUND_RUN", help="run folder of the background model")
    v.add_argument("--out", type=Path, required=True, help="output folder")
    v.add_argument("--preset", choices=VISUALIZE_PRESETS, default="paper",
                   help="paper (default): 10 rounds x 200 steps; smoke: 2 x 8")
    v.add_argument("--double-normalize", action=argparse.BooleanOptionalAction, default=True,
                   help="the paper code's input (default): ImageNet mean/std on top of the model's CIFAR "
                        "normalisation; --no-double-normalize feeds the image as it is")
    return p


def _train(args, parser) -> int:
    if not args.variant and not args.config:
        parser.error("train: --variant raw|background is required (or a --config that sets data.variant)")
    cfg = resolve(args.preset, args.config, args.set, variant=args.variant, out=args.out)
    if args.dry_run:
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps({"config": configlib.to_dict(cfg),
                              "plan": plan(cfg, int(os.environ.get("WORLD_SIZE", "1")))}, indent=2, default=str))
        return 0
    summary = train_run(cfg, resume=args.resume, fresh=args.fresh)
    out = Path(cfg.train.out_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        state = (f"stopped at step {summary['step']}; resume with --resume" if summary["stopped_early"]
                 else f"done: {summary['step']} steps, final loss {summary['final_loss']:.4g}; weights: {out / 'weights.pt'}")
        print(f"[cifar] {cfg.data.variant}: {state}; metrics: {out / 'metrics.jsonl'}")
    return 0


def _visualize(args) -> int:
    cfg = VisualizeConfig(**VISUALIZE_PRESETS[args.preset], double_normalize=args.double_normalize)
    result = visualize_runs({"raw": args.raw_run, "background": args.background_run}, args.out, cfg)
    print(f"{'model':<11} {'mean colour (RGB)':<22} {'distance to (150,50,50)':>23} {'tint':>6} "
          f"{'brick-red features':>18} {'stage-3 red/grey':>16}")
    for name, m in result["models"].items():
        print(f"{name:<11} {str(tuple(round(v) for v in m['mean_colour'])):<22} {m['distance_to_background']:>23.1f} "
              f"{m['background_tint']:>6.1f} {len(m['tinted_channels']):>15}/64 "
              f"{m['stage3_response_background_over_grey']:>16.3f}")
    print(f"[cifar] {args.out / 'features.png'}, features.pdf, features_raw.npy, features_background.npy, "
          "measures.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``fastfc cifar ...`` with ``argv`` (without the ``cifar`` word); run through
    :func:`fastfc.cli.main`, whose error path turns bad input (ValueError, OSError) into one line and
    exit status 1 (2 for a bad command line, from argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return _train(args, parser) if args.action == "train" else _visualize(args)
