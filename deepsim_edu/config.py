"""Presets: every hyperparameter of a run, per dataset, at three scales.

* ``quick``   — CI and a first look: CPU minutes, small nets; shows the mechanics, not the claims.
* ``default`` — CPU, embedded data: big enough that comparisons between metrics mean something.
* ``paper``   — the paper's hyperparameters (``shared/paper/reference_facts.md``) for a GPU and
  the real datasets.

A config is a frozen dataclass; ``dataclasses.asdict`` turns it into the ``config.json`` of a
run, and a checkpoint records it so that a resumed run can check it continues the same run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .data.layout import check_dataset_name

PRESETS = ("quick", "default", "paper")


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return preset


@dataclass(frozen=True)
class SegmentationConfig:
    """Training of the segmentation U-Net that becomes DeepSim's frozen feature extractor.

    An epoch is ``steps_per_epoch`` optimiser steps on random batches of the training split,
    followed by validation and a checkpoint.
    """

    dataset: str
    preset: str
    encoder_channels: tuple[int, ...]
    dropout: float
    lr: float
    batch_size: int
    steps_per_epoch: int
    epochs: int
    augmentation: str  # key of augment.AUGMENTATIONS
    noise_sigma: float  # max σ of the Gaussian noise augmentation (ours; 0 in the paper)
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder_channels"] = list(self.encoder_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SegmentationConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown segmentation config keys {sorted(unknown)}")
        return cls(**{**d, "encoder_channels": tuple(d["encoder_channels"])})


# channels of the paper's nets: 2D 64-128-256, 3D 32-64-128
_PAPER_CHANNELS = {
    "brain-mri": (32, 64, 128),
    "platelet-em": (64, 128, 256),
    "phc-u373": (64, 128, 256),
}
_AUGMENTATION = {"brain-mri": "brain", "platelet-em": "2d", "phc-u373": "2d"}


def segmentation_config(dataset: str, preset: str = "default", **overrides) -> SegmentationConfig:
    """The segmentation preset for ``dataset``; keyword arguments override single fields.

    lr: the paper's 1e-4 is too slow for a CPU budget (DESIGN.md: 1e-3 reached in 600 steps what
    1e-4 did not), so ``quick``/``default`` use 1e-3. Dropout is off on the CPU presets for the
    same reason. Noise augmentation (ours) makes the features noise-invariant.
    """
    check_dataset_name(dataset)
    check_preset(preset)
    brain = dataset == "brain-mri"
    if preset == "quick":
        config = SegmentationConfig(
            dataset, preset, (8, 16, 32) if brain else (16, 32, 64), dropout=0.0, lr=1e-3,
            batch_size=1 if brain else 8, steps_per_epoch=10, epochs=4 if brain else 10,
            augmentation=_AUGMENTATION[dataset], noise_sigma=0.1,
        )  # fmt: skip
    elif preset == "default":
        config = SegmentationConfig(
            dataset, preset, (16, 32, 64) if brain else (32, 64, 128), dropout=0.0, lr=1e-3,
            batch_size=1 if brain else 8, steps_per_epoch=25, epochs=16 if brain else 60,
            augmentation=_AUGMENTATION[dataset], noise_sigma=0.1,
        )  # fmt: skip
    else:  # the paper: Adam 1e-4, the paper's channels and dropout, plain cross-entropy
        config = SegmentationConfig(
            dataset, preset, _PAPER_CHANNELS[dataset], dropout=0.5, lr=1e-4,
            batch_size={"brain-mri": 1, "platelet-em": 3, "phc-u373": 5}[dataset],
            steps_per_epoch=100, epochs=300 if brain else 1000,
            augmentation=_AUGMENTATION[dataset], noise_sigma=0.0,
        )  # fmt: skip
    return replace(config, **overrides)
