"""Command line: ``python -m deepsim_edu COMMAND --help``. Thin wrappers over the library.

python -m deepsim_edu demo [--out results/demo]
python -m deepsim_edu data --dataset platelet-em [--source embedded|PATH] [--data data]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data.layout import DATASET_NAMES, DatasetError


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, metric=args.metric, lam=args.lam, steps=args.steps, seed=args.seed)


def _data(args: argparse.Namespace) -> None:
    from .data.embedded import ensure_embedded, summarize

    if args.source == "embedded":
        params = {} if args.noise is None else {"noise": args.noise}
        root = ensure_embedded(args.dataset, args.data, seed=args.seed, **params)
    else:
        root = Path(args.source)
        if args.noise is not None:
            raise DatasetError("--noise only applies to --source embedded")
    for line in summarize(root):
        print(line)
    print(f"dataset folder: {root}")


def _train_seg(args: argparse.Namespace) -> None:
    from .config import segmentation_config
    from .data.embedded import resolve_dataset
    from .train import train_segmentation

    config = segmentation_config(args.dataset, args.preset, seed=args.seed)
    root = resolve_dataset(args.dataset, args.data)
    out = Path(args.out or f"results/{args.preset}") / args.dataset / "segmentation"
    last = train_segmentation(root, out, config, device=args.device)
    print(f"segmentation {args.dataset} ({args.preset}): epoch {last['epoch']}, "
          f"validation foreground Dice {last['val_dice']:.3f}")  # fmt: skip
    print(f"run folder: {out}")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    parser.add_argument("--preset", default="quick", help="quick | default | paper")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--data", default=None,
                        help="dataset folder (or a folder holding <dataset>/); default: the "
                        "embedded dataset, generated in data/")  # fmt: skip
    parser.add_argument("--out", default=None, help="results root (default results/<preset>)")
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deepsim_edu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="register a generated 2D pair; print Dice, save a picture"
    )
    demo.add_argument("--out", default="results/demo", help="folder for registration.png")
    demo.add_argument("--metric", default="ncc", choices=["mse", "ncc"])
    demo.add_argument(
        "--lam", type=float, default=1.0, help="weight λ of the diffusion regulariser"
    )
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    data = commands.add_parser(
        "data", help="make (embedded) or check (PATH) a dataset; one line per split"
    )
    data.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    data.add_argument(
        "--source",
        default="embedded",
        help="'embedded' (generate offline) or the PATH of a dataset folder to check",
    )
    data.add_argument("--data", default="data", help="folder that holds the embedded datasets")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument(
        "--noise",
        type=float,
        default=None,
        help="noise level of the embedded generator (0 = the easy, clean case)",
    )
    data.set_defaults(run=_data)

    seg = commands.add_parser("train-seg", help="train the segmentation net (DeepSim's extractor)")
    _add_run_arguments(seg)
    seg.set_defaults(run=_train_seg)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
