"""Benchmark: the U-Net's convolutions in the usual (channels-first) and the channels-last
memory layout on this CPU, one thread (as every process of the test suite and of a CPU grid).

Prints the median seconds of (a) a 2D segmentation training step (batch 8, 128² crops, the
``quick``/``default`` extractor: channels 16-32-64, forward + cross-entropy + backward + Adam)
and (b) a 3D registration forward pass on an embedded brain pair (80×96×80, channels 16-32-64,
as when a brain net is tested), each in both layouts, and their ratio. ``unet.UNet`` keeps its
weights channels-last (``unet.channels_last``); the "usual" rows convert a net back and leave
its input as it is.

    python bench/unet_layout.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from deepsim_edu import unet
from deepsim_edu.unet import registration_unet, segmentation_unet


def _median_seconds(step, repeats: int) -> float:
    step()  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def training_step_2d(layout: torch.memory_format, repeats: int) -> float:
    torch.manual_seed(0)
    net = segmentation_unet(2, 3, (16, 32, 64)).to(memory_format=layout)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    images, labels = torch.rand(8, 1, 128, 128), torch.randint(0, 3, (8, 128, 128))

    def step():
        optimiser.zero_grad(set_to_none=True)
        F.cross_entropy(net(images), labels).backward()
        optimiser.step()

    return _median_seconds(step, repeats)


def forward_3d(layout: torch.memory_format, repeats: int) -> float:
    torch.manual_seed(0)
    net = registration_unet(3, (16, 32, 64)).to(memory_format=layout).eval()
    pair = torch.rand(1, 2, 80, 96, 80)

    def step():
        with torch.no_grad():
            net(pair)

    return _median_seconds(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [("2D training step (8 × 128²)", training_step_2d, torch.channels_last),
            ("3D forward pass (80×96×80)", forward_3d, torch.channels_last_3d)]  # fmt: skip
    print(f"torch {torch.__version__}, 1 thread; median of {args.repeats} (s)")
    for name, measure, layout in rows:
        kept, unet.channels_last = unet.channels_last, lambda x: x  # the input as it is
        try:
            usual = measure(torch.contiguous_format, args.repeats)
        finally:
            unet.channels_last = kept
        last = measure(layout, args.repeats)
        print(f"{name:<30} usual {usual:.3f}  channels-last {last:.3f}  ×{usual / last:.2f}")


if __name__ == "__main__":
    main()
