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
