"""The embedded default datasets: generated offline from a seed, cached in a data folder.

``ensure_embedded("platelet-em", "data")`` returns ``data/platelet-em``, generating it first if
it is missing or was made with other parameters (recorded in ``generator.json`` beside
``dataset.json``). The generators live in ``brain.py``, ``platelet.py`` and ``phc.py``.

Finding datasets: ``resolve_dataset`` (the folder of one dataset, embedded or given),
``find_dataset`` (the same, or None) and ``datasets_in`` (every dataset of a data folder).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from .layout import (
    DATASET_NAMES,
    DatasetError,
    atomic_write_bytes,
    check_dataset,
    check_dataset_name,
    load_info,
    staging_folder,
)

# dataset name -> (module, generator function)
GENERATORS = {
    "brain-mri": ("deepsim_edu.data.brain", "make_brain_mri"),
    "platelet-em": ("deepsim_edu.data.platelet", "make_platelet_em"),
    "phc-u373": ("deepsim_edu.data.phc", "make_phc_u373"),
}


def generator(name: str):
    """The generator function of an embedded dataset, e.g. ``make_platelet_em``."""
    module, function = GENERATORS[check_dataset_name(name)]
    return getattr(importlib.import_module(module), function)


def ensure_embedded(name: str, data_dir: str | Path = "data", seed: int = 0, **params) -> Path:
    """Path of the embedded dataset ``name`` in ``data_dir``, generating it if needed.

    ``params`` go to the generator (e.g. ``noise=0.0`` for the easy case). A folder made with
    other ``seed``/``params`` is replaced; the swap happens only once generation has finished.
    """
    make = generator(name)
    data_dir = Path(data_dir)
    target = data_dir / name
    request = {"dataset": name, "seed": seed, "params": params}
    record = target / "generator.json"
    if (target / "dataset.json").is_file() and record.is_file():
        if json.loads(record.read_text()) == request:
            return target
    with staging_folder(target) as staging:  # replaces `target` only once generation finished
        make(staging, seed=seed, **params)
        atomic_write_bytes(staging / "generator.json", (json.dumps(request) + "\n").encode())
    return target


def resolve_dataset(
    dataset: str, data: str | Path | None = None, seed: int = 0, generate: bool = False
) -> Path:
    """The folder of ``dataset``: embedded (generated in ``data/``) when ``data`` is None.

    An explicit ``data`` must be a dataset folder of that name, or hold one as
    ``data/<dataset>/``; anything else is an error, never a silent fallback to generated data —
    unless ``generate=True`` (the book's chapters): then a missing ``data/<dataset>/`` is
    generated there as the embedded dataset (a folder that exists is never replaced).
    """
    check_dataset_name(dataset)
    if data is None:
        return ensure_embedded(dataset, "data", seed=seed)
    data = Path(data)
    if generate and not (data / "dataset.json").is_file() and not (data / dataset).exists():
        return ensure_embedded(dataset, data, seed=seed)
    for folder in (data, data / dataset):
        if (folder / "dataset.json").is_file():
            info = load_info(folder)
            if info.name != dataset:
                raise DatasetError(f"{folder} holds dataset {info.name!r}, not {dataset!r}")
            return folder
    raise DatasetError(
        f"{data}: not in the dataset layout (no dataset.json in it or in {data / dataset}); "
        f"make one with `python -m deepsim_edu data --dataset {dataset}` or data_scripts/"
    )


def find_dataset(dataset: str, data: str | Path | None = None) -> Path | None:
    """``resolve_dataset(dataset, data)``, or None where ``data`` does not hold ``dataset``."""
    try:
        return resolve_dataset(dataset, data)
    except DatasetError:
        return None


def datasets_in(data_dir: str | Path) -> dict[str, Path]:
    """The datasets in a data folder: name → folder, for ``<data_dir>/<name>/dataset.json``
    (or ``data_dir`` itself when it is a dataset folder)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such folder (expected a data folder holding "
                                "<dataset>/dataset.json)")  # fmt: skip
    found = {}
    if (data_dir / "dataset.json").is_file():
        found[load_info(data_dir).name] = data_dir
    for name in DATASET_NAMES:
        if (data_dir / name / "dataset.json").is_file():
            found.setdefault(name, data_dir / name)
    return found


def summarize(root: str | Path) -> list[str]:
    """Check a dataset folder in full (``layout.check_dataset``) and return one summary line
    per split, the atlas, and what was checked.

    Raises one DatasetError naming every file at fault (missing, corrupt, wrong shape or labels).
    """
    return check_dataset(root).summary()


__all__ = [
    "GENERATORS", "DatasetError", "datasets_in", "ensure_embedded", "find_dataset", "generator",
    "resolve_dataset", "summarize",
]  # fmt: skip
