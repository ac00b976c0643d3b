"""The registration model: its forward pass and its loss, paper Eq. 1, written once.

    L(I, J) = D(I∘Φ, J) + λ R(u),    Φ = id + u,    u = net(I ⊕ J)            (Eq. 1)

* I, the moving image, and J, the fixed image: ``(B, 1, *spatial)``, ``*spatial`` = (H, W) or
  (D, H, W); I ⊕ J is their concatenation along the channel axis, ``(B, 2, *spatial)``.
* u, the displacement the net predicts: ``(B, ndim, *spatial)`` in voxels, channel k along
  spatial axis k; I∘Φ = ``transform.warp(I, u)``, i.e. (I∘Φ)(x) = I(x + u(x)), linearly
  interpolated, ``(B, 1, *spatial)``.
* D, a similarity written as a loss (``losses.py``: 0 at a perfect match); R, the diffusion
  regulariser mean |∇u|²; λ ≥ 0 weighs them.

``register`` is the forward pass (u and I∘Φ): everything that runs a registration net calls it.
``registration_loss`` adds D and λR on top and returns every part.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from .losses import diffusion_regulariser, one_hot
from .transform import warp


def register(
    net: nn.Module, moving: Tensor, fixed: Tensor, *, amp: bool = False
) -> tuple[Tensor, Tensor]:
    """u = net(moving ⊕ fixed) and warped = moving∘Φ = warp(moving, u).

    ``moving``, ``fixed``: ``(B, 1, *spatial)`` → displacement u ``(B, ndim, *spatial)``,
    warped ``(B, 1, *spatial)``. ``net`` is any module (or function) from ``(B, 2, *spatial)``
    to ``(B, ndim, *spatial)``. ``amp``: run the net under float16 autocast (on CUDA only; on the
    CPU it is ignored); u is returned in float32 and the warp always runs in float32.
    """
    if moving.shape != fixed.shape or moving.dim() not in (4, 5) or moving.shape[1] != 1:
        raise ValueError(
            "moving and fixed must both be (B, 1, *spatial) images of one shape, got "
            f"{tuple(moving.shape)} and {tuple(fixed.shape)}"
        )
    with torch.autocast("cuda", dtype=torch.float16, enabled=amp and moving.is_cuda):
        u = net(torch.cat([moving, fixed], dim=1))  # I ⊕ J: (B, 2, *spatial) → (B, ndim, *spatial)
    u = u.float()
    return u, warp(moving, u)


class LossParts(NamedTuple):
    """Eq. 1 and its parts for one batch; ``loss = similarity + λ · regulariser``."""

    loss: Tensor  # L, scalar
    similarity: Tensor  # D(I∘Φ, J), scalar
    regulariser: Tensor  # R(u), scalar
    displacement: Tensor  # u, (B, ndim, *spatial)
    warped: Tensor  # I∘Φ, (B, 1, *spatial)


def _check_labels(similarity, moving_labels, fixed_labels, num_classes) -> None:
    if moving_labels is None or fixed_labels is None or num_classes is None:
        raise ValueError(
            f"{type(similarity).__name__} (ncc-sup) compares label maps: registration_loss needs "
            "moving_labels, fixed_labels (integer, (B, 1, *spatial)) and num_classes"
        )


def registration_loss(
    net: nn.Module,
    moving: Tensor,
    fixed: Tensor,
    *,
    similarity: nn.Module,
    lam: float,
    moving_labels: Tensor | None = None,
    fixed_labels: Tensor | None = None,
    num_classes: int | None = None,
    amp: bool = False,
) -> LossParts:
    """Eq. 1: L = D(I∘Φ, J) + λ R(u) with u, I∘Φ from ``register``; returns all its parts.

    ``moving``, ``fixed``: ``(B, 1, *spatial)``. A similarity with ``needs_labels = True``
    (NCC-sup) also compares label maps: pass the integer maps ``moving_labels``, ``fixed_labels``
    ``(B, 1, *spatial)`` and ``num_classes``; they are one-hot encoded here and the moving one-hot
    maps are warped *linearly* with u, so that the label term has a gradient (as in the paper's
    code, DeepSimRegistration: src/registration_model.py). Other similarities ignore labels.

    ``amp``: run the U-Net in float16 (CUDA); warp, similarity and regulariser always run in
    float32 — NCC's local variances are differences of large sums that float16 cannot hold.
    """
    needs_labels = getattr(similarity, "needs_labels", False)
    if needs_labels:
        _check_labels(similarity, moving_labels, fixed_labels, num_classes)
    u, warped = register(net, moving, fixed, amp=amp)
    if needs_labels:  # NCC-sup: linearly warped one-hot labels (B, num_classes, *spatial)
        labels = (warp(one_hot(moving_labels, num_classes), u), one_hot(fixed_labels, num_classes))
        d = similarity(warped, fixed, *labels)
    else:
        d = similarity(warped, fixed)
    r = diffusion_regulariser(u)
    return LossParts(d + lam * r, d, r, u, warped)
