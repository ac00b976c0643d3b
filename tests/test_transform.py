"""transform.py against analytic truths: identity, integer shifts (= roll), affine Jacobians."""

import math

import numpy as np
import pytest
import torch

from deepsim_edu.transform import (
    folding_fraction,
    identity_grid,
    jacobian_determinant,
    jacobian_matrix,
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


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_jacobian_of_affine_map_is_matrix_determinant(scheme):
    torch.manual_seed(1)
    for ndim in (2, 3):
        a = 0.3 * torch.randn(ndim, ndim, dtype=torch.float64)
        u = _affine_displacement(a, (7, 8, 9)[:ndim])
        det = jacobian_determinant(u, scheme=scheme)
        expected = torch.linalg.det(torch.eye(ndim, dtype=torch.float64) + a)
        # forward differences are exact wherever x + e_j exists, i.e. off the last slices
        inside = (slice(None),) + (slice(0, -1) if scheme == "forward" else slice(None),) * ndim
        torch.testing.assert_close(det[inside], expected.expand_as(det[inside]))
        assert folding_fraction(u, scheme=scheme).item() == float(expected < 0)


def test_forward_differences_replicate_the_last_slice():
    # u_0 = 0.5·x_1 on a 4×5 grid: ∂u_0/∂x_1 = 0.5, except on the last column (padded: 0)
    u = torch.zeros(1, 2, 4, 5, dtype=torch.float64)
    u[0, 0] = 0.5 * torch.arange(5.0, dtype=torch.float64)
    jac = jacobian_matrix(u)[0]  # (4, 5, 2, 2)
    assert torch.equal(jac[:, :-1, 0, 1], torch.full((4, 4), 0.5, dtype=torch.float64))
    assert torch.equal(jac[:, -1, 0, 1], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(jac[..., 1, 1], torch.ones(4, 5, dtype=torch.float64))


def test_folding_is_detected():
    # Φ(x) = -x along axis 1 (a mirror) folds everywhere; the identity nowhere.
    u = _affine_displacement(torch.tensor([[0.0, 0.0], [0.0, -2.0]]), (6, 6))
    assert folding_fraction(u).item() == 1.0
    assert folding_fraction(torch.zeros(1, 2, 6, 6)).item() == 0.0
    # det ∇Φ = 0 (a collapse onto a line) is not counted: the paper's code tests det < 0
    u = _affine_displacement(torch.tensor([[0.0, 0.0], [0.0, -1.0]]), (6, 6))
    assert jacobian_determinant(u)[..., :-1].abs().max().item() == 0.0  # the last column: padded
    assert folding_fraction(u).item() == 0.0
    # a local fold: u_1 = a sin(k x_1), k = 2π/W, a = W/π.
    width = 16
    x1 = torch.arange(width, dtype=torch.float64)
    u = torch.zeros(1, 2, 8, width, dtype=torch.float64)
    a, k = width / torch.pi, 2 * torch.pi / width
    u[0, 1] = a * torch.sin(k * x1)
    # central differences: ∂u_1/∂x_1 = a sin(k) cos(k x_1) exactly, so det = 1 + a sin(k) cos(k x_1)
    det = jacobian_determinant(u, scheme="central")[0, 4]  # interior columns: central differences
    expected_det = 1 + a * math.sin(k) * torch.cos(k * x1)
    torch.testing.assert_close(det[1:-1], expected_det[1:-1])
    assert torch.equal(det[1:-1] < 0, (expected_det < 0)[1:-1])
    # forward differences: a (sin(k(x+1)) − sin(k x)) = 2a sin(k/2) cos(k(x + 1/2))
    det = jacobian_determinant(u, scheme="forward")[0, 4]
    expected_det = 1 + 2 * a * math.sin(k / 2) * torch.cos(k * (x1 + 0.5))
    torch.testing.assert_close(det[:-1], expected_det[:-1])
    # counted over the 7 × 15 voxels with a forward neighbour on both axes; every row alike
    expected_fraction = (expected_det[:-1] < 0).double().mean().item()
    assert 0 < expected_fraction < 1
    assert folding_fraction(u).item() == pytest.approx(expected_fraction)


def test_checkerboard_folds_with_forward_but_not_central_differences():
    """u = 0.6·(−1)^(x_0 + x_1) in both components: a two-voxel oscillation.

    Each neighbour pair moves 1.2 voxels towards (or past) each other, so Φ folds between them;
    central differences (u(x+1) − u(x−1))/2 see (−1)^… − (−1)^… = 0 and miss it.
    """
    shape = (10, 12)
    x0, x1 = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    checker = 0.6 * (-1.0) ** (x0 + x1)
    u_np = np.stack([checker, checker])  # (2, H, W)
    # by hand: forward differences on the voxels that have both forward neighbours
    d0 = u_np[:, 1:, :-1] - u_np[:, :-1, :-1]  # ∂u_i/∂x_0, (2, H-1, W-1)
    d1 = u_np[:, :-1, 1:] - u_np[:, :-1, :-1]  # ∂u_i/∂x_1
    det = (1 + d0[0]) * (1 + d1[1]) - d1[0] * d0[1]
    expected_forward = float((det < 0).mean())
    assert expected_forward == pytest.approx(50 / 99)  # det = 1 − 2.4·(−1)^…: half the voxels

    u = torch.from_numpy(u_np)[None]
    assert folding_fraction(u).item() == pytest.approx(expected_forward)
    assert folding_fraction(u, scheme="forward").item() == pytest.approx(expected_forward)
    # central differences: ∂u = 0 at every interior voxel, det = 1, no folding there (at the
    # border torch.gradient falls back to one-sided differences, which see the jump again)
    central = jacobian_determinant(u, scheme="central")[0, 1:-1, 1:-1]
    torch.testing.assert_close(central, torch.ones_like(central))
    assert (central < 0).sum().item() == 0


def test_bad_scheme_and_tiny_grids_raise():
    with pytest.raises(ValueError, match="scheme"):
        jacobian_determinant(torch.zeros(1, 2, 4, 4), scheme="backward")
    with pytest.raises(ValueError, match=">= 2 voxels"):
        folding_fraction(torch.zeros(1, 2, 4, 1))


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


@pytest.mark.parametrize("n", [2, 3])
def test_determinant_equals_numpy_on_random_and_singular_matrices(n):
    from deepsim_edu.transform import determinant

    rng = np.random.default_rng(n)
    a = rng.normal(size=(5, 7, n, n))
    a[0, 0] = 0.0
    a[0, 1, -1] = a[0, 1, 0]  # two equal rows: det 0
    np.testing.assert_allclose(determinant(torch.from_numpy(a)).numpy(), np.linalg.det(a),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, 2\) or \(\.\.\., 3, 3\)"):
        determinant(torch.zeros(4, 4))
