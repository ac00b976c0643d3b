"""The paper's experiment grid: datasets × metrics, feature extractors first, then evaluation.

Folders under the results root (default ``results/<preset>``; the whole layout is in ``runs.py``)::

    <dataset>/segmentation/            the DeepSim feature extractor (train_segmentation)
    <dataset>/<metric>/                config.json, log.csv, checkpoint.pt, test_results.csv
    <dataset>/<metric>/sweep/lam_<λ>/  the runs of a λ sweep, and <dataset>/<metric>/sweep.csv

Every step is resumable: a finished run is skipped, an unfinished one continues from its last
checkpoint, so ``run_experiment`` can simply be started again after an interruption.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import pandas as pd

from .config import (
    DATASETS,
    METRICS,
    PAPER_LAMBDA,
    check_lambda,
    registration_config,
    segmentation_config,
)
from .data.embedded import resolve_dataset
from .data.layout import check_dataset
from .distributed import current
from .evaluate import evaluate_run
from .runs import (
    checkpoint_path,
    load_checkpoint,
    one_trainer,
    results_file,
    results_root,
    run_folder,
    segmentation_folder,
    sweep_csv,
    sweep_run_folder,
    write_csv,
)
from .train import train_registration, train_segmentation


def _held(run: Path):
    """``runs.one_trainer(run)``; under torchrun (the processes of one run train it together)
    no lock."""
    return nullcontext(run) if current().distributed else one_trainer(run)


def feature_extractor(
    dataset: str, preset: str, data_root: Path, root: Path, device: str, seed: int = 0
) -> Path:
    """Train (or resume, or reuse) the segmentation net of ``dataset``; its checkpoint path.

    Another process training the same folder is waited for (``runs.one_trainer``), then its
    run is reused or resumed. Under torchrun every process trains it together, without lock.
    """
    run = segmentation_folder(root, dataset)
    with _held(run):
        train_segmentation(
            data_root, run, segmentation_config(dataset, preset, seed=seed), device=device
        )
    return checkpoint_path(run)


def run_one(
    dataset: str, metric: str, preset: str = "quick", data: str | Path | None = None,
    out: str | Path | None = None, device: str = "cpu", lam: float | None = None,
    run: str | Path | None = None, vgg: str | Path | None = None, seed: int = 0,
    test: bool = True,
) -> Path:  # fmt: skip
    """Train and (``test=True``) test one registration run; returns its folder.

    DeepSim's feature extractor is trained first if it is not there yet. ``lam`` overrides the
    preset's λ; ``run`` overrides the folder (default ``<root>/<dataset>/<metric>``).
    """
    overrides = {"seed": seed} if lam is None else {"seed": seed, "lam": check_lambda(lam)}
    config = registration_config(dataset, metric, preset, **overrides)
    data_root = resolve_dataset(dataset, data)
    root = results_root(preset, out)
    run = Path(run) if run is not None else run_folder(root, dataset, metric)
    extractor = None
    if metric == "deepsim":
        extractor = feature_extractor(dataset, preset, data_root, root, device, seed)
    with _held(run):  # another process training this folder is waited for, then reused
        train_registration(data_root, run, config, device=device, extractor=extractor, vgg=vgg)
        processes = current()  # under torchrun: rank 0 tests, the others wait
        if test and processes.main and not results_file(run).exists():
            evaluate_run(run, data_root, "test", processes.device(device))
        processes.barrier()
    return run


def _one_thread() -> None:
    """Worker set-up: one thread per process, so ``jobs`` processes share the cores fairly."""
    import torch

    torch.set_num_threads(1)


def _side_by_side(calls: list[tuple], jobs: int) -> list:
    """``[f(*args) for f, *args in calls]``, in ``jobs`` worker processes when ``jobs > 1``.

    Results come back in the order of ``calls``; the first failure is raised.
    """
    if jobs <= 1 or len(calls) <= 1:
        return [f(*args) for f, *args in calls]
    context = multiprocessing.get_context("spawn")  # no fork: torch and threads do not mix
    with ProcessPoolExecutor(min(jobs, len(calls)), context, initializer=_one_thread) as pool:
        futures = [pool.submit(f, *args) for f, *args in calls]
        return [future.result() for future in futures]


def _grid_side_by_side(extractors: dict, runs: dict, grid: list, jobs: int) -> list:
    """The grid in ``jobs`` worker processes; the run folders in the order of ``grid``.

    The extractors start first and the runs that need none right behind them; a DeepSim run
    is queued once its dataset's extractor has finished (it reads that checkpoint), so no
    worker waits for an extractor while other runs could train. The first failure is raised.
    """
    context = multiprocessing.get_context("spawn")  # no fork: torch and threads do not mix
    with ProcessPoolExecutor(jobs, context, initializer=_one_thread) as pool:
        trained = {d: pool.submit(*call) for d, call in extractors.items()}
        futures = {key: pool.submit(*call) for key, call in runs.items() if key[1] != "deepsim"}
        for dataset, extractor in trained.items():
            extractor.result()
            if (dataset, "deepsim") in runs:
                futures[dataset, "deepsim"] = pool.submit(*runs[dataset, "deepsim"])
        return [futures[key].result() for key in grid]


def run_experiment(
    preset: str = "quick", datasets: tuple[str, ...] = DATASETS, metrics: tuple[str, ...] = METRICS,
    data: str | Path | None = None, out: str | Path | None = None, device: str = "cpu",
    vgg: str | Path | None = None, seed: int = 0, jobs: int = 1,
) -> Path:  # fmt: skip
    """Run the grid (feature extractors first); finished runs are skipped. Returns the root.

    Every dataset is checked in full first (``layout.check_dataset``), so a broken file stops
    the grid before any training, with every file at fault named.

    ``jobs > 1`` trains that many runs side by side in worker processes of one thread each
    (the extractors first, each DeepSim run once its extractor is there: ``_grid_side_by_side``);
    every run is seeded on its own, so the results do not depend on ``jobs`` beyond the float
    rounding of another thread count.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}")
    if jobs > 1 and current().distributed:
        raise ValueError("--jobs > 1 cannot be combined with torchrun: under torchrun every "
                         "run already uses all processes; leave --jobs at 1")  # fmt: skip
    root = results_root(preset, out)
    data_roots = {d: resolve_dataset(d, None if data is None else Path(data)) for d in datasets}
    for data_root in data_roots.values():  # every dataset in full, before any training
        check_dataset(data_root)
    extractors = {d: (feature_extractor, d, preset, data_roots[d], root, device, seed)
                  for d in (datasets if "deepsim" in metrics else ())}  # fmt: skip
    grid = [(d, m) for d in datasets for m in metrics]
    runs = {(d, m): (run_one, d, m, preset, data, out, device, None, None, vgg, seed)
            for d, m in grid}  # fmt: skip
    if jobs <= 1:
        _side_by_side(list(extractors.values()), 1)
        folders = _side_by_side([runs[key] for key in grid], 1)
    else:
        folders = _grid_side_by_side(extractors, runs, grid, jobs)
    for (dataset, metric), run in zip(grid, folders):
        if current().main:
            print(f"{dataset:<12} {metric:<8} {run}")
    return root


def sweep_lambda(
    dataset: str, metric: str, preset: str = "quick", grid: list[float] | None = None,
    data: str | Path | None = None, out: str | Path | None = None, device: str = "cpu",
    vgg: str | Path | None = None, seed: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """Train one run per λ and pick λ by the best validation Dice, as the paper did.

    Default grid: the paper's λ for this dataset × metric times 2^k, k = -2 .. 2 (a log2 grid).
    Writes ``<root>/<dataset>/<metric>/sweep.csv`` (λ, best and last validation Dice, the run
    folder relative to the results root).
    """
    base = PAPER_LAMBDA[dataset][metric]
    grid = grid if grid is not None else [base * 2.0**k for k in range(-2, 3)]
    root = results_root(preset, out)
    rows = []
    for lam in grid:
        run = sweep_run_folder(root, dataset, metric, check_lambda(lam))
        run_one(dataset, metric, preset, data, out, device, lam, run, vgg, seed, test=False)
        log = load_checkpoint(checkpoint_path(run))["log"]
        rows.append({"lam": lam, "best_val_dice": max(r["val_dice"] for r in log),
                     "last_val_dice": log[-1]["val_dice"],
                     "run": run.relative_to(root).as_posix()})  # the table moves with its root
    table = pd.DataFrame(rows)
    table["selected"] = table.index == table["best_val_dice"].idxmax()  # ties: the first λ
    write_csv(sweep_csv(root, dataset, metric), table.to_dict("records"))
    return table
