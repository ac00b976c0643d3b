"""Pictures: drawing primitives on arrays — images with label contours, deformation grids,
Jacobian-determinant maps, smoothed curves, axial slices (matplotlib; returns Figures).

A deformation grid shows Φ: take the lines of an evenly spaced grid in the fixed image's space
and draw each point x where Φ sends it, x + u(x) — i.e. where in the moving image the warped
image reads its value. Straight lines mean u is constant; crossing lines mean folding.

The paper's figures, drawn from a results folder and the data (convergence, Fig. 2a grid,
Fig. 2b noisy patch, feature maps, boxplots, det ∇Φ maps, ``save_figures``), live in
``figures.py``, which draws with these primitives (this module imports nothing of the library).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure

# one colour per similarity metric, the same in every figure (matplotlib's tab10)
METRIC_COLOURS = {
    "mse": "#1f77b4",  # blue
    "ncc": "#ff7f0e",  # orange
    "ncc-sup": "#2ca02c",  # green
    "vgg": "#9467bd",  # purple
    "deepsim": "#d62728",  # red
}
METRIC_LABELS = {"mse": "MSE", "ncc": "NCC", "ncc-sup": "NCC-sup", "vgg": "VGG",
                 "deepsim": "DeepSim"}  # fmt: skip
BEFORE_COLOUR = "#7f7f7f"  # "before registration" (identity Φ)
# label contours of the figures: bright colours that none of the metric colours uses
LABEL_COLOURS = ("#ffd92f", "#17becf", "#f781bf", "#a6d854")
FOLDING_COLOUR = "#39ff14"  # det ∇Φ < 0 on a Jacobian map


def metric_colour(metric: str) -> str:
    """The colour of ``metric`` (grey for a name outside ``METRIC_COLOURS``)."""
    return METRIC_COLOURS.get(metric, BEFORE_COLOUR)


def new_figure(**kwargs) -> Figure:
    """A Figure with its own Agg canvas, not registered with pyplot.

    Nothing is shown and nothing needs closing: the figure is freed with its last reference,
    ``fig.canvas.draw()`` renders it and ``fig.savefig`` writes it. ``kwargs`` go to ``Figure``
    (``figsize``, ``layout``, ...).
    """
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _numpy2d(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A 2D array from ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)`` tensors/arrays."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = x.squeeze()
    if x.ndim != 2:
        raise ValueError(f"expected a single 2D image, got shape {x.shape} after squeezing")
    return x


def grid_lines(displacement: torch.Tensor | np.ndarray, spacing: int = 8) -> list[np.ndarray]:
    """Deformed grid lines of a 2D displacement ``(2, H, W)`` (or ``(1, 2, H, W)``).

    Returns a list of ``(N, 2)`` arrays of points (row, col) = x + u(x) along every
    ``spacing``-th row and column of the grid.
    """
    u = (
        displacement.detach().cpu().numpy()
        if isinstance(displacement, torch.Tensor)
        else np.asarray(displacement)
    )
    if u.ndim == 4:
        u = u[0]
    if u.ndim != 3 or u.shape[0] != 2:
        raise ValueError(f"grid_lines needs a 2D displacement (2, H, W), got shape {u.shape}")
    _, height, width = u.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    mapped = np.stack([rows + u[0], cols + u[1]], axis=-1)  # (H, W, 2)
    lines = [mapped[r, :, :] for r in range(0, height, spacing)]
    lines += [mapped[:, c, :] for c in range(0, width, spacing)]
    return lines


def show_image(
    ax,
    image,
    labels=None,
    title: str = "",
    cmap: str = "gray",
    label_colours=("#ff7f0e", "#2ca02c", "#d62728", "#9467bd"),
    vmin: float | None = None,
    vmax: float | None = None,
) -> None:
    """Draw an image with optional label contours on ``ax`` (one colour per class boundary).

    ``vmin``/``vmax`` fix the grey scale (default: the image's range), so that several panels
    can share one.
    """
    ax.imshow(_numpy2d(image), cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
    if labels is not None:
        lab = _numpy2d(labels)
        levels = np.arange(lab.max()) + 0.5
        if len(levels):
            colours = [label_colours[i % len(label_colours)] for i in range(len(levels))]
            ax.contour(lab, levels=levels, colors=colours, linewidths=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def draw_grid(
    ax,
    displacement,
    spacing: int = 8,
    color: str = "#1f77b4",
    linewidth: float = 0.6,
    clip: bool = False,
) -> None:
    """Draw the deformation grid of a 2D displacement on ``ax`` (points as (row, col)).

    ``clip=True`` keeps the axis limits at the image's extent (rows downwards, as ``imshow``
    draws them): grid points that Φ sends outside the image are cut off.
    """
    for line in grid_lines(displacement, spacing):
        ax.plot(line[:, 1], line[:, 0], color=color, linewidth=linewidth)
    if clip:
        height, width = np.shape(displacement)[-2:]
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)


def grid_spacing(shape: tuple[int, ...], lines: int = 12) -> int:
    """A grid spacing that draws about ``lines`` lines along the shorter side (at least 3)."""
    return max(3, min(shape) // lines)


def draw_jacobian(ax, det, halfwidth: float | None = None, title: str = ""):
    """det ∇Φ of a 2D slice ``(H, W)`` on ``ax``: diverging colours centred at 1 (no change).

    Blue: det < 1 (the warp shrinks), red: det > 1 (it expands), white: 1. The colour scale runs
    over [1 − h, 1 + h] with h = ``halfwidth`` (default: the largest |det − 1|, kept within
    [0.05, 1]); values beyond are clipped. Folding voxels, det < 0, are painted in
    ``FOLDING_COLOUR`` over the map. Returns the image artist (for a colour bar).
    """
    det = _numpy2d(det)
    if halfwidth is None:
        halfwidth = float(np.clip(np.abs(det - 1).max(), 0.05, 1.0))
    norm = TwoSlopeNorm(vcenter=1.0, vmin=1.0 - halfwidth, vmax=1.0 + halfwidth)
    artist = ax.imshow(det, cmap="RdBu_r", norm=norm, interpolation="nearest")
    folding = det < 0
    if folding.any():
        ax.imshow(np.ma.masked_where(~folding, np.ones_like(det)), interpolation="nearest",
                  cmap=ListedColormap([FOLDING_COLOUR]), vmin=0, vmax=1)  # fmt: skip
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return artist


def blank(ax, text: str = "") -> None:
    """An empty panel with an optional centred note (e.g. "no run")."""
    ax.set_axis_off()
    if text:
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="grey",
                transform=ax.transAxes)  # fmt: skip


def frame_only(ax) -> None:
    """No ticks, no spines, but the axis labels stay visible (row and column headings)."""
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def smooth_curve(values, smoothing: float = 0.0) -> np.ndarray:
    """Exponential moving average of a curve, as TensorBoard's smoothing slider computes it.

    With weight w = ``smoothing`` in [0, 1):  m_i = w·m_{i−1} + (1 − w)·v_i, m_{−1} = 0, and
    the smoothed value is m_i / (1 − w^(i+1)) — the division removes the bias towards the zero
    start, so a constant curve stays constant and the first point is v_0. w = 0 returns the
    values unchanged; w → 1 smooths more. Non-finite values are passed through and skipped.
    """
    if not (isinstance(smoothing, int | float) and 0.0 <= smoothing < 1.0):
        raise ValueError(f"smoothing must be a number in [0, 1), got {smoothing!r}")
    values = np.asarray(values, dtype=float)
    out = values.copy()
    last, count = 0.0, 0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            continue
        count += 1
        last = smoothing * last + (1.0 - smoothing) * v
        out[i] = last / (1.0 - smoothing**count)
    return out


def axial_slice(volume, index: int | None = None) -> np.ndarray:
    """The axial slice ``index`` (default: the middle) of a RAS volume ``(X, Y, Z)``, for display.

    Arrays of the Brain-MRI data are (X left→right, Y posterior→anterior, Z inferior→superior);
    an axial slice is a plane of constant Z. Shown in the neurological convention: rows = Y
    with anterior at the top, columns = X with the subject's left on the left, i.e.
    ``volume[:, :, z].T[::-1]`` of shape ``(Y, X)``.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"axial_slice needs a volume (X, Y, Z), got shape {volume.shape}")
    z = volume.shape[2] // 2 if index is None else index
    return volume[:, :, z].T[::-1]  # (X, Y) -> (Y, X), rows flipped: anterior on top


def axial_displacement(displacement, index: int | None = None) -> np.ndarray:
    """The in-plane part of a 3D displacement ``(3, X, Y, Z)`` on an axial slice, for display.

    Returns ``(2, Y, X)`` in the display's (row, col) axes of ``axial_slice``: a display pixel
    (r, c) is the voxel (x, y) = (c, Y−1−r), which Φ moves by (u_x, u_y), i.e. by
    (−u_y, u_x) in (row, col). The through-plane component u_z is dropped.
    """
    u = np.asarray(displacement)
    if u.ndim != 4 or u.shape[0] != 3:
        raise ValueError(f"axial_displacement needs (3, X, Y, Z), got shape {u.shape}")
    return np.stack([-axial_slice(u[1], index), axial_slice(u[0], index)])


def plot_registration(
    moving,
    fixed,
    warped,
    displacement,
    moving_labels=None,
    fixed_labels=None,
    warped_labels=None,
    title: str = "",
    spacing: int = 8,
) -> Figure:
    """One row: moving I, fixed J, warped I∘Φ, and the deformation grid of Φ over I∘Φ."""
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
    show_image(axes[0], moving, moving_labels, "moving I")
    show_image(axes[1], fixed, fixed_labels, "fixed J")
    show_image(axes[2], warped, warped_labels, "warped I∘Φ")
    show_image(axes[3], warped, None, "deformation grid Φ")
    draw_grid(axes[3], displacement, spacing)
    height, width = _numpy2d(fixed).shape
    axes[3].set_xlim(-0.5, width - 0.5)
    axes[3].set_ylim(height - 0.5, -0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_landscape(table, normalise: bool = True) -> Figure:
    """Metric landscapes from ``landscape.metric_landscape``: one panel per noise level.

    Each curve is a metric's loss against the shift; with ``normalise`` every curve is rescaled
    to [0, 1] over the shifts of its panel, so that metrics of different scales can be compared
    by shape: where the minimum sits and how deep it is.
    """
    noises = sorted(table["noise"].unique())
    fig, axes = plt.subplots(1, len(noises), figsize=(3.2 * len(noises), 3), sharey=normalise)
    axes = np.atleast_1d(axes)
    for ax, noise in zip(axes, noises):
        for metric, group in table[table["noise"] == noise].groupby("metric", sort=False):
            group = group.sort_values("shift")
            value = group["value"].to_numpy()
            if normalise:
                value = (value - value.min()) / max(value.max() - value.min(), 1e-12)
            ax.plot(group["shift"], value, marker=".", label=metric)
        ax.axvline(0, color="grey", linewidth=0.5)
        ax.set_title(f"noise σ = {noise:g}", fontsize=9)
        ax.set_xlabel("shift (voxels)")
    axes[0].set_ylabel("loss (normalised)" if normalise else "loss")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_noise_sweep(sweep) -> Figure:
    """Test Dice and folding against added noise σ, one curve per metric (mean ± sem over pairs).

    ``sweep``: the table of ``robustness.noise_sweep`` (columns metric, sigma, dice, dice_before,
    folding_fraction). The dashed grey curve is the unregistered Dice at each σ.
    """
    fig = new_figure(figsize=(8, 3.2))
    ax_dice, ax_fold = fig.subplots(1, 2)
    for metric, group in sweep.groupby("metric", sort=False):
        stats = group.groupby("sigma")[["dice", "folding_fraction"]].agg(["mean", "sem"])
        for ax, column, scale in ((ax_dice, "dice", 1.0), (ax_fold, "folding_fraction", 100.0)):
            ax.errorbar(stats.index, scale * stats[column]["mean"], scale * stats[column]["sem"],
                        color=metric_colour(metric), label=METRIC_LABELS.get(metric, metric),
                        marker="o", markersize=3, capsize=2)  # fmt: skip
    before = sweep.groupby("sigma")["dice_before"].mean()
    ax_dice.plot(before.index, before, "--", color="grey", label="before")
    ax_dice.set(xlabel="added noise σ", ylabel="test Dice", title="Dice vs noise")
    ax_fold.set(xlabel="added noise σ", ylabel="folding (% voxels)", title="folding vs noise")
    ax_dice.legend(fontsize=7)
    fig.tight_layout()
    return fig
