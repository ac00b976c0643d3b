"""A tiny PhC-U373-shaped dataset for CLI tests: 128×128 frames (the quick crop) of a textured
disc that drifts 2 voxels per frame, written in the dataset layout."""

from pathlib import Path

import torch

from deepsim_edu.data.layout import DatasetInfo, write_case, write_dataset_json


def write_disc_series(root: Path, n_train: int = 4, n_val: int = 4, n_test: int = 4) -> Path:
    """``<root>/phc-u373`` with the given split sizes; returns ``root``."""
    gen = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    splits = {s: [f"{s}_{i}" for i in range(n)] for s, n in sizes.items()}
    for cases in splits.values():
        for i, case in enumerate(cases):
            label = (((rows - 64) ** 2 + (cols - 50 - 2 * i) ** 2) < 30**2).to(torch.uint8)
            image = 0.3 + 0.4 * label + 0.05 * torch.rand(128, 128, generator=gen)
            write_case(root / "phc-u373", case, image.numpy(), label.numpy(), [1.0, 1.0])
    info = DatasetInfo(
        name="phc-u373", ndim=2, spacing=[1, 1], classes=["background", "cell"], splits=splits
    )
    write_dataset_json(root / "phc-u373", info)
    return root
