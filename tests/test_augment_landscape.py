"""Affine augmentation against torch.rot90 / flips, and the metric landscape's analytic values."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from deepsim_edu.augment import (
    AUGMENTATIONS,
    AffineAugmentation,
    add_noise,
    affine_displacement,
    augment_batch,
    random_affine,
)
from deepsim_edu.landscape import metric_landscape
from deepsim_edu.losses import get_loss
from deepsim_edu.transform import warp


def test_rotation_by_90_degrees_equals_rot90():
    image = torch.rand(1, 1, 9, 9)
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    u = affine_displacement(torch.tensor([[c, -s], [s, c]], dtype=torch.float64),
                            torch.zeros(2, dtype=torch.float64), (9, 9))  # fmt: skip
    torch.testing.assert_close(
        warp(image, u), torch.rot90(image, -1, dims=(2, 3)), atol=1e-5, rtol=0
    )


def test_translation_is_a_constant_displacement():
    t = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    u = affine_displacement(torch.eye(3, dtype=torch.float64), t, (4, 5, 6))
    torch.testing.assert_close(u, t.float().view(1, 3, 1, 1, 1).expand(1, 3, 4, 5, 6))


def test_one_transform_for_images_and_labels():
    flips_only = AffineAugmentation(rotation=0, shift=0, scale=(1, 1), shear=0, flip_axes=(0, 1))
    labels = torch.randint(0, 4, (2, 1, 8, 8))
    seen = set()
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        (image,), (warped_labels,) = augment_batch([labels.float()], [labels], flips_only, gen)
        torch.testing.assert_close(image, warped_labels.float(), atol=1e-5, rtol=0)
        for dims in [(), (2,), (3,), (2, 3)]:
            if torch.equal(warped_labels, labels.flip(dims) if dims else labels):
                seen.add(dims)
    assert len(seen) >= 3  # the flips are random


def test_random_affine_respects_ranges():
    params = AffineAugmentation(rotation=5, shift=0, scale=(1, 1), shear=0, flip_axes=())
    for seed in range(20):
        matrix, translation = random_affine(3, params, torch.Generator().manual_seed(seed))
        assert torch.allclose(matrix @ matrix.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
        assert torch.linalg.det(matrix) == pytest.approx(1.0)  # a rotation, no flip
        assert math.degrees(math.acos((matrix.trace().item() - 1) / 2)) <= 5 * math.sqrt(3)
        assert translation.abs().max() == 0


def test_padding_is_zeros_corners_of_a_rotated_image_of_ones():
    # rotating by 45° about the centre sends the corners' sample points outside the image
    c = math.cos(math.pi / 4)
    rot45 = torch.tensor([[c, -c], [c, c]], dtype=torch.float64)
    u = affine_displacement(rot45, torch.zeros(2, dtype=torch.float64), (33, 33))
    ones = torch.ones(1, 1, 33, 33)
    rotated = warp(ones, u, padding=AffineAugmentation().padding)
    assert rotated[0, 0, 16, 16] == 1.0
    for corner in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        assert rotated[(0, 0, *corner)] == 0.0
    # the presets, through augment_batch: a corner whose sample point A(x − c) + c lies more
    # than a voxel outside reads only padding, i.e. exactly 0 (image) and background (labels)
    size, centre = 32, 15.5
    hits = 0
    for seed in range(12):
        (image,), (labels,) = augment_batch(
            [torch.ones(1, 1, size, size)], [torch.ones(1, 1, size, size, dtype=torch.long)],
            AUGMENTATIONS["2d"], torch.Generator().manual_seed(seed),
        )  # fmt: skip
        matrix, _ = random_affine(2, AUGMENTATIONS["2d"], torch.Generator().manual_seed(seed))
        for corner in [(0, 0), (0, size - 1), (size - 1, 0), (size - 1, size - 1)]:
            x = torch.tensor(corner, dtype=torch.float64) - centre
            sample = matrix @ x + centre  # the shift (≤ 1 voxel) is covered by the margin 2
            if ((sample < -2) | (sample > size + 1)).any():
                hits += 1
                assert image[(0, 0, *corner)] == 0.0 and labels[(0, 0, *corner)] == 0
    assert hits >= 6  # most random rotations push some corner out


def test_brain_preset_flips_every_axis():
    brain = AUGMENTATIONS["brain"]
    # with rotation ≤ 5° (scale 1, no shear) the diagonal of R·F has the sign of the flips F
    flipped = np.zeros(3, dtype=int)
    for seed in range(24):
        matrix, _ = random_affine(3, brain, torch.Generator().manual_seed(seed))
        signs = torch.sign(torch.diagonal(matrix))
        assert torch.linalg.det(matrix).item() == pytest.approx(signs.prod().item())
        flipped += (signs < 0).numpy()
    assert (flipped > 0).all() and (flipped < 24).all()  # each axis flipped, but not always
    # the warp itself: without rotation the brain preset is a random subset of torch.flip's
    volume = torch.rand(1, 1, 6, 7, 8)
    flips_only = dataclasses.replace(brain, rotation=0.0)
    seen = set()
    for seed in range(24):
        (out,), _ = augment_batch([volume], [], flips_only, torch.Generator().manual_seed(seed))
        for dims in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]:
            if torch.allclose(out, volume.flip(dims) if dims else volume, atol=1e-5):
                seen.add(dims)
                break
        else:
            raise AssertionError(f"seed {seed}: not a flip of the volume")
    assert {axis for dims in seen for axis in dims} == {2, 3, 4}


def test_shear_is_bounded_by_0_03():
    assert AffineAugmentation().shear == AUGMENTATIONS["2d"].shear == 0.03
    shear_only = dataclasses.replace(
        AUGMENTATIONS["2d"], rotation=0.0, shift=0.0, scale=(1.0, 1.0), flip_axes=()
    )
    largest = 0.0
    for seed in range(40):
        matrix, _ = random_affine(2, shear_only, torch.Generator().manual_seed(seed))
        assert torch.equal(torch.diagonal(matrix), torch.ones(2, dtype=torch.float64))
        off = matrix[~torch.eye(2, dtype=torch.bool)].abs()
        assert (off <= 0.03).all()
        largest = max(largest, off.max().item())
    assert largest > 0.02  # the range is used


def test_add_noise():
    image = torch.zeros(4, 1, 64, 64)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(add_noise(image, 0.0, gen), image)
    stds = add_noise(image, 0.2, gen).flatten(1).std(1)
    assert (stds < 0.21).all() and stds.max() > 0.02


def test_landscape_minimum_and_noise_floor():
    x = torch.linspace(0, 4 * math.pi, 48)
    image = (0.5 + 0.25 * torch.sin(x[None, :]) * torch.cos(x[:, None] / 2))[None, None]
    metrics = {"mse": get_loss("mse"), "ncc": get_loss("ncc")}
    table = metric_landscape(image, metrics, shifts=[-4, -2, 0, 2, 4], noise=[0.0, 0.1])
    assert len(table) == 2 * 5 * 2 and set(table.columns) == {"metric", "noise", "shift", "value"}
    clean = table[table.noise == 0]
    for name in metrics:
        curve = clean[clean.metric == name].set_index("shift")["value"]
        assert curve.idxmin() == 0 and curve[0] == pytest.approx(0.0, abs=1e-5)
    # MSE of two independent noise draws: E (n1 - n2)^2 = 2 sigma^2
    noisy_mse = table[(table.metric == "mse") & (table.noise == 0.1) & (table["shift"] == 0)]
    assert noisy_mse["value"].item() == pytest.approx(2 * 0.1**2, rel=0.1)
    with pytest.raises(ValueError, match="needs label maps"):
        metric_landscape(image, {"ncc-sup": get_loss("ncc-sup")}, shifts=[0])
    with pytest.raises(ValueError, match=r"\(1, 1, \*spatial\)"):
        metric_landscape(image[0], metrics, shifts=[0])


def test_landscape_plot_renders():
    from deepsim_edu.viz import plot_landscape

    x = torch.linspace(0, 4 * math.pi, 32)
    image = (0.5 + 0.25 * torch.sin(x[None, :]) * torch.cos(x[:, None]))[None, None]
    table = metric_landscape(image, {"mse": get_loss("mse")}, shifts=[-2, 0, 2], noise=[0.0, 0.1])
    fig = plot_landscape(table)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)
    assert len(fig.axes) == 2 and pixels.std() > 10  # two panels, not blank
