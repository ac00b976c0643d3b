"""Building blocks shared by the embedded-dataset generators (numpy in, numpy out).

Every generator makes its images from a seeded ``numpy.random.Generator``, so the same seed gives
identical files. Arrays here are plain spatial arrays ``(H, W)`` / ``(D, H, W)``; displacements
are ``(ndim, *spatial)`` in voxels with channel k = axis k, as in ``deepsim_edu.transform``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ..transform import warp


def smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """White noise blurred by a Gaussian of ``sigma`` voxels, rescaled to zero mean, unit std."""
    field = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def random_displacement(
    shape: tuple[int, ...], sigma: float, magnitude: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth random displacement ``(ndim, *shape)``: per axis magnitude · smooth_noise(sigma).

    ``magnitude`` is the standard deviation of each component in voxels; ``sigma`` its
    correlation length. Keep ``magnitude`` well below ``sigma`` for a field that does not fold.
    """
    return np.stack([magnitude * smooth_noise(shape, sigma, rng) for _ in shape]).astype(np.float32)


def warp_array(array: np.ndarray, displacement: np.ndarray, mode: str = "linear") -> np.ndarray:
    """``array(x + u(x))`` for a numpy image or label map, through ``transform.warp``."""
    image = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    if mode == "linear":
        image = image.float()
    u = torch.from_numpy(np.ascontiguousarray(displacement, dtype=np.float32))[None]
    return warp(image, u, mode=mode)[0, 0].numpy()


def _warp_field(field: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Warp every component of a vector field ``(ndim, *spatial)`` in one call (linear)."""
    f = torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))[None]
    u = torch.from_numpy(np.ascontiguousarray(displacement, dtype=np.float32))[None]
    return warp(f, u)[0].numpy()


def compose_displacements(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Displacement of x -> Φ1(Φ2(x)) for Φ1 = id + first, Φ2 = id + second.

    (I∘Φ1)∘Φ2 = I∘(Φ1∘Φ2): warping by ``first`` then by ``second`` equals warping once by the
    result, ``second(x) + first(x + second(x))``.
    """
    return (second + _warp_field(first, second)).astype(np.float32)


def invert_displacement(u: np.ndarray, iterations: int = 30) -> np.ndarray:
    """The displacement w of Φ⁻¹ for Φ = id + u, by the fixed point w(y) = -u(y + w(y)).

    Converges for smooth fields with |∇u| < 1 (no folding); then warping by u and by w undo each
    other up to interpolation error.
    """
    w = -u.copy()
    for _ in range(iterations):
        w = -_warp_field(u, w)
    return w.astype(np.float32)


def bias_field(
    shape: tuple[int, ...], sigma: float, strength: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth multiplicative intensity field exp(strength · smooth_noise), mean ≈ 1."""
    return np.exp(strength * smooth_noise(shape, sigma, rng)).astype(np.float32)
