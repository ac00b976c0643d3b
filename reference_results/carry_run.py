"""Copy a reference run's results tree, slimming the checkpoints of finished runs.

    python reference_results/carry_run.py SOURCE DESTINATION

A run of ``reproduce_default.sh`` takes longer than one working session on a 2-core machine.
This copies its tree (every file: configs, logs, per-pair CSVs, test results, checkpoints,
``progress.txt``) so that it can be kept in the repository and the run resumed elsewhere:
``RUNS=DESTINATION bash reference_results/reproduce_default.sh`` continues where it stopped.

A finished run is never trained again, so its checkpoint keeps the weights, the log, the config
and the per-pair validation rows but drops the optimiser's moment estimates (Adam's ``state``,
two tensors per weight: two thirds of the file); its ``param_groups`` stay, so the checkpoint
still loads (``train._resume``) and reports ``finished``. An unfinished run's checkpoint is
copied whole: it resumes bit for bit. Every file is written atomically; files already at the
destination with the same content are left alone.
"""

from __future__ import annotations

import argparse
import filecmp
import io
import os
import shutil
import sys
from pathlib import Path

import torch


def slim(checkpoint: dict) -> dict:
    """The checkpoint without optimiser moments when it is finished, else unchanged."""
    if not checkpoint.get("finished") or "optimizer" not in checkpoint:
        return checkpoint
    optimiser = dict(checkpoint["optimizer"], state={})
    return {**checkpoint, "optimizer": optimiser}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def carry(source: Path, destination: Path) -> dict[str, int]:
    """Copy ``source`` into ``destination`` (slimming finished checkpoints); file counts."""
    counts = {"copied": 0, "slimmed": 0, "unchanged": 0}
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        target = destination / path.relative_to(source)
        if path.name.startswith("."):
            continue  # a write in progress at the source (the library's temporary files)
        if path.name == "checkpoint.pt":
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            slimmed = slim(checkpoint)
            buffer = io.BytesIO()
            torch.save(slimmed, buffer)
            data = buffer.getvalue()
            if target.is_file() and target.read_bytes() == data:
                counts["unchanged"] += 1
                continue
            _write_atomic(target, data)
            counts["slimmed" if slimmed is not checkpoint else "copied"] += 1
        elif target.is_file() and filecmp.cmp(path, target, shallow=False):
            counts["unchanged"] += 1
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            shutil.copy2(path, partial)
            os.replace(partial, target)
            counts["copied"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        parser.error(f"{args.source} is not a folder")
    counts = carry(args.source, args.destination)
    size = sum(p.stat().st_size for p in args.destination.rglob("*") if p.is_file())
    print(f"{args.destination}: {counts}, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
