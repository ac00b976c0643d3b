"""unet.py: shapes, identity start, feature levels, gradients through warp and loss."""

import pytest
import torch

from deepsim_edu.losses import NCC, diffusion_regulariser
from deepsim_edu.transform import warp
from deepsim_edu.unet import UNet, registration_unet, segmentation_unet


@pytest.mark.parametrize("ndim, spatial", [(2, (32, 24)), (3, (16, 16, 8))])
def test_shapes_and_encoder_levels(ndim, spatial):
    net = segmentation_unet(ndim, num_classes=4, encoder_channels=(8, 16, 32))
    x = torch.rand(2, 1, *spatial)
    assert net(x).shape == (2, 4, *spatial)
    levels = net.encode(x)
    assert [f.shape[1] for f in levels] == [8, 16, 32]
    for level, f in enumerate(levels, start=1):
        assert f.shape[2:] == tuple(n // 2**level for n in spatial)


@pytest.mark.parametrize("ndim", [2, 3])
def test_registration_net_starts_near_identity(ndim):
    net = registration_unet(ndim, encoder_channels=(8, 16, 32)).eval()
    pair = torch.rand(1, 2, *(16,) * ndim)
    u = net(pair)
    assert u.shape == (1, ndim, *(16,) * ndim)
    assert u.abs().max().item() < 1e-3
    assert net.head[-1].bias.abs().max().item() == 0.0


def test_gradients_reach_every_unet_parameter_through_warp_and_loss():
    torch.manual_seed(0)
    net = registration_unet(2, encoder_channels=(8, 16, 32), dropout=0.0)
    moving, fixed = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    u = net(torch.cat([moving, fixed], dim=1))
    loss = NCC()(warp(moving, u), fixed) + 0.5 * diffusion_regulariser(u)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reached {name}"


def test_dropout_only_in_training_mode():
    net = segmentation_unet(2, 3, encoder_channels=(8, 16))
    x = torch.rand(1, 1, 16, 16)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


def test_bad_inputs_raise():
    net = UNet(2, in_channels=2, out_channels=2, encoder_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="input channels"):
        net(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 2, 30, 32))
    with pytest.raises(ValueError, match="2D U-Net"):
        net(torch.rand(1, 2, 32, 32, 32))
    with pytest.raises(ValueError, match="ndim"):
        UNet(4, 1, 1)
    with pytest.raises(ValueError, match="decoder"):
        UNet(2, 1, 1, encoder_channels=(8, 16), decoder_channels=(8,))


@pytest.mark.parametrize("ndim", [2, 3])
def test_head_last_convolution_kernel_sizes(ndim):
    # the paper's code: segmentation head ends in a 1×1 conv, the flow head in a 3×3 conv
    seg = segmentation_unet(ndim, 4, encoder_channels=(4, 8))
    reg = registration_unet(ndim, encoder_channels=(4, 8))
    assert seg.head[-1].kernel_size == (1,) * ndim and seg.head[-1].padding == (0,) * ndim
    assert reg.head[-1].kernel_size == (3,) * ndim and reg.head[-1].padding == (1,) * ndim
    # a 1×1 conv is a per-voxel linear map: changing one voxel of its input changes only there
    last = seg.head[-1]
    features = torch.rand(1, last.in_channels, *(6,) * ndim)
    changed = features.clone()
    changed[(0, slice(None)) + (2,) * ndim] += 1.0
    diff = (last(changed) - last(features)).abs().sum(1)[0]
    assert diff[(2,) * ndim] > 0 and diff.sum() == diff[(2,) * ndim]
    with pytest.raises(ValueError, match="output_kernel_size"):
        UNet(2, 1, 1, encoder_channels=(4,), output_kernel_size=2)


def test_activation_checkpointing_gives_the_same_gradients():
    """Checkpointing recomputes activations in backward: same output and gradients, no
    dropout randomness (dropout 0), BatchNorm in train mode (its statistics are recomputed from
    the same input, so the same)."""
    import torch

    from deepsim_edu.unet import registration_unet

    torch.manual_seed(0)
    plain = registration_unet(2, (4, 8, 8), dropout=0.0)
    ckpt = registration_unet(2, (4, 8, 8), dropout=0.0, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 2, 16, 16)
    outputs = []
    for net in (plain, ckpt):
        net.train()
        y = net(x)
        (y**2).sum().backward()
        outputs.append((y.detach(), [p.grad.clone() for p in net.parameters()]))
    assert torch.allclose(outputs[0][0], outputs[1][0], atol=1e-6)
    for a, b in zip(outputs[0][1], outputs[1][1]):
        assert torch.allclose(a, b, atol=1e-6)
