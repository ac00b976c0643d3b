"""Affine augmentation against torch.rot90 / flips, and the metric landscape's analytic values."""

import math

import numpy as np
import pytest
import torch

from deepsim_edu.augment import (
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
