"""Presets: every hyperparameter of a run, per dataset, at three scales.

* ``quick``   — CI and a first look: CPU minutes, small nets; shows the mechanics, not the claims.
* ``default`` — CPU, embedded data: big enough that comparisons between metrics mean something.
* ``paper``   — the paper's training for a GPU and the real datasets: every value is the one of
  the public code, https://github.com/SteffenCzolbe/DeepSimRegistration (pytorch-lightning
  0.7.6, torch 1.5), and the comment next to it names the file it comes from.

``preset_departures(preset)`` lists every field where ``quick`` or ``default`` differs from
``paper``, with the reason (a CPU budget, or a choice of ours).

A config is a frozen dataclass; ``dataclasses.asdict`` turns it into the ``config.json`` of a
run, and a checkpoint records it so that a resumed run can check it continues the same run.

Two facts of the public code that its command lines do not show:

* Early stopping never ran. ``src/train_registration.py`` and ``src/train_segmentation.py``
  build ``EarlyStopping(patience=300)`` but store it as ``hparams.early_stopping_callback``;
  pytorch-lightning 0.7.6's ``Trainer`` takes ``early_stop_callback`` (default False), so
  ``Trainer.from_argparse_args`` drops it and training runs to ``max_epochs``/``max_steps``.
  ``paper`` therefore has ``early_stopping=None``.
* An epoch is one pass of a ``DataLoader(drop_last=True)`` over the training set, and
  Lightning's ``global_step`` (``max_steps``) counts optimiser steps, each of
  ``accumulate_grad_batches`` batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from .data.layout import DATASET_NAMES, check_dataset_name

PRESETS = ("ci", "quick", "default", "paper")
# ci: the test suite's book build, quick with registration runs a third as long and the
# extractors validated less often (every chapter cell still runs). The Platelet-EM extractor,
# which chapters 5-7 and 10 train or use and chapter 5 checks has learned, is quick's net step
# for step; the other 2D extractor, used only by chapter 8's smoke grid and the CLI tests, trains
# a third as long, like the registration runs (the brain's is at its two-epoch minimum);
# quick: the book in CPU minutes; default: the claims on the embedded data (CPU
# hours); paper: the public code's training (GPU, real data)
CI_STEPS_FRACTION = 1 / 3
# the ci registration runs validate on this many pairs, evenly spaced, by the dataset's ndim:
# full-size validation (the loss on whole images, VGG16 on every brain slice) cost more than their
# 20 training steps. One brain pair (80×96×80: 9× the voxels of a 256×256 Platelet-EM pair) still
# did: the brain VGG run validated for 60 s (3 validations × 3 pairs) and trained for 46 s, so in
# 3D it is one pair
CI_VAL_PAIRS = {2: 3, 3: 1}
CI_BOOK_EXTRACTOR = "platelet-em"  # ci trains this dataset's extractor as quick does
DATASETS = DATASET_NAMES
NCC_BORDERS = ("in-image", "zero-padding")  # see losses.local_ncc
VGG_INPUTS = ("weights", "caffe_bgr", "rgb_imagenet_normalised", "paper_unnormalised_01")
# = features.VGG_INPUTS (features imports torch and runs; a test keeps the two equal)


def _ci_epochs(quick_epochs: int) -> int:
    """The ``ci`` preset's registration epochs (and those of the extractors other than
    ``CI_BOOK_EXTRACTOR``): a third of ``quick``'s, at least two."""
    return max(2, round(quick_epochs * CI_STEPS_FRACTION))


def _ci_validate_less_often(config: SegmentationConfig) -> SegmentationConfig:
    """quick's extractor schedule in fewer, longer epochs (a third or half as many): the same
    optimiser steps and, as every step is seeded by its index and validation changes no weight,
    the same trained net; only fewer validation passes (log rows)."""
    factor = next(f for f in (3, 2, 1) if config.epochs % f == 0)
    return replace(config, steps_per_epoch=config.steps_per_epoch * factor,
                   epochs=config.epochs // factor)  # fmt: skip


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return preset


@dataclass(frozen=True)
class SegmentationConfig:
    """Training of the segmentation U-Net that becomes DeepSim's frozen feature extractor.

    An epoch is ``steps_per_epoch`` optimiser steps, each on ``accumulation`` random batches of
    the training split, followed by validation and a checkpoint. The learning rate drops
    ×``lr_factor`` after ``lr_patience`` epochs without a lower validation loss (None: constant);
    ``early_stopping`` epochs without one end the run, and so does ``max_steps`` optimiser
    steps (None: never).
    """

    dataset: str
    preset: str
    encoder_channels: tuple[int, ...]
    dropout: float
    lr: float
    batch_size: int
    steps_per_epoch: int | None  # None: one pass over the training cases (the paper's epoch)
    epochs: int
    augmentation: str  # key of augment.AUGMENTATIONS
    noise_sigma: float  # max σ of the Gaussian noise augmentation (ours; 0 in the paper)
    crop: tuple[int, ...] | None = None  # train on random crops of this size (ours, CPU budget)
    accumulation: int = 1  # batches whose gradients are summed into one optimiser step
    lr_patience: int | None = None  # epochs without a lower val loss before lr ×lr_factor
    lr_factor: float = 0.1
    early_stopping: int | None = None  # epochs without a lower val loss that end the run
    max_steps: int | None = None  # stop after this many optimiser steps (None: epochs decide)
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

    lr: the paper's 1e-4 is too slow for a CPU budget (1e-3 reached in 600 steps what 1e-4 did
    not), so ``quick``/``default`` use 1e-3. Dropout is off on the CPU presets for the same
    reason. Noise augmentation (ours) makes the features noise-invariant.
    """
    check_dataset_name(dataset)
    check_preset(preset)
    brain = dataset == "brain-mri"
    crop = BRAIN_CROP if brain else (128, 128)
    if preset in ("ci", "quick"):
        config = SegmentationConfig(
            dataset, preset, (8, 16, 32) if brain else (16, 32, 64), dropout=0.0, lr=1e-3,
            batch_size=1 if brain else 8, steps_per_epoch=10, epochs=4 if brain else 30,
            augmentation=_AUGMENTATION[dataset], noise_sigma=0.1, crop=crop,
        )  # fmt: skip
        if preset == "ci":  # the same optimiser steps, validated less often
            config = _ci_validate_less_often(config)
            if dataset != CI_BOOK_EXTRACTOR:  # a third of the steps, as the registration runs
                config = replace(config, epochs=_ci_epochs(config.epochs))
    elif preset == "default":
        config = SegmentationConfig(
            dataset, preset, (16, 32, 64), dropout=0.0, lr=1e-3, batch_size=1 if brain else 8,
            steps_per_epoch=25, epochs=32 if brain else 60, augmentation=_AUGMENTATION[dataset],
            noise_sigma=0.1, crop=crop,
        )  # fmt: skip
    else:
        config = _paper_segmentation(dataset)
    return replace(config, **overrides)


def _paper_segmentation(dataset: str) -> SegmentationConfig:
    """The paper's extractor training; DeepSimRegistration file of each value in the comments."""
    brain = dataset == "brain-mri"
    return SegmentationConfig(
        dataset,
        "paper",
        _PAPER_CHANNELS[dataset],  # scripts/train_segmentation.sh --channels
        dropout=0.5,  # --dropout: src/models/backbone.py Stage, torchreg Dropout (torch's p=0.5)
        lr=1e-4,  # scripts/train_segmentation.sh --lr 0.0001; Adam: src/common_lightning_model.py
        batch_size={"platelet-em": 3, "phc-u373": 5, "brain-mri": 1}[dataset],  # same script
        steps_per_epoch=None,  # an epoch = one pass: src/common_lightning_model.py DataLoader
        # scripts/train_segmentation.sh --max_epochs 50000 (2D); brain: no --max_epochs, so
        # pytorch-lightning 0.7.6's default 1000, and --max_steps 100000 ends it first
        epochs=1000 if brain else 50000,
        augmentation=_AUGMENTATION[dataset],  # src/common_lightning_model.py RandomAffine
        noise_sigma=0.0,  # no noise augmentation in src/segmentation_model.py
        crop=None,  # whole images: src/datasets/*.py
        accumulation={"platelet-em": 2, "phc-u373": 2, "brain-mri": 4}[dataset],  # same script
        # ReduceLROnPlateau(factor=0.1, patience=reduce_lr_patience) on val_loss, per epoch:
        # src/common_lightning_model.py configure_optimizers / dataset_config
        lr_patience=2 if brain else 200,
        lr_factor=0.1,
        early_stopping=None,  # built in src/train_segmentation.py but never used (see above)
        max_steps=100_000 if brain else None,  # scripts/train_segmentation.sh --max_steps
    )


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
    "the paper's validation-tuned λ (DeepSimRegistration: scripts/train_registration.sh); "
    "Brain-MRI VGG: DeepSim's value (the paper has no 3D VGG run)"
)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    return metric


def check_lambda(lam: float) -> float:
    """λ of Eq. 1: a finite number >= 0 (λ = inf makes the loss inf and the weights NaN)."""
    if not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"λ must be a number >= 0 and finite, got {lam!r}")
    return float(lam)


MAX_SEED = 2**32 - 1


def check_seed(seed: int) -> int:
    """A random seed: a whole number in 0 … ``MAX_SEED`` (2^32 − 1)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    return seed


def check_positive(count: int, name: str = "value") -> int:
    """A count (steps, epochs, jobs): a whole number >= 1."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {count!r}")
    return count


@dataclass(frozen=True)
class RegistrationConfig:
    """Training of a registration U-Net with similarity ``metric`` and weight ``lam`` (Eq. 1).

    An epoch is ``steps_per_epoch`` optimiser steps, each on ``accumulation`` batches of
    ``batch_size`` training pairs, then validation and a checkpoint. The learning rate drops
    ×``lr_factor`` after ``lr_patience`` epochs without a lower validation loss (the paper's
    plateau schedule); ``early_stopping`` epochs without one end the run (None: never).
    ``crop``: train on random crops of this size (ours, a CPU budget); validation and test
    always use whole images. ``ncc_border``: how NCC treats windows that reach past the image
    (``NCC_BORDERS``; the paper's code: ``"zero-padding"``). ``vgg_input``: the input fed to
    VGG16 (``VGG_INPUTS``; ``"weights"``: the convention its weights file records; the paper's
    code: ``"paper_unnormalised_01"``). ``max_val_pairs``: validate on at most this many
    validation pairs, evenly spaced through the split (None: all; the ``ci`` preset's smoke runs
    use ``CI_VAL_PAIRS``, as Lightning's ``limit_val_batches`` does); the test set is always
    evaluated whole.
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
    ncc_border: str = "in-image"  # "in-image" | "zero-padding": NCC windows at the border
    vgg_input: str = "weights"  # VGG16 input convention: "weights" (the sidecar's) or a name
    amp: bool = True  # mixed precision, used on CUDA only
    seed: int = 0
    max_val_pairs: int | None = None  # None: every validation pair

    def __post_init__(self):
        check_dataset_name(self.dataset)
        check_metric(self.metric)
        if self.max_val_pairs is not None and (
            isinstance(self.max_val_pairs, bool) or not isinstance(self.max_val_pairs, int)
            or self.max_val_pairs < 1
        ):  # fmt: skip
            raise ValueError(f"max_val_pairs must be a whole number >= 1 or None, got "
                             f"{self.max_val_pairs!r}")  # fmt: skip
        check_preset(self.preset)
        check_lambda(self.lam)
        if self.ncc_border not in NCC_BORDERS:
            raise ValueError(
                f"unknown ncc_border {self.ncc_border!r}; valid: {', '.join(NCC_BORDERS)}"
            )
        if self.vgg_input not in VGG_INPUTS:
            raise ValueError(
                f"unknown vgg_input {self.vgg_input!r}; valid: {', '.join(VGG_INPUTS)}"
            )

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
    and test Dice fell to 0.10 and 0.00); at 3e-4 they train stably (our reference run).
    """
    check_dataset_name(dataset)
    check_metric(metric)
    check_preset(preset)
    brain = dataset == "brain-mri"
    lam = PAPER_LAMBDA[dataset][metric]
    crop = BRAIN_CROP if brain else (128, 128)
    if preset in ("ci", "quick"):
        config = RegistrationConfig(
            dataset, metric, preset, lam, (8, 16, 32) if brain else (16, 32, 64), dropout=0.0,
            lr=1e-3, batch_size=1 if brain else 4, accumulation=1, steps_per_epoch=10,
            epochs=2 if brain else 3, augmentation=_AUGMENTATION[dataset], crop=crop,
        )  # fmt: skip
        if preset == "ci":  # a third of the steps, validated on a few pairs
            config = replace(config, epochs=_ci_epochs(config.epochs),
                             max_val_pairs=CI_VAL_PAIRS[3 if brain else 2])
    elif preset == "default":
        config = RegistrationConfig(
            dataset, metric, preset, lam, (16, 32, 64), dropout=0.0, lr=3e-4 if brain else 1e-3,
            batch_size=1 if brain else 8, accumulation=1, steps_per_epoch=50, epochs=12,
            augmentation=_AUGMENTATION[dataset], crop=crop, lr_patience=4,
        )  # fmt: skip
    else:
        config = _paper_registration(dataset, metric)
    return replace(config, **overrides)


def _paper_registration(dataset: str, metric: str) -> RegistrationConfig:
    """The paper's registration training; DeepSimRegistration file of each value in comments."""
    brain = dataset == "brain-mri"
    return RegistrationConfig(
        dataset,
        metric,
        "paper",
        PAPER_LAMBDA[dataset][metric],  # scripts/train_registration.sh --lam
        _PAPER_CHANNELS[dataset],  # scripts/train_registration.sh --channels
        dropout=0.5,  # --dropout: src/models/backbone.py Stage, torchreg Dropout (torch's p=0.5)
        lr=1e-4,  # scripts/train_registration.sh --lr 0.0001; Adam: src/common_lightning_model.py
        batch_size={"platelet-em": 3, "phc-u373": 5, "brain-mri": 1}[dataset],  # same script
        accumulation={"platelet-em": 2, "phc-u373": 2, "brain-mri": 4}[dataset],  # same script
        steps_per_epoch=None,  # an epoch = one pass: src/common_lightning_model.py DataLoader
        epochs=30 if brain else 3000,  # scripts/train_registration.sh --max_epochs
        augmentation=_AUGMENTATION[dataset],  # src/common_lightning_model.py RandomAffine
        # ReduceLROnPlateau(factor=0.1, patience=reduce_lr_patience) on val_loss, per epoch:
        # src/common_lightning_model.py configure_optimizers / dataset_config
        lr_patience=2 if brain else 200,
        lr_factor=0.1,
        early_stopping=None,  # built in src/train_registration.py but never used (see above)
        crop=None,  # whole images: src/datasets/*.py
        ncc_window=9,  # scripts/train_registration.sh --ncc_win_size 9
        ncc_border="zero-padding",  # src/loss_metrics.py NCC: conv padding win//2, / win_size
        deepsim_levels=(0, 1, 2),  # src/loss_metrics.py DeepSim(levels='all'), 3 encoder stages
        vgg_input="paper_unnormalised_01",  # src/loss_metrics.py VGGFeatureExtractor.forward
        amp=False,  # float32: pytorch-lightning 0.7.6 Trainer precision=32 (no --precision)
    )


# ----------------------------------------------------------------------------- departures

_IDENTITY_FIELDS = ("dataset", "metric", "preset")  # what a config is of, not how it trains
DEPARTURE_REASONS = {  # (config kind, field) -> why quick/default differ from the paper
    ("segmentation", "encoder_channels"): "narrower nets: a CPU budget",
    ("segmentation", "dropout"): "off: at a few hundred CPU steps it only slowed training",
    ("segmentation", "lr"): "1e-3: in 600 CPU steps it reached what 1e-4 did not",
    ("segmentation", "batch_size"): "a CPU budget: small batches of crops",
    ("segmentation", "accumulation"): "one batch per step: a CPU budget",
    ("segmentation", "steps_per_epoch"): (
        "a fixed number of steps between validations, not a pass over the training cases"
    ),
    ("segmentation", "epochs"): "CPU minutes (quick) or about an hour (default), not GPU days",
    ("segmentation", "noise_sigma"): (
        "ours: noise augmentation teaches the extractor the noise invariance DeepSim credits"
    ),
    ("segmentation", "crop"): "random crops cut a CPU step's cost; validation sees whole images",
    ("segmentation", "lr_patience"): (
        "constant lr: the short CPU runs end long before the paper's plateaus"
    ),
    ("segmentation", "max_steps"): "the CPU runs end by epochs",
    ("registration", "encoder_channels"): "narrower nets: a CPU budget",
    ("registration", "dropout"): "off: at a few hundred CPU steps it only slowed training",
    ("registration", "lr"): (
        "1e-4 is too slow for a CPU budget; default Brain-MRI 3e-4: 1e-3 diverged in our "
        "reference run"
    ),
    ("registration", "batch_size"): "a CPU budget: small batches of crops",
    ("registration", "accumulation"): "one batch per step: a CPU budget",
    ("registration", "steps_per_epoch"): (
        "a fixed number of steps between validations, not a pass over the training pairs"
    ),
    ("registration", "epochs"): "CPU minutes (quick) or about an hour (default), not GPU days",
    ("registration", "lr_patience"): "scaled to the short CPU runs",
    ("registration", "max_val_pairs"): (
        "ci's smoke runs validate on 3 evenly spaced pairs (1 in 3D): full-size validation cost "
        "more than their 20 steps; the test set is evaluated whole"
    ),
    ("registration", "crop"): "random crops cut a CPU step's cost; validation sees whole images",
    ("registration", "ncc_border"): (
        "ours: border windows average over their in-image voxels, so NCC(aI + b, I) is optimal "
        "up to the border; the paper's code counts the zero padding as image"
    ),
    ("registration", "vgg_input"): (
        "our offline weights are Keras/Caffe VGG16, fed the input they were trained with; the "
        "paper feeds torchvision's VGG16 the unnormalised [0, 1] image"
    ),
    ("registration", "amp"): "float16 U-Net on CUDA for speed (ours); float32 on CPU anyway",
}
_SHORT_NAMES = {"platelet-em": "Platelet-EM", "phc-u373": "PhC-U373", "brain-mri": "Brain-MRI"}


def _preset_configs(preset: str) -> dict[str, list[tuple[str, dict]]]:
    """``{kind: [(dataset, config as dict), ...]}`` over all datasets (and metrics)."""
    segmentation = [(d, asdict(segmentation_config(d, preset))) for d in DATASETS]
    registration = [
        (d, asdict(registration_config(d, m, preset))) for d in DATASETS for m in METRICS
    ]
    return {"segmentation": segmentation, "registration": registration}


def _summary(values: list[tuple[str, object]]) -> str:
    """One value if every dataset has the same, else ``Platelet-EM 3 · PhC-U373 5 · …``."""
    per_dataset: dict[str, list] = {}
    for dataset, value in values:
        if value not in per_dataset.setdefault(dataset, []):
            per_dataset[dataset].append(value)
    distinct = {repr(v) for vs in per_dataset.values() for v in vs}
    if len(distinct) == 1:
        return str(values[0][1])
    return " · ".join(
        f"{_SHORT_NAMES[d]} {' / '.join(str(v) for v in vs)}" for d, vs in per_dataset.items()
    )


def preset_departures(preset: str) -> list[dict]:
    """Every field where ``preset`` trains differently from ``paper``, with the reason.

    One row per (config kind, field) that differs for at least one dataset (or metric):
    ``{"config": "segmentation" | "registration", "field", "paper": value(s), preset:
    value(s), "why"}``; values read ``Platelet-EM 3 · PhC-U373 5 · Brain-MRI 1`` where the
    datasets differ. Computed from the presets themselves, so the table cannot miss a
    departure; a departure without a reason in ``DEPARTURE_REASONS`` is a ValueError.
    """
    check_preset(preset)
    ours, paper = _preset_configs(preset), _preset_configs("paper")
    rows = []
    for kind in ("segmentation", "registration"):
        fields = [f for f in ours[kind][0][1] if f not in _IDENTITY_FIELDS]
        for name in fields:
            mine = [(d, c[name]) for d, c in ours[kind]]
            theirs = [(d, c[name]) for d, c in paper[kind]]
            if [v for _, v in mine] == [v for _, v in theirs]:
                continue
            if (kind, name) not in DEPARTURE_REASONS:
                raise ValueError(f"{preset} departs from paper in {kind}.{name} without a reason")
            rows.append({"config": kind, "field": name, "paper": _summary(theirs),
                         preset: _summary(mine), "why": DEPARTURE_REASONS[kind, name]})  # fmt: skip
    return rows
