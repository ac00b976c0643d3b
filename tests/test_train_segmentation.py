"""train_segmentation: learns, logs, checkpoints atomically, resumes exactly, refuses mismatches."""

import pytest
import torch

from deepsim_edu import train as train_module
from deepsim_edu.config import segmentation_config
from deepsim_edu.data.layout import DatasetInfo, write_case, write_dataset_json
from deepsim_edu.runs import load_checkpoint
from deepsim_edu.train import train_segmentation


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """A learnable 2-class dataset: a bright square (class 1) on a dark noisy background."""
    root = tmp_path_factory.mktemp("squares")
    gen = torch.Generator().manual_seed(0)
    splits = {s: [f"{s}_{i}" for i in range(4)] for s in ("train", "val", "test")}
    for cases in splits.values():
        for case in cases:
            r, c = torch.randint(2, 14, (2,), generator=gen).tolist()
            label = torch.zeros(24, 24, dtype=torch.uint8)
            label[r : r + 8, c : c + 8] = 1
            image = 0.2 + 0.6 * label + 0.05 * torch.randn(24, 24, generator=gen)
            write_case(root, case, image.numpy(), label.numpy(), [1.0, 1.0])
    info = DatasetInfo(
        name="phc-u373", ndim=2, spacing=[1, 1], classes=["background", "cell"], splits=splits
    )
    write_dataset_json(root, info)
    return root


def tiny_config(**kw):
    base = dict(
        encoder_channels=(4, 8, 8), batch_size=2, steps_per_epoch=4, epochs=4, lr=3e-3, crop=None
    )
    return segmentation_config("phc-u373", "quick", **{**base, **kw})


def test_learns_and_writes_run_files(squares, tmp_path):
    last = train_segmentation(squares, tmp_path, tiny_config(epochs=8), progress=False)
    assert last["val_dice"] > 0.5  # all-background prediction scores 0
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0] == "epoch,step,train_loss,val_loss,val_dice,seconds" and len(log) == 9
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True
    assert checkpoint["epoch"] == 8 and checkpoint["config"]["dataset"] == "phc-u373"
    assert checkpoint["config"]["ndim"] == 2 and checkpoint["config"]["kind"] == "segmentation"


def test_killed_run_resumes_to_the_same_weights(squares, tmp_path, monkeypatch):
    config = tiny_config()
    train_segmentation(squares, tmp_path / "straight", config, progress=False)

    real_write_csv, calls = train_module.write_csv, []

    def dies_after_two_epochs(path, rows):
        real_write_csv(path, rows)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between epochs 2 and 3

    monkeypatch.setattr(train_module, "write_csv", dies_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        train_segmentation(squares, tmp_path / "resumed", config, progress=False)
    monkeypatch.setattr(train_module, "write_csv", real_write_csv)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 2
    train_segmentation(squares, tmp_path / "resumed", config, progress=False)

    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert straight["log"][-1]["val_dice"] == resumed["log"][-1]["val_dice"]


def test_mismatches_raise(squares, tmp_path):
    train_segmentation(squares, tmp_path, tiny_config(epochs=1), progress=False)
    with pytest.raises(ValueError, match="another config.*lr"):
        train_segmentation(squares, tmp_path, tiny_config(epochs=1, lr=1e-4), progress=False)
    with pytest.raises(ValueError, match="dataset 'platelet-em'"):
        train_segmentation(squares, tmp_path / "x", segmentation_config("platelet-em", "quick"))
    with pytest.raises(ValueError, match="unknown preset"):
        segmentation_config("phc-u373", "fast")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        train_segmentation(squares, tmp_path / "broken", tiny_config(epochs=1), progress=False)
