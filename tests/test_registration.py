"""registration.py: the forward pass (u = net(I ⊕ J), I∘Φ) and Eq. 1's parts, by hand."""

import pytest
import torch
from torch import nn

from deepsim_edu.losses import MSE, NCC, NCCSupervised
from deepsim_edu.registration import LossParts, register, registration_loss


class ConstantField(nn.Module):
    """A stand-in registration net: returns ``field`` for any input and records the input."""

    def __init__(self, field: torch.Tensor):
        super().__init__()
        self.field, self.inputs = field, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        return self.field.expand(x.shape[0], *self.field.shape[1:])


def one_hot_by_hand(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, *spatial) integer labels → (B, C, *spatial) float, one comparison per class."""
    return torch.cat([(labels == c).float() for c in range(num_classes)], dim=1)


@pytest.mark.parametrize("spatial, shift", [((16, 20), (2, -3)), ((8, 10, 12), (1, 2, -2))])
def test_register_with_a_constant_integer_shift_is_a_roll(spatial, shift):
    torch.manual_seed(0)
    moving, fixed = torch.rand(2, 1, *spatial), torch.rand(2, 1, *spatial)
    field = torch.tensor(shift, dtype=torch.float32).view(1, -1, *[1] * len(spatial))
    net = ConstantField(field.expand(1, -1, *spatial))
    u, warped = register(net, moving, fixed)
    # the net saw I ⊕ J
    assert torch.equal(net.inputs[0], torch.cat([moving, fixed], dim=1))
    assert u.shape == (2, len(spatial), *spatial) and u.dtype == torch.float32
    # (I∘Φ)(x) = I(x + s): I rolled by −s, wherever x + s lies inside the image
    rolled = torch.roll(moving, shifts=[-s for s in shift], dims=list(range(2, 2 + len(spatial))))
    interior = (slice(None), slice(None)) + tuple(
        slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, spatial)
    )
    assert warped.shape == moving.shape
    torch.testing.assert_close(warped[interior], rolled[interior], atol=1e-5, rtol=0)


def test_register_on_the_cpu_ignores_amp_and_checks_shapes():
    torch.manual_seed(0)
    moving, fixed = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    net = ConstantField(0.3 * torch.randn(1, 2, 8, 8))
    u, warped = register(net, moving, fixed, amp=True)
    u_ref, warped_ref = register(net, moving, fixed)
    assert u.dtype == torch.float32 and torch.equal(u, u_ref) and torch.equal(warped, warped_ref)
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        register(net, moving, torch.rand(1, 1, 8, 6))
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        register(net, torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8))


def test_zero_displacement_gives_the_plain_mse_and_no_regulariser():
    torch.manual_seed(0)
    moving, fixed = torch.rand(2, 1, 12, 10), torch.rand(2, 1, 12, 10)
    net = ConstantField(torch.zeros(1, 2, 12, 10))
    parts = registration_loss(net, moving, fixed, similarity=MSE(), lam=0.7)
    assert isinstance(parts, LossParts)
    assert torch.equal(parts.displacement, torch.zeros(2, 2, 12, 10))
    torch.testing.assert_close(parts.warped, moving, atol=1e-6, rtol=0)  # Φ = id
    assert parts.regulariser.item() == 0.0
    by_hand = sum((m - f) ** 2 for m, f in zip(moving.flatten().tolist(), fixed.flatten().tolist()))
    assert parts.similarity.item() == pytest.approx(by_hand / moving.numel(), rel=1e-6)
    assert parts.loss.item() == pytest.approx(parts.similarity.item(), rel=1e-7)


def test_loss_is_similarity_plus_lambda_times_regulariser():
    # u = (a·x₀, 0) on an H×W grid: forward differences a along axis 0 except on the last row,
    # so R = mean over 2 components, H·W voxels of a²·[x₀ < H−1], divided by ndim = 2:
    # a²(H−1)W / (2HW) / 2 = a²(H−1) / (4H).
    a, h, w, lam = 0.2, 16, 8, 3.0
    rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(1, 1, h, w)
    net = ConstantField(torch.cat([a * rows, torch.zeros(1, 1, h, w)], dim=1))
    torch.manual_seed(1)
    moving, fixed = torch.rand(1, 1, h, w), torch.rand(1, 1, h, w)
    parts = registration_loss(net, moving, fixed, similarity=MSE(), lam=lam)
    assert parts.regulariser.item() == pytest.approx(a**2 * (h - 1) / (4 * h), rel=1e-6)
    expected_d = ((parts.warped - fixed) ** 2).mean().item()
    assert parts.similarity.item() == pytest.approx(expected_d, rel=1e-6)
    assert parts.loss.item() == pytest.approx(expected_d + lam * a**2 * (h - 1) / (4 * h), rel=1e-6)


def test_ncc_sup_label_term_is_the_mse_of_one_hot_maps():
    torch.manual_seed(2)
    classes = 3
    moving, fixed = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    moving_labels = torch.randint(0, classes, (2, 1, 16, 16))
    fixed_labels = torch.randint(0, classes, (2, 1, 16, 16))
    identity = ConstantField(torch.zeros(1, 2, 16, 16))
    parts = registration_loss(
        identity, moving, fixed, similarity=NCCSupervised(), lam=0.5,
        moving_labels=moving_labels, fixed_labels=fixed_labels, num_classes=classes,
    )  # fmt: skip
    label_term = ((one_hot_by_hand(moving_labels, classes)
                   - one_hot_by_hand(fixed_labels, classes)) ** 2).mean()  # fmt: skip
    # each mismatched voxel contributes (1 − 0)² twice: the term is 2·mismatch / C
    mismatch = (moving_labels != fixed_labels).float().mean()
    assert label_term.item() == pytest.approx(2 * mismatch.item() / classes, rel=1e-6)
    image_term = NCC()(moving, fixed)
    assert parts.similarity.item() == pytest.approx((image_term + label_term).item(), rel=1e-5)
    assert parts.loss.item() == pytest.approx(parts.similarity.item(), rel=1e-6)  # R = 0


def test_ncc_sup_warps_the_moving_one_hot_maps_linearly():
    # a half-voxel shift along axis 0: the warped one-hot map is the mean of rows i and i + 1
    # (the last row reads the border, itself); nearest warping would give 0/1 maps instead.
    torch.manual_seed(3)
    classes, h, w = 2, 12, 8
    moving, fixed = torch.rand(1, 1, h, w), torch.rand(1, 1, h, w)
    moving_labels = torch.randint(0, classes, (1, 1, h, w))
    fixed_labels = torch.randint(0, classes, (1, 1, h, w))
    half = ConstantField(torch.cat([torch.full((1, 1, h, w), 0.5), torch.zeros(1, 1, h, w)], 1))
    parts = registration_loss(
        half, moving, fixed, similarity=NCCSupervised(), lam=0.0,
        moving_labels=moving_labels, fixed_labels=fixed_labels, num_classes=classes,
    )  # fmt: skip
    s = one_hot_by_hand(moving_labels, classes)
    below = torch.cat([s[:, :, 1:], s[:, :, -1:]], dim=2)  # row i + 1, the last row repeated
    label_term = ((0.5 * (s + below) - one_hot_by_hand(fixed_labels, classes)) ** 2).mean()
    image_term = NCC()(parts.warped, fixed)
    assert parts.similarity.item() == pytest.approx((image_term + label_term).item(), rel=1e-5)


def test_ncc_sup_without_labels_is_a_clear_error():
    moving, fixed = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    labels = torch.zeros(1, 1, 16, 16, dtype=torch.int64)
    net = ConstantField(torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="needs moving_labels, fixed_labels .* and num_classes"):
        registration_loss(net, moving, fixed, similarity=NCCSupervised(), lam=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        registration_loss(net, moving, fixed, similarity=NCCSupervised(), lam=1.0,
                          moving_labels=labels, fixed_labels=labels)  # fmt: skip
    assert net.inputs == []  # refused before the forward pass
    # similarities without labels ignore them
    plain = registration_loss(net, moving, fixed, similarity=NCC(), lam=1.0)
    assert plain.similarity.item() == pytest.approx(NCC()(moving, fixed).item(), rel=1e-6)
