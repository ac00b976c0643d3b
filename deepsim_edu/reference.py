"""Reference results: the small files of a larger run, committed with where they came from.

``export_reference(results_dir, out, ...)`` copies every CSV/JSON/Markdown file of a results root
(per-pair test results, logs, configs, claims, noise sweep — never checkpoints) into ``out``
and writes ``out/provenance.json``::

    {"preset", "device", "date", "commit", "command", "wall_time_s", "torch", "threads",
     "vgg": {"path", "sha256", "weights_convention", "source", "input_convention", ...} | null,
     "notes"}

``vgg`` records the VGG16 weights file of the VGG runs (path and sha256, where it came from) and
the input convention fed to it (``features.describe_vgg_weights``): the paper's torchvision
weights on the unnormalised image, or our offline Keras/Caffe weights on their own input.

``find_reference(preset)`` is how the book finds them: ``reference_results/<preset>/`` of the
repository, whatever the current directory (a chapter opened in ``book/`` finds them too).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from .features import describe_vgg_weights
from .runs import write_json

REFERENCE_ROOT = Path(__file__).resolve().parent.parent / "reference_results"  # the repository's
SMALL_SUFFIXES = (".csv", ".json", ".md")


def git_commit(repo: str | Path = ".") -> str:
    """The checked-out commit (with ``-dirty`` when tracked files changed), or ``unknown``."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=True,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip

    try:
        commit, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "-uno")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def export_reference(
    results_dir: str | Path, out: str | Path, *, preset: str, device: str, command: str,
    wall_time_s: float | None = None, commit: str | None = None, date: str | None = None,
    notes: str = "", vgg: str | Path | None = None, vgg_input: str = "weights",
) -> Path:  # fmt: skip
    """Copy the small result files of ``results_dir`` to ``out`` and write ``provenance.json``.

    ``vgg``: the VGG16 weights file the VGG runs used and ``vgg_input`` the input convention
    they fed it (``RegistrationConfig.vgg_input``); both are recorded (None: no VGG recorded).
    """
    src, out = Path(results_dir), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"results folder {src} does not exist")
    files = [p for p in sorted(src.rglob("*")) if p.is_file() and p.suffix in SMALL_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"{src} holds no CSV/JSON result files")
    vgg_used = None if vgg is None else describe_vgg_weights(vgg, vgg_input)  # checked first
    for path in files:
        target = out / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    provenance = {
        "preset": preset,
        "device": device,
        "date": date or datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "commit": commit or git_commit(),
        "command": command,
        "wall_time_s": wall_time_s,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "vgg": vgg_used,
        "notes": notes,
    }
    write_json(out / "provenance.json", provenance)
    return out


def find_reference(preset: str, root: str | Path = REFERENCE_ROOT) -> tuple[Path, dict] | None:
    """``(folder, provenance)`` of the committed reference results of ``preset``, or None."""
    folder = Path(root) / preset
    path = folder / "provenance.json"
    if not path.is_file():
        return None
    return folder, json.loads(path.read_text())
