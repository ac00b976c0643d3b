"""DeepSim (Eq. 2), NCC-sup and the frozen feature extractor."""

import pytest
import torch
import torch.nn as nn

from deepsim_edu.config import segmentation_config
from deepsim_edu.features import load_segmentation_extractor
from deepsim_edu.losses import (
    NCC,
    DeepSimLoss,
    FeatureSimilarity,
    NCCSupervised,
    cosine_similarity_map,
    get_loss,
    one_hot,
)
from deepsim_edu.runs import save_checkpoint
from deepsim_edu.transform import warp
from deepsim_edu.unet import segmentation_unet


def extractor(ndim=2):
    torch.manual_seed(0)
    return segmentation_unet(ndim, 3, encoder_channels=(4, 8, 8))


@pytest.mark.parametrize("ndim", [2, 3])
def test_identical_images_are_the_optimum(ndim):
    loss = DeepSimLoss(extractor(ndim))
    image = torch.rand(2, 1, *(16,) * ndim)
    assert loss.similarity(image, image).item() == pytest.approx(3.0, abs=1e-6)  # Eq. 2 = L
    assert loss(image, image).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(torch.rand_like(image), image).item() > 1e-3


def test_invariant_to_positive_rescaling_of_features():
    net = extractor()

    class Scaled(nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.net, self.factor = net, factor

        def forward(self, x):
            return [self.factor * f for f in self.net.encode(x)]

    names = ["1", "2", "3"]
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    plain = FeatureSimilarity(Scaled(1.0), range(3), names)(a, b)
    scaled = FeatureSimilarity(Scaled(7.5), range(3), names)(a, b)
    torch.testing.assert_close(plain, scaled)
    torch.testing.assert_close(plain, DeepSimLoss(net)(a, b))


def test_gradients_reach_displacement_not_extractor():
    net = extractor()
    loss_fn = DeepSimLoss(net)
    moving = torch.rand(1, 1, 16, 16)
    fixed = torch.rand(1, 1, 16, 16, requires_grad=True)
    u = torch.zeros(1, 2, 16, 16, requires_grad=True)
    loss_fn(warp(moving, u), fixed).backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    assert fixed.grad is None  # fixed features are computed without a graph


def test_extractor_runs_in_eval_mode_and_keeps_its_statistics():
    net = extractor()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    DeepSimLoss(net)(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm running stats untouched


def test_zero_feature_vectors_give_no_nan():
    zeros = torch.zeros(1, 4, 3, 3, requires_grad=True)
    cos = cosine_similarity_map(zeros, torch.zeros(1, 4, 3, 3))
    cos.sum().backward()
    assert torch.equal(cos, torch.zeros(1, 3, 3)) and torch.isfinite(zeros.grad).all()
    a = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(cosine_similarity_map(a, -3 * a), -torch.ones(2, 4, 4))


def test_level_selection_and_bad_inputs():
    net = extractor()
    a = torch.rand(1, 1, 16, 16)
    single = DeepSimLoss(net, levels=[2])
    assert single.similarity(a, a).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown level 3.*encoder stage 3"):
        DeepSimLoss(net, levels=[3])
    with pytest.raises(ValueError, match="1-channel images, got 2"):
        DeepSimLoss(net)(torch.rand(1, 2, 16, 16), torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match="same shape"):
        DeepSimLoss(net)(a, torch.rand(1, 1, 16, 8))


def test_ncc_sup_equals_ncc_when_labels_agree():
    warped, fixed = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    labels = one_hot(torch.randint(0, 3, (2, 1, 16, 16)), 3)
    ncc_sup = get_loss("ncc-sup")
    assert ncc_sup.needs_labels
    torch.testing.assert_close(ncc_sup(warped, fixed, labels, labels), NCC()(warped, fixed))
    other = one_hot(torch.randint(0, 3, (2, 1, 16, 16)), 3)
    assert ncc_sup(warped, fixed, labels, other) > NCC()(warped, fixed)
    with pytest.raises(ValueError, match="needs the warped one-hot"):
        NCCSupervised()(warped, fixed)


def _save_extractor(path, dataset="platelet-em", ndim=2):
    config = segmentation_config(dataset, "quick", encoder_channels=(4, 8, 8))
    net = segmentation_unet(ndim, 3, (4, 8, 8), dropout=0.0)
    run_config = {**config.to_dict(), "kind": "segmentation", "ndim": ndim,
                  "classes": ["background", "cytoplasm", "organelle"]}  # fmt: skip
    save_checkpoint(path, {"model": net.state_dict(), "config": run_config, "epoch": 1})
    return net


def test_load_extractor_checks_dataset_and_dimension(tmp_path):
    net = _save_extractor(tmp_path / "checkpoint.pt")
    loaded = load_segmentation_extractor(tmp_path / "checkpoint.pt", dataset="platelet-em", ndim=2)
    x = torch.rand(1, 1, 16, 16)
    net.eval()
    for a, b in zip(net.encode(x), loaded.encode(x)):
        torch.testing.assert_close(a, b)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(ValueError, match="trained on 'platelet-em'.*not 'phc-u373'"):
        load_segmentation_extractor(tmp_path / "checkpoint.pt", dataset="phc-u373")
    with pytest.raises(ValueError, match="2D.*3D"):
        load_segmentation_extractor(tmp_path / "checkpoint.pt", ndim=3)
    with pytest.raises(FileNotFoundError, match="train-seg"):
        load_segmentation_extractor(tmp_path / "missing.pt")


def test_vgg_loss_uses_the_same_cosine_formula(tmp_path):
    from deepsim_edu.features import VGG16Features

    torch.manual_seed(0)
    vgg = VGG16Features()  # random weights: the formula, not ImageNet, is under test here
    loss = get_loss("vgg", vgg=vgg)
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    assert loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    expected = 1 - sum(cosine_similarity_map(x, y).mean() for x, y in zip(vgg(a), vgg(b))) / 3
    torch.testing.assert_close(loss(a, b), expected)
    assert get_loss("vgg", vgg=vgg, levels=["relu2_2"]).similarity(a, a).item() == pytest.approx(
        1.0
    )
    with pytest.raises(FileNotFoundError, match="python -m data_scripts.vgg16_weights"):
        get_loss("vgg", vgg=str(tmp_path / "vgg16_conv.pt"))


def test_fixed_features_are_reused_only_for_the_same_unchanged_fixed_image():
    """Under no_grad the fixed image's features are computed once per fixed tensor: a view of
    the same memory reuses them, new values, an in-place write or new weights do not; the
    similarity equals the one computed from scratch each time."""
    from deepsim_edu.losses import DeepSimLoss
    from deepsim_edu.unet import segmentation_unet

    torch.manual_seed(0)
    extractor = segmentation_unet(2, 3, (4, 8, 8))
    loss = DeepSimLoss(extractor)
    calls = []
    encode = extractor.encode
    extractor.encode = lambda x: calls.append(x.shape) or encode(x)
    atlas, warped = torch.rand(1, 16, 16), torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        first = loss(warped, atlas[None])
        again = loss(warped, atlas[None])  # a new view of the same memory
        assert len(calls) == 3 and again == first  # F(J) once, F(I∘Φ) twice
        other = loss(warped, atlas[None].clone())  # same values, other memory: computed
        assert len(calls) == 5 and torch.isclose(other, first)
        atlas.mul_(0.5)  # written in place: computed again, and it matters
        halved = loss(warped, atlas[None])
        assert len(calls) == 7
        fresh = DeepSimLoss(segmentation_unet(2, 3, (4, 8, 8)))
        fresh.extractor.load_state_dict(extractor.state_dict())
        assert torch.isclose(halved, fresh(warped, atlas[None]))
        with torch.no_grad():
            for p in extractor.parameters():
                p.mul_(1.1)  # new weights: computed again
        loss(warped, atlas[None])
        assert len(calls) == 9
    u = torch.zeros(1, 1, 16, 16, requires_grad=True)
    loss(warped + u, atlas[None])  # training: nothing kept between steps
    assert loss._fixed_kept is None and len(calls) == 11
