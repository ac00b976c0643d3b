"""The full dataset check (layout.check_dataset): every file at fault is named, in one error,
before any training or evaluation step; and warp refuses a NaN image.

Every test breaks a hand-made copy of a tiny dataset (8x8 sections, 6^3 volumes) in tmp_path.
"""

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from deepsim_edu import __main__ as cli
from deepsim_edu import experiment, train
from deepsim_edu.config import registration_config, segmentation_config
from deepsim_edu.data.layout import (
    DatasetError,
    DatasetInfo,
    check_dataset,
    write_case,
    write_dataset_json,
)
from deepsim_edu.transform import warp

SERIES_CLASSES = ["background", "cytoplasm", "organelle"]


def make_series(root, n=3, shape=(8, 8), name="platelet-em", classes=SERIES_CLASSES):
    """A valid 2D neighbours dataset: n cases per split; displacements for val/test (but the
    last of each), a noise mask for every case."""
    rng = np.random.default_rng(0)
    splits = {s: [f"{s}_{i}" for i in range(n)] for s in ("train", "val", "test")}
    for split, cases in splits.items():
        for i, case in enumerate(cases):
            u = rng.standard_normal((2, *shape)) if split != "train" and i < n - 1 else None
            write_case(root, case, rng.random(shape), np.arange(np.prod(shape)).reshape(shape)
                       % len(classes), [1.0, 1.0], displacement=u,
                       noise_mask=rng.integers(0, 2, shape))  # fmt: skip
    info = DatasetInfo(name=name, ndim=2, spacing=[1.0, 1.0], classes=classes, splits=splits)
    write_dataset_json(root, info)
    return info


def make_brains(root, shape=(6, 6, 6)):
    """A valid 3D atlas dataset: train 2, val 1, test 1 subjects and the atlas."""
    rng = np.random.default_rng(1)
    splits = {"train": ["sub-0", "sub-1"], "val": ["sub-2"], "test": ["sub-3"]}
    for case in ["atlas", *sum(splits.values(), [])]:
        write_case(root, case, rng.random(shape), rng.integers(0, 4, shape), [2.0] * 3)
    info = DatasetInfo(name="brain-mri", ndim=3, spacing=[2.0] * 3,
                       classes=["background", "CSF", "GM", "WM"], splits=splits,
                       pairing={"rule": "atlas", "atlas": "atlas"})  # fmt: skip
    write_dataset_json(root, info)
    return info


@pytest.fixture(scope="module")
def series_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("series") / "ds"
    make_series(root)
    return root


@pytest.fixture
def series(series_master, tmp_path):
    """A fresh copy of the valid 2D dataset, to break."""
    return shutil.copytree(series_master, tmp_path / "ds")


def problems(root) -> list[str]:
    """The lines of the DatasetError of check_dataset(root), without the header."""
    with pytest.raises(DatasetError) as info:
        check_dataset(root)
    lines = str(info.value).splitlines()
    if len(lines) > 1:
        assert lines[0] == f"{root}: {len(lines) - 1} problems, one line each:"
        return [line.strip() for line in lines[1:]]
    return lines


def save(path, array):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), path)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])




# ----------------------------------------------------------------------------- valid data


def test_a_valid_series_passes_and_every_file_is_read_once(series, monkeypatch):
    loaded = []
    original = nib.load
    monkeypatch.setattr(nib, "load", lambda path: loaded.append(str(path)) or original(path))
    kept = {}
    report = check_dataset(series, keep=lambda case, image, label: kept.update({case: label}))
    # 9 cases x (image, label, noise mask) + 2 displacements in val and 2 in test
    assert report.optional_files == {"displacements": 4, "noise_masks": 9}
    assert report.files == 31 and len(loaded) == 31 and len(set(loaded)) == 31
    assert sorted(kept) == sorted(report.info.cases()) and kept["val_1"].dtype == np.int64
    assert report.cases["train_0"].shape == (8, 8)
    np.testing.assert_array_equal(report.cases["train_0"].class_voxels, [22, 21, 21])  # 64 % 3
    lines = report.summary()
    assert lines[0].startswith("platelet-em train:   3 cases, shape (8, 8), intensity 0.")
    assert lines[0].endswith("classes present 3/3")
    assert lines[-1].startswith("platelet-em check: 31 files read (9 images, 9 labels, "
                                "4 displacements, 9 noise masks) in ")  # fmt: skip


def test_a_valid_atlas_dataset_passes(tmp_path):
    make_brains(tmp_path)
    report = check_dataset(tmp_path)
    assert sorted(report.cases) == ["atlas", "sub-0", "sub-1", "sub-2", "sub-3"]
    assert "brain-mri atlas: atlas, shape (6, 6, 6)" in report.summary()


# ----------------------------------------------------------------------------- one fault each


@pytest.mark.parametrize(
    "split, break_it, message",
    [
        ("test", lambda p: (p / "labels/test_2.nii.gz").unlink(),
         "labels/test_2.nii.gz: file is missing"),
        ("train", lambda p: truncate(p / "images/train_1.nii.gz"),
         "images/train_1.nii.gz: corrupt or truncated NIfTI"),
        ("val", lambda p: truncate(p / "displacements/val_0.nii.gz"),
         "displacements/val_0.nii.gz: corrupt or truncated NIfTI"),
        ("val", lambda p: truncate(p / "noise_masks/val_2.nii.gz"),
         "noise_masks/val_2.nii.gz: corrupt or truncated NIfTI"),
        ("test", lambda p: save(p / "images/test_1.nii.gz", np.where(np.eye(8) > 0, np.nan, 0.5)
                                .astype(np.float32)),
         "images/test_1.nii.gz: image has non-finite values (NaN or inf): 8 NaN and 0 inf "
         "voxel(s)"),
        ("train", lambda p: save(p / "images/train_0.nii.gz",
                                 np.full((8, 8), np.inf, np.float32) * np.sign(np.eye(8) - 0.5)),
         "images/train_0.nii.gz: image has non-finite values (NaN or inf): 0 NaN and 64 inf "
         "voxel(s)"),
        ("val", lambda p: save(p / "labels/val_1.nii.gz", np.full((8, 8), 0.5, np.float32)),
         "labels/val_1.nii.gz: labels must be integers (class indices), found 0.5"),
        ("val", lambda p: save(p / "labels/val_1.nii.gz", np.full((8, 8), np.nan, np.float32)),
         "labels/val_1.nii.gz: labels must be integers (class indices), found nan"),
        ("test", lambda p: save(p / "labels/test_0.nii.gz", np.full((8, 8), 3, np.uint8)),
         "labels/test_0.nii.gz: labels must lie in 0..2 (background, cytoplasm, organelle), "
         "found 3..3"),
        ("test", lambda p: save(p / "labels/test_0.nii.gz", np.full((8, 8), -1, np.int16)),
         "labels/test_0.nii.gz: labels must lie in 0..2 (background, cytoplasm, organelle), "
         "found -1..-1"),
        ("train", lambda p: save(p / "labels/train_2.nii.gz", np.zeros((8, 7), np.uint8)),
         "labels/train_2.nii.gz: label shape (8, 7) != image shape (8, 8)"),
        ("train", lambda p: save(p / "images/train_2.nii.gz", np.zeros((8, 8, 8), np.float32)),
         "images/train_2.nii.gz: expected a 2D image, got shape (8, 8, 8)"),
        ("val", lambda p: save(p / "displacements/val_1.nii.gz", np.zeros((2, 8, 7), np.float32)),
         "displacements/val_1.nii.gz: displacement must have shape (2, 8, 8), got (2, 8, 7)"),
        ("val", lambda p: save(p / "displacements/val_1.nii.gz",
                               np.full((2, 8, 8), np.nan, np.float32)),
         "displacements/val_1.nii.gz: displacement has non-finite values (NaN or inf)"),
        ("train", lambda p: save(p / "noise_masks/train_1.nii.gz", np.full((8, 8), 2, np.uint8)),
         "noise_masks/train_1.nii.gz: noise mask must hold 0 and 1 only"),
    ],
)  # fmt: skip
def test_each_broken_file_is_named(series, split, break_it, message):
    break_it(series)
    (found,) = problems(series)
    assert found == f"{series}/{message}" or (
        "truncated" in message and found.startswith(f"{series}/{message} (")
    )


def test_an_image_cut_in_its_voxel_data_is_named(tmp_path):
    """A file big enough that its header survives the cut: the voxels fail, not the header."""
    make_series(tmp_path, shape=(64, 64))
    path = tmp_path / "images" / "val_1.nii.gz"
    truncate(path)
    assert nib.load(path).shape == (64, 64)  # the header still reads
    assert problems(tmp_path) == [
        f"{path}: corrupt or truncated NIfTI (EOFError: Compressed file ended before the "
        "end-of-stream marker was reached)"
    ]


def test_a_training_case_of_another_size_is_named(series):
    """It would be stacked with the others into one batch ("stack expects each tensor ...")."""
    write_case(series, "train_1", np.zeros((8, 10)), np.zeros((8, 10)), [1, 1])
    (series / "noise_masks/train_1.nii.gz").unlink()
    assert problems(series) == [
        f"{series}/images/train_1.nii.gz: shape (8, 10) differs from the shape (8, 8) of split "
        "'train' (its cases are stacked and paired)"
    ]


def test_a_subject_of_another_size_than_the_atlas_is_named(tmp_path):
    make_brains(tmp_path)
    write_case(tmp_path, "sub-2", np.zeros((6, 6, 5)), np.zeros((6, 6, 5)), [2.0] * 3)
    assert problems(tmp_path) == [
        f"{tmp_path}/images/sub-2.nii.gz: shape (6, 6, 5) differs from the shape (6, 6, 6) of "
        "the atlas (every case is paired with it)"
    ]


def test_every_fault_is_named_in_one_error(series):
    (series / "labels/test_2.nii.gz").unlink()
    truncate(series / "images/train_1.nii.gz")
    truncate(series / "displacements/test_0.nii.gz")
    save(series / "images/val_0.nii.gz", np.full((8, 8), np.nan, np.float32))
    save(series / "labels/val_1.nii.gz", np.full((8, 8), 7, np.uint8))
    write_case(series, "train_2", np.zeros((9, 9)), np.zeros((9, 9)), [1, 1])
    (series / "noise_masks/train_2.nii.gz").unlink()
    found = problems(series)
    assert len(found) == 6
    for name in ("labels/test_2", "images/train_1", "displacements/test_0", "images/val_0",
                 "labels/val_1", "images/train_2"):  # fmt: skip
        assert sum(f"{series}/{name}.nii.gz: " in line for line in found) == 1, name


# ----------------------------------------------------------------------------- the CLI


def test_cli_lists_every_fault_and_exits_2(series, capsys):
    assert cli.main(["data", "--dataset", "platelet-em", "--source", str(series)]) == 0
    out = capsys.readouterr().out
    assert "platelet-em check: 31 files read" in out and f"dataset folder: {series}" in out
    (series / "labels/test_2.nii.gz").unlink()
    truncate(series / "displacements/val_0.nii.gz")
    assert cli.main(["data", "--dataset", "platelet-em", "--source", str(series)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: {series}: 2 problems, one line each:"  # cases in split order
    assert err[1].startswith(f"  {series}/displacements/val_0.nii.gz: corrupt or truncated")
    assert err[2] == f"  {series}/labels/test_2.nii.gz: file is missing"
    assert len(err) == 3


def test_cli_refuses_a_folder_of_another_dataset(series, capsys):
    assert cli.main(["data", "--dataset", "phc-u373", "--source", str(series)]) == 2
    assert capsys.readouterr().err == (
        f"error: {series} holds dataset 'platelet-em', not --dataset 'phc-u373'\n"
    )


# ----------------------------------------------------------------------------- before any step


def broken_cell_series(tmp_path):
    """A PhC-U373 series whose one TEST label is missing: found only at the end, before."""
    root = tmp_path / "cells"
    make_series(root, shape=(16, 16), name="phc-u373", classes=["background", "cell"])
    (root / "labels/test_1.nii.gz").unlink()
    return root


def no_step(*args, **kwargs):
    raise AssertionError("a training step was taken on a broken dataset")


@pytest.mark.parametrize("kind", ["registration", "segmentation"])
def test_training_checks_the_whole_dataset_before_the_first_step(tmp_path, monkeypatch, kind):
    root = broken_cell_series(tmp_path)
    monkeypatch.setattr(train, "registration_batch", no_step)
    monkeypatch.setattr(train, "segmentation_batch", no_step)
    out = tmp_path / "run"
    with pytest.raises(DatasetError, match=f"{root}/labels/test_1.nii.gz: file is missing"):
        if kind == "registration":
            config = registration_config("phc-u373", "mse", "quick", encoder_channels=(4, 8, 8),
                                         crop=None, augmentation="none")  # fmt: skip
            train.train_registration(root, out, config, progress=False)
        else:
            config = segmentation_config("phc-u373", "quick", encoder_channels=(4, 8, 8),
                                         crop=None)  # fmt: skip
            train.train_segmentation(root, out, config, progress=False)
    assert not out.exists()  # nothing written: no config.json, no checkpoint


def test_evaluation_checks_the_whole_dataset_first(tmp_path, monkeypatch):
    from deepsim_edu import evaluate
    from deepsim_edu.unet import registration_unet

    root = broken_cell_series(tmp_path)
    (root / "labels/train_0.nii.gz").unlink()  # a split that evaluate_run does not use
    run = tmp_path / "run"
    run.mkdir()
    config = {"dataset": "phc-u373", "metric": "mse"}
    monkeypatch.setattr(evaluate, "load_registration_net",
                        lambda run, device: (registration_unet(2, (4, 8, 8)), config))  # fmt: skip
    monkeypatch.setattr(evaluate, "evaluate_pairs", no_step)
    with pytest.raises(DatasetError, match="2 problems") as error:
        evaluate.evaluate_run(run, root, "val")
    assert "labels/train_0.nii.gz: file is missing" in str(error.value)
    assert list(run.iterdir()) == []


def test_experiment_checks_every_dataset_before_any_training(tmp_path, monkeypatch):
    root = broken_cell_series(tmp_path)
    for name in ("feature_extractor", "run_one", "train_registration", "train_segmentation"):
        monkeypatch.setattr(experiment, name, no_step)
    with pytest.raises(DatasetError, match="labels/test_1.nii.gz: file is missing"):
        experiment.run_experiment("quick", ("phc-u373",), ("mse", "deepsim"), data=root,
                                  out=tmp_path / "results")  # fmt: skip
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- warp


def test_warp_refuses_nan_and_inf_in_the_image():
    image = torch.rand(1, 1, 8, 8)
    image[0, 0, 3, 3] = torch.nan
    u = torch.full((1, 2, 8, 8), 0.5)  # bilinear: one NaN would spread to four voxels
    with pytest.raises(ValueError, match="^image contains NaN or inf values$"):
        warp(image, u)
    image[0, 0, 3, 3] = -torch.inf
    with pytest.raises(ValueError, match="^image contains NaN or inf values$"):
        warp(image, u, mode="nearest")
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    assert torch.equal(warp(labels, u, mode="nearest"), labels)  # integer maps have no NaN
