"""The dataset layout: round trip, and every reader error names the file at fault."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from deepsim_edu.data.layout import (
    DatasetError,
    DatasetInfo,
    check_dataset_name,
    load_info,
    read_case,
    read_displacement,
    write_case,
    write_dataset_json,
)


def make_tiny_dataset(root, ndim=2, n=4, name="platelet-em"):
    """A valid dataset folder with n cases per split of 8^ndim voxels and 3 classes."""
    rng = np.random.default_rng(0)
    shape = (8,) * ndim
    splits = {s: [f"{s}_{i}" for i in range(n)] for s in ("train", "val", "test")}
    for cases in splits.values():
        for case in cases:
            label = rng.integers(0, 3, shape)
            write_case(
                root,
                case,
                rng.random(shape),
                label,
                [1.0] * ndim,
                displacement=rng.standard_normal((ndim, *shape)),
            )
    info = DatasetInfo(
        name=name,
        ndim=ndim,
        spacing=[1.0] * ndim,
        classes=["background", "cytoplasm", "organelle"],
        splits=splits,
    )
    write_dataset_json(root, info)
    return info


@pytest.mark.parametrize("ndim", [2, 3])
def test_round_trip(tmp_path, ndim):
    info = make_tiny_dataset(tmp_path, ndim)
    loaded = load_info(tmp_path)
    assert loaded == info
    image, label = read_case(tmp_path, loaded, "val_1")
    assert image.shape == (8,) * ndim and image.dtype == np.float32
    assert label.dtype == np.int64 and set(np.unique(label)) <= {0, 1, 2}
    assert read_displacement(tmp_path, loaded, "val_1").shape == (ndim, *(8,) * ndim)
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*"))


def test_missing_and_corrupt_files_are_named(tmp_path):
    info = make_tiny_dataset(tmp_path)
    (tmp_path / "images" / "train_0.nii.gz").unlink()
    with pytest.raises(DatasetError, match="train_0.nii.gz: file is missing"):
        read_case(tmp_path, info, "train_0")
    # truncated gzip
    path = tmp_path / "images" / "train_1.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="train_1.nii.gz: corrupt or truncated"):
        read_case(tmp_path, info, "train_1")
    # not a NIfTI at all
    (tmp_path / "labels" / "train_2.nii.gz").write_bytes(gzip.compress(b"hello"))
    with pytest.raises(DatasetError, match="train_2.nii.gz: corrupt"):
        read_case(tmp_path, info, "train_2")


def test_content_errors_are_named(tmp_path):
    info = make_tiny_dataset(tmp_path)
    bad_shape = np.zeros((8, 9))
    write_case(tmp_path, "x", np.zeros((8, 8)), np.zeros((8, 8)), [1, 1])
    import nibabel as nib

    nib.save(
        nib.Nifti1Image(bad_shape.astype(np.uint8), np.eye(4)), tmp_path / "labels" / "x.nii.gz"
    )
    with pytest.raises(
        DatasetError, match=r"x.nii.gz: label shape \(8, 9\) != image shape \(8, 8\)"
    ):
        read_case(tmp_path, info, "x")
    write_case(tmp_path, "y", np.zeros((8, 8)), np.full((8, 8), 5), [1, 1])
    with pytest.raises(DatasetError, match=r"y.nii.gz: labels must lie in 0..2"):
        read_case(tmp_path, info, "y")
    nan_image = np.zeros((8, 8), dtype=np.float32)
    nan_image[2, 2] = np.nan
    nib.save(nib.Nifti1Image(nan_image, np.eye(4)), tmp_path / "images" / "y.nii.gz")
    with pytest.raises(DatasetError, match="y.nii.gz: image has non-finite"):
        read_case(tmp_path, info, "y")
    nib.save(
        nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)),
        tmp_path / "images" / "y.nii.gz",
    )
    with pytest.raises(DatasetError, match="expected a 2D image"):
        read_case(tmp_path, info, "y")


def test_dataset_json_errors(tmp_path):
    make_tiny_dataset(tmp_path)
    raw = json.loads((tmp_path / "dataset.json").read_text())
    for change, message in [
        ({"name": "lung-ct"}, "unknown dataset name 'lung-ct'"),
        ({"splits": {**raw["splits"], "test": []}}, "split 'test' is empty"),
        ({"ndim": 4}, "ndim must be 2 or 3"),
        ({"pairing": {"rule": "random"}}, "pairing rule"),
    ]:
        (tmp_path / "dataset.json").write_text(json.dumps({**raw, **change}))
        with pytest.raises(DatasetError, match=message):
            load_info(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="dataset.json: not valid JSON"):
        load_info(tmp_path)
    (tmp_path / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="not in the dataset layout"):
        load_info(tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset 'oasis'"):
        check_dataset_name("oasis")


def test_cli_checks_a_folder_and_reports_errors(tmp_path):
    make_tiny_dataset(tmp_path / "ds")

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "deepsim_edu", "data", *a],  # noqa: E731
            capture_output=True,
            text=True,
        )

    ok = run("--dataset", "platelet-em", "--source", str(tmp_path / "ds"))
    assert ok.returncode == 0, ok.stderr
    assert "platelet-em train:   4 cases, shape (8, 8)" in ok.stdout
    assert "classes present 3/3" in ok.stdout
    (tmp_path / "ds" / "labels" / "test_2.nii.gz").unlink()
    bad = run("--dataset", "platelet-em", "--source", str(tmp_path / "ds"))
    assert bad.returncode == 2 and "test_2.nii.gz: file is missing" in bad.stderr
    unknown = run("--dataset", "lung-ct")
    assert unknown.returncode == 2 and "invalid choice: 'lung-ct'" in unknown.stderr
