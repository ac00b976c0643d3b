"""Presets: every hyperparameter of a run, per dataset, at three scales.

* ``quick``   — CI and a first look: CPU minutes, small nets; shows the mechanics, not the claims.
* ``default`` — CPU, embedded data: big enough that comparisons between metrics mean something.
* ``paper``   — the paper's hyperparameters (``shared/paper/reference_facts.md``) for a GPU and
  the real datasets.

A config is a frozen dataclass; ``dataclasses.asdict`` turns it into the ``config.json`` of a
run, and a checkpoint records it so that a resumed run can check it continues the same run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .data.layout import DATASET_NAMES, check_dataset_name

PRESETS = ("quick", "default", "paper")
DATASETS = DATASET_NAMES


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
    steps_per_epoch: int | None  # None: one pass over the training cases
    epochs: int
    augmentation: str  # key of augment.AUGMENTATIONS
    noise_sigma: float  # max σ of the Gaussian noise augmentation (ours; 0 in the paper)
    crop: tuple[int, ...] | None = None  # train on random crops of this size (ours, CPU budget)
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder_channels"] = list(self.encoder_channels)
        d["crop"] = None if self.crop is None else list(self.crop)
        return d


# channels of the paper's nets: 2D 64-128-256, 3D 32-64-128
_PAPER_CHANNELS = {
    "brain-mri": (32, 64, 128),
    "platelet-em": (64, 128, 256),
    "phc-u373": (64, 128, 256),
}
_AUGMENTATION = {"brain-mri": "brain", "platelet-em": "2d", "phc-u373": "2d"}
# CPU presets train on random crops (whole images for validation and test): 2D 128², brains
# 48×56×48 of the embedded 80×96×80 (a CPU step on a whole volume costs ~4× more).
BRAIN_CROP = (48, 56, 48)


def segmentation_config(dataset: str, preset: str = "default", **overrides) -> SegmentationConfig:
    """The segmentation preset for ``dataset``; keyword arguments override single fields.

    lr: the paper's 1e-4 is too slow for a CPU budget (DESIGN.md: 1e-3 reached in 600 steps what
    1e-4 did not), so ``quick``/``default`` use 1e-3. Dropout is off on the CPU presets for the
    same reason. Noise augmentation (ours) makes the features noise-invariant.
    """
    check_dataset_name(dataset)
    check_preset(preset)
    brain = dataset == "brain-mri"
    crop = BRAIN_CROP if brain else (128, 128)
    if preset == "quick":
        config = SegmentationConfig(
            dataset, preset, (8, 16, 32) if brain else (16, 32, 64), dropout=0.0, lr=1e-3,
            batch_size=1 if brain else 8, steps_per_epoch=10, epochs=4 if brain else 30,
            augmentation=_AUGMENTATION[dataset], noise_sigma=0.1, crop=crop,
        )  # fmt: skip
    elif preset == "default":
        config = SegmentationConfig(
            dataset, preset, (16, 32, 64), dropout=0.0, lr=1e-3, batch_size=1 if brain else 8,
            steps_per_epoch=25, epochs=32 if brain else 60, augmentation=_AUGMENTATION[dataset],
            noise_sigma=0.1, crop=crop,
        )  # fmt: skip
    else:  # the paper: Adam 1e-4, the paper's channels and dropout, plain cross-entropy
        config = SegmentationConfig(
            dataset, preset, _PAPER_CHANNELS[dataset], dropout=0.5, lr=1e-4,
            batch_size={"brain-mri": 1, "platelet-em": 3, "phc-u373": 5}[dataset],
            steps_per_epoch=None, epochs=100 if brain else 1000,
            augmentation=_AUGMENTATION[dataset], noise_sigma=0.0,
        )  # fmt: skip
    return replace(config, **overrides)


# ----------------------------------------------------------------------------- registration

METRICS = ("mse", "ncc", "ncc-sup", "vgg", "deepsim")

# λ of Eq. 1 per dataset × metric, tuned on validation Dice in the paper (log2 grid); the
# paper's code gives no VGG value for Brain-MRI (VGG is 2D): we use DeepSim's.
PAPER_LAMBDA = {
    "platelet-em": {"mse": 0.02, "ncc": 0.5, "ncc-sup": 0.5, "vgg": 1.0, "deepsim": 1.0},
    "phc-u373": {"mse": 0.005, "ncc": 0.25, "ncc-sup": 0.25, "vgg": 0.125, "deepsim": 0.125},
    "brain-mri": {"mse": 0.08, "ncc": 1.0, "ncc-sup": 2.0, "vgg": 2.0, "deepsim": 2.0},
}
LAMBDA_SOURCE = (
    "the paper's validation-tuned λ (shared/paper/reference_facts.md); Brain-MRI VGG: DeepSim's "
    "value (the paper has no 3D VGG run)"
)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    return metric


def check_lambda(lam: float) -> float:
    if not isinstance(lam, (int, float)) or lam != lam or lam < 0:
        raise ValueError(f"λ must be a number >= 0, got {lam!r}")
    return float(lam)


@dataclass(frozen=True)
class RegistrationConfig:
    """Training of a registration U-Net with similarity ``metric`` and weight ``lam`` (Eq. 1).

    An epoch is ``steps_per_epoch`` optimiser steps, each on ``accumulation`` batches of
    ``batch_size`` training pairs, then validation and a checkpoint. The learning rate drops
    ×``lr_factor`` after ``lr_patience`` epochs without a lower validation loss (the paper's
    plateau schedule); ``early_stopping`` epochs without one end the run (None: never).
    ``crop``: train on random crops of this size (ours, a CPU budget); validation and test
    always use whole images.
    """

    dataset: str
    metric: str
    preset: str
    lam: float
    encoder_channels: tuple[int, ...]
    dropout: float
    lr: float
    batch_size: int
    accumulation: int
    steps_per_epoch: int | None  # None: one pass over the training pairs (the paper's epoch)
    epochs: int
    augmentation: str
    lr_patience: int = 10
    lr_factor: float = 0.1
    early_stopping: int | None = None
    crop: tuple[int, ...] | None = None
    ncc_window: int = 9
    deepsim_levels: tuple[int, ...] = (0, 1, 2)
    amp: bool = True  # mixed precision, used on CUDA only
    seed: int = 0

    def __post_init__(self):
        check_dataset_name(self.dataset)
        check_metric(self.metric)
        check_preset(self.preset)
        check_lambda(self.lam)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("encoder_channels", "crop", "deepsim_levels"):
            d[key] = None if d[key] is None else list(d[key])
        return d


def registration_config(
    dataset: str, metric: str, preset: str = "default", **overrides
) -> RegistrationConfig:
    """The registration preset for ``dataset`` × ``metric``; keyword arguments override fields.

    ``default`` trains with Adam 1e-3 in 2D (batch 8) but 3e-4 on Brain-MRI (batch 1, 3D): at
    1e-3 the brain runs of MSE and NCC-sup diverged (the displacement blew up after ~350 steps
    and test Dice fell to 0.10 and 0.00); at 3e-4 they train stably (reference run, issue 9).
    """
    check_dataset_name(dataset)
    check_metric(metric)
    check_preset(preset)
    brain = dataset == "brain-mri"
    lam = PAPER_LAMBDA[dataset][metric]
    crop = BRAIN_CROP if brain else (128, 128)
    if preset == "quick":
        config = RegistrationConfig(
            dataset, metric, preset, lam, (8, 16, 32) if brain else (16, 32, 64), dropout=0.0,
            lr=1e-3, batch_size=1 if brain else 4, accumulation=1, steps_per_epoch=10,
            epochs=2 if brain else 3, augmentation=_AUGMENTATION[dataset], crop=crop,
        )  # fmt: skip
    elif preset == "default":
        config = RegistrationConfig(
            dataset, metric, preset, lam, (16, 32, 64), dropout=0.0, lr=3e-4 if brain else 1e-3,
            batch_size=1 if brain else 8, accumulation=1, steps_per_epoch=50, epochs=12,
            augmentation=_AUGMENTATION[dataset], crop=crop, lr_patience=4,
        )  # fmt: skip
    else:  # the paper: Adam 1e-4, its channels, batch × accumulation, plateau LR, early stopping
        config = RegistrationConfig(
            dataset, metric, preset, lam, _PAPER_CHANNELS[dataset], dropout=0.5, lr=1e-4,
            batch_size={"brain-mri": 1, "platelet-em": 3, "phc-u373": 5}[dataset],
            accumulation={"brain-mri": 4, "platelet-em": 2, "phc-u373": 2}[dataset],
            steps_per_epoch=None, epochs=30 if brain else 3000,
            augmentation=_AUGMENTATION[dataset], lr_patience=10, early_stopping=50,
        )  # fmt: skip
    return replace(config, **overrides)
