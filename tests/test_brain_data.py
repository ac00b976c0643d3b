"""The embedded Brain-MRI generator (data/brain.py): atlas, subjects, true displacements, layout.

One small dataset (2/1/2 subjects) is generated once per module; Dice is computed here with a
few lines of numpy, independent of the library's evaluate.py.
"""

import importlib.util
import sys

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from deepsim_edu.data import brain
from deepsim_edu.data.brain import (
    load_mni152,
    make_brain_mri,
    make_subject,
    min_jacobian_determinant,
    mni152_files,
    random_deformation,
)
from deepsim_edu.data.layout import load_info, read_case, read_displacement
from deepsim_edu.data.synth import warp_array

SHAPE = (80, 96, 80)
COUNTS = {"train": 2, "val": 1, "test": 2}


def dice(a: np.ndarray, b: np.ndarray, classes=(1, 2, 3)) -> float:
    """Mean foreground Dice 2|A∩B| / (|A|+|B|) over ``classes``."""
    return float(
        np.mean(
            [2 * np.sum((a == c) & (b == c)) / (np.sum(a == c) + np.sum(b == c)) for c in classes]
        )
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("brain") / "brain-mri"
    make_brain_mri(root, seed=0, n_train=2, n_val=1, n_test=2)
    return root


@pytest.fixture(scope="module")
def atlas():
    return load_mni152()


def test_template_found_without_importing_nilearn():
    imported_before = "nilearn" in sys.modules
    files = mni152_files()
    assert sorted(files) == ["gm", "t1", "wm"] and all(p.is_file() for p in files.values())
    assert imported_before or "nilearn" not in sys.modules


def test_missing_nilearn_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install nilearn==0\.14\.1"):
        mni152_files()


def test_atlas_shapes_classes_and_t1_contrast(atlas):
    t1, labels = atlas
    assert t1.shape == labels.shape == SHAPE
    assert t1.dtype == np.float32 and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert t1.min() == 0.0 and t1.max() == 1.0 and np.all(t1[labels == 0] == 0)
    # T1 contrast: CSF darker than grey matter, darker than white matter
    csf, gm, wm = (t1[labels == c].mean() for c in (1, 2, 3))
    assert csf < gm - 0.2 and gm < wm - 0.1
    # the brain fits, with room above; only the brainstem, cut by the template, meets the bottom
    low, high = np.argwhere(labels > 0).min(0), np.argwhere(labels > 0).max(0)
    assert np.all(low[:2] >= 1) and np.all(high[:2] <= np.array(SHAPE[:2]) - 2)
    assert low[2] == 0 and high[2] <= SHAPE[2] - 4


def test_dataset_json_and_every_case_validate(dataset):
    info = load_info(dataset)
    assert info.name == "brain-mri" and info.ndim == 3 and info.spacing == [2.0, 2.0, 2.0]
    assert info.classes == ["background", "CSF", "GM", "WM"]
    assert info.pairing == {"rule": "atlas", "atlas": "atlas"}
    assert {split: len(ids) for split, ids in info.splits.items()} == COUNTS
    assert info.splits["train"] == ["sub-000", "sub-001"]
    assert "MNI152 2009a" in info.source and "seed 0" in info.source
    assert read_displacement(dataset, info, "atlas") is None
    for case in info.cases():
        image, labels = read_case(dataset, info, case)
        assert image.shape == labels.shape == SHAPE and image.dtype == np.float32
        assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
        assert set(np.unique(labels)) == {0, 1, 2, 3}, case
        u = read_displacement(dataset, info, case)
        if case == "atlas" or case in info.splits["train"]:
            assert u is None  # true displacements are kept for evaluation subjects only
        else:
            assert u.shape == (3, *SHAPE) and u.dtype == np.float32 and np.isfinite(u).all()


def test_true_displacement_maps_subject_onto_atlas(dataset):
    info = load_info(dataset)
    atlas_image, atlas_labels = read_case(dataset, info, "atlas")
    brain_mask = atlas_labels > 0
    for case in info.splits["val"] + info.splits["test"]:
        image, labels = read_case(dataset, info, case)
        u = read_displacement(dataset, info, case)
        before = dice(labels, atlas_labels)
        after = dice(warp_array(labels, u, mode="nearest"), atlas_labels)
        assert 0.5 < before < 0.8, f"{case}: unregistered Dice {before:.3f}"
        assert after >= 0.9 and after >= before + 0.2, f"{case}: {before:.3f} -> {after:.3f}"
        assert min_jacobian_determinant(u) > 0.1  # no folding
        # the images agree too: correlation with the atlas inside the brain goes up
        warped = warp_array(image, u)
        r_before = np.corrcoef(image[brain_mask], atlas_image[brain_mask])[0, 1]
        r_after = np.corrcoef(warped[brain_mask], atlas_image[brain_mask])[0, 1]
        assert r_after > r_before + 0.2 and r_after > 0.85, case


def test_same_seed_identical_files_independent_of_split_sizes(dataset, tmp_path):
    """Subject i comes from rng([seed, i]): a 1/1/1 dataset repeats sub-000 .. sub-002."""
    other = make_brain_mri(tmp_path / "again", seed=0, n_train=1, n_val=1, n_test=1)
    info, info2 = load_info(dataset), load_info(other)
    assert info2.splits["val"] == ["sub-001"]
    for case in ("atlas", "sub-000", "sub-001", "sub-002"):
        for a, b in zip(read_case(dataset, info, case), read_case(other, info2, case), strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        read_displacement(dataset, info, "sub-002"), read_displacement(other, info2, "sub-002")
    )


def test_make_subject_matches_files_and_differs_across_seeds(dataset, atlas):
    info = load_info(dataset)
    image, labels = read_case(dataset, info, "sub-002")
    u_file = read_displacement(dataset, info, "sub-002")
    t1, lab, u = make_subject(*atlas, np.random.default_rng([0, 2]))
    np.testing.assert_array_equal(t1, image)
    np.testing.assert_array_equal(lab, labels)
    np.testing.assert_array_equal(u, u_file)
    t1_other, _, u_other = make_subject(*atlas, np.random.default_rng([1, 0]))
    assert np.abs(u_other - u).max() > 1.0 and np.abs(t1_other - t1).mean() > 0.01


def test_existing_folder_is_a_cache(dataset):
    json_time = (dataset / "dataset.json").stat().st_mtime_ns
    assert make_brain_mri(dataset, seed=0, n_train=2, n_val=1, n_test=2) == dataset
    assert (dataset / "dataset.json").stat().st_mtime_ns == json_time
    with pytest.raises(FileExistsError, match="delete it"):
        make_brain_mri(dataset, seed=1, n_train=2, n_val=1, n_test=2)


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    written = []
    real_write_case = brain.write_case

    def failing_write_case(root, case_id, *args, **kwargs):
        if case_id == "sub-001":
            raise RuntimeError("disk full (simulated)")
        real_write_case(root, case_id, *args, **kwargs)
        written.append(case_id)

    monkeypatch.setattr(brain, "write_case", failing_write_case)
    out = tmp_path / "brain-mri"
    with pytest.raises(RuntimeError, match="simulated"):
        make_brain_mri(out, seed=0, n_train=2, n_val=1, n_test=1)
    assert written == ["atlas", "sub-000"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_random_deformation_inverse_and_folding_guard():
    shape = (24, 28, 24)
    rng = np.random.default_rng(0)
    u, w = random_deformation(shape, rng, sigma=6.0, magnitude=1.0, grid=2)
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    image = gaussian_filter(image, 2)
    back = warp_array(warp_array(image, w), u)  # (I∘Φ_w)∘Φ_u = I
    inner = (slice(4, -4),) * 3
    assert np.abs(back - image)[inner].max() < 0.1 * np.ptp(image)
    atlas_t1 = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match="folded"):
        make_subject(atlas_t1, np.ones(shape, np.uint8), rng, sigma=1.0, magnitude=5.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_brain_mri("/nonexistent/x", n_train=0), "n_train"),
        (lambda: make_brain_mri("/nonexistent/x", seed=-1), "seed"),
        (lambda: load_mni152(spacing_mm=0), "spacing_mm"),
        (lambda: load_mni152(shape=(80, 96)), "shape"),
        (lambda: make_subject(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), None), "one shape"),
        (lambda: make_subject(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), None, noise=-1), "noise"),
    ],
)
def test_bad_arguments_raise_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
