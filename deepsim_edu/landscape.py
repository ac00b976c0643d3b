"""The metric landscape: a similarity's value as the moving image slides over the fixed one.

Registration follows the gradient of D(I∘Φ, J). A good metric has a landscape with one clear
minimum at the true alignment and a smooth slope towards it; on noisy images a pixel metric's
landscape flattens and gets bumpy, while a metric on noise-invariant features keeps its shape.
``metric_landscape`` computes the data; ``viz`` draws it.

Here J = the image (+ noise) and I∘Φ = the image translated by s along one axis (+ independent
noise), for every shift s: the true alignment is s = 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor

from .transform import warp


def translate(image: Tensor, shift: float, axis: int) -> Tensor:
    """``image(x + shift·e_axis)``, sub-voxel shifts interpolated; ``(B, C, *spatial)``."""
    ndim = image.dim() - 2
    if axis not in range(ndim):
        raise ValueError(f"axis must be in 0..{ndim - 1} for a {ndim}D image, got {axis}")
    u = image.new_zeros(1, ndim, *image.shape[2:])
    u[:, axis] = shift
    return warp(image, u)


@torch.no_grad()
def metric_landscape(
    image: Tensor,
    metrics: dict[str, Callable[[Tensor, Tensor], Tensor]],
    shifts: Sequence[float],
    noise: Sequence[float] = (0.0,),
    axis: int = -1,
    seed: int = 0,
) -> pd.DataFrame:
    """Every metric's loss value at every shift and noise level.

    Args:
        image: ``(1, 1, *spatial)`` intensities in [0, 1].
        metrics: name → loss ``f(warped, fixed)`` (e.g. from ``losses.get_loss``).
        shifts: translations in voxels along ``axis`` (default: the last axis).
        noise: standard deviations of the Gaussian noise added independently to the fixed and
            the moving image (0 = clean). The same noise draw is used for every shift.
    Returns:
        a DataFrame with columns ``metric, noise, shift, value`` (one row per combination).
    """
    if image.dim() not in (4, 5) or image.shape[:2] != (1, 1):
        raise ValueError(f"image must be (1, 1, *spatial), got shape {tuple(image.shape)}")
    for name, metric in metrics.items():
        if getattr(metric, "needs_labels", False):
            raise ValueError(
                f"metric {name!r} needs label maps; the landscape compares images only"
            )
    axis = axis % (image.dim() - 2)
    rows = []
    for sigma in noise:
        if sigma < 0:
            raise ValueError(f"noise levels must be >= 0, got {sigma}")
        generator = torch.Generator().manual_seed(seed)
        noise_fixed = sigma * torch.randn(image.shape, generator=generator)
        noise_moving = sigma * torch.randn(image.shape, generator=generator)
        fixed = image + noise_fixed.to(image)
        for shift in shifts:
            moving = translate(image, float(shift), axis) + noise_moving.to(image)
            for name, metric in metrics.items():
                rows.append({"metric": name, "noise": float(sigma), "shift": float(shift),
                             "value": float(metric(moving, fixed))})  # fmt: skip
    return pd.DataFrame(rows)
