"""train_registration: learns, logs, resumes exactly, refuses bad input; evaluation per pair."""

import math

import pytest
import torch

from deepsim_edu import train as train_module
from deepsim_edu.config import registration_config
from deepsim_edu.data.layout import DatasetInfo, write_case, write_dataset_json
from deepsim_edu.data.pairs import PairDataset
from deepsim_edu.evaluate import evaluate_pairs
from deepsim_edu.runs import load_checkpoint
from deepsim_edu.train import train_registration
from deepsim_edu.unet import registration_unet


@pytest.fixture(scope="module")
def moving_squares(tmp_path_factory):
    """A series of 24x24 frames: a bright square that moves 2 voxels to the right per frame."""
    root = tmp_path_factory.mktemp("moving_squares")
    splits = {s: [f"{s}_{i}" for i in range(5)] for s in ("train", "val", "test")}
    for cases in splits.values():
        for i, case in enumerate(cases):
            label = torch.zeros(24, 24, dtype=torch.uint8)
            label[8:16, 4 + 2 * i : 12 + 2 * i] = 1
            image = 0.2 + 0.6 * label.float()
            write_case(root, case, image.numpy(), label.numpy(), [1.0, 1.0])
    info = DatasetInfo(
        name="phc-u373", ndim=2, spacing=[1, 1], classes=["background", "cell"], splits=splits
    )
    write_dataset_json(root, info)
    return root


def tiny(metric="mse", **kw):
    base = dict(encoder_channels=(4, 8, 8), batch_size=2, steps_per_epoch=3, epochs=4, crop=None,
                augmentation="none")  # fmt: skip
    return registration_config("phc-u373", metric, "quick", **{**base, **kw})


def test_learns_and_logs(moving_squares, tmp_path):
    config = tiny("mse", lam=0.005, encoder_channels=(8, 16, 16), batch_size=4, steps_per_epoch=10,
                  epochs=6, lr=3e-3)  # fmt: skip
    log = train_registration(moving_squares, tmp_path, config, progress=False)
    before = evaluate_pairs(registration_unet(2, (4, 8, 8)), PairDataset(moving_squares, "val"))
    assert before[0]["dice_before"] == pytest.approx(0.75)
    assert log[-1]["val_dice"] > 0.78 and log[-1]["val_loss"] < log[0]["val_loss"]
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    for column in (
        "loss",
        "similarity",
        "regulariser",
        "val_loss",
        "val_dice",
        "val_folding",
        "lr",
        "grad_norm_max",
    ):
        assert column in header
    assert all(0 < row["grad_norm_max"] < float("inf") for row in log)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["finished"] and checkpoint["config"]["metric"] == "mse"
    # a finished run returns its log at once
    assert train_registration(moving_squares, tmp_path, config, progress=False) == log


def test_killed_run_resumes_to_the_same_weights(moving_squares, tmp_path, monkeypatch):
    config = tiny("ncc-sup", accumulation=2, augmentation="2d")
    train_registration(moving_squares, tmp_path / "straight", config, progress=False)
    real, calls = train_module.write_csv, []

    def dies_after_two_epochs(path, rows):
        real(path, rows)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "write_csv", dies_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        train_registration(moving_squares, tmp_path / "resumed", config, progress=False)
    monkeypatch.setattr(train_module, "write_csv", real)
    train_registration(moving_squares, tmp_path / "resumed", config, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["log"] == [dict(r, seconds=a["log"][i]["seconds"]) for i, r in enumerate(b["log"])]


def test_per_pair_validation_log(moving_squares, tmp_path):
    """val_pairs.csv: one row per validation pair at step 0 and after every epoch; its epoch
    means are log.csv's val_dice, and at step 0 (displacement ~1e-5 voxel) the warped labels
    are the moving labels, so Dice equals the unregistered Dice."""
    from deepsim_edu.runs import load_log, load_val_pairs

    config = tiny("mse", epochs=2)
    train_registration(moving_squares, tmp_path, config, progress=False)
    pairs, log = load_val_pairs(tmp_path), load_log(tmp_path)
    n_pairs = len(PairDataset(moving_squares, "val"))
    assert sorted(pairs["step"].unique()) == [0, 3, 6]
    assert (pairs.groupby("step").size() == n_pairs).all()
    start = pairs[pairs["step"] == 0]
    assert start["dice"].to_numpy() == pytest.approx(start["dice_before"].to_numpy(), abs=1e-9)
    means = pairs[pairs["step"] > 0].groupby("step")["dice"].mean()
    assert means.to_numpy() == pytest.approx(log["val_dice"].to_numpy(), abs=1e-9)
    (tmp_path / "val_pairs.csv").unlink()  # a finished run mends it from its checkpoint
    train_registration(moving_squares, tmp_path, config, progress=False)
    assert load_val_pairs(tmp_path).equals(pairs)
    # max_val_pairs=2 of the 4: the first and the last, at every validation
    few = tmp_path / "few"
    train_registration(moving_squares, few, tiny("mse", epochs=2, max_val_pairs=2),
                       progress=False)  # fmt: skip
    kept = load_val_pairs(few)
    assert (kept.groupby("step")["moving"].apply(list) == [["val_0", "val_3"]] * 3).all()
    means = kept[kept["step"] > 0].groupby("step")["dice"].mean()
    assert means.to_numpy() == pytest.approx(load_log(few)["val_dice"].to_numpy(), abs=1e-9)


def test_a_checkpoint_from_before_a_new_config_field_resumes(moving_squares, tmp_path):
    """A field added later with default None (max_val_pairs) is no change of config: the run
    trained before it existed is finished, not refused."""
    config = tiny("mse", epochs=1)
    log = train_registration(moving_squares, tmp_path, config, progress=False)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    del checkpoint["config"]["max_val_pairs"]
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    assert train_registration(moving_squares, tmp_path, config, progress=False) == log
    with pytest.raises(ValueError, match=r"differs in: max_val_pairs\)"):
        train_registration(moving_squares, tmp_path, tiny("mse", epochs=1, max_val_pairs=1),
                           progress=False)  # fmt: skip


def test_early_stopping_and_plateau(moving_squares, tmp_path, monkeypatch):
    def flat_validation(*args, **kwargs):
        return {"val_loss": 1.0, "val_similarity": 1.0, "val_regulariser": 0.0, "val_dice": 0.5,
                "val_folding": 0.0}, []  # fmt: skip

    monkeypatch.setattr(train_module, "validate_registration", flat_validation)
    config = tiny(epochs=10, early_stopping=3, lr_patience=0, lr=1e-3)
    log = train_registration(moving_squares, tmp_path, config, progress=False)
    assert len(log) == 4  # best at epoch 1, then 3 epochs without improvement
    # plateau: from epoch 2 on every epoch without improvement multiplies the lr by 0.1
    assert [r["lr"] for r in log] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])


def test_bad_input(moving_squares, tmp_path):
    for lam in (-1.0, math.nan):
        with pytest.raises(ValueError, match="λ must be a number >= 0"):
            tiny(lam=lam)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="max_val_pairs must be a whole number >= 1"):
            tiny(max_val_pairs=bad)
    with pytest.raises(ValueError, match="unknown metric 'ssim'"):
        registration_config("phc-u373", "ssim")
    with pytest.raises(ValueError, match="unknown preset"):
        registration_config("phc-u373", "mse", "huge")
    with pytest.raises(ValueError, match="needs the checkpoint of its feature extractor"):
        train_registration(moving_squares, tmp_path / "d", tiny("deepsim"), progress=False)
    with pytest.raises(FileNotFoundError, match="train-seg --dataset phc-u373"):
        train_registration(
            moving_squares,
            tmp_path / "d",
            tiny("deepsim"),
            extractor=tmp_path / "no.pt",
            progress=False,
        )
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            train_registration(
                moving_squares, tmp_path / "c", tiny(), device="cuda", progress=False
            )
    train_registration(moving_squares, tmp_path / "m", tiny(epochs=1), progress=False)
    with pytest.raises(ValueError, match="another config.*lam"):
        train_registration(moving_squares, tmp_path / "m", tiny(epochs=1, lam=0.5), progress=False)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "log.csv",
        "val_pairs.csv",
    ]


def test_evaluate_pairs_of_identity_net(moving_squares):
    rows = evaluate_pairs(registration_unet(2, (4, 8, 8)), PairDataset(moving_squares, "test"))
    assert [(r["moving"], r["fixed"]) for r in rows] == [
        (f"test_{i}", f"test_{i + 1}") for i in range(4)
    ]
    # the net starts at u ≈ 0: Dice after = before = 2*48/(64+64) (squares 8x8 overlapping 8x6)
    for r in rows:
        assert r["dice"] == pytest.approx(0.75) and r["dice_before"] == pytest.approx(0.75)
        assert r["folding_fraction"] == 0.0 and r["jacobian_min"] > 0.99
        assert set(r) >= {"dice_background", "dice_cell", "dice_paper_convention", "jacobian_std"}
