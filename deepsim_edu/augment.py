"""Training-time augmentation: one random affine per batch (the paper's), and additive noise.

The paper's code draws **one** random affine transformation per batch and applies it to every
image and label map of the batch (moving, fixed and their labels alike, so a pair stays a pair).
Its ranges (DeepSimRegistration: src/common_lightning_model.py, ``make_dataloader``, and
torchreg/transforms/random_augmentation.py, ``RandomAffine``):

* 2D datasets: rotation ±180°, shift ±1 voxel, scale 0.8–1.2 per axis, shear ±0.03 (every
  off-diagonal entry), a flip of every axis with probability 1/2 each. (The shift is configured
  there but lost in effect: ``AffineSpatialTransformer`` in torchreg/nn/layers.py multiplies
  row vectors by the homogeneous matrix, which drops its translation column. We keep the
  configured ±1 voxel.)
* Brain-MRI: rotation ±5° about each of the three axes, a flip of every axis (no shift, scale
  or shear).

Voxels that come from outside the image are **zeros** (``padding_mode="zeros"`` in
``RandomAffine.apply_affine``), for images and label maps alike (label 0 = background).

The affine map A acts about the image centre c: x ↦ A (x − c) + c + t. We turn it into a
displacement u(x) = A (x − c) + c + t − x and apply it with ``transform.warp`` — linear for
images, nearest for labels — so augmentation uses the same spatial transformer as registration.

Noise augmentation (ours): DeepSim credits the segmentation net's *learned noise invariance*;
adding Gaussian noise of a random level to its training images teaches it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .transform import identity_grid, warp


@dataclass(frozen=True)
class AffineAugmentation:
    """Ranges of the random affine map. Angles in degrees, shift in voxels.

    ``flip_axes``: the axes that are each mirrored with probability 1/2 (those ≥ ndim are
    ignored, so the default flips every axis in 2D and 3D). ``padding``: what ``warp`` reads
    outside the image, ``"zeros"`` (the paper's) or ``"border"``.
    """

    rotation: float = 180.0
    shift: float = 1.0
    scale: tuple[float, float] = (0.8, 1.2)
    shear: float = 0.03
    flip_axes: tuple[int, ...] = (0, 1, 2)
    padding: str = "zeros"


AUGMENTATIONS = {
    "2d": AffineAugmentation(),
    "brain": AffineAugmentation(
        rotation=5.0, shift=0.0, scale=(1.0, 1.0), shear=0.0, flip_axes=(0, 1, 2)
    ),
    "none": None,
}


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _rotation(ndim: int, angles: list[float]) -> Tensor:
    """Rotation matrix: one angle (2D) or a product of rotations about the three axes (3D)."""
    matrix = torch.eye(ndim, dtype=torch.float64)
    planes = [(0, 1)] if ndim == 2 else [(1, 2), (0, 2), (0, 1)]
    for (i, j), angle in zip(planes, angles):
        r = torch.eye(ndim, dtype=torch.float64)
        r[i, i] = r[j, j] = math.cos(angle)
        r[i, j], r[j, i] = -math.sin(angle), math.sin(angle)
        matrix = r @ matrix
    return matrix


def random_affine(
    ndim: int, params: AffineAugmentation, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Draw a random affine map: matrix ``(ndim, ndim)`` and translation ``(ndim,)`` (float64)."""
    n_angles = 1 if ndim == 2 else 3
    angles = [
        math.radians(_uniform(-params.rotation, params.rotation, generator))
        for _ in range(n_angles)
    ]
    scale = torch.diag(torch.tensor([_uniform(*params.scale, generator) for _ in range(ndim)]))
    shear = torch.eye(ndim, dtype=torch.float64)
    for i in range(ndim):
        for j in range(ndim):
            if i != j:
                shear[i, j] = _uniform(-params.shear, params.shear, generator)
    flip = torch.ones(ndim, dtype=torch.float64)
    for axis in params.flip_axes:
        if axis < ndim and torch.rand((), generator=generator).item() < 0.5:
            flip[axis] = -1.0
    matrix = _rotation(ndim, angles) @ scale.double() @ shear @ torch.diag(flip)
    translation = torch.tensor(
        [_uniform(-params.shift, params.shift, generator) for _ in range(ndim)]
    )
    return matrix, translation.double()


def affine_displacement(
    matrix: Tensor, translation: Tensor, spatial_shape: tuple[int, ...]
) -> Tensor:
    """u(x) = A (x − c) + c + t − x about the centre c: a displacement ``(1, ndim, *spatial)``."""
    ndim = len(spatial_shape)
    x = identity_grid(spatial_shape).double()[0]  # (ndim, *spatial)
    centre = torch.tensor([(n - 1) / 2 for n in spatial_shape], dtype=torch.float64).view(
        ndim, *[1] * ndim
    )
    mapped = (
        torch.einsum("ij,j...->i...", matrix, x - centre)
        + centre
        + translation.view(ndim, *[1] * ndim)
    )
    return (mapped - x)[None].float()


def augment_batch(
    images: list[Tensor],
    labels: list[Tensor],
    params: AffineAugmentation | None,
    generator: torch.Generator,
) -> tuple[list[Tensor], list[Tensor]]:
    """Apply one random affine to every image (linear) and label map (nearest) of a batch.

    images: float ``(B, C, *spatial)``; labels: integer ``(B, 1, *spatial)``; all the same spatial
    shape. Outside the image reads ``params.padding`` (zeros by default: background label 0).
    ``params=None`` returns the inputs unchanged.
    """
    if params is None:
        return images, labels
    spatial = tuple((images or labels)[0].shape[2:])
    matrix, translation = random_affine(len(spatial), params, generator)
    u = affine_displacement(matrix, translation, spatial).to((images or labels)[0].device)
    pad = params.padding
    return (
        [warp(x, u, padding=pad) for x in images],
        [warp(y, u, mode="nearest", padding=pad) for y in labels],
    )


def add_noise(image: Tensor, max_sigma: float, generator: torch.Generator) -> Tensor:
    """Add Gaussian noise of a random level σ ~ U(0, max_sigma), one σ per image of the batch."""
    if max_sigma <= 0:
        return image
    batch = image.shape[0]
    sigma = max_sigma * torch.rand(batch, generator=generator).view(batch, *[1] * (image.dim() - 1))
    noise = torch.randn(image.shape, generator=generator)
    return image + (sigma * noise).to(image.device, image.dtype)


def random_crop(tensors: list[Tensor], size: tuple[int, ...] | None, generator: torch.Generator):
    """The same random crop of ``size`` from every tensor ``(B, C, *spatial)`` (None: no crop)."""
    if size is None:
        return tensors
    spatial = tensors[0].shape[2:]
    if len(size) != len(spatial) or any(s > n for s, n in zip(size, spatial)):
        raise ValueError(f"crop {tuple(size)} does not fit images of size {tuple(spatial)}")
    starts = [
        torch.randint(n - s + 1, (), generator=generator).item() for s, n in zip(size, spatial)
    ]
    index = (slice(None), slice(None)) + tuple(slice(a, a + s) for a, s in zip(starts, size))
    return [t[index] for t in tensors]
