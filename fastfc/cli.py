"""``python -m fastfc <command>``: the entry point of fastfc's stages.

Commands so far:

* ``distill``: representation distillation (:mod:`fastfc.distill`), one process or under torchrun;
* ``demo``: the pipeline on the embedded real-photo data (no network). Today it builds an
  ImageNet-style tree of real photographs, converts it to FFCV betons and verifies them;
  distillation, probes and evaluation join it as their issues land.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def demo(args: argparse.Namespace) -> int:
    from data_prep.imagenet import convert, verify
    from fastfc.photos import make_imagenet_tree

    data = args.out / "data"
    src, betons = data / "imagenet", data / "betons"
    if not (src / "train").is_dir():
        print(f"[demo] building a real-photo ImageNet-style tree in {src}")
        make_imagenet_tree(src)
    else:
        print(f"[demo] reusing {src}")
    if not (betons / "meta.json").is_file():
        print(f"[demo] converting to FFCV betons in {betons}")
        convert(src, betons, skip_bad=False)
    else:
        print(f"[demo] reusing {betons}")
    report = verify(betons, src)
    for split, r in report.items():
        print(f"[demo] {split}.beton: {r['count']} images, labels match the source, "
              f"{r['checked_images']} images checked (min PSNR {r['min_psnr_db']:.1f} dB)")
    print("[demo] next stages (distillation, probes, evaluation) are not built yet")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastfc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the pipeline on the embedded real-photo data")
    d.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default: %(default)s)")
    d.set_defaults(func=demo)

    t = sub.add_parser(
        "distill", help="representation distillation: a frozen teacher teaches a random-init student",
        description="Distil a frozen teacher's image embedding into a random-init student (MSE).",
        epilog="examples:\n"
               "  python -m fastfc distill --config launch/configs/distill_rn50.toml --dry-run\n"
               "  torchrun --standalone --nproc-per-node 8 -m fastfc distill --config launch/configs/distill_rn50.toml\n"
               "  python -m fastfc distill --config C.toml --set train.lr=5e-4 --set data.num_workers=4 --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", type=Path, help="TOML with [model] [data] [objective] [train] sections")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from train.out_dir/checkpoint.pt")
    t.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, per-rank batch and number of steps; do not train")
    t.set_defaults(func=lambda args: __import__("fastfc.distill", fromlist=["main"]).main(args))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
