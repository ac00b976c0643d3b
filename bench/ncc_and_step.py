"""Benchmark: our local NCC against MONAI's, and one registration step with MSE and NCC.

Prints forward+backward time (median of ``--repeats`` after a warm-up) and peak memory for

  (a) NCC, window 9: ``deepsim_edu.losses.NCC`` (box sums by sliding-window doubling, the box
      filter as its own adjoint in the backward pass) with both border rules, and MONAI's
      ``LocalNormalizedCrossCorrelationLoss`` (rectangular kernel, same window: separable
      convolutions, zero padding — the same numbers as our ``border="zero-padding"``);
  (b) one registration training step (U-Net forward, warp, loss + λ·diffusion, backward, Adam)
      with MSE and with NCC, with the paper's channels (2D 64-128-256, 3D 32-64-128);

for 2D 16×1×128×128 and 3D 1×1×80×96×112, each case in its own subprocess (same thread count).
The ours / MONAI ratio comes from a separate side-by-side run in one process that alternates
the two ``--repeats`` times (so drifting load on a shared machine hits both alike); it also
prints the difference of the two loss values.

    python bench/ncc_and_step.py [--device cpu|cuda] [--repeats 7] [--threads N]

MONAI is a benchmark-only dependency: ``pip install -r requirements-bench.txt``; without it the
MONAI cases are skipped. Target (issue 15): ours ≤ 0.5× MONAI, 3D, window 9.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import CHANNELS, SHAPES, measure, registration_step, run_isolated, sync  # noqa: E402

from deepsim_edu.losses import NCC  # noqa: E402

WINDOW = 9
NCC_CASES = ("ncc-in-image", "ncc-zero-padding", "ncc-monai")
STEP_CASES = ("step-mse", "step-ncc")


def have_monai() -> bool:
    """Whether MONAI is installed; not imported here, so that the parent process stays small
    (a child inherits the parent's peak RSS, which would hide the children's own peaks)."""
    return importlib.util.find_spec("monai") is not None


def ncc_loss(case: str, ndim: int):
    """The loss of an NCC case; MONAI's returns −mean(cc), ours 1 − mean(cc)."""
    if case == "ncc-monai":
        from monai.losses import LocalNormalizedCrossCorrelationLoss

        return LocalNormalizedCrossCorrelationLoss(
            spatial_dims=ndim, kernel_size=WINDOW, kernel_type="rectangular"
        )
    return NCC(window=WINDOW, border=case.removeprefix("ncc-"))


def ncc_step(case: str, dim: str, device: str):
    """forward + backward of one NCC case on random images of the benchmark shape."""
    torch.manual_seed(0)
    shape = SHAPES[dim]
    fixed, moving = torch.rand(shape, device=device), torch.rand(shape, device=device)
    loss_fn = ncc_loss(case, len(shape) - 2).to(device)

    def step() -> float:
        warped = moving.clone().requires_grad_(True)
        loss = loss_fn(warped, fixed)
        loss.backward()
        return loss.item()

    return step


def side_by_side(dim: str, device: str, repeats: int) -> dict:
    """Alternate ours (zero padding) and MONAI; median seconds of each and the value offset."""
    ours, monai = ncc_step("ncc-zero-padding", dim, device), ncc_step("ncc-monai", dim, device)
    value_difference = abs((ours() - 1.0) - monai())  # also the warm-up
    times: dict[str, list[float]] = {"ours": [], "monai": []}
    for _ in range(repeats):
        for name, step in (("ours", ours), ("monai", monai)):
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(t) for name, t in times.items()}
    return {**result, "value_difference": value_difference}


def run_case(case: str, dim: str, device: str, repeats: int) -> dict:
    """Time one case in this process: median seconds and peak MiB (or the side-by-side pair)."""
    if case == "ncc-pair":
        return side_by_side(dim, device, repeats)
    if case.startswith("step-"):
        step = registration_step(case[5:], SHAPES[dim], CHANNELS[dim], device)
    else:
        step = ncc_step(case, dim, device)
    return measure(step, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--ncc-only", action="store_true", help="skip the registration steps")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    if args.one:
        print(json.dumps(run_case(*args.one, args.device, args.repeats)))
        return

    monai = have_monai()
    if not monai:
        print("MONAI not installed (pip install -r requirements-bench.txt): its cases skipped")
    cases = [c for c in NCC_CASES if monai or c != "ncc-monai"]
    cases += [] if args.ncc_only else list(STEP_CASES)
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, median of "
          f"{args.repeats} after a warm-up; peak = "
          f"{'max allocated' if args.device == 'cuda' else 'peak RSS increase'}")  # fmt: skip
    print(f"{'case':<18}{'dim':<5}{'shape':<22}{'fwd+bwd s':>10}{'peak MiB':>10}")
    extra = ["--device", args.device, "--repeats", str(args.repeats)]
    extra += ["--threads", str(args.threads)] if args.threads else []
    for dim in ("2D", "3D"):
        for case in cases:
            r = run_isolated(__file__, ["--one", case, dim, *extra])
            print(f"{case:<18}{dim:<5}{str(SHAPES[dim]):<22}{r['seconds']:>10.3f}"
                  f"{r['peak_mib']:>10.0f}", flush=True)  # fmt: skip
    if not monai:
        return
    for dim in ("2D", "3D"):
        r = run_isolated(__file__, ["--one", "ncc-pair", dim, *extra])
        shape = "x".join(map(str, SHAPES[dim]))
        print(f"NCC fwd+bwd {shape} w{WINDOW}: ours {1e3 * r['ours']:.1f} ms, MONAI "
              f"{1e3 * r['monai']:.1f} ms, ratio {r['ours'] / r['monai']:.2f}"
              f"{'  (target <= 0.5)' if dim == '3D' else ''}; "
              f"|loss difference| {r['value_difference']:.1e}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
