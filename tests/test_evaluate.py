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
