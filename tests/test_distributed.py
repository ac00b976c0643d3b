"""Data-parallel training: the shared step is the single-process step (2 gloo processes on the
CPU under torchrun), and a 2-process run writes one complete, resumable run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepsim_edu import distributed, train
from deepsim_edu.config import registration_config
from deepsim_edu.data.pairs import CaseStore, training_pairs
from deepsim_edu.distributed import Processes, share_step
from deepsim_edu.losses import get_loss
from deepsim_edu.runs import load_checkpoint, read_config
from deepsim_edu.unet import registration_unet
from tests.test_train_registration import moving_squares  # noqa: F401  (the fixture)

WORKER = Path(__file__).with_name("ddp_worker.py")
TINY = {"encoder_channels": [4, 8, 8], "crop": None, "augmentation": "2d", "steps_per_epoch": 2,
        "epochs": 2, "dropout": 0.0}  # fmt: skip


def tiny(**fields):
    fields = {**TINY, **fields}
    fields["encoder_channels"] = tuple(fields["encoder_channels"])
    return registration_config("phc-u373", "mse", "quick", **fields)


def torchrun(mode: str, data: Path, out: Path, fields) -> subprocess.CompletedProcess:
    """``tests/ddp_worker.py MODE`` in 2 processes; ``fields``: config overrides (a list of
    them for ``gradients``)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    overrides = [{**TINY, **f} for f in fields] if mode == "gradients" else {**TINY, **fields}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(WORKER), mode, str(data), str(out),
               json.dumps(overrides)]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[1])  # fmt: skip


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch, accumulation", [(4, 1), (2, 2), (3, 4), (4, 6)])
def test_a_step_is_shared_without_gaps_or_overlap(world, batch, accumulation):
    """Over the processes: every (micro-batch, row) of the step exactly once, and the
    divisors make the mean over processes the mean over the step."""
    try:
        shares = [share_step(batch, accumulation, Processes(r, world)) for r in range(world)]
    except ValueError as error:
        assert accumulation % world and batch % world, error
        assert f"among {world} processes" in str(error)
        return
    items = [(m, row) for s in shares for m in s.micro_batches
             for row in range(batch)[s.rows]]  # fmt: skip
    assert sorted(items) == [(m, row) for m in range(accumulation) for row in range(batch)]
    # a loss of 1 per item: each process sums len(micro_batches)/divisor; the mean is 1
    assert sum(len(s.micro_batches) / s.divisor for s in shares) / world == pytest.approx(1)
    record = shares[0].record
    assert record["effective_batch"] == batch * accumulation == (
        record["batch_per_process"] * record["accumulation_per_process"] * world
    )


def test_one_process_changes_nothing():
    assert distributed.current() == Processes() and not Processes().distributed
    net = torch.nn.Linear(2, 2)
    assert Processes().wrap(net) is net and Processes().device("cuda") == "cuda"
    share = share_step(8, 3, Processes())
    assert share.micro_batches == (0, 1, 2) and share.divisor == 3 and share.rows == slice(None)


def single_process_gradients(data: Path, config) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = registration_unet(2, config.encoder_channels, dropout=0.0)
    net.train(config.accumulation % 2 == 0)  # as the worker: train mode where exact
    store = CaseStore(data)
    pairs = training_pairs(store.info, "train", 0, config.seed)
    share = share_step(config.batch_size, config.accumulation, Processes())
    list(train.registration_gradients(net, store, pairs, config, 0, share, get_loss("mse"), "cpu"))
    return {name: p.grad for name, p in net.named_parameters()}


def test_two_gloo_processes_average_to_the_single_process_gradient(
    moving_squares, tmp_path  # noqa: F811
):
    """A split batch (4 = 2 × 2 rows; eval-mode BatchNorm) and a split accumulation (2 whole
    micro-batches, one per process; train mode is exact there)."""
    cases = [{"batch_size": 4, "accumulation": 1}, {"batch_size": 2, "accumulation": 2}]
    done = torchrun("gradients", moving_squares, tmp_path, cases)
    assert done.returncode == 0, done.stderr[-3000:]
    for k, fields in enumerate(cases):
        single = single_process_gradients(moving_squares, tiny(**fields))
        for rank in (0, 1):
            grads = torch.load(tmp_path / f"grads_{k}_{rank}.pt")
            for name, g in single.items():
                assert torch.allclose(grads[name], g, rtol=1e-5, atol=1e-7), (fields, rank, name)
            assert any(g.abs().sum() > 0 for g in grads.values())


def test_two_process_run_is_one_complete_resumable_folder(moving_squares, tmp_path):  # noqa: F811
    """Killed after epoch 1 and started again, a 2-process run finishes one run folder whose
    weights are those of the same run in one process (whole micro-batches per process: the
    same gradients; BatchNorm's running statistics are per process and left out)."""
    fields = {"batch_size": 2, "accumulation": 2}
    folder = tmp_path / "two"
    killed = torchrun("train-interrupted", moving_squares, folder, fields)
    assert killed.returncode != 0
    assert load_checkpoint(folder / "checkpoint.pt")["epoch"] == 1
    resumed = torchrun("train", moving_squares, folder, fields)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint.pt", "config.json", "log.csv", "val_pairs.csv"
    ]  # fmt: skip  (rank 0 alone wrote; nothing half-written)
    assert read_config(folder)["distributed"] == {
        "batch_per_process": 2, "accumulation_per_process": 1, "world_size": 2,
        "effective_batch": 4,
    }  # fmt: skip
    two = load_checkpoint(folder / "checkpoint.pt")
    assert two["finished"] and two["epoch"] == 2 and len(two["log"]) == 2
    train.train_registration(moving_squares, tmp_path / "one", tiny(**fields), progress=False)
    one = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    for key, value in one["model"].items():
        if "running_" in key or "num_batches" in key:
            continue
        assert torch.allclose(two["model"][key], value, rtol=1e-4, atol=1e-6), key
