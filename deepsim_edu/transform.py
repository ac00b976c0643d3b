"""The spatial transformer: Φ = id + u, warping an image by Φ, and how regular Φ is.

Registration (paper Eq. 1) looks for a transformation Φ such that the warped moving image
I∘Φ looks like the fixed image J. We write Φ as the identity plus a displacement field,

    Φ(x) = x + u(x),        (I∘Φ)(x) = I(x + u(x)),

and "warping" means *pulling back*: for every voxel x of the output we read the moving image at
x + u(x), interpolating between voxels. Conventions used everywhere in deepsim_edu:

* images are ``(B, C, H, W)`` in 2D and ``(B, C, D, H, W)`` in 3D;
* a displacement is ``(B, ndim, *spatial)`` in **voxel units**, and channel k moves along
  spatial axis k (channel 0 = first spatial axis: H in 2D, D in 3D) — the same order as the
  tensor's own axes, so ``u[:, k]`` pairs with ``image.shape[2 + k]``.

One function per concept, written once for 2D and 3D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_finite(name: str, x: Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")


def check_displacement(image: Tensor, displacement: Tensor) -> int:
    """Validate an image/displacement pair and return ndim (2 or 3).

    image ``(B, C, *spatial)``; displacement ``(B or 1, ndim, *spatial)`` with ndim = len(spatial).
    """
    ndim = image.dim() - 2
    if ndim not in (2, 3):
        raise ValueError(
            f"image must be (B, C, H, W) or (B, C, D, H, W), got {image.dim()} dims "
            f"{tuple(image.shape)}"
        )
    if displacement.dim() != image.dim():
        raise ValueError(
            f"displacement must be (B, {ndim}, *spatial) for a {ndim}D image, "
            f"got shape {tuple(displacement.shape)}"
        )
    if displacement.shape[1] != ndim:
        raise ValueError(
            f"displacement must have {ndim} channels (one per axis), got {displacement.shape[1]}"
        )
    if displacement.shape[2:] != image.shape[2:]:
        raise ValueError(
            f"displacement spatial shape {tuple(displacement.shape[2:])} != image spatial shape "
            f"{tuple(image.shape[2:])}"
        )
    if displacement.shape[0] not in (1, image.shape[0]):
        raise ValueError(
            f"batch sizes differ: image {image.shape[0]}, displacement {displacement.shape[0]}"
        )
    return ndim


def identity_grid(
    spatial_shape: tuple[int, ...] | torch.Size, like: Tensor | None = None
) -> Tensor:
    """Voxel coordinates of every voxel: ``grid[0, k, *x] = x_k``.

    Returns ``(1, ndim, *spatial)`` with the dtype and device of ``like`` (float32/CPU if None).
    """
    kw = (
        {"dtype": like.dtype, "device": like.device}
        if like is not None
        else {"dtype": torch.float32}
    )
    axes = [torch.arange(n, **kw) for n in spatial_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def to_grid_sample_coords(coords: Tensor) -> Tensor:
    """Voxel coordinates ``(B, ndim, *spatial)`` -> a ``grid_sample`` grid ``(B, *spatial, ndim)``.

    ``F.grid_sample`` wants coordinates normalised to [-1, 1] (with ``align_corners=True``, -1 and
    1 are the centres of the first and last voxel: c -> 2 c / (size - 1) - 1) and stored *last*,
    in (x, y[, z]) order, where x indexes the **last** tensor axis (W). Our channels follow the
    tensor's axis order (channel 0 = first spatial axis), so the channel order must be reversed.
    Forgetting this flip is the classic source of transposed warps.
    """
    ndim = coords.shape[1]
    sizes = coords.shape[2:]
    scale = torch.tensor(
        [2.0 / max(n - 1, 1) for n in sizes], dtype=coords.dtype, device=coords.device
    )
    normalised = coords * scale.view(1, ndim, *[1] * ndim) - 1.0
    # (B, ndim, *spatial) -> (B, *spatial, ndim): channels last, as grid_sample wants
    grid = normalised.movedim(1, -1)
    # channel order (axis0, axis1[, axis2]) -> (x=last axis, ..., first axis)
    return grid.flip(-1)


def warp(
    image: Tensor, displacement: Tensor, mode: str = "linear", padding: str = "border"
) -> Tensor:
    """Warp ``image`` by Φ = id + u: ``warped(x) = image(x + u(x))``.

    Args:
        image: ``(B, C, H, W)`` or ``(B, C, D, H, W)``. Integer label maps are allowed with
            ``mode="nearest"`` and come back with their dtype.
        displacement: u, ``(B, ndim, *spatial)`` in voxels (channel k = spatial axis k); a batch
            of 1 is broadcast over the image batch.
        mode: ``"linear"`` (bi/trilinear, for images) or ``"nearest"`` (for label maps).
        padding: what is read outside the image: ``"border"`` (nearest edge value, the paper's
            choice) or ``"zeros"``.

    Returns:
        the warped image, same shape and dtype as ``image``.

    Raises:
        ValueError naming the argument when the displacement or a floating-point image holds
        NaN or inf (linear interpolation would smear one NaN voxel over its neighbours).
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    ndim = check_displacement(image, displacement)
    _check_finite("displacement", displacement)
    if image.is_floating_point():  # interpolation would spread one NaN to its neighbours
        _check_finite("image", image)
    if mode == "linear" and not image.is_floating_point():
        raise ValueError(
            "linear warping needs a floating-point image; use mode='nearest' for labels"
        )
    source = image if image.is_floating_point() else image.to(displacement.dtype)
    coords = identity_grid(image.shape[2:], like=displacement) + displacement
    grid = to_grid_sample_coords(coords).expand(image.shape[0], *[-1] * (ndim + 1))
    # grid_sample calls trilinear interpolation "bilinear" in 3D too
    warped = F.grid_sample(
        source,
        grid.to(source.dtype),
        mode="bilinear" if mode == "linear" else "nearest",
        padding_mode=padding,
        align_corners=True,
    )
    return warped if image.is_floating_point() else warped.round().to(image.dtype)


DIFFERENCE_SCHEMES = ("forward", "central")


def _check_scheme(scheme: str) -> None:
    if scheme not in DIFFERENCE_SCHEMES:
        raise ValueError(
            f"scheme must be one of {', '.join(map(repr, DIFFERENCE_SCHEMES))}, got {scheme!r}"
        )


def forward_differences(u: Tensor) -> list[Tensor]:
    """Forward differences u(x + e_j) − u(x) along every spatial axis j, each ``u.shape``.

    ``u``: ``(B, C, *spatial)``. The last slice along j is padded by replication, so its
    difference is 0 (the paper's code). Used by ``jacobian_matrix`` and the diffusion
    regulariser (``losses.diffusion_regulariser``).
    """
    diffs = []
    for axis in range(2, u.dim()):
        d = torch.diff(u, dim=axis)
        # the last slice has no forward neighbour: replicate padding of u, i.e. a zero difference
        diffs.append(torch.cat([d, torch.zeros_like(u.narrow(axis, 0, 1))], dim=axis))
    return diffs


def jacobian_matrix(displacement: Tensor, scheme: str = "forward") -> Tensor:
    """The Jacobian of Φ = id + u at every voxel: ``J_ij = δ_ij + ∂u_i/∂x_j``.

    ``scheme`` chooses the finite differences for ∂/∂x_j:

    * ``"forward"`` (default, the paper's code): ∂_j u(x) ≈ u(x + e_j) − u(x). The last slice
      along axis j has no forward neighbour; it is padded by replication, so its derivative
      along j is 0 (DeepSimRegistration: torchreg/metrics/metrics.py, ``JacobianDeterminant``
      with ``preserve_size=True``, and its diffusion regulariser ``GradNorm``).
    * ``"central"``: (u(x + e_j) − u(x − e_j)) / 2 inside, one-sided at the border
      (``torch.gradient``). Central differences are blind to a two-voxel oscillation: a
      checkerboard u has ∂u = 0 at every interior voxel, although Φ folds between neighbours.

    Both are exact for an affine Φ (forward: except on the padded last slices).
    Returns ``(B, *spatial, ndim, ndim)``.
    """
    _check_scheme(scheme)
    ndim = displacement.shape[1]
    if displacement.dim() != ndim + 2:
        raise ValueError(
            f"displacement must be (B, ndim, *spatial), got shape {tuple(displacement.shape)}"
        )
    if scheme == "forward":
        du = forward_differences(displacement)
    else:
        du = torch.gradient(displacement, dim=tuple(range(2, ndim + 2)))
    # du[j] = ∂u/∂x_j, each (B, ndim, *spatial); stack to (B, ndim_i, ndim_j, *spatial),
    # then move to (B, *spatial, ndim_i, ndim_j)
    grad = torch.stack(du, dim=2).movedim((1, 2), (-2, -1))
    return grad + torch.eye(ndim, dtype=grad.dtype, device=grad.device)


def jacobian_determinant(displacement: Tensor, scheme: str = "forward") -> Tensor:
    """det(∇Φ) per voxel, signed: > 1 expands, < 1 shrinks, < 0 folds. ``(B, *spatial)``.

    ``scheme``: the finite differences of :func:`jacobian_matrix` (default ``"forward"``, the
    paper's). With forward differences the last slice along each axis is replicate-padded.
    """
    return determinant(jacobian_matrix(displacement, scheme))


def determinant(matrices: Tensor) -> Tensor:
    """det of each 2×2 or 3×3 matrix of ``(..., n, n)`` → ``(...)``, by the cofactor expansion
    along the first row: ``torch.linalg.det``'s value up to rounding, about 8× faster on a
    brain's ∇Φ on a CPU (no batched LU for millions of tiny matrices)."""
    n = matrices.shape[-1]
    if matrices.shape[-2:] not in ((2, 2), (3, 3)):
        raise ValueError(
            f"determinant needs (..., 2, 2) or (..., 3, 3), got {tuple(matrices.shape)}"
        )
    a = matrices
    if n == 2:
        return a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    return (a[..., 0, 0] * (a[..., 1, 1] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 1])
            - a[..., 0, 1] * (a[..., 1, 0] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 0])
            + a[..., 0, 2] * (a[..., 1, 0] * a[..., 2, 1] - a[..., 1, 1] * a[..., 2, 0]))


def folding_fraction(displacement: Tensor, scheme: str = "forward") -> Tensor:
    """Fraction of voxels where Φ folds, det ∇Φ < 0, per batch element. ``(B,)``.

    As the paper's code (DeepSimRegistration: src/registration_model.py, ``_step``:
    ``(jac_dets < 0).float().mean()`` of torchreg/metrics/metrics.py ``JacobianDeterminant``):
    strictly negative determinants, and with the default forward differences counted only over
    the voxels that have a forward neighbour along every axis (the last slice along each axis is
    cropped, not padded). With ``scheme="central"`` every voxel counts.
    (One difference remains: the paper's code takes the absolute value of every difference
    before forming the determinant, which hides mirror-like folds; we keep the signs.)
    """
    det = jacobian_determinant(displacement, scheme)
    if scheme == "forward":
        if any(n < 2 for n in det.shape[1:]):
            raise ValueError(
                f"forward differences need >= 2 voxels along every axis, got {tuple(det.shape[1:])}"
            )
        det = det[(slice(None),) + (slice(0, -1),) * (det.dim() - 1)]
    return (det < 0).flatten(1).float().mean(1)
