"""losses.py against analytic truths, a direct per-window NCC, numpy and MONAI."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepsim_edu.losses import (
    LOSSES,
    NCC,
    NCCSupervised,
    box_sum,
    cosine_similarity_map,
    diffusion_regulariser,
    get_loss,
    local_ncc,
)


def direct_local_ncc(
    a: torch.Tensor, b: torch.Tensor, window: int, squared: bool, border: str = "in-image"
) -> torch.Tensor:
    """NCC computed window by window from the zero-mean patch vectors.

    cc(x) = <a_P - mean, b_P - mean>^2 / (|a_P - mean|^2 |b_P - mean|^2), the squared cosine
    similarity of the centred patches, over the voxels of the window that lie inside the image
    ("in-image") or over the whole window of the zero-padded image ("zero-padding").
    Written independently of the library: pad with NaN (or 0), unfold every patch, ignore NaNs.
    """
    ndim = a.dim() - 2
    pad = [window // 2] * (2 * ndim)
    pad_value = float("nan") if border == "in-image" else 0.0
    patches = []
    for x in (a, b):
        x = F.pad(x, pad, value=pad_value)
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
@pytest.mark.parametrize("border", ["in-image", "zero-padding"])
def test_fast_ncc_equals_direct_window_computation(shape, squared, border):
    torch.manual_seed(0)
    a = torch.rand(shape, dtype=torch.float64)
    b = 0.5 * a + 0.5 * torch.rand(shape, dtype=torch.float64)
    window = 5 if len(shape) == 5 else 9
    fast = local_ncc(a, b, window=window, squared=squared, border=border)
    direct = direct_local_ncc(a, b, window, squared, border)
    torch.testing.assert_close(fast, direct, atol=1e-5, rtol=0)


def test_box_sum_matches_dense_ones_convolution():
    x = torch.rand(2, 3, 8, 9, 10, dtype=torch.float64)
    dense = F.conv3d(x, torch.ones(3, 1, 5, 5, 5, dtype=torch.float64), padding=2, groups=3)
    torch.testing.assert_close(box_sum(x, 5), dense)


@pytest.mark.parametrize("window", [1, 3, 7, 9, 11, 15, 21])
def test_box_sum_any_odd_window_matches_dense_convolution(window):
    # the doubling steps depend on the binary digits of the window; 15 and 21 exceed the image
    x = torch.rand(2, 1, 12, 17, dtype=torch.float64)
    ones = torch.ones(1, 1, window, window, dtype=torch.float64)
    torch.testing.assert_close(box_sum(x, window), F.conv2d(x, ones, padding=window // 2))


def numpy_zero_padded_ncc(a: np.ndarray, b: np.ndarray, window: int) -> np.ndarray:
    """The paper's NCC map in numpy: window sums over the zero-padded image, divided by w^d.

    Written as DeepSimRegistration: src/loss_metrics.py writes it (u_I = I_sum / win_size,
    cross = IJ_sum - u_J I_sum - u_I J_sum + u_I u_J win_size, cc = cross² / max(var_I var_J,
    1e-6)), with the sums taken by numpy's sliding windows over np.pad's zeros.
    """
    r, win_size = window // 2, float(window**a.ndim)

    def window_sum(x):
        padded = np.pad(x, r)  # zeros
        return np.lib.stride_tricks.sliding_window_view(padded, (window,) * a.ndim).sum(
            axis=tuple(range(a.ndim, 2 * a.ndim))
        )

    i_sum, j_sum, i2_sum, j2_sum, ij_sum = map(window_sum, (a, b, a * a, b * b, a * b))
    u_i, u_j = i_sum / win_size, j_sum / win_size
    cross = ij_sum - u_j * i_sum - u_i * j_sum + u_i * u_j * win_size
    i_var = i2_sum - 2 * u_i * i_sum + u_i * u_i * win_size
    j_var = j2_sum - 2 * u_j * j_sum + u_j * u_j * win_size
    return cross**2 / np.maximum(i_var * j_var, 1e-6)


@pytest.mark.parametrize("spatial, window", [((15, 12), 9), ((9, 11, 10), 5), ((7, 8, 6), 9)])
def test_zero_padding_ncc_equals_numpy_window_sums(spatial, window):
    rng = np.random.default_rng(0)
    a = rng.random(spatial)
    b = 0.6 * a + 0.4 * rng.random(spatial) + 0.2
    ours = local_ncc(
        torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], window=window,
        border="zero-padding",
    )[0, 0].numpy()  # fmt: skip
    np.testing.assert_allclose(ours, numpy_zero_padded_ncc(a, b, window), rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 1, 20, 17), (1, 1, 12, 10, 14), (1, 1, 30, 36, 42)])
def test_zero_padding_ncc_equals_monai(shape):
    monai_losses = pytest.importorskip("monai.losses")
    a = torch.rand(shape, dtype=torch.float64)
    b = 0.5 * a + 0.5 * torch.rand(shape, dtype=torch.float64)
    monai = monai_losses.LocalNormalizedCrossCorrelationLoss(
        spatial_dims=len(shape) - 2, kernel_size=9, kernel_type="rectangular"
    )
    # MONAI returns -mean(cc); its smooth_dr = 1e-5 clamp is far below these window variances
    ours = NCC(window=9, border="zero-padding")(a, b)
    assert ours.item() - 1.0 == pytest.approx(monai(a, b).item(), abs=1e-12)
    assert monai(a, b).item() != pytest.approx(NCC(window=9)(a, b).item() - 1.0, abs=1e-4)


@pytest.mark.parametrize("spatial", [(20, 23), (12, 13, 14)])
def test_border_rules_agree_in_the_interior_and_differ_at_the_border(spatial):
    a = torch.rand(1, 1, *spatial, dtype=torch.float64)
    b = 0.5 * a + 0.5 * torch.rand_like(a)
    window, r = 7, 3
    in_image = local_ncc(a, b, window=window, border="in-image")
    padded = local_ncc(a, b, window=window, border="zero-padding")
    interior = (..., *[slice(r, -r)] * len(spatial))
    torch.testing.assert_close(in_image[interior], padded[interior], atol=1e-12, rtol=0)
    border = torch.ones_like(a, dtype=torch.bool)
    border[interior] = False
    assert (in_image - padded).abs()[border].min() > 0  # every border voxel differs
    assert (in_image - padded).abs()[border].max() > 0.05


def test_ncc_squared_form_clamps_the_variance_product():
    # cc = cross² / max(var_I var_J, eps), the paper's squared form: for I = J with a window
    # variance product below eps, cc = var² / eps < 1 (MONAI instead clamps each variance)
    image = 1e-3 * torch.rand(1, 1, 9, 9, dtype=torch.float64)
    centre = image[0, 0].numpy()
    var = ((centre - centre.mean()) ** 2).sum()  # n · variance of the one full window
    assert var**2 < 1e-6
    cc = local_ncc(image, image, window=9, border="zero-padding")[0, 0, 4, 4].item()
    assert cc == pytest.approx(var**2 / 1e-6, rel=1e-9)
    assert local_ncc(image, image, window=9, eps=1e-12)[0, 0, 4, 4].item() == pytest.approx(1.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_box_sum_and_ncc_gradients_pass_gradcheck(ndim):
    shape = (2, 1, 5, 4, 6)[: 2 + ndim] if ndim == 2 else (1, 1, 4, 5, 3)
    x = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    y = torch.rand(shape, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: box_sum(t, 3), (x,))
    for border in ("in-image", "zero-padding"):
        for squared in (True, False):
            assert torch.autograd.gradcheck(
                lambda t, s=squared, b=border: local_ncc(t, y, window=3, squared=s, border=b),
                (x,),
            )
    # both images requiring a gradient (the fixed image's sums go through the same filter)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, t: local_ncc(s, t, window=5), (x, y))


def brain_like_volume(seed: int, shape=(80, 96, 112)) -> torch.Tensor:
    """A smooth float64 volume in [0, 1]: blurred noise plus fine noise, zero outside a ball."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, *shape, generator=generator, dtype=torch.float64)
    for _ in range(2):
        x = F.avg_pool3d(x, 7, stride=1, padding=3, count_include_pad=False)
    x = (x - x.min()) / (x.max() - x.min())
    x = x + 0.02 * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    grid = [torch.linspace(-1, 1, s, dtype=torch.float64) for s in shape]
    axes = torch.meshgrid(*grid, indexing="ij")
    inside = sum(axis**2 for axis in axes) < 0.8
    return x.clamp(0, 1) * inside


def separable_conv_ncc(a: torch.Tensor, b: torch.Tensor, window: int, border: str) -> torch.Tensor:
    """The straightforward NCC map: window sums by ones-kernel convolutions (MONAI's arithmetic)."""
    def window_sum(x):
        for axis in range(3):
            size = [1, 1, 1]
            size[axis] = window
            padding = [0, 0, 0]
            padding[axis] = window // 2
            x = F.conv3d(x, x.new_ones(1, 1, *size), padding=tuple(padding))
        return x

    n = window**3 if border == "zero-padding" else window_sum(torch.ones_like(a))
    s_i, s_j, s_ii, s_jj, s_ij = map(window_sum, (a, b, a * a, b * b, a * b))
    cross = s_ij - s_i * s_j / n
    return cross**2 / ((s_ii - s_i**2 / n) * (s_jj - s_j**2 / n)).clamp(min=1e-6)


@pytest.fixture(scope="module")
def brain_like_pair() -> tuple[torch.Tensor, torch.Tensor]:
    a = brain_like_volume(1)
    return a, 0.7 * a + 0.3 * brain_like_volume(2)


@pytest.mark.parametrize("border", ["in-image", "zero-padding"])
def test_float32_ncc_is_as_accurate_as_the_convolution(border, brain_like_pair):
    """float32 NCC on a brain-sized volume against a float64 reference.

    Whatever sums the windows, float32 cc carries the cancellation of var = Σ I² − (Σ I)² / n
    (terms up to n = 729 known to ~729·2⁻²⁴ ≈ 4e-5, against window variances down to ~1e-2 on
    smooth images): the float32 dense/separable convolution of the paper's code and MONAI is the
    yardstick. Ours must stay within 2× its max and mean per-voxel error (a cumulative sum along
    each axis is 24× worse in the max here), and the loss within 1e-6 of the float64 loss.
    """
    a64, b64 = brain_like_pair
    a32, b32 = a64.float(), b64.float()
    reference = separable_conv_ncc(a64, b64, 9, border)
    ours = (local_ncc(a32, b32, window=9, border=border).double() - reference).abs()
    conv = (separable_conv_ncc(a32, b32, 9, border).double() - reference).abs()
    assert ours.max() <= 2 * conv.max() and ours.mean() <= 2 * conv.mean()
    assert ours.max() < 1e-3
    loss = NCC(window=9, border=border)(a32, b32).item()
    assert loss == pytest.approx(1 - reference.mean().item(), abs=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("scale, offset", [(2.0, 0.3), (0.1, -5.0)])
def test_ncc_of_affine_intensity_change_is_optimal(ndim, scale, offset):
    image = torch.rand(1, 1, *(16,) * ndim, dtype=torch.float64)
    loss = NCC(window=9)(scale * image + offset, image)
    assert abs(loss.item()) < 1e-6  # 1 - mean(cc) with cc = 1 everywhere
    assert NCC(window=9, squared=False)(scale * image + offset, image).item() < 1e-6
    # a different image is clearly worse
    assert NCC(window=9)(torch.rand_like(image), image).item() > 0.5
    # zero padding: cc = 1 in the interior only; near the border the zeros break the affine map
    padded = local_ncc(scale * image + offset, image, window=9, border="zero-padding")
    interior = padded[(..., *[slice(4, -4)] * ndim)]
    torch.testing.assert_close(interior, torch.ones_like(interior), atol=1e-9, rtol=0)
    assert padded.min() < 0.99


@pytest.mark.parametrize("border", ["in-image", "zero-padding"])
@pytest.mark.parametrize("shape", [(1, 1, 12, 12, 12), (2, 1, 20, 20)])
def test_ncc_on_constant_image_is_finite_and_has_gradient(border, shape):
    constant = torch.full(shape, 0.7, requires_grad=True)
    other = torch.rand(shape)
    loss = NCC(border=border)(constant, other)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(constant.grad).all()
    assert torch.isfinite(NCC(squared=False, border=border)(constant, constant.detach()))
    if border == "in-image":  # every window flat: cc = 0 everywhere, exactly so in float64
        # float32: var = Σ I² − (Σ I)² / n of a flat window is rounding noise (~1e-5, as with a
        # convolution), so is cross, and their cc ratio stays small but not 0
        assert local_ncc(constant, other, border=border).abs().max().item() < 1e-2
        flat = local_ncc(constant.double(), other.double(), border=border)
        assert flat.abs().max().item() < 1e-12


def test_ncc_of_identical_images_is_above_zero_exactly_on_flat_windows():
    # left 8 columns constant, right 8 a checkerboard of 0 and 1; window 3, in-image border:
    # windows centred on columns 0..6 see only the constant part (cc = 0), all others cc = 1
    image = torch.full((1, 1, 16, 16), 0.5, dtype=torch.float64)
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(8), indexing="ij")
    image[0, 0, :, 8:] = ((rows + cols) % 2).double()
    assert NCC(window=3)(image, image).item() == pytest.approx(7 / 16, abs=1e-12)
    assert NCC(window=3)(image[..., 7:], image[..., 7:]).item() == pytest.approx(0.0, abs=1e-12)
    assert NCC(window=3)(image[..., 6:], image[..., 6:]).item() == pytest.approx(1 / 10, abs=1e-12)


def test_cosine_similarity_is_zero_on_dead_feature_vectors():
    features = torch.rand(1, 4, 3, 3, dtype=torch.float64) + 0.1
    features[0, :, 1, 1] = 0.0  # a dead (all-zero) feature vector
    cos = cosine_similarity_map(features, features.clone())
    assert cos[0, 1, 1].item() == 0.0
    others = torch.ones(3, 3, dtype=torch.bool)
    others[1, 1] = False
    torch.testing.assert_close(cos[0][others], torch.ones(8, dtype=torch.float64))


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
    ncc = get_loss("ncc", window=5, border="zero-padding")
    assert (ncc.window, ncc.border) == (5, "zero-padding")
    ncc_sup = get_loss("ncc-sup", window=7, border="zero-padding")
    assert isinstance(ncc_sup, NCCSupervised) and ncc_sup.ncc.border == "zero-padding"
    assert get_loss("ncc").border == get_loss("ncc-sup").ncc.border == "in-image"


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
    with pytest.raises(ValueError, match="in-image, zero-padding"):
        NCC(border="replicate")
    with pytest.raises(ValueError, match="border"):
        local_ncc(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), border="zeros")
    with pytest.raises(ValueError, match="displacement"):
        diffusion_regulariser(torch.zeros(1, 3, 8, 8))
