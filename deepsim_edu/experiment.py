"""The paper's experiment grid: datasets × metrics, feature extractors first, then evaluation.

Folders under the results root (default ``results/<preset>``; the whole layout is in ``runs.py``)::

    <dataset>/segmentation/            the DeepSim feature extractor (train_segmentation)
    <dataset>/<metric>/                config.json, log.csv, checkpoint.pt, test_results.csv
    <dataset>/<metric>/sweep/lam_<λ>/  the runs of a λ sweep, and <dataset>/<metric>/sweep.csv

Every step is resumable: a finished run is skipped, an unfinished one continues from its last
checkpoint, so ``run_experiment`` can simply be started again after an interruption.
"""

from __future__ import annotations

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
from .evaluate import evaluate_run
from .runs import (
    checkpoint_path,
    load_checkpoint,
    results_file,
    results_root,
    run_folder,
    segmentation_folder,
    sweep_csv,
    sweep_run_folder,
    write_csv,
)
from .train import train_registration, train_segmentation


def feature_extractor(
    dataset: str, preset: str, data_root: Path, root: Path, device: str, seed: int = 0
) -> Path:
    """Train (or resume, or reuse) the segmentation net of ``dataset``; its checkpoint path."""
    run = segmentation_folder(root, dataset)
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
    train_registration(data_root, run, config, device=device, extractor=extractor, vgg=vgg)
    if test and not results_file(run).exists():
        evaluate_run(run, data_root, "test", device)
    return run


def run_experiment(
    preset: str = "quick", datasets: tuple[str, ...] = DATASETS, metrics: tuple[str, ...] = METRICS,
    data: str | Path | None = None, out: str | Path | None = None, device: str = "cpu",
    vgg: str | Path | None = None, seed: int = 0,
) -> Path:  # fmt: skip
    """Run the grid (feature extractors first); finished runs are skipped. Returns the root."""
    root = results_root(preset, out)
    for dataset in datasets:
        data_root = resolve_dataset(dataset, None if data is None else Path(data))
        if "deepsim" in metrics:
            feature_extractor(dataset, preset, data_root, root, device, seed)
    for dataset in datasets:
        for metric in metrics:
            run = run_one(dataset, metric, preset, data, out, device, vgg=vgg, seed=seed)
            print(f"{dataset:<12} {metric:<8} {run}")
    return root


def sweep_lambda(
    dataset: str, metric: str, preset: str = "quick", grid: list[float] | None = None,
    data: str | Path | None = None, out: str | Path | None = None, device: str = "cpu",
    vgg: str | Path | None = None, seed: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """Train one run per λ and pick λ by the best validation Dice, as the paper did.

    Default grid: the paper's λ for this dataset × metric times 2^k, k = -2 .. 2 (a log2 grid).
    Writes ``<root>/<dataset>/<metric>/sweep.csv`` (λ, best and last validation Dice).
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
                     "last_val_dice": log[-1]["val_dice"], "run": str(run)})  # fmt: skip
    table = pd.DataFrame(rows)
    table["selected"] = table.index == table["best_val_dice"].idxmax()  # ties: the first λ
    write_csv(sweep_csv(root, dataset, metric), table.to_dict("records"))
    return table
