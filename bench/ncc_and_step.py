"""Benchmark: the fast local NCC against a straightforward one, and one registration step.

Prints forward+backward time (median of ``--repeats`` after one warm-up) and peak memory for

  (a) NCC, window 9: ``deepsim_edu.losses.NCC`` (five local sums through one grouped, separable
      box filter) vs the straightforward version (five dense convolutions with a ones-kernel of
      9×9(×9), as in voxelmorph / the paper's code);
  (b) one registration training step (U-Net forward, warp, loss + λ·diffusion, backward, Adam)
      with MSE and with NCC, with the paper's channels (2D 64-128-256, 3D 32-64-128);

for 2D 16×1×128×128 and 3D 1×1×80×96×112. Each case runs in its own subprocess so that the
peak resident memory (CPU; peak allocated on CUDA) belongs to that case alone.

    python bench/ncc_and_step.py [--device cpu|cuda] [--repeats 3] [--threads N]

Target (issue 3): the fast NCC ≤ 0.5× the conv version in 3D.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from deepsim_edu.losses import NCC, diffusion_regulariser, get_loss
from deepsim_edu.transform import warp
from deepsim_edu.unet import registration_unet

SHAPES = {"2D": (16, 1, 128, 128), "3D": (1, 1, 80, 96, 112)}
CHANNELS = {"2D": (64, 128, 256), "3D": (32, 64, 128)}


def conv_ncc(warped: torch.Tensor, fixed: torch.Tensor, window: int = 9) -> torch.Tensor:
    """The straightforward local NCC: five dense convolutions with a ones-kernel (baseline only)."""
    ndim = fixed.dim() - 2
    conv = getattr(F, f"conv{ndim}d")
    kernel = torch.ones(1, 1, *[window] * ndim, dtype=fixed.dtype, device=fixed.device)
    n = float(window**ndim)
    sums = [
        conv(x, kernel, padding=window // 2)
        for x in (warped, fixed, warped * warped, fixed * fixed, warped * fixed)
    ]
    sum_i, sum_j, sum_ii, sum_jj, sum_ij = sums
    cross = sum_ij - sum_i * sum_j / n
    var = (sum_ii - sum_i**2 / n) * (sum_jj - sum_j**2 / n)
    return 1 - (cross**2 / var.clamp(min=1e-6)).mean()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_case(case: str, dim: str, device: str, repeats: int) -> dict:
    """Time one case in this process; returns seconds (median) and peak memory in MiB."""
    torch.manual_seed(0)
    shape = SHAPES[dim]
    ndim = len(shape) - 2
    fixed = torch.rand(shape, device=device)
    moving = torch.rand(shape, device=device)

    if case in ("ncc-fast", "ncc-conv"):
        loss_fn = NCC(window=9) if case == "ncc-fast" else conv_ncc

        def step():
            warped = moving.clone().requires_grad_(True)
            loss_fn(warped, fixed).backward()
    else:
        metric = case.split("-")[1]
        net = registration_unet(ndim, CHANNELS[dim]).to(device)
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)
        similarity = get_loss(metric)

        def step():
            optimiser.zero_grad(set_to_none=True)
            u = net(torch.cat([moving, fixed], dim=1))
            loss = similarity(warp(moving, u), fixed) + 1.0 * diffusion_regulariser(u)
            loss.backward()
            optimiser.step()

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024
    return {"seconds": statistics.median(times), "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--one", nargs=2, metavar=("CASE", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")

    if args.one:
        print(json.dumps(run_case(*args.one, args.device, args.repeats)))
        return

    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"median of {args.repeats} after a warm-up; peak = "
        f"{'max allocated' if args.device == 'cuda' else 'peak RSS increase'}"
    )
    print(f"{'case':<16}{'dim':<5}{'shape':<22}{'fwd+bwd s':>10}{'peak MiB':>10}")
    results = {}
    for dim in ("2D", "3D"):
        for case in ("ncc-fast", "ncc-conv", "step-mse", "step-ncc"):
            command = [
                sys.executable,
                __file__,
                "--one",
                case,
                dim,
                "--device",
                args.device,
                "--repeats",
                str(args.repeats),
            ]
            if args.threads:
                command += ["--threads", str(args.threads)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            r = results[case, dim] = json.loads(out.strip().splitlines()[-1])
            print(
                f"{case:<16}{dim:<5}{str(SHAPES[dim]):<22}{r['seconds']:>10.3f}{r['peak_mib']:>10.0f}",
                flush=True,
            )
    for dim in ("2D", "3D"):
        ratio = results["ncc-fast", dim]["seconds"] / results["ncc-conv", dim]["seconds"]
        print(
            f"{dim}: fast NCC / conv NCC time = {ratio:.2f}"
            + ("  (target <= 0.5)" if dim == "3D" else "")
        )


if __name__ == "__main__":
    main()
