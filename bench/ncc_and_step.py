"""Benchmark: the fast local NCC against a straightforward one, and one registration step.

Prints forward+backward time (median of ``--repeats`` after one warm-up) and peak memory for

  (a) NCC, window 9: ``deepsim_edu.losses.NCC`` (five local sums through one grouped, separable
      box filter) vs the straightforward version (five dense convolutions with a ones-kernel of
      9×9(×9), as in voxelmorph / the paper's code);
  (b) one registration training step (U-Net forward, warp, loss + λ·diffusion, backward, Adam)
      with MSE and with NCC, with the paper's channels (2D 64-128-256, 3D 32-64-128);

for 2D 16×1×128×128 and 3D 1×1×80×96×112, each case in its own subprocess.

    python bench/ncc_and_step.py [--device cpu|cuda] [--repeats 3] [--threads N]

Target (issue 3): the fast NCC ≤ 0.5× the conv version in 3D.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import CHANNELS, SHAPES, measure, registration_step, run_isolated  # noqa: E402

from deepsim_edu.losses import NCC  # noqa: E402

CASES = ("ncc-fast", "ncc-conv", "step-mse", "step-ncc")


def conv_ncc(warped: torch.Tensor, fixed: torch.Tensor, window: int = 9) -> torch.Tensor:
    """The straightforward local NCC: five dense convolutions with a ones-kernel (baseline only)."""
    ndim = fixed.dim() - 2
    conv = getattr(F, f"conv{ndim}d")
    kernel = torch.ones(1, 1, *[window] * ndim, dtype=fixed.dtype, device=fixed.device)
    n = float(window**ndim)
    products = (warped, fixed, warped * warped, fixed * fixed, warped * fixed)
    sum_i, sum_j, sum_ii, sum_jj, sum_ij = (conv(x, kernel, padding=window // 2) for x in products)
    cross = sum_ij - sum_i * sum_j / n
    var = (sum_ii - sum_i**2 / n) * (sum_jj - sum_j**2 / n)
    return 1 - (cross**2 / var.clamp(min=1e-6)).mean()


def run_case(case: str, dim: str, device: str, repeats: int) -> dict:
    """Time one case in this process: median seconds and peak MiB."""
    if case.startswith("step-"):
        step = registration_step(case[5:], SHAPES[dim], CHANNELS[dim], device)
        return measure(step, device, repeats)
    torch.manual_seed(0)
    fixed, moving = torch.rand(SHAPES[dim], device=device), torch.rand(SHAPES[dim], device=device)
    loss_fn = NCC(window=9) if case == "ncc-fast" else conv_ncc

    def step():
        warped = moving.clone().requires_grad_(True)
        loss_fn(warped, fixed).backward()

    return measure(step, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    if args.one:
        print(json.dumps(run_case(*args.one, args.device, args.repeats)))
        return

    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, median of "
          f"{args.repeats} after a warm-up; peak = "
          f"{'max allocated' if args.device == 'cuda' else 'peak RSS increase'}")  # fmt: skip
    print(f"{'case':<12}{'dim':<5}{'shape':<22}{'fwd+bwd s':>10}{'peak MiB':>10}")
    extra = ["--device", args.device, "--repeats", str(args.repeats)]
    extra += ["--threads", str(args.threads)] if args.threads else []
    results = {}
    for dim in ("2D", "3D"):
        for case in CASES:
            r = results[case, dim] = run_isolated(__file__, ["--one", case, dim, *extra])
            print(f"{case:<12}{dim:<5}{str(SHAPES[dim]):<22}{r['seconds']:>10.3f}{r['peak_mib']:>10.0f}",
                  flush=True)  # fmt: skip
    for dim in ("2D", "3D"):
        ratio = results["ncc-fast", dim]["seconds"] / results["ncc-conv", dim]["seconds"]
        print(
            f"{dim}: fast NCC / conv NCC time = {ratio:.2f}"
            + ("  (target <= 0.5)" if dim == "3D" else "")
        )


if __name__ == "__main__":
    main()
