"""reference_results/carry_run.py: a carried run tree is skipped where finished and resumes
bit for bit where it was not."""

import importlib.util
from pathlib import Path

import pytest
import torch

from deepsim_edu import train as train_module
from deepsim_edu.runs import checkpoint_path, load_checkpoint, run_folder
from deepsim_edu.train import train_registration
from tests.tiny_runs import tiny_registration, train_tiny_runs, write_discs

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "carry_run", REPO / "reference_results" / "carry_run.py"
)
carry_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(carry_run)


def test_finished_runs_lose_only_the_optimiser_moments_and_are_skipped(tmp_path):
    data = write_discs(tmp_path / "data").parent
    source = train_tiny_runs(data, tmp_path / "runs", metrics=("mse",))
    counts = carry_run.carry(source, tmp_path / "carried")
    assert counts["slimmed"] == 2 and counts["copied"] >= 5  # extractor + run; csv/json files
    for run in ("segmentation", "mse"):
        a = load_checkpoint(source / "phc-u373" / run / "checkpoint.pt")
        b = load_checkpoint(tmp_path / "carried" / "phc-u373" / run / "checkpoint.pt")
        assert a["optimizer"]["state"] and b["optimizer"]["state"] == {}
        assert b["optimizer"]["param_groups"] == a["optimizer"]["param_groups"]
        assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
        assert {k: v for k, v in a.items() if k not in ("model", "optimizer")} == {
            k: v for k, v in b.items() if k not in ("model", "optimizer")}
    carried = tmp_path / "carried" / "phc-u373" / "mse"
    stamp = checkpoint_path(carried).stat().st_mtime_ns
    config = tiny_registration("phc-u373", "mse", lam=0.005)
    train_registration(data / "phc-u373", carried, config, progress=False)  # finished: skipped
    assert checkpoint_path(carried).stat().st_mtime_ns == stamp
    assert carry_run.carry(source, tmp_path / "carried")["unchanged"] == counts["copied"] + 2


def test_an_unfinished_run_is_carried_whole_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    folder = write_discs(tmp_path / "data")
    config = tiny_registration("phc-u373", "ncc", epochs=3)
    train_registration(folder, tmp_path / "straight", config, progress=False)
    real, calls = train_module.write_csv, []

    def dies_after_one_epoch(path, rows):
        real(path, rows)
        calls.append(1)
        if len(calls) == 2:  # log.csv and val_pairs.csv of epoch 1
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "write_csv", dies_after_one_epoch)
    killed = run_folder(tmp_path / "runs", "phc-u373", "ncc")
    with pytest.raises(KeyboardInterrupt):
        train_registration(folder, killed, config, progress=False)
    monkeypatch.setattr(train_module, "write_csv", real)
    assert carry_run.carry(tmp_path / "runs", tmp_path / "carried")["slimmed"] == 0
    resumed = run_folder(tmp_path / "carried", "phc-u373", "ncc")
    assert load_checkpoint(checkpoint_path(resumed))["optimizer"]["state"]  # kept whole
    train_registration(folder, resumed, config, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(checkpoint_path(resumed))
    assert b["finished"] and all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
