"""The four claims and the noise-robustness measurements, on hand-made results and nets."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from deepsim_edu.claims import beside_published, check_claims, claim_summary, published_results
from deepsim_edu.data.layout import DatasetInfo, save_nifti, write_case, write_dataset_json
from deepsim_edu.data.pairs import PairDataset
from deepsim_edu.robustness import (
    NoisyPairs,
    displacement_gradient_norm,
    noise_sweep,
    noisy_region_smoothness,
)
from deepsim_edu.runs import save_checkpoint, write_csv
from deepsim_edu.unet import registration_unet

CHANNELS = (4, 8, 8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """platelet-em stand-in: 32x32 sections; the test sections carry left-half noise masks."""
    root = tmp_path_factory.mktemp("data") / "platelet-em"
    gen = torch.Generator().manual_seed(0)
    splits = {s: [f"{s}_{i}" for i in range(3)] for s in ("train", "val", "test")}
    for cases in splits.values():
        for case in cases:
            label = (torch.rand(32, 32, generator=gen) > 0.5).to(torch.uint8)
            image = 0.3 + 0.4 * label.float()
            write_case(root, case, image.numpy(), label.numpy(), [1.0, 1.0])
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 1
    save_nifti(root / "noise_masks" / "test_1.nii.gz", mask, [1.0, 1.0])
    # true displacements u* of the test pairs (test_0 → test_1: constant (0, 1);
    # test_1 → test_2: u*_1 = 0.05·x_0, a shear with ∂u*_1/∂x_0 = 0.05)
    x0 = np.arange(32.0)[:, None] * np.ones((1, 32))
    truths = {"test_0": np.stack([np.zeros((32, 32)), np.ones((32, 32))]),
              "test_1": np.stack([np.zeros((32, 32)), 0.05 * x0])}  # fmt: skip
    for case, truth in truths.items():
        save_nifti(root / "displacements" / f"{case}.nii.gz", truth.astype(np.float32), [1.0, 1.0])
    info = DatasetInfo("platelet-em", 2, [1, 1], ["background", "cell"], splits)
    write_dataset_json(root, info)
    return root


def constant_displacement_run(folder, shift):
    """A registration run whose net outputs the constant displacement ``shift`` everywhere."""
    net = registration_unet(2, CHANNELS)
    last = net.head[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor(shift))
    config = {"kind": "registration", "dataset": "platelet-em", "metric": folder.name,
              "ndim": 2, "encoder_channels": list(CHANNELS), "dropout": 0.0}  # fmt: skip
    save_checkpoint(folder / "checkpoint.pt", {"model": net.state_dict(), "config": config})


def test_gradient_norm_of_linear_field_is_its_slope():
    # u_0 = a·x_0 + b·x_1, u_1 = 0  →  ∇u = [[a, b], [0, 0]],  |∇u| = sqrt(a² + b²);
    # forward differences: on the last row (column) ∂/∂x_0 (∂/∂x_1) is padded to 0
    x0, x1 = torch.meshgrid(torch.arange(9.0), torch.arange(7.0), indexing="ij")
    u = torch.stack([0.3 * x0 - 0.4 * x1, torch.zeros_like(x0)])[None]
    expected = torch.full((1, 9, 7), 0.5)
    expected[:, -1, :], expected[:, :, -1], expected[:, -1, -1] = 0.4, 0.3, 0.0
    assert torch.allclose(displacement_gradient_norm(u), expected, atol=1e-6)


def test_noisy_pairs_add_the_same_noise_of_the_stated_sigma(data):
    pairs = PairDataset(data, "test")
    clean, noisy = pairs[0], NoisyPairs(pairs, 0.2, seed=3)[0]
    residual = noisy["fixed"] - clean["fixed"]
    assert abs(residual.std().item() - 0.2) < 0.02  # 1024 draws: sd error ≈ 0.2/√2048
    assert torch.equal(NoisyPairs(pairs, 0.2, seed=3)[0]["fixed"], noisy["fixed"])
    assert torch.equal(noisy["fixed_labels"], clean["fixed_labels"])
    assert torch.equal(NoisyPairs(pairs, 0.0)[0]["moving"], clean["moving"])
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        NoisyPairs(pairs, -0.1)


def test_noisy_region_smoothness_and_sweep_on_constant_displacements(data, tmp_path):
    constant_displacement_run(tmp_path / "platelet-em" / "deepsim", [0.0, 0.0])
    constant_displacement_run(tmp_path / "platelet-em" / "mse", [0.0, 1.0])
    regions = noisy_region_smoothness(tmp_path, data.parent, "platelet-em")
    # pairs (test_0, test_1) and (test_1, test_2) touch the masked case; the union is the left half
    assert sorted(zip(regions["metric"], regions["moving"])) == [
        ("deepsim", "test_0"), ("deepsim", "test_1"), ("mse", "test_0"), ("mse", "test_1")
    ]  # fmt: skip
    assert np.allclose(regions["noisy_fraction"], 0.5)
    # a constant u has ∇u = 0 and det ∇Φ = 1 everywhere
    assert np.allclose(regions[["gradient_inside", "gradient_outside"]], 0.0, atol=1e-6)
    assert (regions[["folding_inside", "folding_outside"]] == 0).all().all()
    # against u*: a constant u has ∇u = 0, so its roughness error is |∇u*| (0, then 0.05 on
    # 31 of the 32 rows: forward differences pad the last row's ∂/∂x_0 to 0)
    by = regions.set_index(["metric", "moving"])
    slope = 0.05 * 31 / 32
    for metric in ("deepsim", "mse"):
        assert by.loc[(metric, "test_0"), "gradient_error_inside"] == pytest.approx(0, abs=1e-6)
        assert by.loc[(metric, "test_1"), "gradient_error_inside"] == pytest.approx(slope, abs=1e-6)
        assert by.loc[(metric, "test_1"), "true_gradient_outside"] == pytest.approx(slope, abs=1e-6)
    # endpoint error: mse's u = (0, 1) is exact on test_0; deepsim's u = 0 is 1 px off there
    assert by.loc[("mse", "test_0"), "endpoint_error_inside"] == pytest.approx(0, abs=1e-6)
    assert by.loc[("deepsim", "test_0"), "endpoint_error_outside"] == pytest.approx(1, abs=1e-6)
    assert by.loc[("mse", "test_0"), "true_magnitude_inside"] == pytest.approx(1, abs=1e-6)
    # on test_1 the error is |u_1 − 0.05·x_0|, the same in every column x_1 (inside = outside)
    rows = np.arange(32.0)
    assert by.loc[("deepsim", "test_1"), "endpoint_error_inside"] == pytest.approx(0.775)
    expected = np.abs(1 - 0.05 * rows).mean()
    assert by.loc[("mse", "test_1"), "endpoint_error_inside"] == pytest.approx(expected, abs=1e-5)

    sweep = noise_sweep(tmp_path, data.parent, "platelet-em", sigmas=(0.0, 0.3))
    assert len(sweep) == 2 * 2 * 2  # metrics × sigmas × test pairs
    zero = sweep[(sweep.metric == "deepsim") & (sweep.sigma == 0.0)]
    assert np.allclose(zero["dice"], zero["dice_before"])  # u = 0: labels unchanged


def test_noisy_region_smoothness_needs_noise_masks(data, tmp_path):
    constant_displacement_run(tmp_path / "phc" / "platelet-em" / "deepsim", [0.0, 0.0])
    bare = tmp_path / "bare"
    for sub in ("images", "labels"):
        (bare / sub).mkdir(parents=True)
        for f in (data / sub).iterdir():
            (bare / sub / f.name).write_bytes(f.read_bytes())
    (bare / "dataset.json").write_text((data / "dataset.json").read_text())
    with pytest.raises(ValueError, match="no test pair has a noise mask"):
        noisy_region_smoothness(tmp_path / "phc", bare, "platelet-em")
    with pytest.raises(FileNotFoundError, match="nothing: no results folder"):
        noisy_region_smoothness(tmp_path / "nothing", data, "platelet-em")
    (tmp_path / "empty" / "platelet-em").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="platelet-em: no registration run with a chec"):
        noisy_region_smoothness(tmp_path / "empty", data, "platelet-em")


def write_run(root, metric, dice, val_dice):
    run = root / "platelet-em" / metric
    write_csv(run / "test_results.csv", [
        {"dataset": "platelet-em", "metric": metric, "moving": f"t{i}", "fixed": f"t{i + 1}",
         "dice": d, "dice_before": 0.5, "dice_paper_convention": d, "folding_fraction": 0.0}
        for i, d in enumerate(dice)
    ])  # fmt: skip
    write_csv(run / "log.csv", [{"epoch": k + 1, "step": 50 * (k + 1), "val_dice": v}
                                for k, v in enumerate(val_dice)])  # fmt: skip


def test_claims_on_hand_made_results(tmp_path):
    # DeepSim beats MSE on all 6 pairs (one-sided exact Wilcoxon p = 1/2^6); NCC beats DeepSim.
    deepsim = [0.80, 0.82, 0.84, 0.86, 0.88, 0.90]
    write_run(tmp_path, "deepsim", deepsim, [0.6, 0.7, 0.8, 0.85])
    mse = [d - 0.01 * (i + 1) for i, d in enumerate(deepsim)]
    ncc = [d + 0.05 + 0.001 * i for i, d in enumerate(deepsim)]
    write_run(tmp_path, "mse", mse, [0.5, 0.7, 0.9])
    write_run(tmp_path, "ncc", ncc, [0.7, 0.6, 0.5])
    regions = pd.DataFrame([
        {"dataset": "platelet-em", "metric": "deepsim", "folding_inside": 0.0,
         "gradient_inside": 0.1, "endpoint_error_inside": 0.5},
        {"dataset": "platelet-em", "metric": "mse", "folding_inside": 0.01, "gradient_inside": 0.3,
         "endpoint_error_inside": 0.4},
        {"dataset": "platelet-em", "metric": "ncc", "folding_inside": 0.0, "gradient_inside": 0.05,
         "endpoint_error_inside": float("nan")},
    ])  # fmt: skip
    claims = check_claims(tmp_path, regions).set_index(["claim", "versus", "statistic"])
    value, holds = claims["value"], claims["holds"]
    assert value[1, "mse", "Δ mean test Dice"] == pytest.approx(0.035)  # mean of 0.01..0.06
    assert holds[1, "mse", "Δ mean test Dice"] and not holds[1, "ncc", "Δ mean test Dice"]
    assert value[2, "mse", "Wilcoxon p (one-sided)"] == pytest.approx(1 / 64)
    assert value[2, "ncc", "Wilcoxon p (one-sided)"] == pytest.approx(1.0)
    # early validation: steps 50, 100, 150 against MSE (3 rows: its log is 3 long)
    assert value[3, "mse", "Δ validation Dice at step 50"] == pytest.approx(0.1)
    assert not holds[3, "mse", "Δ validation Dice at step 100"]  # a tie is not faster
    assert value[3, "ncc", "Δ validation Dice at step 150"] == pytest.approx(0.3)
    assert value[4, "mse", "mean |∇u| in noisy patches: baseline − DeepSim"] == pytest.approx(0.2)
    assert not holds[4, "ncc", "folding in noisy patches: baseline − DeepSim"]  # tie at 0
    assert value[4, "mse", "mean ‖u − u*‖ in noisy patches: baseline − DeepSim"] == pytest.approx(
        -0.1
    )  # smoother but further from the truth: the error measure does not hold
    assert not holds[4, "mse", "mean ‖u − u*‖ in noisy patches: baseline − DeepSim"]
    assert (4, "ncc", "mean ‖u − u*‖ in noisy patches: baseline − DeepSim") not in claims.index
    assert "mean ‖∇u − ∇u*‖ in noisy patches: baseline − DeepSim" not in set(
        claims.reset_index()["statistic"]
    )  # no such column: no rows
    summary = claim_summary(claims.reset_index()).set_index(["claim", "dataset"])["verdict"]
    assert summary[1, "platelet-em"] == "partly (1/2)"
    assert summary[2, "platelet-em"] == "partly (1/2)"
    assert summary[3, "platelet-em"] == "partly (3/6)"  # mse: 50 ✓ 100 ✗ 150 ✗; ncc: ✗ ✓ ✓


def test_noise_sweep_summary_and_figure():
    from deepsim_edu.robustness import summarize_noise_sweep
    from deepsim_edu.viz import plot_noise_sweep

    rows = [{"metric": m, "sigma": s, "moving": f"t{i}", "dice": base - s * (i + 1),
             "dice_before": 0.5, "folding_fraction": s / 10}
            for m, base in (("deepsim", 0.9), ("mse", 0.8)) for s in (0.0, 0.5)
            for i in range(2)]  # fmt: skip
    table = summarize_noise_sweep(pd.DataFrame(rows))
    assert list(table.index) == ["mse", "deepsim", "before"]  # METRICS order, then before
    assert table.loc["deepsim", 0.5] == pytest.approx(0.9 - 0.75)  # mean of 0.9-0.5, 0.9-1.0
    assert table.loc["before", 0.0] == 0.5
    fig = plot_noise_sweep(pd.DataFrame(rows))
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)
    assert pixels.std() > 10  # not blank


def test_noisy_pairs_are_clipped_to_the_unit_interval(data):
    # the paper's noise experiment clips image + noise to [0, 1]; with σ = 0.5 on intensities
    # 0.3 / 0.7 a pixel ends on a bound with probability P(n < −0.3/σ) + P(n > 0.7/σ) ≈ 0.355
    expected = 0.5 * (math.erfc(0.6 / math.sqrt(2)) + math.erfc(1.4 / math.sqrt(2)))
    pairs = PairDataset(data, "test")
    for index in range(len(pairs)):
        clean, noisy = pairs[index], NoisyPairs(pairs, 0.5, seed=1)[index]
        for key in ("moving", "fixed"):
            assert noisy[key].min() >= 0.0 and noisy[key].max() <= 1.0
            at_bounds = ((noisy[key] == 0.0) | (noisy[key] == 1.0)).float().mean().item()
            assert at_bounds == pytest.approx(expected, abs=0.05)  # 1024 pixels: sd ≈ 0.015
            inside = (noisy[key] > 0) & (noisy[key] < 1)
            assert not torch.equal(noisy[key][inside], clean[key][inside])  # still noisy


def test_patch_strength_sweep_regenerates_the_test_set(tmp_path, monkeypatch):
    """At every strength the same pairs, masks and u* are scored; an identity net's endpoint
    error is |u*| whatever the strength, and strength 1 is the default embedded data."""
    import deepsim_edu.data.embedded as embedded
    from deepsim_edu.data import platelet
    from deepsim_edu.robustness import patch_strength_sweep, summarize_patch_sweep

    original = platelet.make_platelet_em

    def small_platelet(out, seed=0, **params):  # the generator at a test's size
        return original(out, seed=seed, **{"size": 64, "n_train": 2, "n_valtest": 4, **params})

    monkeypatch.setattr(embedded, "generator", lambda name: small_platelet)
    constant_displacement_run(tmp_path / "runs" / "platelet-em" / "deepsim", [0.0, 0.0])
    sweep = patch_strength_sweep(tmp_path / "runs", tmp_path / "sweep", "platelet-em",
                                 strengths=(0.0, 1.0))  # fmt: skip
    by_strength = {s: t.reset_index(drop=True) for s, t in sweep.groupby("patch_strength")}
    assert set(by_strength) == {0.0, 1.0}
    a, b = by_strength[0.0], by_strength[1.0]
    assert list(a["moving"]) == list(b["moving"]) and len(a) > 0
    for column in ("noisy_fraction", "endpoint_error_inside", "true_magnitude_inside"):
        assert np.allclose(a[column], b[column]), column  # same masks, same u*, u = 0
    assert np.allclose(a["endpoint_error_inside"], a["true_magnitude_inside"])
    default = small_platelet(tmp_path / "default")
    swept = tmp_path / "sweep" / "patch_strength_1" / "platelet-em"
    images = sorted((default / "images").iterdir())
    assert images and all((swept / "images" / f.name).read_bytes() == f.read_bytes()
                          for f in images)  # fmt: skip
    weaker = tmp_path / "sweep" / "patch_strength_0" / "platelet-em" / "images"
    assert any((weaker / f.name).read_bytes() != f.read_bytes() for f in images)
    summary = summarize_patch_sweep(sweep)
    assert len(summary) == 2 and "endpoint_error_inside" in summary
    with pytest.raises(ValueError, match="no noise patches"):
        patch_strength_sweep(tmp_path / "runs", tmp_path / "sweep", "brain-mri")


def test_published_numbers_and_ours_beside_them(tmp_path):
    published = published_results()
    # the MIDL Table 1 and the journal table, as printed in the two papers
    assert published.loc[("brain-mri", "deepsim"), ("paper 2021", "Dice")] == 0.75
    assert published.loc[("platelet-em", "mse"), ("paper 2021", "mark")] == "‡"
    assert published.loc[("phc-u373", "ncc"), ("paper 2021", "mark")] == ""
    assert published.loc[("platelet-em", "ncc"), ("journal 2023", "folding %")] == pytest.approx(
        4.15)  # fraction 0.0415 as a percentage
    assert published.loc[("phc-u373", "ncc-sup"), ("journal 2023", "Dice")] == 0.969
    assert math.isnan(published.loc[("brain-mri", "vgg"), ("journal 2023", "Dice")])  # no VGG
    assert math.isnan(published.loc[("brain-mri", "deepsim-ae"), ("paper 2021", "Dice")])
    # ours: two Platelet-EM pairs, means read off by hand
    rows = [{"dataset": "platelet-em", "metric": "deepsim", "moving": f"t{i}", "fixed": f"t{i + 1}",
             "dice": d, "dice_before": b, "dice_paper_convention": p, "folding_fraction": f}
            for i, (d, b, p, f) in enumerate([(0.8, 0.7, 0.85, 0.01), (0.9, 0.5, 0.95, 0.03)])]
    write_csv(tmp_path / "platelet-em" / "deepsim" / "test_results.csv", rows)
    table = beside_published({"ours": tmp_path})
    ours = table.loc[("platelet-em", "deepsim"), "ours"]
    assert (ours["Dice, all classes"], ours["Dice, foreground"], ours["folding %"]) == (
        pytest.approx(0.90), pytest.approx(0.85), pytest.approx(2.0))
    assert table.loc[("platelet-em", "unregistered"), ("ours", "Dice, foreground")] == (
        pytest.approx(0.6))
    assert math.isnan(table.loc[("platelet-em", "unregistered"), ("ours", "Dice, all classes")])
    assert table.loc[("brain-mri", "mse"), "ours"].isna().all()  # no brain run in this root
    assert table.loc[("platelet-em", "deepsim"), ("paper 2021", "Dice")] == 0.99
    assert list(table.index[:2]) == [("brain-mri", "unregistered"), ("brain-mri", "mse")]
