"""Run folders: what a training run leaves behind, written atomically, read with checks.

::

    <out>/config.json     the run's config (presets in config.py) plus dataset facts
    <out>/log.csv         one row per epoch
    <out>/checkpoint.pt   model + optimiser + progress, loadable with torch.load(weights_only=True)

Every writer goes through a temporary file and a rename (``data.layout.atomic_write_bytes``),
so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from .data.layout import atomic_write_bytes


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


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Write rows (dicts with the same keys) as CSV, atomically."""
    text = io.StringIO()
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())
