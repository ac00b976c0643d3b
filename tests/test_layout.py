"""The dataset layout: round trip, and every reader error names the file at fault."""

import gzip
import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from deepsim_edu.data.layout import (
    DatasetError,
    DatasetInfo,
    case_file,
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


# ----------------------------------------------------------------------------- case ids are names

ID_RULE = "a case id names the file images/<id>.nii.gz, so it must be a plain file name"


@pytest.mark.parametrize(
    "case_id, reason",
    [
        ("../../outside/sub/evil", "contains a path separator (/ or \\)"),
        ("/abs", "contains a path separator (/ or \\)"),
        ("a/b", "contains a path separator (/ or \\)"),
        ("a\\b", "contains a path separator (/ or \\)"),
        ("..", "starts with '.' (a hidden file, '.' or '..')"),
        (".hidden", "starts with '.' (a hidden file, '.' or '..')"),
        ("", "is empty"),
        ("C:evil", "contains ':' or a control character"),
        ("new\nline", "contains ':' or a control character"),
        (3, "is not a string but int"),
    ],
)
def test_case_ids_that_are_not_plain_names_are_refused(tmp_path, case_id, reason):
    make_tiny_dataset(tmp_path)
    raw = json.loads((tmp_path / "dataset.json").read_text())
    raw["splits"]["train"][1] = case_id
    (tmp_path / "dataset.json").write_text(json.dumps(raw))
    with pytest.raises(DatasetError) as error:
        load_info(tmp_path)
    assert str(error.value) == (
        f"{tmp_path}/dataset.json: case id {case_id!r} in split 'train' {reason}; {ID_RULE}"
    )


def test_a_traversal_id_reads_nothing_outside_the_folder(tmp_path, monkeypatch, capsys):
    from deepsim_edu import __main__ as cli

    root = tmp_path / "a" / "ds"
    make_tiny_dataset(root)
    evil = tmp_path / "outside" / "sub" / "evil.nii.gz"  # images/../../outside/sub/evil
    evil.parent.mkdir(parents=True)
    evil.write_bytes((root / "labels" / "train_0.nii.gz").read_bytes())
    raw = json.loads((root / "dataset.json").read_text())
    raw["splits"]["test"].append("../../../outside/sub/evil")
    (root / "dataset.json").write_text(json.dumps(raw))
    loaded = []
    monkeypatch.setattr(nib, "load", lambda path: loaded.append(path))
    assert cli.main(["data", "--dataset", "platelet-em", "--source", str(root)]) == 2
    assert capsys.readouterr().err == (
        f"error: {root}/dataset.json: case id '../../../outside/sub/evil' in split 'test' "
        f"contains a path separator (/ or \\); {ID_RULE}\n"
    )
    assert loaded == []


def test_an_atlas_id_that_is_a_path_is_refused(tmp_path):
    info = make_tiny_dataset(tmp_path, ndim=3, n=2, name="brain-mri")
    info.pairing = {"rule": "atlas", "atlas": "../atlas"}
    with pytest.raises(DatasetError, match=r"atlas case id '../atlas' contains a path separator"):
        write_dataset_json(tmp_path, info)


def test_case_file_names_every_file_and_keeps_it_inside(tmp_path):
    make_tiny_dataset(tmp_path / "ds")
    root = tmp_path / "ds"
    assert case_file(root, "noise_masks", "val_1") == root / "noise_masks" / "val_1.nii.gz"
    with pytest.raises(ValueError, match="kind must be one of images, labels, displacements"):
        case_file(root, "masks", "val_1")
    with pytest.raises(DatasetError, match=r"case id '\.\./x' contains a path separator"):
        case_file(root, "images", "../x")
    # a link out of the folder: the file itself, or its whole folder
    outside = tmp_path / "elsewhere.nii.gz"
    shutil.copy(root / "images" / "train_0.nii.gz", outside)
    (root / "images" / "train_0.nii.gz").unlink()
    (root / "images" / "train_0.nii.gz").symlink_to(outside)
    message = (f"{root}/images/train_0.nii.gz: leads to {outside.resolve()}, outside the "
               f"dataset folder {root.resolve()}; the files of a dataset must lie inside "
               "its folder")  # fmt: skip
    with pytest.raises(DatasetError) as error:
        read_case(root, load_info(root), "train_0")
    assert str(error.value) == message
    shutil.move(root / "labels", tmp_path / "labels")
    (root / "labels").symlink_to(tmp_path / "labels")
    with pytest.raises(DatasetError, match=r"labels/val_0.nii.gz: leads to .*outside the dataset"):
        read_case(root, load_info(root), "val_0")
    # the dataset folder itself may be a link
    (tmp_path / "link").symlink_to(tmp_path / "ds2")
    make_tiny_dataset(tmp_path / "ds2")
    image, _ = read_case(tmp_path / "link", load_info(tmp_path / "link"), "val_0")
    assert image.shape == (8, 8)


def test_write_case_refuses_a_path_and_writes_nothing(tmp_path):
    root = tmp_path / "ds"
    for case_id, bad in [("../evil", {}), ("ok", {"displacement": np.zeros((2, 8, 7))}),
                         ("ok", {"noise_mask": np.full((8, 8), 2)})]:  # fmt: skip
        with pytest.raises(DatasetError):
            write_case(root, case_id, np.zeros((8, 8)), np.zeros((8, 8)), [1, 1], **bad)
    assert not list(tmp_path.rglob("*.nii.gz"))


# ----------------------------------------------------------------------------- splits and ids


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s["train"].append("train_0"), "split 'train' lists 'train_0' more than once"),
        (lambda s: s["val"].append("train_1"),
         "splits 'train' and 'val' share 1 case(s): 'train_1'; a case may be in one split only"),
        (lambda s: s.update(test=list(s["train"])),
         "split 'test' holds exactly the cases of split 'train' (4 cases): results on 'test' "
         "would be results on 'train'; the splits must be disjoint"),
        (lambda s: s.update(val=s["train"][::-1]),
         "split 'val' holds exactly the cases of split 'train' (4 cases): results on 'val' "
         "would be results on 'train'; the splits must be disjoint"),
    ],
)  # fmt: skip
def test_repeated_and_shared_cases_are_refused(tmp_path, change, message):
    make_tiny_dataset(tmp_path)
    raw = json.loads((tmp_path / "dataset.json").read_text())
    change(raw["splits"])
    (tmp_path / "dataset.json").write_text(json.dumps(raw))
    with pytest.raises(DatasetError) as error:
        load_info(tmp_path)
    assert str(error.value) == f"{tmp_path}/dataset.json: {message}"


def test_every_problem_of_dataset_json_is_listed(tmp_path):
    make_tiny_dataset(tmp_path)
    raw = json.loads((tmp_path / "dataset.json").read_text())
    raw["splits"]["test"] = list(raw["splits"]["train"])
    raw["splits"]["val"][0] = "../x"
    raw.update(name="lung-ct", pairing={"rule": "neighbours", "max_offset": "two"})
    (tmp_path / "dataset.json").write_text(json.dumps(raw))
    with pytest.raises(DatasetError) as error:
        load_info(tmp_path)
    where = f"{tmp_path}/dataset.json"
    assert str(error.value).splitlines() == [
        f"{where}: 4 problems, one line each:",
        f"  {where}: unknown dataset name 'lung-ct'; valid names: brain-mri, platelet-em, phc-u373",
        f"  {where}: case id '../x' in split 'val' contains a path separator (/ or \\); {ID_RULE}",
        f"  {where}: split 'test' holds exactly the cases of split 'train' (4 cases): results on "
        "'test' would be results on 'train'; the splits must be disjoint",
        f"  {where}: pairing 'max_offset' must be a whole number >= 1, got 'two'",
    ]
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match="dataset.json: must hold a JSON object, got list"):
        load_info(tmp_path)
