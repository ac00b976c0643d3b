"""What the two embedded 2D series (Platelet-EM sections, PhC-U373 frames) share.

* ``add_noise``: the microscope's side of an image — contrast/gain changes between sections
  (±30 % / ±20 %), a bias field, white noise, and in some images strong noise in smooth patches
  covering 30–50 % of the image plus streaks, all scaled by one ``noise`` level (0 = clean).
  The paper's claims are about low contrast and noise; this is where the data gets them.
* ``Section`` and ``write_series_dataset``: one generated section/frame and writing a whole
  series in the layout of ``layout.py`` plus ``noise_masks/<case>.nii.gz`` (uint8 0/1: where the
  strong noise went), through a staging folder that replaces the target only when complete.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layout import DatasetInfo, staging_folder, write_case, write_dataset_json
from .synth import bias_field, smooth_noise


def check_noise(noise: float) -> float:
    """Return ``noise`` if it is a finite number >= 0, else raise a ValueError."""
    if not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0 (0 = clean), got {noise!r}")
    return noise


def add_noise(
    image: np.ndarray, noise: float, rng: np.random.Generator, patches: bool = True,
    patch_strength: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """What the microscope adds to a clean image ``(H, W)`` in [0, 1], all scaled by ``noise``.

    Contrast ×(1 ± 0.3) about the mean and gain ×(1 ± 0.2) (both scaled by min(noise, 1)), a
    smooth bias field exp(0.1·noise·g), white noise of σ 0.04·noise, and — if ``patches`` —
    strong noise of σ (0.3–0.4)·noise in smooth blobs covering 30–50 % of the image plus a
    few bright or dark streaks. The random draws do not depend on
    ``noise``, so one seed gives the same sections at every noise level.
    ``patch_strength`` scales the patches and streaks alone (σ (0.3–0.4)·noise·patch_strength):
    the patch-strength sweep of claim 4, where 0 gives the same image as ``patches=False`` but
    still the mask of where the patches would be, and 1 (the default) today's data.

    Returns the noisy image (float32, clipped to [0, 1]) and the mask (uint8 0/1) of where the
    strong noise went (all zeros if none was added or ``noise == 0``).
    """
    check_noise(noise)
    check_noise(patch_strength)
    shape = image.shape
    strength = min(noise, 1.0)
    contrast = 1 + 0.3 * strength * rng.uniform(-1, 1)
    gain = 1 + 0.2 * strength * rng.uniform(-1, 1)
    mean = float(image.mean())
    out = gain * (mean + contrast * (image - mean))
    out = out * bias_field(shape, sigma=max(shape) / 4, strength=0.1 * noise, rng=rng)
    out = out + 0.04 * noise * rng.standard_normal(shape)
    blobs = smooth_noise(shape, max(shape) / 16, rng)
    coverage, sigma = rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.4)
    mask = blobs > np.quantile(blobs, 1 - coverage)
    strong = sigma * noise * rng.standard_normal(shape)
    streaks = _streaks(shape, rng)
    if patches and noise > 0:
        # (× 1.0 is exact: patch_strength=1 gives today's data bit for bit)
        out = out + np.where(mask, patch_strength * strong, 0.0) + patch_strength * noise * streaks
    else:
        mask = np.zeros(shape, dtype=bool)
    return np.clip(out, 0, 1).astype(np.float32), mask.astype(np.uint8)


def _streaks(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A few straight streaks (knife marks, scan-line glitches): Gaussian profile, ±0.1–0.2."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    out = np.zeros(shape, dtype=np.float32)
    for _ in range(rng.integers(2, 5)):
        angle = rng.normal(0.0, 0.15)  # nearly horizontal
        offset = rng.uniform(0, shape[0])
        width, amplitude = rng.uniform(0.7, 2.0), rng.choice([-1, 1]) * rng.uniform(0.1, 0.2)
        distance = yy - offset - math.tan(angle) * (xx - shape[1] / 2)
        out += amplitude * np.exp(-0.5 * (distance / width) ** 2)
    return out


@dataclass
class Section:
    """One generated section/frame, as it will be written."""

    image: np.ndarray  # (H, W) float32 in [0, 1]
    label: np.ndarray  # (H, W) uint8
    noise_mask: np.ndarray  # (H, W) uint8 0/1
    displacement: np.ndarray | None = None  # (2, H, W): warp(this, u) ≈ the next one


def quantise_displacement(u: np.ndarray, step: float = 1 / 64) -> np.ndarray:
    """Round a displacement to multiples of ``step`` pixels, so that its file compresses well."""
    return (np.round(u / step) * step).astype(np.float32)


def quantise(image: np.ndarray, levels: int = 256) -> np.ndarray:
    """Round intensities in [0, 1] to ``levels`` grey levels (float32), as an 8-bit camera does."""
    return (np.round(image * (levels - 1)) / (levels - 1)).astype(np.float32)


def write_series_dataset(out: str | Path, info: DatasetInfo, sections: dict[str, Section]) -> Path:
    """Write every section (layout of ``layout.py`` + ``noise_masks/``), dataset.json last."""
    out = Path(out)
    spacing = info.spacing
    with staging_folder(out) as tmp:
        for case, section in sections.items():
            write_case(tmp, case, section.image, section.label, spacing, section.displacement,
                       noise_mask=section.noise_mask)  # fmt: skip
        write_dataset_json(tmp, info)
    return out


def keep_test_displacements(splits: dict[str, list[str]], sections: dict[str, Section]) -> None:
    """Keep the true displacement of the val and test pairs (i, i+1) only; drop the others.

    These are the pairs that get evaluated; a displacement costs more disk than its image
    (two float channels), so the training series goes without.
    """
    keep = {case for split in ("val", "test") for case in splits[split][:-1]}
    for case, section in sections.items():
        if case not in keep:
            section.displacement = None


def write_series(
    out: str | Path,
    name: str,
    classes: Sequence[str],
    train: list[Section],
    valtest: list[Section],
    val: Sequence[int],
    test: Sequence[int],
    source: str,
) -> Path:
    """Name, split and write a 2D series dataset: what Platelet-EM and PhC-U373 share.

    The training series becomes ``train_000, train_001, …``; sections ``val`` and ``test`` of
    the second series (indices into ``valtest``; others are left out) become ``vt_000, …``.
    Pairs are neighbours up to ±2 apart (the paper's rule); only the val/test displacements
    are kept. Returns ``out``.
    """
    sections = {f"train_{i:03d}": s for i, s in enumerate(train)}
    sections |= {f"vt_{i:03d}": valtest[i] for i in [*val, *test]}
    splits = {
        "train": [f"train_{i:03d}" for i in range(len(train))],
        "val": [f"vt_{i:03d}" for i in val],
        "test": [f"vt_{i:03d}" for i in test],
    }
    keep_test_displacements(splits, sections)
    info = DatasetInfo(
        name=name,
        ndim=2,
        spacing=[1.0, 1.0],
        classes=list(classes),
        splits=splits,
        pairing={"rule": "neighbours", "max_offset": 2},
        source=source,
    )
    return write_series_dataset(out, info, sections)


def series_rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent generators from one seed: the training series and the val/test series."""
    train, valtest = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(train), np.random.default_rng(valtest)
