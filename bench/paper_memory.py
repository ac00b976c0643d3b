"""Benchmark: peak memory (and time) of one training step of the ``paper`` preset in 3D.

One Brain-MRI training step of the paper's registration net (3D U-Net 32-64-128, batch 1:
forward, warp, D + λR, backward, Adam) for every metric, at the embedded brain size
(80×96×80, 4 label classes) and at the paper's 160×192×224 (23 classes, FreeSurfer's aseg with
left/right merged, for NCC-sup), in three modes:

* ``fp32``  — float32, as the paper's code trains;
* ``amp``   — the U-Net under float16 autocast (CUDA only: on the CPU the library ignores it,
  so the case is skipped there);
* ``ckpt``  — float32 with the U-Net's activation checkpointing (``UNet(checkpointing=True)``).

Each case runs in its own subprocess (``common.run_isolated``): on CUDA the peak is
``torch.cuda.max_memory_allocated`` and the time is the median of ``--repeats`` steps after a
warm-up (steps/s printed); on the CPU the peak is the increase of the process's peak resident
set size during the step, and with ``--repeats 0`` (the default on the CPU) the one step is
both warm-up and measurement. DeepSim's extractor and VGG have random weights (the memory does
not depend on them).

    python bench/paper_memory.py [--device cpu|cuda] [--sizes embedded paper]
        [--metrics mse ncc ncc-sup vgg deepsim] [--modes fp32 amp ckpt] [--repeats N]
        [--csv out.csv]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import measure, registration_step, run_isolated  # noqa: E402

SIZES = {"embedded": ((80, 96, 80), 4), "paper": ((160, 192, 224), 23)}
CHANNELS = (32, 64, 128)  # the paper's 3D nets (DeepSimRegistration: scripts/train_*.sh)
METRICS = ("mse", "ncc", "ncc-sup", "vgg", "deepsim")
MODES = ("fp32", "amp", "ckpt")


def one_case(size: str, metric: str, mode: str, device: str, repeats: int) -> dict:
    spatial, classes = SIZES[size]
    torch.set_num_threads(torch.get_num_threads())
    step = registration_step(metric, (1, 1, *spatial), CHANNELS, device, amp=mode == "amp",
                             checkpointing=mode == "ckpt", num_classes=classes)  # fmt: skip
    result = measure(step, device, repeats)
    return {"size": size, "metric": metric, "mode": mode, "device": device, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps after the warm-up (default: 0 on the CPU, 5 on CUDA)")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--case", nargs=3, metavar=("SIZE", "METRIC", "MODE"),
                        help=argparse.SUPPRESS)  # one case, in the subprocess
    args = parser.parse_args()
    repeats = args.repeats if args.repeats is not None else (5 if args.device != "cpu" else 0)
    if args.case:
        print(json.dumps(one_case(*args.case, args.device, repeats)))
        return
    rows = []
    print(f"{'size':<9} {'metric':<8} {'mode':<5} {'peak MiB':>9} {'s/step':>8} {'steps/s':>8}")
    for size in args.sizes:
        for metric in args.metrics:
            for mode in args.modes:
                if mode == "amp" and args.device == "cpu":
                    continue  # autocast is CUDA-only in the library: same as fp32 here
                try:
                    row = run_isolated(__file__, ["--case", size, metric, mode, "--device",
                                                  args.device, "--repeats", str(repeats)])
                except RuntimeError as error:  # e.g. killed for memory: report and go on
                    print(f"{size:<9} {metric:<8} {mode:<5} failed: {str(error)[-200:]!r}")
                    continue
                rows.append(row)
                print(f"{size:<9} {metric:<8} {mode:<5} {row['peak_mib']:>9.0f} "
                      f"{row['seconds']:>8.2f} {1 / row['seconds']:>8.3f}", flush=True)
    if args.csv is not None:
        with open(args.csv, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
