"""Benchmark: seconds per optimiser step and peak memory of the ``default`` preset (issue 6).

For every dataset × metric: one training step as ``train_registration`` takes it under the
``default`` preset — its channels, batch size, accumulation and training crop (2D 128²,
Brain-MRI 48×56×48) — with random data and random weights for DeepSim's extractor and VGG.
Also the segmentation step of each dataset. Prints an estimate of the whole
``experiment --preset default`` grid on this machine.

    python bench/default_preset.py [--device cpu|cuda] [--repeats 2] [--datasets ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import measure, registration_step, run_isolated  # noqa: E402

from deepsim_edu.config import (  # noqa: E402
    DATASETS,
    METRICS,
    registration_config,
    segmentation_config,
)

EMBEDDED_SHAPE = {"brain-mri": (80, 96, 80), "platelet-em": (256, 256), "phc-u373": (192, 256)}
TRAIN_PAIRS = {"brain-mri": 40, "platelet-em": 50, "phc-u373": 58}


def segmentation_step(dataset: str, device: str):
    from deepsim_edu.unet import segmentation_unet

    config = segmentation_config(dataset, "default")
    shape = config.crop or EMBEDDED_SHAPE[dataset]
    net = segmentation_unet(len(shape), 4, config.encoder_channels).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    images = torch.rand(config.batch_size, 1, *shape, device=device)
    labels = torch.randint(0, 4, (config.batch_size, *shape), device=device)

    def step():
        optimiser.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimiser.step()

    return step


def run_case(dataset: str, metric: str, device: str, repeats: int) -> dict:
    if metric == "segmentation":
        return measure(segmentation_step(dataset, device), device, repeats)
    config = registration_config(dataset, metric, "default")
    spatial = config.crop or EMBEDDED_SHAPE[dataset]
    step = registration_step(
        metric, (config.batch_size, 1, *spatial), config.encoder_channels, device
    )
    result = measure(step, device, repeats)
    result["seconds"] *= config.accumulation  # one optimiser step = accumulation batches
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--one", nargs=2, metavar=("DATASET", "METRIC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(*args.one, args.device, args.repeats)))
        return

    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; "
          "default preset; validation/test time not included")  # fmt: skip
    print(f"{'dataset':<13}{'run':<14}{'s/step':>8}{'steps':>7}{'≈ min':>7}{'peak MiB':>10}")
    total = 0.0
    for dataset in args.datasets:
        for metric in ("segmentation", *METRICS):
            r = run_isolated(__file__, ["--one", dataset, metric, "--device", args.device,
                                        "--repeats", str(args.repeats)])  # fmt: skip
            if metric == "segmentation":
                c = segmentation_config(dataset, "default")
            else:
                c = registration_config(dataset, metric, "default")
            steps = c.epochs * (c.steps_per_epoch or TRAIN_PAIRS[dataset])
            minutes = r["seconds"] * steps / 60
            total += minutes
            print(f"{dataset:<13}{metric:<14}{r['seconds']:>8.2f}{steps:>7}{minutes:>7.1f}"
                  f"{r['peak_mib']:>10.0f}", flush=True)  # fmt: skip
    print(f"estimated training time of the grid: {total:.0f} min (+ validation and test)")


if __name__ == "__main__":
    main()
