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
