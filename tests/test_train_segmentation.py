"""train_segmentation: learns, logs, checkpoints atomically, resumes exactly, refuses mismatches."""

import pytest
import torch

from deepsim_edu import train as train_module
from deepsim_edu.config import segmentation_config
from deepsim_edu.data.layout import DatasetInfo, write_case, write_dataset_json
from deepsim_edu.data.pairs import CaseStore
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


def test_accumulation_averages_the_gradients_of_its_batches(squares, tmp_path, monkeypatch):
    """accumulation=2 × batch 1 takes the first step with the gradient of accumulation=1 ×
    batch 2 on the same two images, which is the mean of their two gradients. Exact in this
    setting: the per-step sampling is replaced by "the next cases in order" (both runs see cases
    0 and 1), no BatchNorm (it would couple the images of a batch), no dropout, augmentation,
    noise or crop. The truth is computed by hand from the same initial weights."""
    build = train_module.segmentation_unet
    monkeypatch.setattr(train_module, "segmentation_unet",
                        lambda *a, **kw: build(*a, batchnorm=False, **kw))  # fmt: skip

    def next_cases_in_order():
        position = 0

        def sample(store, cases, batch_size, generator):
            nonlocal position
            picks = [(position + i) % len(cases) for i in range(batch_size)]
            position += batch_size
            images, labels = zip(*(store[cases[i]] for i in picks))
            return torch.stack(images), torch.stack(labels)

        return sample

    first_grads = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            first_grads.append([p.grad.clone() for p in params])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    runs = {}
    for accumulation, batch in ((2, 1), (1, 2)):
        monkeypatch.setattr(train_module, "sample_batch", next_cases_in_order())
        config = tiny_config(epochs=1, steps_per_epoch=1, batch_size=batch, dropout=0.0,
                             augmentation="none", noise_sigma=0.0,
                             accumulation=accumulation)  # fmt: skip
        first_grads.clear()
        last = train_segmentation(squares, tmp_path / f"a{accumulation}", config, progress=False)
        runs[accumulation] = (first_grads[0], last["train_loss"])

    # by hand: the mean cross-entropy of cases 0 and 1 at the initial weights, and of case 0
    store = CaseStore(squares)
    cases = [store[c] for c in store.info.splits["train"][:2]]
    torch.manual_seed(config.seed)
    model = build(2, 2, config.encoder_channels, dropout=0.0, batchnorm=False).train()

    def gradient(images, labels):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels[:, 0])
        loss.backward()
        return [p.grad.clone() for p in model.parameters()], loss.item()

    truth, truth_loss = gradient(*(torch.stack(x) for x in zip(*cases)))
    alone, _ = gradient(cases[0][0][None], cases[0][1][None])
    assert any(not torch.allclose(a, t, rtol=1e-2, atol=1e-6) for a, t in zip(alone, truth))
    for grads, train_loss in runs.values():
        assert len(grads) == len(truth)
        for g, t in zip(grads, truth):
            torch.testing.assert_close(g, t, rtol=1e-5, atol=1e-8)
        assert train_loss == pytest.approx(truth_loss, rel=1e-6)


def test_one_device_check_for_both_loops(squares, tmp_path):
    assert train_module.check_device("cpu") == "cpu"
    for bad in ("gpu", "cuda0", "cuda:", "CPU"):
        with pytest.raises(ValueError, match=f"'cpu', 'cuda' or 'cuda:N', got '{bad}'"):
            train_module.check_device(bad)
    if not torch.cuda.is_available():
        for device in ("cuda", "cuda:0"):  # the segmentation loop used to let "cuda:0" through
            with pytest.raises(ValueError, match=f"device '{device}' requested but CUDA is not"):
                train_segmentation(squares, tmp_path, tiny_config(), device=device, progress=False)
        assert not (tmp_path / "config.json").exists()
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            train_module.check_device(f"cuda:{torch.cuda.device_count()}")


def test_max_steps_ends_the_run_mid_epoch(squares, tmp_path):
    """4 steps an epoch, a budget of 6 steps: two epochs, the second one half long."""
    train_segmentation(squares, tmp_path, tiny_config(epochs=10, max_steps=6), progress=False)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert [row["step"] for row in checkpoint["log"]] == [4, 6]
    assert checkpoint["finished"] is True
    again = train_segmentation(squares, tmp_path, tiny_config(epochs=10, max_steps=6),
                               progress=False)  # fmt: skip
    assert again == checkpoint["log"][-1]  # a finished run returns at once


def test_plateau_lowers_the_lr_and_early_stopping_ends_the_run(squares, tmp_path, monkeypatch):
    """A validation loss that never improves (always 1): with patience 0 the plateau schedule cuts
    the lr ×0.1 after every epoch but the first; early stopping after 2 epochs ends at epoch 3."""
    monkeypatch.setattr(train_module, "evaluate_segmentation",
                        lambda *args: {"val_loss": 1.0, "val_dice": 0.5})  # fmt: skip
    config = tiny_config(epochs=10, lr=1e-3, lr_patience=0, lr_factor=0.1, early_stopping=2)
    train_segmentation(squares, tmp_path, config, progress=False)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert len(checkpoint["log"]) == 3 and checkpoint["finished"] is True
    lr = checkpoint["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-3 * 0.1**2)  # cut after epochs 2 and 3


def test_fewer_longer_epochs_train_the_same_net(squares, tmp_path):
    """Every step is seeded by its index and validation changes no weight: 4 epochs of 4 steps
    and 2 epochs of 8 give the same net (what the ci preset relies on)."""
    train_segmentation(squares, tmp_path / "a", tiny_config(steps_per_epoch=4, epochs=4),
                       progress=False)  # fmt: skip
    train_segmentation(squares, tmp_path / "b", tiny_config(steps_per_epoch=8, epochs=2),
                       progress=False)  # fmt: skip
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
