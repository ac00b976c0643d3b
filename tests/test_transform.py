"""transform.py against analytic truths: identity, integer shifts (= roll), affine Jacobians."""

import pytest
import torch

from deepsim_edu.transform import (
    folding_fraction,
    identity_grid,
    jacobian_determinant,
    warp,
)


def _affine_displacement(matrix: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """u(x) = A x for a matrix A, (1, ndim, *shape)."""
    grid = identity_grid(shape).to(matrix.dtype)[0]  # (ndim, *shape)
    return torch.einsum("ij,j...->i...", matrix, grid)[None]


@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (1, 2, 9, 10, 11)])
def test_zero_displacement_returns_input(shape):
    # exact up to grid_sample's float32 coordinate normalisation round trip (~1e-6 voxel here)
    image = torch.rand(shape)
    u = torch.zeros(shape[0], len(shape) - 2, *shape[2:])
    torch.testing.assert_close(warp(image, u), image, atol=1e-5, rtol=0)
    labels = torch.randint(0, 4, shape)
    assert torch.equal(warp(labels, u, mode="nearest"), labels)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("shift", [1, 3, -2])
def test_integer_shift_equals_roll(ndim, shift):
    """warped(x) = I(x + s e_k) = roll(I, -s, axis k) away from the border, for every axis k."""
    spatial = (12, 14, 16)[:ndim]
    image = torch.rand(1, 1, *spatial)
    for axis in range(ndim):
        u = torch.zeros(1, ndim, *spatial)
        u[:, axis] = shift
        expected = torch.roll(image, -shift, dims=2 + axis)
        inside = [slice(None)] * (ndim + 2)
        inside[2 + axis] = slice(max(-shift, 0), spatial[axis] - max(shift, 0))
        inside = tuple(inside)
        torch.testing.assert_close(warp(image, u)[inside], expected[inside], atol=1e-5, rtol=0)
        labels = (image * 5).long()
        assert torch.equal(
            warp(labels, u, mode="nearest")[inside], torch.roll(labels, -shift, 2 + axis)[inside]
        )


def test_half_voxel_shift_interpolates_linearly():
    image = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 1, 4, 10).contiguous()
    u = torch.zeros(1, 2, 4, 10)
    u[:, 1] = 0.5
    torch.testing.assert_close(warp(image, u)[..., :-1], image[..., :-1] + 0.5)


def test_batch_of_one_displacement_broadcasts():
    image = torch.rand(3, 1, 8, 8)
    u = torch.randn(1, 2, 8, 8)
    torch.testing.assert_close(warp(image, u)[1:2], warp(image[1:2], u))


def test_jacobian_of_affine_map_is_matrix_determinant():
    torch.manual_seed(1)
    for ndim in (2, 3):
        a = 0.3 * torch.randn(ndim, ndim, dtype=torch.float64)
        u = _affine_displacement(a, (7, 8, 9)[:ndim])
        det = jacobian_determinant(u)
        expected = torch.linalg.det(torch.eye(ndim, dtype=torch.float64) + a)
        torch.testing.assert_close(det, expected.expand_as(det))


def test_folding_is_detected():
    # Φ(x) = -x along axis 1 (a mirror) folds everywhere; the identity nowhere.
    u = _affine_displacement(torch.tensor([[0.0, 0.0], [0.0, -2.0]]), (6, 6))
    assert folding_fraction(u).item() == 1.0
    assert folding_fraction(torch.zeros(1, 2, 6, 6)).item() == 0.0
    # a local fold: u_1 = a sin(k x_1), k = 2π/W. Central differences give ∂u_1/∂x_1 =
    # a sin(k) cos(k x_1) exactly, so det = 1 + a sin(k) cos(k x_1): with a = W/π it is <= 0 in
    # the middle third of the columns and positive elsewhere.
    width = 16
    x1 = torch.arange(width, dtype=torch.float64)
    u = torch.zeros(1, 2, 8, width, dtype=torch.float64)
    u[0, 1] = (width / torch.pi) * torch.sin(2 * torch.pi * x1 / width)
    det = jacobian_determinant(u)[0, 4]  # one row, interior columns use central differences
    k = 2 * torch.pi / width
    expected_det = 1 + (width / torch.pi) * torch.sin(torch.tensor(k)) * torch.cos(k * x1)
    torch.testing.assert_close(det[1:-1], expected_det[1:-1])
    expected_folded = (expected_det <= 0)[1:-1]
    assert torch.equal(det[1:-1] <= 0, expected_folded)
    assert 0 < folding_fraction(u).item() < 1


@pytest.mark.parametrize(
    "image_shape, u_shape, message",
    [
        ((1, 1, 8, 8), (1, 3, 8, 8), "channels"),
        ((1, 1, 8, 8), (1, 2, 8, 9), "spatial shape"),
        ((1, 8, 8), (1, 2, 8), "dims"),
        ((2, 1, 8, 8), (3, 2, 8, 8), "batch"),
        ((1, 1, 8, 8), (1, 2, 8, 8, 1), "displacement must be"),
    ],
)
def test_bad_shapes_raise(image_shape, u_shape, message):
    with pytest.raises(ValueError, match=message):
        warp(torch.rand(image_shape), torch.zeros(u_shape))


def test_nan_and_bad_mode_raise():
    u = torch.zeros(1, 2, 8, 8)
    u[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        warp(torch.rand(1, 1, 8, 8), u)
    with pytest.raises(ValueError, match="mode"):
        warp(torch.rand(1, 1, 8, 8), torch.zeros(1, 2, 8, 8), mode="cubic")
    with pytest.raises(ValueError, match="nearest"):
        warp(torch.zeros(1, 1, 8, 8, dtype=torch.long), torch.zeros(1, 2, 8, 8))
