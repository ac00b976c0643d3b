"""The experiment CLI end to end on a tiny 128x128 series: grid, skip on rerun, bad input."""

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from tests.disc_series import write_disc_series


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """<data>/phc-u373: frames of 128x128 with a textured disc that drifts 2 voxels per frame."""
    return write_disc_series(tmp_path_factory.mktemp("data"))


def cli(*args):
    """The CLI in a subprocess with one thread (as each --jobs worker has): same float rounding."""
    return subprocess.run(
        [sys.executable, "-m", "deepsim_edu", *args], capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def test_experiment_runs_grid_and_skips_finished_runs(data, tmp_path):
    """The grid with two runs side by side (--jobs 2), then again: nothing is retrained."""
    args = ["experiment", "--preset", "ci", "--datasets", "phc-u373", "--jobs", "2",
            "--metrics", "mse", "deepsim", "--data", str(data), "--out", str(tmp_path)]  # fmt: skip
    first = cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    # a run trained alone in this process's way gives the same numbers as in a worker
    alone = cli("train", "--dataset", "phc-u373", "--metric", "mse", "--preset", "ci",
                "--data", str(data), "--out", str(tmp_path / "alone"))  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-2000:]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "alone" / "phc-u373" / "mse" / "test_results.csv"),
        pd.read_csv(tmp_path / "phc-u373" / "mse" / "test_results.csv"),
    )
    for run in ("segmentation", "mse", "deepsim"):
        files = {p.name for p in (tmp_path / "phc-u373" / run).iterdir()}
        assert {"config.json", "log.csv", "checkpoint.pt"} <= files, run
    results = pd.read_csv(tmp_path / "phc-u373" / "deepsim" / "test_results.csv")
    assert len(results) == 3 and results["dice"].between(0, 1).all()
    stamp = (tmp_path / "phc-u373" / "mse" / "checkpoint.pt").stat().st_mtime_ns
    again = cli(*args)
    assert again.returncode == 0 and f"results: {tmp_path}" in again.stdout
    assert (tmp_path / "phc-u373" / "mse" / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_cli_bad_input(data, tmp_path):
    for args, message in [
        (["train", "--dataset", "phc-u373", "--metric", "ssim"], "invalid choice: 'ssim'"),
        (["train", "--dataset", "lung", "--metric", "mse"], "invalid choice: 'lung'"),
        (["experiment", "--preset", "huge"], "invalid choice: 'huge'"),
        (["experiment", "--jobs", "0"], "--jobs: must be a whole number >= 1, got '0'"),
        (["book", "--jobs", "two"], "--jobs: must be a whole number >= 1, got 'two'"),
        (["train", "--dataset", "phc-u373", "--metric", "mse", "--lam", "-1", "--data", str(data)],
         "argument --lam: must be a finite number >= 0 (λ of Eq. 1), got '-1'"),
        (["train", "--dataset", "phc-u373", "--metric", "mse", "--lam", "nan", "--data", str(data)],
         "argument --lam: must be a finite number >= 0 (λ of Eq. 1), got 'nan'"),
        (["train", "--dataset", "phc-u373", "--metric", "mse", "--lam", "inf", "--data", str(data)],
         "argument --lam: must be a finite number >= 0 (λ of Eq. 1), got 'inf'"),
        (["train", "--dataset", "phc-u373", "--metric", "mse", "--data", str(tmp_path)],
         "not in the dataset layout"),
        (["train", "--dataset", "brain-mri", "--metric", "mse", "--data", str(data / "phc-u373")],
         "holds dataset 'phc-u373', not 'brain-mri'"),
    ]:  # fmt: skip
        result = cli(*args, "--out", str(tmp_path / "out"))
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr[-500:])
    if not torch.cuda.is_available():
        result = cli("train", "--dataset", "phc-u373", "--metric", "mse", "--device", "cuda")
        assert result.returncode == 2 and "CUDA is not available" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written by any of them


def test_sweep_lambda_picks_best_validation_dice(data, tmp_path):
    result = cli("sweep-lambda", "--dataset", "phc-u373", "--metric", "mse",
                 "--grid", "0.01", "100", "--data", str(data), "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(tmp_path / "phc-u373" / "mse" / "sweep.csv")
    assert table["lam"].tolist() == [0.01, 100.0] and table["selected"].sum() == 1
    assert table["run"].tolist() == ["phc-u373/mse/sweep/lam_0.01", "phc-u373/mse/sweep/lam_100"]
    best = table.loc[table["best_val_dice"].idxmax(), "lam"]
    assert table.loc[table["selected"], "lam"].item() == best
    assert f"selected λ = {best:g}" in result.stdout
    assert not (tmp_path / "phc-u373" / "mse" / "sweep" / "lam_100" / "test_results.csv").exists()
    # the selected run, tested through `evaluate --run`; without --run the preset's folder is
    # used, and here it has no checkpoint: an error that names it, exit code 2
    selected = tmp_path / "phc-u373" / "mse" / "sweep" / f"lam_{best:g}"
    args = ["evaluate", "--dataset", "phc-u373", "--metric", "mse", "--data", str(data)]
    result = cli(*args, "--run", str(selected))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = pd.read_csv(selected / "test_results.csv")
    assert len(rows) == 3 and rows["dice"].between(0, 1).all()
    result = cli(*args, "--out", str(tmp_path / "empty"))
    assert result.returncode == 2
    assert str(tmp_path / "empty" / "phc-u373" / "mse" / "checkpoint.pt") in result.stderr
