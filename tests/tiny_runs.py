"""Tiny trained runs for the release and register tests: a 32×32 series of a textured disc
drifting 2 pixels per frame (named phc-u373) and a 16³ atlas set of blobs (named brain-mri),
each trained for seconds with the library's own training and evaluation."""

from pathlib import Path

import numpy as np

from deepsim_edu.config import registration_config, segmentation_config
from deepsim_edu.data.layout import DatasetInfo, write_case, write_dataset_json
from deepsim_edu.evaluate import evaluate_run
from deepsim_edu.runs import checkpoint_path, run_folder, segmentation_folder
from deepsim_edu.train import train_registration, train_segmentation

SIZE = 32


def disc_frame(i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``i``: a disc of radius 9 centred at (16, 10 + 2 i) on a [0, 1] image."""
    rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    label = ((rows - 16) ** 2 + (cols - 10 - 2 * i) ** 2 < 9**2).astype(np.uint8)
    image = 0.25 + 0.5 * label + 0.05 * rng.random((SIZE, SIZE))
    return image.astype(np.float32), label


def write_discs(root: Path, n: tuple[int, int, int] = (4, 3, 3)) -> Path:
    """``<root>/phc-u373``: train/val/test series of ``n`` frames each; returns the folder."""
    folder, rng = root / "phc-u373", np.random.default_rng(0)
    splits = {s: [f"{s}_{i}" for i in range(k)] for s, k in zip(("train", "val", "test"), n)}
    for cases in splits.values():
        for i, case in enumerate(cases):
            write_case(folder, case, *disc_frame(i, rng), [1.0, 1.0])
    write_dataset_json(folder, DatasetInfo(name="phc-u373", ndim=2, spacing=[1, 1],
                                           classes=["background", "cell"], splits=splits))
    return folder


def write_blobs(root: Path) -> Path:
    """``<root>/brain-mri``: 16³ volumes of a bright ball (class 1) whose centre moves, at
    2 mm; the atlas ``atlas`` has it centred."""
    folder, rng = root / "brain-mri", np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"))
    cases = {"atlas": (8, 8, 8), **{f"s{i}": (8 + (i % 3) - 1, 8, 7 + i % 2) for i in range(6)}}
    for case, centre in cases.items():
        r2 = sum((grid[k] - c) ** 2 for k, c in enumerate(centre))
        label = (r2 < 16).astype(np.uint8)
        image = (0.2 + 0.6 * label + 0.05 * rng.random((16,) * 3)).astype(np.float32)
        write_case(folder, case, image, label, [2.0, 2.0, 2.0])
    splits = {"train": ["s0", "s1"], "val": ["s2", "s3"], "test": ["s4", "s5"]}
    write_dataset_json(folder, DatasetInfo(
        name="brain-mri", ndim=3, spacing=[2.0, 2.0, 2.0], classes=["background", "ball"],
        splits=splits, pairing={"rule": "atlas", "atlas": "atlas"}))  # fmt: skip
    return folder


def tiny_registration(dataset: str, metric: str, **kw):
    base = dict(encoder_channels=(4, 8, 8), batch_size=2, steps_per_epoch=6, epochs=3,
                crop=None, augmentation="none", lr=3e-3)  # fmt: skip
    if dataset == "brain-mri":
        base.update(batch_size=1, steps_per_epoch=2, epochs=1)
    return registration_config(dataset, metric, "quick", **{**base, **kw})


def train_tiny_runs(data: Path, root: Path, dataset: str = "phc-u373",
                    metrics: tuple[str, ...] = ("mse", "deepsim")) -> Path:  # fmt: skip
    """Under the results root ``root``: the extractor (``segmentation/``) and one evaluated
    registration run per metric of the dataset in ``data/<dataset>``; returns ``root``."""
    folder = data / dataset
    seg = segmentation_folder(root, dataset)
    train_segmentation(folder, seg, segmentation_config(
        dataset, "quick", encoder_channels=(4, 8, 8), batch_size=2, steps_per_epoch=3, epochs=2,
        crop=None, augmentation="none"), progress=False)  # fmt: skip
    for metric in metrics:
        run = run_folder(root, dataset, metric)
        lam = 0.005 if metric == "mse" else None
        config = tiny_registration(dataset, metric, **({"lam": lam} if lam else {}))
        train_registration(folder, run, config, extractor=checkpoint_path(seg), progress=False)
        evaluate_run(run, folder, "test")
    return root
