"""Instance optimisation (deepsim_edu.instance): Eq. 1 minimised over the field of one pair.

Truths: pairs made by warping an image with a known field (a translation, a smooth analytic
field), for which that field gives D = 0; a point-symmetric pair, whose best constant shift is 0
by symmetry; Eq. 1 recomputed from the library's similarity, warp and regulariser; a DeepSim
extractor trained here on a tiny dataset of squares.
"""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from deepsim_edu.config import PAPER_LAMBDA, registration_config, segmentation_config
from deepsim_edu.data.layout import DatasetInfo, write_case, write_dataset_json
from deepsim_edu.evaluate import dice_or_nan
from deepsim_edu.instance import (
    compare_methods,
    level_shapes,
    max_levels,
    method_table,
    metric_similarity,
    optimise,
    resample_field,
)
from deepsim_edu.losses import MSE, NCC, DeepSimLoss, NCCSupervised, diffusion_regulariser, one_hot
from deepsim_edu.registration import register
from deepsim_edu.runs import checkpoint_path
from deepsim_edu.train import train_segmentation
from deepsim_edu.transform import identity_grid, warp
from deepsim_edu.unet import segmentation_unet

N = 64  # side of the synthetic images


def texture(n: int = N, sigma: float = 3.0, seed: int = 0) -> torch.Tensor:
    """Smooth random texture in [0, 1], ``(1, 1, n, n)``: image gradients everywhere."""
    noise = np.random.default_rng(seed).standard_normal((n, n))
    smooth = gaussian_filter(noise, sigma)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return torch.tensor(smooth, dtype=torch.float32)[None, None]


def sine_field(n: int = N) -> torch.Tensor:
    """u = (2 sin(2π x₁/n) cos(2π x₀/n), 1.5 cos(2π x₁/n)) voxels, ``(1, 2, n, n)``."""
    x0, x1 = identity_grid((n, n))[0]
    return torch.stack([2 * torch.sin(2 * np.pi * x1 / n) * torch.cos(2 * np.pi * x0 / n),
                        1.5 * torch.cos(2 * np.pi * x1 / n)])[None]  # fmt: skip


def endpoint_error(u: torch.Tensor, truth: torch.Tensor, border: int = 4) -> torch.Tensor:
    """|u − truth| per voxel, ``(n − 2·border, n − 2·border)``, inside a margin of the border."""
    epe = (u - truth).norm(dim=1)[0]
    return epe[border:-border, border:-border]


def eq1(similarity, lam, moving, fixed, u):
    """Eq. 1 recomputed from the library's parts: D(warp(I, u), J) + λ R(u)."""
    return (similarity(warp(moving, u), fixed) + lam * diffusion_regulariser(u)).item()


# ----------------------------------------------------------------------------- known fields


def test_recovers_a_translation_with_mse():
    moving = texture()
    shift = torch.tensor([2.5, -1.5]).view(1, 2, 1, 1).expand(1, 2, N, N)
    fixed = warp(moving, shift)  # fixed(x) = moving(x + t): u = t gives D = 0 and R = 0
    result = optimise(moving, fixed, MSE(), 0.01, levels=2, iterations=[100, 100],
                      progress=False)  # fmt: skip
    assert endpoint_error(result.displacement, shift).max() < 0.02  # voxels
    assert result.displacement.shape == (1, 2, N, N) and result.warped.shape == (1, 1, N, N)
    torch.testing.assert_close(result.warped, fixed, atol=1e-3, rtol=0)
    assert result.shapes == [(N // 2, N // 2), (N, N)]


def test_recovers_a_smooth_analytic_field_with_mse():
    moving, truth = texture(), sine_field()
    fixed = warp(moving, truth)
    result = optimise(moving, fixed, MSE(), 0.001, levels=2, iterations=[100, 100],
                      progress=False)  # fmt: skip
    error = endpoint_error(result.displacement, truth)
    assert error.mean() < 0.15 and error.mean() < 0.1 * truth.norm(dim=1).mean()
    losses = [row["loss"] for row in result.log if row["level"] == 0]
    assert losses[-1] < 0.2 * losses[0]  # the full-resolution level still improves Eq. 1


def test_large_lambda_keeps_the_field_near_zero():
    """A point-symmetric pair: the moving image is symmetric about the centre c and the true
    field is odd (u(c + x) = −u(c − x)), so by symmetry the best constant shift is 0. A huge λ
    allows only constant fields (R = 0), hence u ≈ 0; a small λ follows the true field."""
    base = texture()
    moving = base + base.flip(-1, -2)
    moving = moving / moving.max()
    d = identity_grid((N, N))[0] - (N - 1) / 2
    truth = (0.15 * d * torch.exp(-(d**2).sum(0) / (2 * 12**2)))[None]  # radial expansion
    fixed = warp(moving, truth)
    kw = dict(levels=2, iterations=[60, 60], progress=False)
    stiff = optimise(moving, fixed, MSE(), 1e4, **kw).displacement
    loose = optimise(moving, fixed, MSE(), 1e-3, **kw).displacement
    peak = truth.abs().max()
    assert stiff.abs().max() < 0.1 * peak
    assert endpoint_error(loose, truth).mean() < 0.2 * truth.norm(dim=1).mean()


# ----------------------------------------------------------------------------- Eq. 1, the pyramid


@pytest.mark.parametrize("metric", ["mse", "ncc", "ncc-sup"])
def test_log_is_eq1_and_the_last_row_is_the_returned_field(metric):
    moving, fixed = texture(seed=1), texture(seed=2)
    labels = [(x > 0.5).long() for x in (moving, fixed)]
    similarity, lam = metric_similarity("platelet-em", metric, 2)
    result = optimise(moving, fixed, similarity, lam, levels=2, iterations=[5, 5],
                      moving_labels=labels[0], fixed_labels=labels[1], num_classes=2,
                      progress=False)  # fmt: skip
    u = result.displacement
    if metric == "ncc-sup":  # the label term warps one-hot labels linearly, as in training
        warped_labels = warp(one_hot(labels[0], 2), u)
        d = similarity(warp(moving, u), fixed, warped_labels, one_hot(labels[1], 2))
        expected = (d + lam * diffusion_regulariser(u)).item()
    else:
        expected = eq1(similarity, lam, moving, fixed, u)
    last = result.log[-1]
    assert last["level"] == 0 and last["iteration"] == 10 and len(result.log) == 11
    assert last["loss"] == pytest.approx(expected, rel=1e-5)
    assert last["loss"] == pytest.approx(last["similarity"] + lam * last["regulariser"], rel=1e-6)
    assert [row["level"] for row in result.log] == [1] * 5 + [0] * 6


def test_field_resampling_is_exact_for_shifts_and_affine_fields():
    c = torch.tensor([1.5, -0.75]).view(1, 2, 1, 1)
    constant = c.expand(1, 2, 8, 12).clone()
    torch.testing.assert_close(resample_field(constant, (16, 24)), 2 * c.expand(1, 2, 16, 24))
    torch.testing.assert_close(resample_field(2 * c.expand(1, 2, 16, 24), (8, 12)), constant)
    # coarse voxel x_c sits at fine x_f = 2 x_c + 0.5, so u_c(x_c) = a + B x_c becomes
    # u_f(x_f) = 2 (a + B (x_f − 0.5) / 2) = 2a + B (x_f − 0.5), exact away from the border
    a, b = torch.tensor([0.3, -0.2]), torch.tensor([[0.1, 0.05], [-0.02, 0.2]])
    coarse = a.view(1, 2, 1, 1) + torch.einsum("ij,jhw->ihw", b, identity_grid((8, 12))[0])[None]
    fine = resample_field(coarse, (16, 24))
    expected = 2 * a.view(1, 2, 1, 1) + torch.einsum(
        "ij,jhw->ihw", b, identity_grid((16, 24))[0] - 0.5)[None]  # fmt: skip
    torch.testing.assert_close(fine[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])


def test_level_shapes_and_how_many_levels_fit():
    assert level_shapes((80, 96, 80), 3) == [(20, 24, 20), (40, 48, 40), (80, 96, 80)]
    assert max_levels((256, 256)) == 3 and max_levels((12, 40)) == 1
    deepsim = DeepSimLoss(segmentation_unet(3, 4, (4, 8, 8)))  # 3 stages: sizes divisible by 8
    assert max_levels((80, 96, 80), deepsim) == 2  # 20 is not divisible by 8


# ----------------------------------------------------------------------------- starts, seeds


def test_zero_iterations_return_the_starting_field_exactly():
    moving, fixed = texture(seed=1), texture(seed=2)
    start = sine_field()
    for levels in (1, 3):
        result = optimise(moving, fixed, MSE(), 0.1, initial=start, levels=levels,
                          iterations=0, progress=False)  # fmt: skip
        assert torch.equal(result.displacement, start)
        assert torch.equal(result.warped, warp(moving, start))
        assert len(result.log) == 1
        assert result.log[0]["loss"] == pytest.approx(eq1(MSE(), 0.1, moving, fixed, start))


class SineNet(torch.nn.Module):
    """A stand-in registration net: (1, 2, n, n) → the sine field, whatever the images."""

    def forward(self, pair):
        return sine_field(pair.shape[-1])


def test_starts_from_a_network_prediction():
    moving, fixed = texture(seed=1), texture(seed=2)
    net = SineNet()
    predicted, _ = register(net, moving, fixed)
    assert torch.equal(predicted, sine_field())
    result = optimise(moving, fixed, MSE(), 0.1, initial=net, levels=1, iterations=0,
                      progress=False)  # fmt: skip
    assert torch.equal(result.displacement, predicted)
    refined = optimise(moving, fixed, MSE(), 0.1, initial=net, levels=1, iterations=20,
                       progress=False)  # fmt: skip
    assert refined.log[-1]["loss"] < eq1(MSE(), 0.1, moving, fixed, predicted)


def test_deterministic_with_a_seed_and_leaves_the_callers_random_stream_alone():
    moving, fixed = texture(seed=1), texture(seed=2)
    state = torch.get_rng_state()
    runs = [optimise(moving, fixed, NCC(), 0.5, levels=2, iterations=[10, 10], seed=3,
                     progress=False) for _ in range(2)]  # fmt: skip
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(runs[0].displacement, runs[1].displacement)
    assert [r["loss"] for r in runs[0].log] == [r["loss"] for r in runs[1].log]


# ----------------------------------------------------------------------------- the similarities


def test_metric_similarity_builds_what_training_builds():
    similarity, lam = metric_similarity("phc-u373", "ncc", 2, preset="quick")
    config = registration_config("phc-u373", "ncc", "quick")
    assert isinstance(similarity, NCC) and lam == config.lam == PAPER_LAMBDA["phc-u373"]["ncc"]
    assert (similarity.window, similarity.border) == (config.ncc_window, config.ncc_border)
    run_config = {**config.to_dict(), "ncc_border": "zero-padding", "kind": "registration",
                  "ndim": 2, "classes": ["background", "cell"]}  # a run's config.json
    similarity, lam = metric_similarity("phc-u373", "ncc", 2, config=run_config, lam=0.7)
    assert similarity.border == "zero-padding" and lam == 0.7
    assert isinstance(metric_similarity("phc-u373", "ncc-sup", 2)[0], NCCSupervised)


@pytest.fixture(scope="module")
def squares_extractor(tmp_path_factory):
    """A segmentation net trained here on 32×32 images of a bright square (class 1): DeepSim's
    extractor, as a ``train_segmentation`` checkpoint of a dataset named phc-u373."""
    root = tmp_path_factory.mktemp("squares")
    gen = torch.Generator().manual_seed(0)
    splits = {s: [f"{s}_{i}" for i in range(6)] for s in ("train", "val", "test")}
    for cases in splits.values():
        for case in cases:
            r, c = torch.randint(4, 16, (2,), generator=gen).tolist()
            label = torch.zeros(32, 32, dtype=torch.uint8)
            label[r : r + 12, c : c + 12] = 1
            image = 0.2 + 0.6 * label + 0.05 * torch.randn(32, 32, generator=gen)
            write_case(root / "data", case, image.numpy(), label.numpy(), [1.0, 1.0])
    info = DatasetInfo(
        name="phc-u373", ndim=2, spacing=[1, 1], classes=["background", "cell"], splits=splits
    )
    write_dataset_json(root / "data", info)
    config = segmentation_config("phc-u373", "quick", encoder_channels=(4, 8, 8), batch_size=4,
                                 steps_per_epoch=10, epochs=6, lr=3e-3, crop=None)  # fmt: skip
    last = train_segmentation(root / "data", root / "run", config, progress=False)
    assert last["val_dice"] > 0.5
    return checkpoint_path(root / "run")


def square_pair(top_left, shift):
    """A 32×32 square image and label, and the same square moved by ``shift`` voxels."""
    gen = torch.Generator().manual_seed(1)
    images, labels = [], []
    for r, c in (top_left, (top_left[0] + shift[0], top_left[1] + shift[1])):
        label = torch.zeros(1, 1, 32, 32, dtype=torch.long)
        label[..., r : r + 12, c : c + 12] = 1
        labels.append(label)
        images.append(0.2 + 0.6 * label.float() + 0.05 * torch.randn(1, 1, 32, 32, generator=gen))
    return images, labels


def test_deepsim_with_a_trained_extractor_aligns_a_moved_square(squares_extractor):
    similarity, lam = metric_similarity("phc-u373", "deepsim", 2, preset="quick",
                                        extractor=squares_extractor)  # fmt: skip
    (moving, fixed), (moving_labels, fixed_labels) = square_pair((8, 8), (3, -2))
    before = dice_or_nan(moving_labels, fixed_labels, 2)
    result = optimise(moving, fixed, similarity, lam, levels=2, iterations=[100, 100],
                      moving_labels=moving_labels, fixed_labels=fixed_labels, num_classes=2,
                      log_dice=True, progress=False)  # fmt: skip
    after = dice_or_nan(warp(moving_labels, result.displacement, mode="nearest"), fixed_labels, 2)
    assert before < 0.7 and after > 0.95
    # inside the fixed square (rows 11..22, columns 6..17) J(x) = I(x − s), so u ≈ −s there
    inside = result.displacement[0, :, 13:21, 8:16].mean((1, 2))
    assert (inside - torch.tensor([-3.0, 2.0])).norm() < 1.0
    assert result.log[-1]["dice"] == after and result.log[0]["dice"] == before
    # the log's D uses J's features computed once: the same as DeepSimLoss on the two images
    d = similarity(warp(moving, result.displacement), fixed).item()
    assert result.log[-1]["similarity"] == pytest.approx(d, rel=1e-5, abs=1e-7)
    assert result.log[-1]["similarity"] < 0.5 * result.log[0]["similarity"]


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_are_clear_value_errors(squares_extractor):
    moving, fixed = texture(seed=1), texture(seed=2)
    run = lambda m=moving, f=fixed, **kw: optimise(m, f, MSE(), 0.1, progress=False, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="same shape"):
        run(f=fixed[..., :32])
    with pytest.raises(ValueError, match="moving contains NaN"):
        run(m=torch.where(moving > 0.9, torch.nan, moving))
    with pytest.raises(ValueError, match=r"one image \(1, 1, H, W\)"):
        run(m=moving.expand(2, 1, N, N), f=fixed.expand(2, 1, N, N))
    with pytest.raises(ValueError, match="initial displacement must be"):
        run(initial=torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="iterations must be one count or one per level"):
        run(levels=2, iterations=[5, 5, 5])
    with pytest.raises(ValueError, match="whole numbers >= 0"):
        run(levels=1, iterations=-1)
    with pytest.raises(ValueError, match="λ must be"):
        optimise(moving, fixed, MSE(), float("nan"), progress=False)
    with pytest.raises(ValueError, match="unknown metric 'ssim'"):
        metric_similarity("platelet-em", "ssim", 2)
    with pytest.raises(ValueError, match="compares label maps"):
        optimise(moving, fixed, NCCSupervised(), 0.1, progress=False)
    with pytest.raises(ValueError, match="needs the checkpoint of its feature extractor"):
        metric_similarity("phc-u373", "deepsim", 2)
    deepsim, lam = metric_similarity("phc-u373", "deepsim", 2, preset="quick",
                                     extractor=squares_extractor)  # fmt: skip
    with pytest.raises(ValueError, match=r"divisible by 8.*at most 1"):
        optimise(moving[..., :40, :40], fixed[..., :40, :40], deepsim, lam, levels=2,
                 progress=False)  # fmt: skip


# ----------------------------------------------------------------------------- network vs instance


class ZeroNet(torch.nn.Module):
    """A registration net that always predicts the identity, u = 0."""

    def forward(self, pair):
        return torch.zeros(pair.shape[0], pair.dim() - 2, *pair.shape[2:])


@pytest.fixture(scope="module")
def disc_pairs(tmp_path_factory):
    from deepsim_edu.data.pairs import CaseStore, PairDataset
    from tests.disc_series import write_disc_series

    root = write_disc_series(tmp_path_factory.mktemp("discs"), n_train=2, n_val=2, n_test=3)
    return PairDataset(CaseStore(root / "phc-u373"), "test")  # 2 pairs: the disc moves 2 px


def test_compare_methods_scores_each_method_and_the_table_tests_them(disc_pairs):
    from scipy.stats import wilcoxon

    kw = dict(net=ZeroNet(), levels=2, iterations=[40, 20], progress=False)
    rows = [{"dataset": "phc-u373", "metric": metric, **row}
            for metric, lam in (("deepsim", 0.1), ("mse", 10.0))  # two λ of MSE, two "metrics"
            for row in instance_rows(disc_pairs, lam, **kw)]  # fmt: skip
    by = {(r["metric"], r["method"], r["moving"]): r for r in rows}
    assert len(rows) == 2 * 2 * 3
    for (metric, method, moving), row in by.items():
        if method == "network":  # u = 0: nothing moves
            assert row["dice"] == row["dice_before"] and row["folding_fraction"] == 0
        if method == "network+optimise":  # started from u = 0: the same as from the identity
            assert row["dice"] == by[metric, "optimise", moving]["dice"]
        assert row["seconds"] > 0
    assert all(by["deepsim", "optimise", m]["dice"] > by["deepsim", "network", m]["dice"] + 0.02
               for m in ("test_0", "test_1"))  # fmt: skip
    table = method_table(rows)
    mse = table[(table["method"] == "optimise") & (table["metric"] == "mse")].iloc[0]
    ours = [by[m, "optimise", c]["dice"] for m in ("deepsim", "mse") for c in ("test_0", "test_1")]
    assert mse["dice"] == pytest.approx(np.mean(ours[2:]))
    difference = np.array(ours[:2]) - np.array(ours[2:])
    assert np.any(difference != 0)  # two λ give two fields, so the test has pairs to rank
    assert mse["pvalue"] == pytest.approx(wilcoxon(difference, alternative="greater").pvalue)


def instance_rows(pairs, lam, **kw):
    return compare_methods(pairs, MSE(), lam, indices=[0, 1], **kw)


def test_compare_methods_refuses_what_it_cannot_do(disc_pairs):
    with pytest.raises(ValueError, match="fit the very labels"):
        compare_methods(disc_pairs, NCCSupervised(), 0.1, net=ZeroNet(), indices=[0])
    with pytest.raises(ValueError, match="need the registration net"):
        compare_methods(disc_pairs, MSE(), 0.1, indices=[0])
    with pytest.raises(ValueError, match="unknown method"):
        compare_methods(disc_pairs, MSE(), 0.1, methods=["optimize"], indices=[0])
