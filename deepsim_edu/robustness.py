"""Noise robustness of trained registration nets (the paper's claim 4 and its later noise study).

Two measurements on the test pairs of a dataset, for every metric's trained net of a results
root (``<root>/<dataset>/<metric>/checkpoint.pt``):

* ``noise_sweep``: add independent Gaussian noise of standard deviation σ to moving and fixed
  images (intensities as stored, e.g. Platelet-EM in [0, 1]) and clip the result to [0, 1] as
  the paper's code does, register, and score Dice and folding — the same noise draw for every
  metric at a given σ and pair, so the metrics are compared on identical inputs (paired).
* ``patch_strength_sweep``: ``noisy_region_smoothness`` on test sets regenerated with the noise
  patches scaled from none to today's (``PATCH_STRENGTHS``, fixed before any result was seen):
  the same anatomy, motion u* and patch masks at every strength, only the patches' σ changes.
* ``noisy_region_smoothness``: where the embedded data carries noisy patches (``noise_masks/``,
  the union of the moving and the fixed image's masks), compare Φ inside and outside them:
  folding fraction (det ∇Φ < 0) and the mean gradient magnitude of the displacement,

      |∇u|(x) = ‖∇Φ(x) − Id‖_F = sqrt(Σ_ij (∂u_i/∂x_j)²)   (forward differences),

  the quantity the paper's Figure 2b shows by eye: a metric that follows noise makes u rough
  there. Where the generator stored the true displacement u* (``displacements/``), also

      roughness error  ‖∇u − ∇u*‖_F   (the part of |∇u| that the true motion does not have)
      endpoint error   ‖u − u*‖₂      (how far the predicted correspondence is off, in pixels)

  because a small |∇u| alone also rewards a net that does not move at all: the noise is laid
  over the tissue without changing its motion, so the truth is as smooth there as elsewhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Dataset

from .config import METRICS
from .data.embedded import resolve_dataset
from .data.layout import read_displacement, read_noise_mask
from .data.pairs import PairDataset
from .evaluate import evaluate_pairs
from .registration import register
from .runs import load_registration_net, trained_runs
from .transform import jacobian_determinant, jacobian_matrix

NOISE_SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
PATCH_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)  # × today's patch σ; chosen before any result
PATCH_DATASETS = ("platelet-em", "phc-u373")  # the embedded generators with noise patches
TRUTH_QUANTITIES = ("gradient_error", "endpoint_error", "true_gradient", "true_magnitude")


class NoisyPairs(Dataset):
    """A ``PairDataset`` whose moving and fixed images carry added Gaussian noise of std ``sigma``.

    noisy = clip(image + σ·n, 0, 1), n ~ N(0, 1) per pixel: clipped to [0, 1] as in the paper's
    noise experiment (DeepSimRegistration: src/plots/run_models_with_added_noise.py,
    ``add_gaussian_noise``), which runs on Platelet-EM, whose intensities lie in [0, 1].
    The noise of pair ``index`` is drawn from a generator seeded by ``(seed, index)``, so it is the
    same for every net that is evaluated on it. Labels are untouched.
    """

    def __init__(self, pairs: PairDataset, sigma: float, seed: int = 0):
        if sigma < 0:
            raise ValueError(f"noise sigma must be >= 0, got {sigma}")
        self.pairs, self.sigma, self.seed, self.info = pairs, sigma, seed, pairs.info

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.pairs[index])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        for key in ("moving", "fixed"):
            noise = torch.randn(item[key].shape, generator=generator)
            item[key] = (item[key] + self.sigma * noise).clamp(0.0, 1.0)
        return item


def noise_sweep(
    results_dir: str | Path, data_dir: str | Path | None = None, dataset: str = "platelet-em",
    sigmas=NOISE_SIGMAS, metrics=None, device: str = "cpu", seed: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """Test Dice and folding of every metric's net vs added noise σ: one row per metric × σ × pair.

    Columns: ``metric, sigma, moving, fixed, dice, dice_before, folding_fraction, …`` (those of
    ``evaluate.evaluate_pairs``).
    """
    pairs = PairDataset(resolve_dataset(dataset, data_dir), "test")
    rows = []
    for metric, run in trained_runs(results_dir, dataset, metrics).items():
        net, _ = load_registration_net(run, device)
        for sigma in sigmas:
            for row in evaluate_pairs(net, NoisyPairs(pairs, float(sigma), seed), device):
                rows.append({"dataset": dataset, "metric": metric, "sigma": float(sigma), **row})
    return pd.DataFrame(rows)


def displacement_gradient_norm(displacement: torch.Tensor) -> torch.Tensor:
    """|∇u| = ‖∇Φ − Id‖_F per voxel: ``(B, ndim, *spatial)`` → ``(B, *spatial)``.

    ∂u_i/∂x_j by forward differences with the last slice replicate-padded
    (``transform.jacobian_matrix(scheme="forward")``), the differences of the paper's diffusion
    regulariser, so that mean(|∇u|²) / ndim² = ``losses.diffusion_regulariser(u)``.
    """
    jac = jacobian_matrix(displacement, scheme="forward")
    eye = torch.eye(displacement.shape[1], dtype=jac.dtype, device=jac.device)
    return (jac - eye).square().sum(dim=(-2, -1)).sqrt()


@torch.no_grad()
def noisy_region_smoothness(
    results_dir: str | Path, data_dir: str | Path | None = None, dataset: str = "platelet-em",
    metrics=None, device: str = "cpu",
) -> pd.DataFrame:  # fmt: skip
    """Folding, |∇u| and the errors against u* inside vs outside the noisy patches.

    One row per metric × test pair; only pairs where the noisy area (moving ∪ fixed mask) is
    non-empty are scored. Columns: ``metric, moving, fixed, noisy_fraction``, and
    ``<quantity>_inside`` / ``<quantity>_outside`` (means over the pixels of each area) for
    ``folding``, ``gradient`` (|∇u|) and, where the true displacement u* of the pair is stored,
    ``gradient_error`` (‖∇u − ∇u*‖_F), ``endpoint_error`` (‖u − u*‖₂), ``true_gradient``
    (|∇u*|) and ``true_magnitude`` (‖u*‖₂, the endpoint error of not registering); NaN where
    it is not. Raises ``ValueError`` when the dataset has no noise masks (real data).
    """
    root = resolve_dataset(dataset, data_dir)
    pairs = PairDataset(root, "test")
    masks = {}
    for index in range(len(pairs)):
        moving_id, fixed_id = pairs.pairs[index]
        found = [read_noise_mask(root, pairs.info, case) for case in (moving_id, fixed_id)]
        if all(m is None for m in found):
            continue
        mask = torch.zeros(found[0].shape if found[0] is not None else found[1].shape, dtype=bool)
        for m in found:
            if m is not None:
                mask |= torch.from_numpy(m)
        if mask.any() and not mask.all():
            masks[index] = mask
    if not masks:
        raise ValueError(f"{root}: no test pair has a noise mask (noise_masks/): nothing to score")
    truths = {}
    for index in masks:
        truth = read_displacement(root, pairs.info, pairs.pairs[index][0])
        truths[index] = None if truth is None else torch.from_numpy(truth)[None].float()
    rows = []
    for metric, run in trained_runs(results_dir, dataset, metrics).items():
        net, _ = load_registration_net(run, device)
        for index, mask in masks.items():
            item = pairs[index]
            u, _ = register(net, item["moving"][None].to(device), item["fixed"][None].to(device))
            u = u.cpu()  # (1, ndim, H, W)
            maps = {  # (H, W) per quantity
                "folding": (jacobian_determinant(u, scheme="forward")[0] < 0).float(),
                "gradient": displacement_gradient_norm(u)[0],
            }
            truth = truths[index]
            if truth is not None:
                maps["gradient_error"] = displacement_gradient_norm(u - truth)[0]  # ∇ is linear
                maps["endpoint_error"] = (u - truth).norm(dim=1)[0]
                maps["true_gradient"] = displacement_gradient_norm(truth)[0]
                maps["true_magnitude"] = truth.norm(dim=1)[0]  # the error of u = 0
            row = {
                "dataset": dataset,
                "metric": metric,
                "moving": item["moving_id"],
                "fixed": item["fixed_id"],
                "noisy_fraction": mask.float().mean().item(),
            }
            for name in ("folding", "gradient", *TRUTH_QUANTITIES):
                values = maps.get(name)
                row[f"{name}_inside"] = math.nan if values is None else values[mask].mean().item()
                row[f"{name}_outside"] = math.nan if values is None else values[~mask].mean().item()
            rows.append(row)
    return pd.DataFrame(rows)


def patch_strength_sweep(
    results_dir: str | Path, sweep_data: str | Path, dataset: str = "platelet-em",
    strengths=PATCH_STRENGTHS, metrics=None, device: str = "cpu", seed: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """``noisy_region_smoothness`` at every patch strength: one row per strength × metric × pair.

    For each strength s the embedded ``dataset`` is generated (seed ``seed``) into
    ``<sweep_data>/patch_strength_<s>/`` with its noise patches and streaks scaled by s
    (``data.series.add_noise``); s = 1 is the default data, bit for bit. Anatomy, motion (u*)
    and the patch masks do not depend on s, so every strength scores the same pixels against
    the same truth. The nets are those of ``results_dir`` (trained on the default data). Columns:
    ``patch_strength`` and those of ``noisy_region_smoothness``.
    """
    from .data.embedded import ensure_embedded

    if dataset not in PATCH_DATASETS:
        raise ValueError(f"{dataset!r} has no noise patches; patch sweeps: {PATCH_DATASETS}")
    tables = []
    for strength in strengths:
        strength = float(strength)
        params = {} if strength == 1.0 else {"patch_strength": strength}
        folder = Path(sweep_data) / f"patch_strength_{strength:g}"
        root = ensure_embedded(dataset, folder, seed=seed, **params)
        table = noisy_region_smoothness(results_dir, root, dataset, metrics, device)
        tables.append(table.assign(patch_strength=strength))
    return pd.concat(tables, ignore_index=True)


def summarize_patch_sweep(sweep: pd.DataFrame) -> pd.DataFrame:
    """Means over the test pairs per dataset × patch strength × metric of folding, |∇u| and the
    endpoint error inside and outside the patches (columns as in ``noisy_region_smoothness``)."""
    columns = [f"{q}_{where}" for q in ("folding", "gradient", "endpoint_error")
               for where in ("inside", "outside")]  # fmt: skip
    keys = ["dataset", "patch_strength", "metric"]
    return sweep.groupby(keys)[columns].mean().reset_index()


def summarize_noise_sweep(sweep: pd.DataFrame) -> pd.DataFrame:
    """Mean test Dice per metric (rows) × σ (columns), plus the unregistered Dice as ``before``."""
    table = sweep.pivot_table(index="metric", columns="sigma", values="dice", aggfunc="mean")
    table = table.reindex([m for m in METRICS if m in table.index])
    before = sweep.groupby("sigma")["dice_before"].mean().rename("before")
    return pd.concat([table, before.to_frame().T])
