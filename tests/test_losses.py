"""losses.py against analytic truths and a direct per-window NCC."""

import pytest
import torch
import torch.nn.functional as F

from deepsim_edu.losses import (
    LOSSES,
    NCC,
    box_sum,
    diffusion_regulariser,
    get_loss,
    local_ncc,
)


def direct_local_ncc(a: torch.Tensor, b: torch.Tensor, window: int, squared: bool) -> torch.Tensor:
    """NCC computed window by window from the zero-mean patch vectors.

    cc(x) = <a_P - mean, b_P - mean>^2 / (|a_P - mean|^2 |b_P - mean|^2), the squared cosine
    similarity of the centred patches, over the voxels of the window that lie inside the image.
    Written independently of the library: pad with NaN, unfold every patch, ignore the NaNs.
    """
    ndim = a.dim() - 2
    pad = [window // 2] * (2 * ndim)
    patches = []
    for x in (a, b):
        x = F.pad(x, pad, value=float("nan"))
        for axis in range(2, 2 + ndim):
            x = x.unfold(axis, window, 1)
        patches.append(x.flatten(-ndim))  # (B, C, *spatial, window**ndim)
    inside = ~patches[0].isnan()
    pa, pb = ((p - p.nanmean(-1, keepdim=True)).where(inside, 0.0) for p in patches)
    cross = (pa * pb).sum(-1)
    var = ((pa * pa).sum(-1) * (pb * pb).sum(-1)).clamp(min=1e-6)
    return cross**2 / var if squared else cross / var.sqrt()


@pytest.mark.parametrize("shape", [(2, 1, 13, 11), (1, 1, 10, 9, 12)])
@pytest.mark.parametrize("squared", [True, False])
def test_fast_ncc_equals_direct_window_computation(shape, squared):
    torch.manual_seed(0)
    a = torch.rand(shape, dtype=torch.float64)
    b = 0.5 * a + 0.5 * torch.rand(shape, dtype=torch.float64)
    window = 5 if len(shape) == 5 else 9
    fast = local_ncc(a, b, window=window, squared=squared)
    torch.testing.assert_close(fast, direct_local_ncc(a, b, window, squared), atol=1e-5, rtol=0)


def test_box_sum_matches_dense_ones_convolution():
    x = torch.rand(2, 3, 8, 9, 10, dtype=torch.float64)
    dense = F.conv3d(x, torch.ones(3, 1, 5, 5, 5, dtype=torch.float64), padding=2, groups=3)
    torch.testing.assert_close(box_sum(x, 5), dense)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("scale, offset", [(2.0, 0.3), (0.1, -5.0)])
def test_ncc_of_affine_intensity_change_is_optimal(ndim, scale, offset):
    image = torch.rand(1, 1, *(16,) * ndim, dtype=torch.float64)
    loss = NCC(window=9)(scale * image + offset, image)
    assert abs(loss.item()) < 1e-6  # 1 - mean(cc) with cc = 1 everywhere
    assert NCC(window=9, squared=False)(scale * image + offset, image).item() < 1e-6
    # a different image is clearly worse
    assert NCC(window=9)(torch.rand_like(image), image).item() > 0.5


def test_ncc_on_constant_image_is_finite_and_has_gradient():
    constant = torch.full((1, 1, 12, 12, 12), 0.7, requires_grad=True)
    other = torch.rand(1, 1, 12, 12, 12)
    loss = NCC()(constant, other)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(constant.grad).all()
    assert torch.isfinite(NCC(squared=False)(constant, constant.detach()))


def test_mse_by_hand():
    a = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 2, 2)
    b = torch.tensor([1.0, 1.0, 0.0, 3.0]).view(1, 1, 2, 2)
    assert get_loss("mse")(a, b).item() == pytest.approx((1 + 0 + 4 + 0) / 4)


def test_diffusion_regulariser_analytic_values():
    assert diffusion_regulariser(torch.full((2, 3, 5, 6, 7), 2.5)).item() == 0.0
    # u = (a x_0, 0) on an H x W grid: forward differences are a except the last row (0),
    # so R = mean over 2 components and H W voxels of (a^2 / 2) in (H-1) rows = a^2 (H-1) / (4H)
    a, height, width = 0.3, 6, 5
    u = torch.zeros(1, 2, height, width, dtype=torch.float64)
    u[0, 0] = a * torch.arange(height, dtype=torch.float64).view(-1, 1)
    expected = a**2 * (height - 1) / (4 * height)
    assert diffusion_regulariser(u).item() == pytest.approx(expected)


def test_get_loss_lists_valid_names():
    with pytest.raises(ValueError) as error:
        get_loss("ssim")
    for name in LOSSES:
        assert name in str(error.value)
    assert isinstance(get_loss("ncc", window=5), NCC)


@pytest.mark.parametrize("name", ["mse", "ncc"])
def test_bad_inputs_raise(name):
    loss = get_loss(name)
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match="H, W"):
        loss(torch.rand(8, 8), torch.rand(8, 8))
    nan = torch.rand(1, 1, 8, 8)
    nan[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        loss(nan, torch.rand(1, 1, 8, 8))


def test_bad_window_and_displacement_raise():
    with pytest.raises(ValueError, match="odd"):
        NCC(window=4)
    with pytest.raises(ValueError, match="displacement"):
        diffusion_regulariser(torch.zeros(1, 3, 8, 8))
