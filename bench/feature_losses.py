"""Benchmark: one registration training step with DeepSim and VGG against MSE (issue 5).

Forward (registration net, warp, extractor on warped and fixed image), backward and an Adam
step, with the paper's channels, for 2D 16×1×128×128 and 3D 1×1×80×96×112 (VGG: slice by slice
along D). Each case in its own subprocess; median of ``--repeats`` after a warm-up.

    python bench/feature_losses.py [--device cpu|cuda] [--repeats 2] [--threads N]

Target: the DeepSim step ≤ 1.4× the MSE step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import CHANNELS, SHAPES, measure, registration_step, run_isolated  # noqa: E402

METRICS = ("mse", "deepsim", "vgg")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--one", nargs=2, metavar=("METRIC", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    if args.one:
        metric, dim = args.one
        step = registration_step(metric, SHAPES[dim], CHANNELS[dim], args.device)
        print(json.dumps(measure(step, args.device, args.repeats)))
        return

    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads")
    print(f"{'metric':<9}{'dim':<5}{'shape':<22}{'step s':>8}{'× MSE':>7}{'peak MiB':>10}")
    extra = ["--device", args.device, "--repeats", str(args.repeats)]
    extra += ["--threads", str(args.threads)] if args.threads else []
    for dim in ("2D", "3D"):
        mse = None
        for metric in METRICS:
            r = run_isolated(__file__, ["--one", metric, dim, *extra])
            mse = mse or r["seconds"]
            print(f"{metric:<9}{dim:<5}{str(SHAPES[dim]):<22}{r['seconds']:>8.2f}"
                  f"{r['seconds'] / mse:>7.2f}{r['peak_mib']:>10.0f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
