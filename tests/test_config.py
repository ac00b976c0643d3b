"""Presets: ``paper`` equals the public code's training; every departure of quick/default listed.

The truth for ``paper`` is the table below, typed from the paper's public code
(https://github.com/SteffenCzolbe/DeepSimRegistration, pytorch-lightning 0.7.6); the comments
name the file of each value.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from deepsim_edu import config, features
from deepsim_edu.config import (
    DATASETS,
    METRICS,
    RegistrationConfig,
    SegmentationConfig,
    preset_departures,
    registration_config,
    segmentation_config,
)

IDENTITY = {"dataset", "metric", "preset"}

# --- segmentation (DeepSim's feature extractor) ----------------------------------------------
# scripts/train_segmentation.sh:
#   platelet-em --max_epochs 50000 --channels 64 128 256 --batch_size 3 --accumulate_grad_batches 2
#   phc-u373    --max_epochs 50000 --channels 64 128 256 --batch_size 5 --accumulate_grad_batches 2
#   brain-mri   --max_steps 100000 --channels 32 64 128 --batch_size 1 --accumulate_grad_batches 4
#   all: --lr 0.0001 --bnorm --dropout; brain has no --max_epochs: Lightning 0.7.6's default 1000
# src/common_lightning_model.py: Adam; ReduceLROnPlateau(factor=0.1, patience=
#   reduce_lr_patience) with reduce_lr_patience 200 (platelet-em, phc-u373) and 2 (brain-mri);
#   DataLoader(batch_size, drop_last=True): an epoch is one pass; RandomAffine augmentation.
# src/train_segmentation.py: EarlyStopping(patience=300) assigned to
#   hparams.early_stopping_callback, not the Trainer's early_stop_callback: never used.
# src/models/backbone.py: Stage(dropout=True) -> torchreg Dropout (p 0.5).
SEG_COMMON = dict(dropout=0.5, lr=1e-4, steps_per_epoch=None, lr_factor=0.1,
                  early_stopping=None, noise_sigma=0.0, crop=None, seed=0)  # fmt: skip
SEGMENTATION_PAPER = {
    "platelet-em": dict(SEG_COMMON, encoder_channels=(64, 128, 256), batch_size=3,
                        accumulation=2, epochs=50000, max_steps=None, lr_patience=200,
                        augmentation="2d"),  # fmt: skip
    "phc-u373": dict(SEG_COMMON, encoder_channels=(64, 128, 256), batch_size=5,
                     accumulation=2, epochs=50000, max_steps=None, lr_patience=200,
                     augmentation="2d"),  # fmt: skip
    "brain-mri": dict(SEG_COMMON, encoder_channels=(32, 64, 128), batch_size=1,
                      accumulation=4, epochs=1000, max_steps=100000, lr_patience=2,
                      augmentation="brain"),  # fmt: skip
}

# --- registration ------------------------------------------------------------------------------
# scripts/train_registration.sh (loss l2 = mse, ncc2 = ncc, ncc2+supervised = ncc-sup):
#   platelet-em --channels 64 128 256 --batch_size 3 --accumulate_grad_batches 2 --max_epochs 3000
#     --lam l2 0.02, ncc2 0.5, ncc2+supervised 0.5, vgg 1, deepsim 1
#   phc-u373 --channels 64 128 256 --batch_size 5 --accumulate_grad_batches 2 --max_epochs 3000
#     --lam l2 0.005, ncc2 0.25, ncc2+supervised 0.25, vgg 0.125, deepsim 0.125
#   brain-mri --channels 32 64 128 --batch_size 1 --accumulate_grad_batches 4 --max_epochs 30
#     --lam l2 0.08, ncc2 1.0, ncc2+supervised 2.0, deepsim 2.0 (no vgg run: ours, DeepSim's 2.0)
#   all: --lr 0.0001 --bnorm --dropout --ncc_win_size 9; no --precision: float32
# src/common_lightning_model.py: as for segmentation (plateau 200 / 2, factor 0.1, one pass).
# src/train_registration.py: EarlyStopping(patience=300) never reaches the Trainer (as above).
# src/loss_metrics.py: NCC zero-pads (conv padding win//2) and divides by the whole window;
#   DeepSim(levels='all') = the 3 encoder stages; VGGFeatureExtractor.forward feeds
#   torch.cat([x, x, x], dim=1) to torchvision's vgg16(pretrained=True), no normalisation.
REG_COMMON = dict(dropout=0.5, lr=1e-4, steps_per_epoch=None, lr_factor=0.1,
                  early_stopping=None, crop=None, ncc_window=9, deepsim_levels=(0, 1, 2),
                  ncc_border="zero-padding", vgg_input="paper_unnormalised_01", amp=False,
                  seed=0, max_val_pairs=None)  # fmt: skip
# (max_val_pairs None: every validation pair, as a Lightning Trainer without limit_val_batches)
REGISTRATION_PAPER = {
    "platelet-em": dict(REG_COMMON, encoder_channels=(64, 128, 256), batch_size=3,
                        accumulation=2, epochs=3000, lr_patience=200,
                        augmentation="2d"),  # fmt: skip
    "phc-u373": dict(REG_COMMON, encoder_channels=(64, 128, 256), batch_size=5,
                     accumulation=2, epochs=3000, lr_patience=200,
                     augmentation="2d"),  # fmt: skip
    "brain-mri": dict(REG_COMMON, encoder_channels=(32, 64, 128), batch_size=1,
                      accumulation=4, epochs=30, lr_patience=2,
                      augmentation="brain"),  # fmt: skip
}
PAPER_LAM = {
    "platelet-em": {"mse": 0.02, "ncc": 0.5, "ncc-sup": 0.5, "vgg": 1.0, "deepsim": 1.0},
    "phc-u373": {"mse": 0.005, "ncc": 0.25, "ncc-sup": 0.25, "vgg": 0.125, "deepsim": 0.125},
    "brain-mri": {"mse": 0.08, "ncc": 1.0, "ncc-sup": 2.0, "vgg": 2.0, "deepsim": 2.0},
}


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("dataset", DATASETS)
def test_paper_segmentation_is_the_public_code(dataset):
    expected = SEGMENTATION_PAPER[dataset]
    assert set(expected) | IDENTITY - {"metric"} == field_names(SegmentationConfig)
    got = segmentation_config(dataset, "paper")
    assert {k: getattr(got, k) for k in expected} == expected
    assert (got.dataset, got.preset) == (dataset, "paper")


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("metric", METRICS)
def test_paper_registration_is_the_public_code(dataset, metric):
    expected = {**REGISTRATION_PAPER[dataset], "lam": PAPER_LAM[dataset][metric]}
    assert set(expected) | IDENTITY == field_names(RegistrationConfig)
    got = registration_config(dataset, metric, "paper")
    assert {k: getattr(got, k) for k in expected} == expected


def test_cpu_presets_keep_todays_new_field_defaults():
    for preset in ("ci", "quick", "default"):
        for dataset in DATASETS:
            seg = segmentation_config(dataset, preset)
            assert (seg.accumulation, seg.lr_patience, seg.max_steps) == (1, None, None)
            reg = registration_config(dataset, "vgg", preset)
            assert (reg.ncc_border, reg.vgg_input) == ("in-image", "weights")


def test_config_json_round_trips_and_compares_equal():
    """A config.json (what a resumed run compares) holds the new fields and reads back equal."""
    for config_ in (segmentation_config("brain-mri", "paper"),
                    registration_config("platelet-em", "ncc", "paper")):  # fmt: skip
        d = config_.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert d == type(config_)(**config_.__dict__).to_dict()
    d = registration_config("platelet-em", "ncc", "paper").to_dict()
    assert d["ncc_border"] == "zero-padding" and d["vgg_input"] == "paper_unnormalised_01"
    assert segmentation_config("brain-mri", "paper").to_dict()["accumulation"] == 4
    assert d != registration_config("platelet-em", "ncc", "paper", ncc_border="in-image").to_dict()


def test_invalid_ncc_border_and_vgg_input():
    with pytest.raises(ValueError, match="unknown ncc_border 'reflect'"):
        registration_config("phc-u373", "ncc", "quick", ncc_border="reflect")
    with pytest.raises(ValueError, match="unknown vgg_input 'bgr'.*paper_unnormalised_01"):
        registration_config("phc-u373", "vgg", "quick", vgg_input="bgr")


def test_vgg_inputs_are_the_feature_extractors():
    assert config.VGG_INPUTS == features.VGG_INPUTS


# ----------------------------------------------------------------------------- departures


def differing_fields(preset: str) -> set[tuple[str, str]]:
    """(kind, field) where ``preset`` differs from ``paper`` for some dataset (or metric)."""
    found = set()
    for dataset in DATASETS:
        ours, paper = segmentation_config(dataset, preset), segmentation_config(dataset, "paper")
        for name in field_names(SegmentationConfig) - IDENTITY:
            if getattr(ours, name) != getattr(paper, name):
                found.add(("segmentation", name))
        for metric in METRICS:
            ours = registration_config(dataset, metric, preset)
            paper = registration_config(dataset, metric, "paper")
            for name in field_names(RegistrationConfig) - IDENTITY:
                if getattr(ours, name) != getattr(paper, name):
                    found.add(("registration", name))
    return found


@pytest.mark.parametrize("preset", ["ci", "quick", "default"])
def test_departures_are_exactly_the_fields_that_differ(preset):
    rows = preset_departures(preset)
    listed = [(row["config"], row["field"]) for row in rows]
    assert len(listed) == len(set(listed))
    assert set(listed) == differing_fields(preset)
    assert all(row["why"] and set(row) == {"config", "field", "paper", preset, "why"}
               for row in rows)  # fmt: skip


def test_no_stale_reasons_and_paper_has_no_departures():
    cpu = differing_fields("ci") | differing_fields("quick") | differing_fields("default")
    assert set(config.DEPARTURE_REASONS) == cpu
    assert preset_departures("paper") == []


def test_departure_values_read_per_dataset():
    rows = {(r["config"], r["field"]): r for r in preset_departures("default")}
    lr = rows["registration", "lr"]
    assert lr["paper"] == "0.0001"
    assert lr["default"] == "Brain-MRI 0.0003 · Platelet-EM 0.001 · PhC-U373 0.001"
    batch = rows["registration", "batch_size"]
    assert batch["paper"] == "Brain-MRI 1 · Platelet-EM 3 · PhC-U373 5"
    max_steps = rows["segmentation", "max_steps"]
    assert max_steps["paper"] == "Brain-MRI 100000 · Platelet-EM None · PhC-U373 None"
    assert max_steps["default"] == "None"
    assert ("registration", "lam") not in rows  # λ is the paper's in every preset


def test_an_unexplained_departure_is_an_error(monkeypatch):
    reasons = dict(config.DEPARTURE_REASONS)
    del reasons["registration", "amp"]
    monkeypatch.setattr(config, "DEPARTURE_REASONS", reasons)
    with pytest.raises(ValueError, match="registration.amp without a reason"):
        preset_departures("default")


@pytest.mark.parametrize("dataset", DATASETS)
def test_ci_is_quick_with_shorter_registration_runs(dataset):
    """ci (the test suite's book build) shortens the registration runs (3 → 2 epochs in 2D,
    2 → 2 for the brains) and validates them on 3 pairs (the brains on 1); it validates the
    extractors less often: the book's Platelet-EM extractor with quick's steps, PhC-U373's with
    a third of them (300 → 90), the brain's with the same 40 (two epochs, the minimum)."""
    ci = registration_config(dataset, "ncc", "ci")
    quick = registration_config(dataset, "ncc", "quick")
    assert ci.epochs == {3: 2, 2: 2}[quick.epochs]
    # ci validates on 3 pairs, a brain run on 1 (a volume of 80 slices)
    assert ci.max_val_pairs == {"brain-mri": 1}.get(dataset, 3) and quick.max_val_pairs is None
    differ = {"epochs": 0, "preset": "", "max_val_pairs": 0}
    assert {**ci.to_dict(), **differ} == {**quick.to_dict(), **differ}
    seg_ci, seg_quick = segmentation_config(dataset, "ci"), segmentation_config(dataset, "quick")
    steps = {"platelet-em": 300, "phc-u373": 90, "brain-mri": 40}[dataset]
    assert seg_quick.steps_per_epoch * seg_quick.epochs == {"phc-u373": 300}.get(dataset, steps)
    assert seg_ci.steps_per_epoch * seg_ci.epochs == steps
    assert seg_ci.epochs < seg_quick.epochs  # fewer validation passes
    same = {"preset": "", "epochs": 0, "steps_per_epoch": 0}
    assert {**seg_ci.to_dict(), **same} == {**seg_quick.to_dict(), **same}
