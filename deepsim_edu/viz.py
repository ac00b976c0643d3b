"""Pictures: images with label contours and deformation grids (matplotlib; returns Figures).

A deformation grid shows Φ: take the lines of an evenly spaced grid in the fixed image's space
and draw each point x where Φ sends it, x + u(x) — i.e. where in the moving image the warped
image reads its value. Straight lines mean u is constant; crossing lines mean folding.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure


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


def show_image(ax, image, labels=None, title: str = "", cmap: str = "gray") -> None:
    """Draw an image with optional label contours on ``ax``."""
    ax.imshow(_numpy2d(image), cmap=cmap, interpolation="nearest")
    if labels is not None:
        lab = _numpy2d(labels)
        levels = np.arange(lab.max()) + 0.5
        if len(levels):
            ax.contour(
                lab,
                levels=levels,
                colors=["#ff7f0e", "#2ca02c", "#d62728", "#9467bd"][: len(levels)],
                linewidths=0.8,
            )
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def draw_grid(ax, displacement, spacing: int = 8, color: str = "#1f77b4") -> None:
    """Draw the deformation grid of a 2D displacement on ``ax`` (points as (row, col))."""
    for line in grid_lines(displacement, spacing):
        ax.plot(line[:, 1], line[:, 0], color=color, linewidth=0.6)


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
