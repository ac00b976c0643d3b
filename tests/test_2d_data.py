"""The embedded 2D datasets (Platelet-EM, PhC-U373): layout, splits, determinism, true
displacements, the noise knob, and atomic writing. Small sizes keep the file fast on 2 cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepsim_edu.data import phc, platelet, series
from deepsim_edu.data.layout import load_info, read_case, read_displacement, read_nifti
from deepsim_edu.data.synth import warp_array
from deepsim_edu.transform import folding_fraction

SMALL = {
    "platelet-em": (platelet.make_platelet_em, {"size": 160, "n_train": 6, "n_valtest": 12}),
    "phc-u373": (phc.make_phc_u373, {"size": (96, 128), "n_train": 6, "n_valtest": 16}),
}


def make(name: str, out: Path, seed: int = 0, noise: float = 1.0) -> Path:
    maker, kwargs = SMALL[name]
    return maker(out, seed=seed, noise=noise, **kwargs)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[tuple[str, int, float], Path]:
    """Each dataset generated for (seed 0, noise 1), (seed 0, noise 0) and (seed 1, noise 1)."""
    base = tmp_path_factory.mktemp("embedded2d")
    return {
        (name, seed, noise): make(name, base / f"{name}-{seed}-{noise}", seed, noise)
        for name in SMALL
        for seed, noise in [(0, 1.0), (0, 0.0), (1, 1.0)]
    }


def dice(a: np.ndarray, b: np.ndarray, classes: range) -> float:
    """Mean Dice over ``classes`` (absent from both maps: skipped)."""
    scores = []
    for c in classes:
        total = (a == c).sum() + (b == c).sum()
        if total:
            scores.append(2 * ((a == c) & (b == c)).sum() / total)
    return float(np.mean(scores))


def all_arrays(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): read_nifti(p, 3)[0] for p in sorted(root.rglob("*.nii.gz"))}


def laplacian_energy(image: np.ndarray) -> float:
    """Mean squared discrete Laplacian: the high-frequency energy of an image."""
    lap = (
        -4 * image[1:-1, 1:-1]
        + image[:-2, 1:-1]
        + image[2:, 1:-1]
        + image[1:-1, :-2]
        + image[1:-1, 2:]
    )
    return float((lap**2).mean())


@pytest.mark.parametrize("name", list(SMALL))
def test_layout_shapes_dtypes_and_ranges(folders, name):
    root = folders[(name, 0, 1.0)]
    info = load_info(root)
    assert info.name == name and info.ndim == 2 and info.spacing == [1.0, 1.0]
    assert info.pairing == {"rule": "neighbours", "max_offset": 2}
    assert info.classes == (
        ["background", "cytoplasm", "organelle"]
        if name == "platelet-em"
        else ["background", "cell"]
    )
    assert "seed=0" in info.source and "noise=1.0" in info.source
    size = SMALL[name][1]["size"]
    shape = (size, size) if isinstance(size, int) else tuple(size)
    for case in info.cases():
        image, label = read_case(root, info, case)
        assert image.shape == label.shape == shape
        assert image.dtype == np.float32 and np.isfinite(image).all()
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert read_nifti(root / "labels" / f"{case}.nii.gz", 2)[0].dtype == np.uint8
        mask = read_nifti(root / "noise_masks" / f"{case}.nii.gz", 2)[0]
        assert mask.shape == shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}


@pytest.mark.parametrize("name", list(SMALL))
def test_every_class_in_every_split(folders, name):
    root = folders[(name, 0, 1.0)]
    info = load_info(root)
    for split, ids in info.splits.items():
        present = set()
        for case in ids:
            present |= set(np.unique(read_case(root, info, case)[1]).tolist())
        assert present == set(range(info.num_classes)), f"{split} lacks a class"


def test_splits_follow_the_papers_proportions(folders):
    info = load_info(folders[("platelet-em", 0, 1.0)])
    assert info.splits["train"] == [f"train_{i:03d}" for i in range(6)]
    assert info.splits["val"] == [f"vt_{i:03d}" for i in range(6)]  # paper: sections 0-11 of 24
    assert info.splits["test"] == [f"vt_{i:03d}" for i in range(6, 12)]  # paper: 12-23
    info = load_info(folders[("phc-u373", 0, 1.0)])
    val, test = phc.valtest_frames(16)  # paper: frames 0-49 and 60-114 of 115
    assert info.splits["val"] == [f"vt_{t:03d}" for t in val] and val.start == 0
    assert info.splits["test"] == [f"vt_{t:03d}" for t in test] and test.stop == 16
    assert phc.valtest_frames(115) == (range(50), range(60, 115))
    assert len(info.splits["train"]) == 6


@pytest.mark.parametrize("name", list(SMALL))
def test_same_seed_same_files_other_seed_other_files(folders, tmp_path, name):
    first = all_arrays(folders[(name, 0, 1.0)])
    again = all_arrays(make(name, tmp_path / "again", seed=0))
    assert first.keys() == again.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    other = all_arrays(folders[(name, 1, 1.0)])
    assert not np.array_equal(first["images/vt_000.nii.gz"], other["images/vt_000.nii.gz"])
    assert not np.array_equal(first["labels/vt_000.nii.gz"], other["labels/vt_000.nii.gz"])


@pytest.mark.parametrize("name", list(SMALL))
def test_true_displacement_aligns_neighbours(folders, name):
    """warp(label_i, u_i) matches label_{i+1} better than label_i does: pins the direction."""
    root = folders[(name, 0, 1.0)]
    info = load_info(root)
    foreground = range(1, info.num_classes)
    before, after = [], []
    for split in ("val", "test"):
        ids = info.splits[split]
        for moving, fixed in zip(ids[:-1], ids[1:], strict=True):
            label_m, label_f = read_case(root, info, moving)[1], read_case(root, info, fixed)[1]
            u = read_displacement(root, info, moving)
            assert u is not None and u.shape == (2, *label_m.shape) and u.dtype == np.float32
            assert folding_fraction(torch.from_numpy(u)[None]).item() == 0.0
            warped = warp_array(label_m, u, mode="nearest")
            before.append(dice(label_m, label_f, foreground))
            after.append(dice(warped, label_f, foreground))
        assert read_displacement(root, info, ids[-1]) is None  # no partner in the split
    assert np.mean(after) >= 0.9, after
    assert np.mean(after) > np.mean(before) + 0.03, (before, after)
    assert np.mean(before) < 0.92, before  # registration has work to do
    assert all(read_displacement(root, info, c) is None for c in info.splits["train"])


@pytest.mark.parametrize("name", list(SMALL))
def test_noise_zero_is_clean_and_keeps_the_anatomy(folders, name):
    noisy, clean = folders[(name, 0, 1.0)], folders[(name, 0, 0.0)]
    info = load_info(noisy)
    for case in info.cases():
        image_n, label_n = read_case(noisy, info, case)
        image_c, label_c = read_case(clean, info, case)
        np.testing.assert_array_equal(label_n, label_c)  # same seed: same sections
        assert laplacian_energy(image_c) < 0.7 * laplacian_energy(image_n), case
        assert not read_nifti(clean / "noise_masks" / f"{case}.nii.gz", 2)[0].any()
    u_n = read_displacement(noisy, info, info.splits["test"][0])
    np.testing.assert_array_equal(u_n, read_displacement(clean, info, info.splits["test"][0]))


@pytest.mark.parametrize("name", list(SMALL))
def test_noise_patches_cover_30_to_50_percent_of_half_the_sections(folders, name):
    root = folders[(name, 0, 1.0)]
    info = load_info(root)
    coverage = np.array(
        [read_nifti(root / "noise_masks" / f"{c}.nii.gz", 2)[0].mean() for c in info.cases()]
    )
    patchy = coverage[coverage > 0]
    assert 0.3 <= len(patchy) / len(coverage) <= 0.7
    assert ((patchy >= 0.29) & (patchy <= 0.51)).all(), patchy


def test_add_noise_knob():
    rng = np.random.default_rng(0)
    image = np.full((64, 64), 0.5, dtype=np.float32)
    clean, mask = series.add_noise(image, 0.0, rng, patches=True)
    np.testing.assert_allclose(clean, image, atol=1e-6)
    assert not mask.any()
    noisy, mask = series.add_noise(image, 1.0, np.random.default_rng(0), patches=True)
    assert 0.29 <= mask.mean() <= 0.51
    assert noisy[mask == 1].std() > 3 * noisy[mask == 0].std()
    with pytest.raises(ValueError, match="noise"):
        series.add_noise(image, -0.1, rng)


@pytest.mark.parametrize(
    "bad",
    [{"noise": -1.0}, {"noise": float("nan")}, {"n_train": 1}, {"n_valtest": 3}, {"size": 32}],
)
def test_platelet_rejects_bad_parameters(tmp_path, bad):
    with pytest.raises(ValueError):
        platelet.make_platelet_em(tmp_path / "x", **bad)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"noise": -0.5},
        {"n_train": 0},
        {"n_valtest": 5},
        {"size": (32, 128)},
        {"size": (64, 64, 64)},
    ],
)
def test_phc_rejects_bad_parameters(tmp_path, bad):
    with pytest.raises(ValueError):
        phc.make_phc_u373(tmp_path / "x", **bad)


@pytest.mark.parametrize("name", list(SMALL))
def test_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch, name):
    """A crash while writing leaves no folder, no temporary sibling, and an old dataset intact."""
    real_write_case = series.write_case
    calls = {"n": 0}

    def failing_write_case(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full (simulated)")
        return real_write_case(*args, **kwargs)

    monkeypatch.setattr(series, "write_case", failing_write_case)
    with pytest.raises(RuntimeError, match="simulated"):
        make(name, tmp_path / "data")
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(series, "write_case", real_write_case)
    old = make(name, tmp_path / "data", seed=1)
    old_info = (old / "dataset.json").read_text()
    calls["n"] = 0
    monkeypatch.setattr(series, "write_case", failing_write_case)
    with pytest.raises(RuntimeError):
        make(name, tmp_path / "data", seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert (old / "dataset.json").read_text() == old_info
    load_info(old)


def test_patch_strength_scales_only_the_patches():
    """patch_strength 1 is today's output bit for bit; 0 is the output without patches, with the
    same mask; 0.5 lies between (the same draws, half the patch noise)."""
    image = np.full((64, 64), 0.5, dtype=np.float32)
    today, mask = series.add_noise(image, 1.0, np.random.default_rng(3))
    one, mask_one = series.add_noise(image, 1.0, np.random.default_rng(3), patch_strength=1.0)
    none, mask_none = series.add_noise(image, 1.0, np.random.default_rng(3), patch_strength=0.0)
    without, _ = series.add_noise(image, 1.0, np.random.default_rng(3), patches=False)
    half, _ = series.add_noise(image, 1.0, np.random.default_rng(3), patch_strength=0.5)
    assert np.array_equal(one, today) and np.array_equal(mask_one, mask)
    assert np.array_equal(none, without) and np.array_equal(mask_none, mask) and mask.any()
    inside = mask == 1
    spread = [x[inside].std() for x in (none, half, today)]
    assert spread[0] < spread[1] < spread[2]
    with pytest.raises(ValueError, match="noise"):
        series.add_noise(image, 1.0, np.random.default_rng(3), patch_strength=-1.0)
