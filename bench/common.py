"""Shared by the bench scripts: time a step in this process, or each case in a fresh one.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the increase of the
process's peak resident set size during the measured steps (so each case runs in its own
subprocess, where that peak belongs to the case alone).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(step: Callable[[], None], device: str, repeats: int) -> dict:
    """Median seconds of ``step`` over ``repeats`` runs after one warm-up, and peak MiB
    (``repeats=0``: the warm-up alone is measured, for a memory-only case)."""
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()  # warm-up (allocations, cudnn autotuning)
    sync(device)
    times = [] if repeats else [time.perf_counter() - start]
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024
    return {"seconds": statistics.median(times), "peak_mib": peak}


def run_isolated(script: str, args: list[str]) -> dict:
    """Run ``python script args`` and parse the JSON dict on its last line of output."""
    result = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# shapes and channels of the benchmarks: the paper's nets (2D 64-128-256, 3D 32-64-128)
SHAPES = {"2D": (16, 1, 128, 128), "3D": (1, 1, 80, 96, 112)}
CHANNELS = {"2D": (64, 128, 256), "3D": (32, 64, 128)}


def registration_step(
    metric: str, shape: tuple[int, ...], channels: tuple[int, ...], device: str,
    amp: bool = False, checkpointing: bool = False, num_classes: int = 3,
):  # fmt: skip
    """One training step (Eq. 1, ``registration.registration_loss`` with λ = 1: forward, warp,
    D + λR; backward, Adam) with random data and weights, in float32.

    DeepSim's extractor is a segmentation U-Net with the registration net's channels and VGG
    has random weights: timing does not depend on the values of the weights. NCC-sup gets random
    ``num_classes``-class label maps (one-hot encoded inside the step, as in training).
    ``amp``: the U-Net under float16 autocast (CUDA only, as in training); ``checkpointing``:
    the registration U-Net's activation checkpointing.
    """
    from deepsim_edu.features import VGG16Features
    from deepsim_edu.losses import DeepSimLoss, VGGLoss, get_loss
    from deepsim_edu.registration import registration_loss
    from deepsim_edu.unet import registration_unet, segmentation_unet

    torch.manual_seed(0)
    ndim = len(shape) - 2
    moving, fixed = torch.rand(shape, device=device), torch.rand(shape, device=device)
    moving_labels, fixed_labels = (
        torch.randint(0, num_classes, shape, device=device) for _ in range(2)
    )
    net = registration_unet(ndim, channels, checkpointing=checkpointing).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)
    if metric == "deepsim":
        similarity = DeepSimLoss(segmentation_unet(ndim, 3, channels).to(device))
    elif metric == "vgg":
        similarity = VGGLoss(VGG16Features().to(device))
    else:
        similarity = get_loss(metric)

    def step():
        optimiser.zero_grad(set_to_none=True)
        parts = registration_loss(
            net, moving, fixed, similarity=similarity, lam=1.0, moving_labels=moving_labels,
            fixed_labels=fixed_labels, num_classes=num_classes, amp=amp,
        )  # fmt: skip
        parts.loss.backward()
        optimiser.step()

    return step
