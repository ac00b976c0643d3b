"""The demo pair: a generated 2D fixed image and a moving image deformed from it (no files).

The fixed image J is a few textured blobs (2 classes: background, blob); the moving image I is
J deformed by a known smooth random displacement u, I = J∘(id + u) (``synth.warp_array``), so
registering I to J has a known answer. Used by ``demo.py``, the book's widgets and chapter 3.
"""

from __future__ import annotations

import numpy as np
import torch

from .synth import random_displacement, smooth_noise, warp_array


def make_demo_pair(size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed image with blobs and a moving image deformed from it, as ``(1, 1, size, size)``.

    Returns float images ``moving``, ``fixed`` and integer ``moving_labels``, ``fixed_labels``.
    """
    rng = np.random.default_rng(seed)
    fixed_labels = (smooth_noise((size, size), size / 10, rng) > 0.4).astype(np.int64)
    texture = 0.05 * smooth_noise((size, size), 1.0, rng)
    fixed = np.clip(0.3 + 0.4 * fixed_labels + texture, 0, 1).astype(np.float32)
    u = random_displacement((size, size), sigma=size / 8, magnitude=size / 32, rng=rng)
    moving = warp_array(fixed, u)
    moving_labels = warp_array(fixed_labels, u, mode="nearest")
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None, None]  # noqa: E731
    return {
        "moving": as_tensor(moving),
        "fixed": as_tensor(fixed),
        "moving_labels": as_tensor(moving_labels),
        "fixed_labels": as_tensor(fixed_labels),
    }
