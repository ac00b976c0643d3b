"""The results folder: where every run lies, what a run leaves behind, and how to read it back.

A results root (default ``results/<preset>``, ``results_root``) holds::

    <root>/<dataset>/segmentation/              DeepSim's feature extractor (train_segmentation)
    <root>/<dataset>/<metric>/                  one registration run (run_folder):
        config.json                             the run's config (presets in config.py) + dataset
        log.csv                                 one row per epoch (step, losses, val_dice, ...)
        checkpoint.pt                           model + optimiser + progress ("finished", "log")
        test_results.csv                        one row per test pair (evaluate.evaluate_run)
    <root>/<dataset>/<metric>/sweep/lam_<λ>/    the runs of a λ sweep (sweep_run_folder)
    <root>/<dataset>/<metric>/sweep.csv         the sweep's table: λ, best / last val Dice, run

Every writer goes through a temporary file and a rename (``data.layout.atomic_write_bytes``),
so a killed run never leaves a half-written file, and a failed write (a full disk, a folder
that cannot be made) raises an OSError naming the file. Every reader names the file or folder
it could not find or read (empty, truncated, not CSV, a column missing) and the command that
writes it again. Registering and scoring with a run's net is ``evaluate.py``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

try:
    import fcntl
except ImportError:  # Windows: no flock, so run folders are not locked there (one_trainer)
    fcntl = None

from .config import METRICS, check_metric
from .data.layout import DATASET_NAMES, atomic_write_bytes, check_dataset_name
from .unet import UNet, registration_unet

CONFIG = "config.json"
LOG = "log.csv"
VAL_PAIRS = "val_pairs.csv"  # per-pair validation Dice after every epoch (and at step 0)
CHECKPOINT = "checkpoint.pt"
SEGMENTATION = "segmentation"
SWEEP = "sweep"
# the columns every reader of a results file needs, and those of a log.csv
RESULT_COLUMNS = ("dataset", "metric", "moving", "fixed", "dice")
LOG_COLUMNS = ("step", "val_dice")

# ----------------------------------------------------------------------------- one trainer


@contextmanager
def one_trainer(run: str | Path) -> Iterator[Path]:
    """Hold the run folder ``run`` for training: an exclusive lock (``flock``) on the folder.

    A second process that trains the same folder (two chapters sharing one extractor, two
    terminals, a grid started twice) waits here until the first one is done, and then finds
    the run finished (and reuses it) or resumes it; two processes never write one run's
    checkpoint in turn. ``run`` may be a symbolic link to the folder of another results root:
    the lock is the folder's. A folder this call made and that is still empty at the end is
    removed (a run that failed before writing anything leaves nothing behind). Under torchrun
    the processes of a run train it together: use it around a whole run, not per process. On
    Windows (no ``flock``) nothing is locked.
    """
    run = Path(run)
    made = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    fd = os.open(run, os.O_RDONLY) if fcntl is not None else None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield run
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
        if made and run.is_dir() and not any(run.iterdir()):
            run.rmdir()


# ----------------------------------------------------------------------------- writing


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` into memory, then an atomic write: never a half-written checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle error, ...
        raise ValueError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc})") from exc


def write_json(path: str | Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def csv_bytes(rows: list[dict]) -> bytes:
    """Rows (dicts with the same keys) as the bytes of a CSV file: a header, one line per row
    (no rows: no bytes). The same rows always give the same bytes."""
    text = io.StringIO()
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return text.getvalue().encode()


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Write rows (dicts with the same keys) as CSV (``csv_bytes``), atomically."""
    atomic_write_bytes(path, csv_bytes(rows))


# ----------------------------------------------------------------------------- the layout


def results_root(preset: str, out: str | Path | None = None) -> Path:
    """The results root: ``out`` when given, else ``results/<preset>``."""
    return Path(out) if out is not None else Path("results") / preset


def run_folder(root: str | Path, dataset: str, metric: str) -> Path:
    """``<root>/<dataset>/<metric>``: the registration run of ``dataset`` × ``metric``."""
    return Path(root) / dataset / metric


def segmentation_folder(root: str | Path, dataset: str) -> Path:
    """``<root>/<dataset>/segmentation``: the run of DeepSim's feature extractor."""
    return Path(root) / dataset / SEGMENTATION


def sweep_folder(root: str | Path, dataset: str, metric: str) -> Path:
    """``<root>/<dataset>/<metric>/sweep``: the folder of a λ sweep's runs."""
    return run_folder(root, dataset, metric) / SWEEP


def sweep_run_folder(root: str | Path, dataset: str, metric: str, lam: float) -> Path:
    """``<root>/<dataset>/<metric>/sweep/lam_<λ>`` (λ written with ``:g``, e.g. ``lam_0.01``)."""
    return sweep_folder(root, dataset, metric) / f"lam_{lam:g}"


def sweep_csv(root: str | Path, dataset: str, metric: str) -> Path:
    """``<root>/<dataset>/<metric>/sweep.csv``: the table ``experiment.sweep_lambda`` writes."""
    return run_folder(root, dataset, metric) / "sweep.csv"


def checkpoint_path(run: str | Path) -> Path:
    """``<run>/checkpoint.pt``."""
    return Path(run) / CHECKPOINT


def results_file(run: str | Path, split: str = "test") -> Path:
    """``<run>/<split>_results.csv``: one row per pair of ``split`` (``evaluate.evaluate_run``)."""
    return Path(run) / f"{split}_results.csv"


# ----------------------------------------------------------------------------- which runs exist


def results_folder(results_dir: str | Path) -> Path:
    """``results_dir`` as a Path; FileNotFoundError when it is not a folder."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no results folder; run `python -m deepsim_edu experiment` first"
        )
    return root


def has_checkpoint(run: str | Path | None) -> bool:
    """Whether ``run`` (None: no run) is a folder with a ``checkpoint.pt``."""
    return run is not None and checkpoint_path(run).is_file()


def available_runs(results_dir: str | Path, needs: str = CHECKPOINT) -> dict[str, list[str]]:
    """``{dataset: [metric, ...]}`` of the registration runs under a results root that have
    the file ``needs`` (``"checkpoint.pt"``, ``"log.csv"``, ...); datasets in
    ``data.layout.DATASET_NAMES`` order, metrics in ``config.METRICS`` order, datasets without
    such a run left out. FileNotFoundError when ``results_dir`` is not a folder."""
    root = results_folder(results_dir)
    runs = {d: [m for m in METRICS if (run_folder(root, d, m) / needs).is_file()]
            for d in DATASET_NAMES}  # fmt: skip
    return {d: metrics for d, metrics in runs.items() if metrics}


def trained_runs(
    results_dir: str | Path, dataset: str, metrics: list[str] | str | None = None,
    needs: str = CHECKPOINT,
) -> dict[str, Path]:  # fmt: skip
    """``{metric: run folder}`` of ``dataset``'s runs that have the file ``needs``.

    ``metrics=None``: every such run (``config.METRICS`` order; FileNotFoundError when there is
    none); otherwise exactly the metrics asked for, each of which must have ``needs``
    (FileNotFoundError naming the missing file). Errors say how to train the run.
    """
    root = results_folder(results_dir)
    check_dataset_name(dataset)
    if metrics is None:
        found = available_runs(root, needs).get(dataset, [])
        if not found:
            raise FileNotFoundError(
                f"{root / dataset}: no registration run with a {needs}; train one with "
                f"`python -m deepsim_edu train --dataset {dataset} --metric METRIC`"
            )
        return {metric: run_folder(root, dataset, metric) for metric in found}
    metrics = [check_metric(m) for m in ([metrics] if isinstance(metrics, str) else metrics)]
    for metric in metrics:
        path = run_folder(root, dataset, metric) / needs
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; train the run with "
                f"`python -m deepsim_edu train --dataset {dataset} --metric {metric}`"
            )
    return {metric: run_folder(root, dataset, metric) for metric in metrics}


def training_finished(run: str | Path) -> bool:
    """Whether the registration run's ``checkpoint.pt`` says ``finished`` (its last epoch, or
    early stopping); False without a checkpoint."""
    path = checkpoint_path(run)
    return path.is_file() and bool(load_checkpoint(path).get("finished", False))


def run_finished(run: str | Path, split: str = "test") -> bool:
    """Nothing left to do for ``experiment.run_one``: training finished and
    ``<split>_results.csv`` written."""
    return results_file(run, split).is_file() and training_finished(run)


def finished_runs(results_dir: str | Path, split: str = "test") -> dict[str, list[str]]:
    """``{dataset: [metric, ...]}`` of the finished runs (``run_finished``), ordered and
    filtered as ``available_runs``."""
    root = results_folder(results_dir)
    runs = {d: [m for m in metrics if run_finished(run_folder(root, d, m), split)]
            for d, metrics in available_runs(root).items()}  # fmt: skip
    return {d: metrics for d, metrics in runs.items() if metrics}


def results_files(results_dir: str | Path, split: str = "test") -> list[Path]:
    """Every ``<dataset>/<metric>/<split>_results.csv`` under a results root, sorted (λ-sweep
    runs, one level deeper, are not included)."""
    return sorted(Path(results_dir).glob(str(results_file(Path("*", "*"), split))))


def unevaluated_runs(results_dir: str | Path, split: str = "test") -> dict[str, list[str]]:
    """``{dataset: [metric, ...]}`` of the registration runs with a ``checkpoint.pt`` but no
    ``<split>_results.csv``: the runs ``load_results`` leaves out. Ordered and filtered as
    ``available_runs``."""
    root = results_folder(results_dir)
    runs = {d: [m for m in metrics if not results_file(run_folder(root, d, m), split).is_file()]
            for d, metrics in available_runs(root).items()}  # fmt: skip
    return {d: metrics for d, metrics in runs.items() if metrics}


def evaluate_command(run: str | Path, split: str = "test") -> str:
    """The command line that (re)writes ``<run>/<split>_results.csv``, in backticks."""
    split_arg = "" if split == "test" else f" --split {split}"
    return f"`python -m deepsim_edu evaluate --run {run}{split_arg} [--data DIR]`"


def unevaluated_note(results_dir: str | Path, split: str = "test") -> list[str]:
    """Lines naming the runs of ``unevaluated_runs`` (as ``<dataset>/<metric>``) and what to do:
    trained but not evaluated (the ``evaluate`` command), training not finished (train again:
    it resumes, then evaluates), or a checkpoint that cannot be read. ``[]`` when every run
    with a checkpoint has its results. The CLI prints them under ``table``, ``claims`` and
    ``figures``."""
    root = results_folder(results_dir)
    groups: dict[str, list[str]] = {"finished": [], "unfinished": [], "unreadable": []}
    for dataset, metrics in unevaluated_runs(root, split).items():
        for metric in metrics:
            try:
                finished = training_finished(run_folder(root, dataset, metric))
                groups["finished" if finished else "unfinished"].append(f"{dataset}/{metric}")
            except ValueError:  # a corrupt checkpoint.pt
                groups["unreadable"].append(f"{dataset}/{metric}")
    what = {
        "finished": "trained but not evaluated (run "
        f"{evaluate_command(root / '<dataset>' / '<metric>', split)})",
        "unfinished": f"training not finished, no {split} results (run its `train` or "
        "`experiment` command again: it resumes, then evaluates)",
        "unreadable": f"checkpoint.pt unreadable, no {split} results (delete the run folder "
        "and train again)",
    }
    return [f"{what[group]}: {', '.join(names)}" for group, names in groups.items() if names]


# ----------------------------------------------------------------------------- reading runs


def read_table(
    path: str | Path, columns: tuple[str, ...] = (), numeric: tuple[str, ...] = (),
    redo: str = "",
) -> pd.DataFrame:  # fmt: skip
    """A CSV file that this package wrote (``write_csv``), read with pandas.

    ValueError naming ``path`` (and ending with ``redo``, what writes it again) when the file
    cannot be read, is empty (0 bytes), is no CSV table, lacks one of ``columns``, has a header
    but no rows, holds text in one of ``numeric``, or is truncated (``write_csv`` ends every
    line with a newline, so a file cut short ends without one).
    """
    path = Path(path)
    table, problem = None, ""
    try:
        raw = path.read_bytes()
        table = pd.read_csv(io.BytesIO(raw))
    except OSError as exc:
        problem = f"cannot read it ({exc.strerror or exc})"
    except pd.errors.EmptyDataError:
        problem = "empty file (no header, no rows)"
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        problem = f"not a CSV table ({str(exc).strip().splitlines()[-1]})"
    if table is not None:
        missing = [c for c in columns if c not in table.columns]
        text = [c for c in numeric if c in table and not pd.api.types.is_numeric_dtype(table[c])]
        if missing:
            problem = f"no column {', '.join(missing)} (columns: {', '.join(map(str, table))})"
        elif table.empty:
            problem = "a header but no rows"
        elif text:
            problem = f"text where numbers belong, in column {', '.join(text)}"
        elif not raw.endswith(b"\n"):
            problem = "truncated (its last line is cut short)"
    if problem:
        raise ValueError(f"{path}: {problem}" + (f"; {redo}" if redo else ""))
    return table


def read_config(run: str | Path) -> dict:
    """The ``config.json`` of a run folder; errors name the file."""
    path = Path(run) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no run config (is {run} a run folder?)")
    try:
        config = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON run config ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a JSON run config (a {type(config).__name__}, no object)")
    return config


def load_log(run: str | Path) -> pd.DataFrame:
    """The per-epoch training log of a run folder (``log.csv``: step, losses, val_dice, …);
    errors name the file (``read_table``)."""
    path = Path(run) / LOG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log (is {run} a run folder?)")
    redo = "run its training command again: it rewrites log.csv from checkpoint.pt"
    return read_table(path, LOG_COLUMNS, LOG_COLUMNS, redo)


def load_val_pairs(run: str | Path) -> pd.DataFrame:
    """The per-pair validation log of a registration run (``val_pairs.csv``: epoch, step,
    moving, fixed, dice, dice_before, folding_fraction; step 0 is the untrained net)."""
    path = Path(run) / VAL_PAIRS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-pair validation log (a run of an older version?)")
    redo = "run its training command again: it rewrites val_pairs.csv from checkpoint.pt"
    return read_table(path, ("step", "moving", "fixed", "dice"), ("step", "dice"), redo)


def load_run_results(run: str | Path, split: str = "test") -> pd.DataFrame:
    """One run's per-pair results, ``<run>/<split>_results.csv`` (``evaluate.evaluate_run``);
    errors name the file and the command that writes it again (``read_table``)."""
    path = results_file(run, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {split} results; run {evaluate_command(run, split)}")
    redo = f"evaluate the run again with {evaluate_command(run, split)}"
    return read_table(path, RESULT_COLUMNS, ("dice",), redo)


def load_results(results_dir: str | Path, split: str = "test") -> pd.DataFrame:
    """All per-pair results under a results root: ``<dataset>/<metric>/<split>_results.csv``.

    One row per (dataset, metric, test pair), the columns of ``evaluate.evaluate_pairs`` plus
    ``dataset`` and ``metric``, the files concatenated in sorted order. λ-sweep runs
    (``<metric>/sweep/…``) are not included; runs with a checkpoint but no results file are
    left out (``unevaluated_runs`` lists them). Raises ``FileNotFoundError`` naming the folder
    when it holds no results file at all, and a ValueError naming the file that cannot be read
    (``load_run_results``) or holds the rows of another dataset or metric than its folder's.
    """
    files = results_files(results_dir, split)
    if not files:
        raise FileNotFoundError(
            f"no {split}_results.csv under {Path(results_dir)}/<dataset>/<metric>/ — run "
            "`python -m deepsim_edu experiment` (or `evaluate`) first"
        )
    tables = []
    for path in files:
        table = load_run_results(path.parent, split)
        dataset, metric = path.parent.parent.name, path.parent.name
        other = table[(table["dataset"] != dataset) | (table["metric"] != metric)]
        if len(other):
            raise ValueError(
                f"{path}: rows of {other['dataset'].iloc[0]}/{other['metric'].iloc[0]} in the "
                f"folder of {dataset}/{metric}; evaluate the run again with "
                f"{evaluate_command(path.parent, split)}"
            )
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def load_registration_net(run: str | Path, device: str = "cpu") -> tuple[UNet, dict]:
    """The trained registration U-Net of a run folder (``checkpoint.pt``), in eval mode, and
    the run's config."""
    checkpoint = load_checkpoint(checkpoint_path(run), map_location=device)
    config = checkpoint["config"]
    if config.get("kind") != "registration":
        raise ValueError(f"{run}: not a registration run (kind {config.get('kind')!r})")
    net = registration_unet(config["ndim"], config["encoder_channels"], dropout=config["dropout"])
    net.load_state_dict(checkpoint["model"])
    return net.to(device).eval(), config


def sweep_table(folder: str | Path) -> pd.DataFrame:
    """The runs of a λ sweep: columns ``lam``, ``best_val_dice``, ``run`` (folder or None),
    ``selected``, sorted by λ.

    ``folder``: the ``<root>/<dataset>/<metric>`` folder of ``experiment.sweep_lambda``
    (``sweep.csv`` and ``sweep/lam_<λ>/``) or its ``sweep/`` folder. Run folders give λ from
    their ``config.json`` and the best validation Dice from their ``log.csv``; ``sweep.csv``
    adds λs whose run folders are gone and says which λ was selected.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected a λ sweep's folder)")
    rows: dict[float, dict] = {}
    for sub in (folder, folder / SWEEP):
        for run in sorted(sub.glob("lam_*")):
            if not (run / LOG).is_file():
                continue
            lam = read_config(run)["lam"] if (run / CONFIG).is_file() else float(run.name[4:])
            best = float(load_log(run)["val_dice"].max())
            rows[float(lam)] = {"lam": float(lam), "best_val_dice": best, "run": run}
    for table_csv in (
        folder / "sweep.csv",
        folder.parent / "sweep.csv" if folder.name == SWEEP else None,
    ):
        if table_csv is None or not table_csv.is_file():
            continue
        redo = "run `python -m deepsim_edu sweep-lambda` again: it rewrites sweep.csv"
        saved = read_table(table_csv, ("lam", "best_val_dice"), ("lam", "best_val_dice"), redo)
        for record in saved.to_dict("records"):
            row = rows.setdefault(float(record["lam"]), {"lam": float(record["lam"]), "run": None})
            row.setdefault("best_val_dice", float(record["best_val_dice"]))
            row["selected"] = bool(record.get("selected", False))
    if not rows:
        raise FileNotFoundError(
            f"{folder}: no λ-sweep runs (no lam_<λ>/ folders with a log.csv in it or in its "
            "sweep/, and no sweep.csv); run `python -m deepsim_edu sweep-lambda` first"
        )
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: r["lam"]))
    if "selected" not in table or not table["selected"].fillna(False).any():
        table["selected"] = table.index == table["best_val_dice"].idxmax()
    table["selected"] = table["selected"].fillna(False).astype(bool)
    return table
