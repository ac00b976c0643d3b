"""Figures: deformation grids against known displacements, the EMA smoothing, axial slices,
every paper figure rendered from tiny runs (not blank, no pyplot figure left), save_figures,
and the errors for missing runs and data."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from deepsim_edu import figures, viz
from deepsim_edu.config import registration_config, segmentation_config
from deepsim_edu.data.layout import DatasetInfo, write_case, write_dataset_json
from deepsim_edu.data.platelet import make_platelet_em
from deepsim_edu.evaluate import evaluate_run
from deepsim_edu.train import train_registration, train_segmentation

TINY = {"encoder_channels": (4, 8, 8), "crop": None, "augmentation": "none", "lr": 3e-3}


def tiny_brains(root: Path) -> None:
    """A 16×24×16 stand-in for Brain-MRI (atlas rule): nested ellipsoids as CSF/GM/WM, each
    subject the atlas shifted by i voxels along Y. Writing it takes milliseconds, where the
    embedded generator (tests/test_brain_data.py) resamples the MNI template for seconds."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (16, 24, 16)), indexing="ij")
    cases = {"atlas": 0, "sub-0": 1, "sub-1": -1, "sub-2": 2, "sub-3": -2}
    for case, shift in cases.items():
        r = np.sqrt(x**2 + np.roll(y, shift, axis=1) ** 2 + z**2)
        label = np.select([r < 0.4, r < 0.6, r < 0.85], [3, 2, 1], 0).astype(np.uint8)
        image = np.array([0.0, 0.2, 0.5, 0.9])[label] + 0.02 * np.sin(7 * x * y)
        write_case(root, case, image, label, [5.0, 5.0, 5.0])
    splits = {"train": ["sub-0"], "val": ["sub-1"], "test": ["sub-2", "sub-3"]}
    write_dataset_json(root, DatasetInfo(
        name="brain-mri", ndim=3, spacing=[5.0] * 3, classes=["background", "csf", "gm", "wm"],
        splits=splits, pairing={"rule": "atlas", "atlas": "atlas"}))  # fmt: skip


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """(results root, data root): embedded Platelet-EM at 64² and a tiny Brain-MRI stand-in;
    runs of a few steps: platelet-em mse, ncc, deepsim (+ its extractor), brain-mri mse."""
    base = tmp_path_factory.mktemp("viz")
    data, root = base / "data", base / "results"
    make_platelet_em(data / "platelet-em", size=64, n_train=4, n_valtest=8)
    tiny_brains(data / "brain-mri")
    extractor = root / "platelet-em" / "segmentation"
    seg = segmentation_config("platelet-em", "quick", batch_size=2, steps_per_epoch=2, epochs=1,
                              **TINY)  # fmt: skip
    train_segmentation(data / "platelet-em", extractor, seg, progress=False)
    for dataset, metric in [("platelet-em", "mse"), ("platelet-em", "ncc"),
                            ("platelet-em", "deepsim"), ("brain-mri", "mse")]:  # fmt: skip
        config = registration_config(dataset, metric, "quick", batch_size=2, steps_per_epoch=1,
                                     epochs=2, **TINY)  # fmt: skip
        run = root / dataset / metric
        train_registration(data / dataset, run, config, progress=False,
                           extractor=extractor / "checkpoint.pt")  # fmt: skip
        evaluate_run(run, data / dataset)
    return root, data


def rendered(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)


# ----------------------------------------------------------------------------- primitives


def test_grid_of_zero_displacement_is_the_integer_grid():
    lines = viz.grid_lines(np.zeros((2, 12, 10)), spacing=4)
    assert len(lines) == 3 + 3  # rows 0, 4, 8 and columns 0, 4, 8
    for r, line in zip((0, 4, 8), lines[:3]):
        np.testing.assert_array_equal(line, np.stack([np.full(10, r), np.arange(10)], -1))
    for c, line in zip((0, 4, 8), lines[3:]):
        np.testing.assert_array_equal(line, np.stack([np.arange(12), np.full(12, c)], -1))


def test_grid_of_constant_shift_is_shifted_by_it():
    u = np.zeros((1, 2, 12, 10))
    u[0, 0], u[0, 1] = 1.5, -2.0  # down 1.5 rows, left 2 columns
    shifted, straight = viz.grid_lines(u, 4), viz.grid_lines(np.zeros((2, 12, 10)), 4)
    for a, b in zip(shifted, straight):
        np.testing.assert_allclose(a - b, np.broadcast_to([1.5, -2.0], a.shape))
    fig = viz.new_figure()
    ax = fig.subplots()
    viz.draw_grid(ax, u, 4, clip=True)
    first = ax.lines[0]  # row 0 drawn as x = column, y = row
    np.testing.assert_allclose(first.get_xdata(), np.arange(10) - 2.0)
    np.testing.assert_allclose(first.get_ydata(), np.full(10, 1.5))
    assert ax.get_xlim() == (-0.5, 9.5) and ax.get_ylim() == (11.5, -0.5)


def test_smoothing_is_tensorboards_debiased_ema():
    values = np.array([0.3, 0.7, 0.2, 0.9])
    np.testing.assert_array_equal(viz.smooth_curve(values, 0.0), values)  # identity
    for w in (0.3, 0.6, 0.95):
        np.testing.assert_allclose(viz.smooth_curve(np.full(7, 0.8), w), 0.8, rtol=1e-12)
    # by hand, w = 0.5: m = 0.15, 0.425; debiased 0.15 / 0.5 = 0.3, 0.425 / 0.75
    np.testing.assert_allclose(viz.smooth_curve(values[:2], 0.5), [0.3, 0.425 / 0.75])
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"smoothing must be a number in \[0, 1\)"):
            viz.smooth_curve(values, bad)


def test_axial_slice_has_anterior_on_top_and_maps_the_displacement():
    volume = np.zeros((5, 6, 7))  # (X, Y, Z)
    volume[1, 4, 3] = 1.0  # x = 1, y = 4 (anterior half), middle z
    display = viz.axial_slice(volume)
    assert display.shape == (6, 5) and display[6 - 1 - 4, 1] == 1.0
    u = np.zeros((3, 5, 6, 7))
    u[0], u[1], u[2] = 2.0, 1.0, 9.0  # +x (right), +y (anterior), through-plane
    shown = viz.axial_displacement(u)
    assert shown.shape == (2, 6, 5)
    assert np.all(shown[0] == -1.0) and np.all(shown[1] == 2.0)  # anterior = up = −row


def test_jacobian_map_highlights_folding():
    det = np.ones((8, 8))
    det[2, 3] = -0.5
    fig = viz.new_figure()
    ax = fig.subplots()
    viz.draw_jacobian(ax, det)
    pixels = rendered(fig) / 255
    green = np.array(to_rgb(viz.FOLDING_COLOUR))
    assert (np.abs(pixels - green).sum(-1) < 0.05).any()


# ----------------------------------------------------------------------------- figures

FIGURES = {
    "convergence": lambda root, data: figures.plot_convergence(root),
    "convergence smoothed": lambda root, data: figures.plot_convergence(root, "platelet-em", 0.6),
    "registration grid 2D+3D": lambda root, data: figures.plot_registration_grid(root, data, 1),
    "noisy patch": lambda root, data: figures.plot_noisy_patch(root, data, size=24),
    "feature maps": lambda root, data: figures.plot_feature_maps(root, data, channels=2),
    "dice boxplots": lambda root, data: figures.plot_dice_boxplots(root),
    "jacobian 2D": lambda root, data: figures.plot_jacobian(root, data, "platelet-em"),
    "jacobian 3D": lambda root, data: figures.plot_jacobian(root, data, "brain-mri", 1),
}


@pytest.mark.parametrize("name", FIGURES)
def test_figure_renders_and_is_not_blank(runs, name):
    before = plt.get_fignums()
    fig = FIGURES[name](*runs)
    assert rendered(fig).std() > 20, f"{name}: blank figure"
    assert plt.get_fignums() == before  # no pyplot figure made, nothing to close


def test_noisy_patch_without_noise_masks_says_so(runs, tmp_path):
    root, data = runs
    shutil.copytree(data / "platelet-em", tmp_path / "platelet-em",
                    ignore=shutil.ignore_patterns("noise_masks"))  # fmt: skip
    fig = figures.plot_noisy_patch(root, tmp_path, metrics="ncc", size=16)
    assert "no noise masks" in fig.get_suptitle() and rendered(fig).std() > 20


def test_save_figures_writes_what_the_runs_allow(runs, tmp_path, capsys):
    root, data = runs
    paths = figures.save_figures(root, tmp_path / "figs", data)
    names = {"convergence", "dice_boxplots", "registration_grid", "jacobian_platelet-em",
             "jacobian_brain-mri", "noisy_patch", "feature_maps_platelet-em"}  # fmt: skip
    assert {p.stem for p in paths} == names
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(p.name for p in paths)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    assert "skipped feature_maps_brain-mri: no feature extractor" in capsys.readouterr().out
    (tmp_path / "brain_only").mkdir()
    (tmp_path / "brain_only" / "brain-mri").symlink_to(data / "brain-mri")
    paths = figures.save_figures(root, tmp_path / "brain_only_figs", tmp_path / "brain_only")
    printed = capsys.readouterr().out
    assert "skipped noisy_patch" in printed and "skipped platelet-em images" in printed
    assert {p.stem for p in paths} == {"convergence", "dice_boxplots", "registration_grid",
                                       "jacobian_brain-mri"}  # fmt: skip


def test_missing_runs_and_bad_arguments_raise(runs, tmp_path):
    root, data = runs
    with pytest.raises(FileNotFoundError, match="no results folder"):
        figures.plot_convergence(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="phc-u373: no registration run"):
        figures.plot_convergence(root, "phc-u373")
    with pytest.raises(FileNotFoundError, match=r"brain-mri/deepsim/checkpoint.pt: missing"):
        figures.plot_jacobian(root, data, "brain-mri", metrics=["mse", "deepsim"])
    with pytest.raises(ValueError, match="unknown metric 'ssim'"):
        figures.plot_registration_grid(root, data, metrics=["ssim"])
    with pytest.raises(ValueError, match="unknown dataset 'lung'"):
        figures.plot_jacobian(root, data, "lung")
    with pytest.raises(ValueError, match=r"pair_index must lie in 0\.\.1"):
        figures.plot_jacobian(root, data, "brain-mri", pair_index=2)
    with pytest.raises(FileNotFoundError, match="no feature-extractor checkpoint"):
        figures.plot_feature_maps(root, data, "brain-mri")
    with pytest.raises(ValueError, match="size must lie in 4..64"):
        figures.plot_noisy_patch(root, data, size=100)
    with pytest.raises(ValueError, match="not in the dataset layout"):
        figures.plot_jacobian(root, tmp_path, "platelet-em")
    with pytest.raises(ValueError, match="smoothing"):
        figures.plot_convergence(root, smoothing=1.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no test_results.csv"):
        figures.plot_dice_boxplots(tmp_path / "empty")
