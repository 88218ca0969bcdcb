"""``python -m fastfc <command>``: the entry point of fastfc's stages.

Commands so far:

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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
