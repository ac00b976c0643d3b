"""evaluate.py: Dice of hand-drawn masks, both conventions, bad input."""

import pytest
import torch

from deepsim_edu.evaluate import dice, dice_per_class, mean_dice


def test_dice_of_hand_drawn_masks():
    # 4x4 maps. Class 1: pred 4 voxels, target 2 voxels, overlap 2 -> 2*2/(4+2) = 2/3.
    # Class 2: pred 2 voxels, target 3 voxels, overlap 1 -> 2*1/5 = 0.4. Class 3: absent in both.
    pred = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 0, 0]])
    target = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 2, 0], [0, 2, 2, 0]])
    per_class = dice_per_class(pred[None], target[None], num_classes=4)[0]
    # background: pred 10 voxels, target 11, overlap 8 -> 16/21
    expected = torch.tensor([16 / 21, 2 / 3, 0.4, float("nan")], dtype=torch.float64)
    torch.testing.assert_close(per_class, expected, equal_nan=True)
    # ours: foreground, absent class left out -> (2/3 + 0.4) / 2
    assert dice(pred[None], target[None], 4).item() == pytest.approx((2 / 3 + 0.4) / 2)
    # the paper's code: all 4 classes, absent = 0 -> (16/21 + 2/3 + 0.4 + 0) / 4
    assert dice(pred[None], target[None], 4, convention="paper").item() == pytest.approx(
        (16 / 21 + 2 / 3 + 0.4) / 4
    )


def test_identical_and_disjoint_maps():
    labels = torch.randint(0, 3, (2, 1, 6, 7, 8))
    torch.testing.assert_close(dice(labels, labels, 3), torch.ones(2, dtype=torch.float64))
    a = torch.zeros(1, 8, 8, dtype=torch.long)
    b = a.clone()
    a[0, :4] = 1
    b[0, 4:] = 1
    assert dice(a, b, 2).item() == 0.0


def test_bad_inputs_raise():
    a = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="same shape"):
        dice(a, torch.zeros(1, 4, 5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="integer"):
        dice(a.float(), a.float(), 2)
    with pytest.raises(ValueError, match="0..1"):
        dice(a + 2, a, 2)
    with pytest.raises(ValueError, match="empty labels"):
        dice(a, a, 2)  # no foreground anywhere
    with pytest.raises(ValueError, match="convention"):
        mean_dice(torch.ones(1, 2), convention="micro")


# ----------------------------------------------------------------------------- one test pair


def _series(root, masks: bool):
    """A 16×16 platelet-em stand-in, 3 test sections → pairs (test_0, test_1), (test_1, test_2);
    test_2 carries uniform noise in rows 8..13, cols 2..7 (its noise mask, when ``masks``)."""
    import numpy as np

    from deepsim_edu.data.layout import DatasetInfo, save_nifti, write_case, write_dataset_json

    rng = np.random.default_rng(0)
    splits = {s: [f"{s}_{i}" for i in range(3)] for s in ("train", "val", "test")}
    ramp = np.linspace(0.3, 0.7, 16)[None, :] * np.ones((16, 1))  # smooth: no high-pass energy
    for cases in splits.values():
        for case in cases:
            image, label = ramp.copy(), (ramp > 0.5).astype(np.uint8)
            if case == "test_2":
                image[8:14, 2:8] += rng.uniform(-0.3, 0.3, (6, 6))
            write_case(root, case, image, label, [1.0, 1.0])
    if masks:
        for case, box in (("test_0", (0, 2, 0, 2)), ("test_1", None), ("test_2", (8, 14, 2, 8))):
            mask = np.zeros((16, 16), np.uint8)
            if box is not None:
                mask[box[0] : box[1], box[2] : box[3]] = 1
            save_nifti(root / "noise_masks" / f"{case}.nii.gz", mask, [1.0, 1.0])
    write_dataset_json(root, DatasetInfo("platelet-em", 2, [1, 1], ["background", "cell"], splits))


def test_window_sums_and_highpass_variance_equal_brute_force():
    import numpy as np
    from scipy.ndimage import gaussian_filter

    from deepsim_edu.evaluate import highpass_variance, window_sums

    score = np.random.default_rng(0).random((9, 11))
    sums = window_sums(score, 4)
    assert sums.shape == (6, 8)
    assert sums[2, 5] == pytest.approx(score[2:6, 5:9].sum())
    residual = score - gaussian_filter(score, 2.0)
    variance = highpass_variance(score, 3)
    assert variance.shape == (7, 9)
    assert variance[4, 1] == pytest.approx(residual[4:7, 1:4].var())


def test_dice_or_nan():
    from deepsim_edu.evaluate import dice_or_nan

    a = torch.zeros(1, 4, 4, dtype=torch.long)
    assert dice_or_nan(a, a, 2) != dice_or_nan(a, a, 2)  # NaN: no foreground anywhere
    b = a.clone()
    a[0, 0, :2], b[0, 0, 1:3] = 1, 1  # overlap 1 of 2 + 2 voxels: 2·1/4
    assert dice_or_nan(a, b, 2) == 0.5


@pytest.mark.parametrize("masks", [True, False])
def test_noisiest_window(tmp_path, masks):
    from deepsim_edu.data.pairs import PairDataset
    from deepsim_edu.evaluate import noisiest_window

    _series(tmp_path, masks)
    pairs = PairDataset(tmp_path, "test")
    found = noisiest_window(pairs, 4)
    assert found["index"] == 1  # (test_1, test_2): the pair with the noisy section
    if masks:  # the first 4×4 window inside the 6×6 masked square
        assert (found["top"], found["left"]) == (8, 2)
        assert found["masks"]["test_2"].sum() == 36 and found["masks"]["test_1"].sum() == 0
    else:  # by high-pass variance: a window inside the noisy square
        assert 8 <= found["top"] <= 10 and 2 <= found["left"] <= 4 and found["masks"] is None
    with pytest.raises(ValueError, match="size must lie in 4..16"):
        noisiest_window(pairs, 17)


def test_register_pair_with_a_constant_displacement_net(tmp_path):
    import os

    from deepsim_edu.data.pairs import PairDataset
    from deepsim_edu.evaluate import register_pair
    from deepsim_edu.runs import save_checkpoint
    from deepsim_edu.unet import registration_unet

    _series(tmp_path / "data", masks=False)
    net = registration_unet(2, (4, 8, 8))  # last layer: zero weights, bias = u = (0, 1)
    torch.nn.init.zeros_(net.head[-1].weight)
    with torch.no_grad():
        net.head[-1].bias.copy_(torch.tensor([0.0, 1.0]))
    run = tmp_path / "platelet-em" / "mse"
    config = {"kind": "registration", "dataset": "platelet-em", "metric": "mse", "ndim": 2,
              "encoder_channels": [4, 8, 8], "dropout": 0.0}  # fmt: skip
    save_checkpoint(run / "checkpoint.pt", {"model": net.state_dict(), "config": config})
    item = PairDataset(tmp_path / "data", "test")[1]
    result = register_pair(run, item, 2)
    assert result["u"].shape == (2, 16, 16)
    assert abs(result["u"][0]).max() < 1e-6 and abs(result["u"][1] - 1).max() < 1e-6
    assert abs(result["det"] - 1).max() < 1e-5  # a translation keeps every volume
    moving, labels = item["moving"][0].numpy(), item["moving_labels"][0].numpy()
    # (I∘Φ)(x) = I(x + (0, 1)): one column to the left, inside the image
    assert abs(result["warped"][:, :-1] - moving[:, 1:]).max() < 1e-5
    assert (result["warped_labels"][:, :-1] == labels[:, 1:]).all()
    assert 0 < result["dice"] <= 1 and not result["u"].flags.writeable
    assert register_pair(run, item, 2) is result  # cached
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns + 10**9
    os.utime(run / "checkpoint.pt", ns=(stamp, stamp))  # "retrained": registered afresh
    assert register_pair(run, item, 2) is not result
