"""Evaluation: the Sørensen–Dice overlap (the paper's accuracy measure) and per-pair results.

For class c with voxel sets A (warped moving labels) and B (fixed labels):

    Dice_c = 2 |A ∩ B| / (|A| + |B|).

Two conventions for the mean over classes:

* ``"foreground"`` (ours, the default): mean over the foreground classes 1..C−1; a class absent
  from *both* maps has no defined Dice and is left out of the mean.
* ``"paper"`` (the paper's code): mean over *all* classes including background, and a class
  absent from both maps counts as 0. Background is large and easy, so this reads higher on
  sparse foregrounds; results tables say which convention they use.

Besides the per-pair results of a run (``evaluate_run``), the numbers the figures draw:
one test pair registered by a run's net with det ∇Φ (``register_pair``), the noisiest window of
Platelet-EM (``noisiest_window``) and DeepSim's feature maps under noise
(``feature_maps_under_noise``). Finding runs and reading their files is ``runs.py``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import Tensor

from .data.embedded import resolve_dataset
from .data.layout import check_dataset_name, read_noise_mask
from .data.pairs import CaseStore, PairDataset
from .features import load_segmentation_extractor
from .losses import cosine_similarity_map
from .registration import register, registration_loss
from .runs import (
    CONFIG,
    checkpoint_path,
    load_registration_net,
    read_config,
    results_file,
    results_folder,
    run_folder,
    segmentation_folder,
    write_csv,
)
from .transform import folding_fraction, jacobian_determinant, warp

DICE_CONVENTIONS = ("foreground", "paper")


def _check_labels(pred: Tensor, target: Tensor, num_classes: int) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"label maps must have the same shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if pred.dim() < 2:
        raise ValueError(f"label maps must be batched (B, *spatial), got shape {tuple(pred.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError(
            "label maps must be integer tensors (use warp(..., mode='nearest') for labels)"
        )
    if num_classes < 2:
        raise ValueError(
            f"num_classes must be >= 2 (background + at least one class), got {num_classes}"
        )
    for name, x in (("pred", pred), ("target", target)):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(
                f"{name} labels must lie in 0..{num_classes - 1}, found {x.min()}..{x.max()}"
            )


def dice_per_class(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Dice of every class, ``(B, num_classes)``; NaN where the class is absent from both maps.

    ``pred``, ``target``: integer label maps ``(B, *spatial)`` (a channel axis of 1 is fine).
    """
    _check_labels(pred, target, num_classes)
    pred, target = pred.flatten(1), target.flatten(1)  # (B, N)
    classes = torch.arange(num_classes, device=pred.device).view(1, -1, 1)
    a = pred[:, None] == classes  # (B, C, N)
    b = target[:, None] == classes
    intersection = (a & b).sum(-1).double()
    total = a.sum(-1).double() + b.sum(-1).double()
    return torch.where(total > 0, 2 * intersection / total.clamp(min=1), torch.nan)


def mean_dice(per_class: Tensor, convention: str = "foreground") -> Tensor:
    """Mean Dice per batch element ``(B,)`` from ``dice_per_class`` output ``(B, C)``.

    ``"foreground"``: nan-mean over classes 1..C−1; raises ValueError if a map pair has no
    foreground class at all (empty labels). ``"paper"``: mean over all classes, NaN → 0.
    """
    if convention not in DICE_CONVENTIONS:
        raise ValueError(
            f"unknown Dice convention {convention!r}; valid: {', '.join(DICE_CONVENTIONS)}"
        )
    if convention == "paper":
        return per_class.nan_to_num(0.0).mean(1)
    foreground = per_class[:, 1:]
    empty = foreground.isnan().all(1)
    if empty.any():
        raise ValueError(
            f"label maps {empty.nonzero().flatten().tolist()} of the batch have no foreground "
            "class "
            "in either map (empty labels): the foreground Dice is undefined"
        )
    return foreground.nanmean(1)


def dice(pred: Tensor, target: Tensor, num_classes: int, convention: str = "foreground") -> Tensor:
    """Mean Dice per batch element, ``(B,)``: ``mean_dice(dice_per_class(...), convention)``."""
    return mean_dice(dice_per_class(pred, target, num_classes), convention)


# ----------------------------------------------------------------------------- registration runs


@torch.no_grad()
def evaluate_pairs(
    net, pairs, device: str = "cpu", classes: list[str] | None = None, *, similarity=None,
    lam: float | None = None,
) -> list[dict]:  # fmt: skip
    """Register every pair of ``pairs`` (a ``data.pairs.PairDataset``) one at a time.

    Per pair: foreground-mean Dice before and after registration, the paper-convention Dice,
    per-class Dice (``dice_<class>``), the folding fraction and statistics of det ∇Φ.
    The labels are warped with nearest-neighbour interpolation. With ``similarity`` and ``lam``
    the row also holds Eq. 1 for the pair (``loss``, ``similarity``, ``regulariser``, from
    ``registration.registration_loss``), from the same forward pass.
    """
    classes = classes or pairs.info.classes
    net.eval()
    rows = []
    for index in range(len(pairs)):
        item = pairs[index]
        moving, fixed = item["moving"][None].to(device), item["fixed"][None].to(device)
        fixed_labels, moving_labels = item["fixed_labels"][None], item["moving_labels"][None]
        losses = {}
        if similarity is None:
            u, _ = register(net, moving, fixed)  # (1, ndim, *spatial)
        else:
            parts = registration_loss(
                net, moving, fixed, similarity=similarity, lam=lam,
                moving_labels=moving_labels.to(device), fixed_labels=fixed_labels.to(device),
                num_classes=pairs.info.num_classes,
            )  # fmt: skip
            u = parts.displacement
            losses = {k: getattr(parts, k).item() for k in ("loss", "similarity", "regulariser")}
        warped_labels = warp(moving_labels.to(device), u, mode="nearest").cpu()
        per_class = dice_per_class(warped_labels, fixed_labels, len(classes))
        det = jacobian_determinant(u).cpu()
        row = {
            "moving": item["moving_id"],
            "fixed": item["fixed_id"],
            "dice": mean_dice(per_class).item(),
            "dice_before": dice(moving_labels, fixed_labels, len(classes)).item(),
            "dice_paper_convention": mean_dice(per_class, "paper").item(),
            "folding_fraction": folding_fraction(u).item(),  # det ∇Φ < 0, forward differences
            "jacobian_min": det.min().item(),
            "jacobian_mean": det.mean().item(),
            "jacobian_std": det.std().item(),
        }
        row.update({f"dice_{name}": per_class[0, c].item() for c, name in enumerate(classes)})
        rows.append({**row, **losses})
    return rows


def evaluate_run(
    run: str | Path, data: str | Path, split: str = "test", device: str = "cpu"
) -> Path:
    """Evaluate a trained run on ``split``: one row per pair → ``<run>/<split>_results.csv``.

    The whole dataset is checked first (``CaseStore.check``: one DatasetError naming every
    file at fault), before any pair is registered.
    """
    net, config = load_registration_net(run, device)
    store = CaseStore(data)
    if store.info.name != config["dataset"]:
        raise ValueError(
            f"{run} was trained on {config['dataset']!r}, {data} holds {store.info.name!r}"
        )
    store.check(keep=(split,))
    pairs = PairDataset(store, split)
    rows = [{"dataset": config["dataset"], "metric": config["metric"], **row}
            for row in evaluate_pairs(net, pairs, device)]  # fmt: skip
    path = results_file(run, split)
    write_csv(path, rows)
    return path


# ----------------------------------------------------------------------------- one test pair


def dice_or_nan(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """Foreground-mean Dice of one pair of label maps ``(1, *spatial)``; NaN where neither map
    has a foreground class (the Dice is undefined there, e.g. in a small window)."""
    per_class = dice_per_class(pred, target, num_classes)  # (1, C); bad labels still raise
    if per_class[:, 1:].isnan().all():  # no foreground in either map
        return float("nan")
    return mean_dice(per_class).item()


def load_test_pair(
    dataset: str, data_dir: str | Path | None, index: int
) -> tuple[PairDataset, dict]:
    """The test pairs of ``dataset`` (found by ``resolve_dataset``) and pair number ``index``."""
    pairs = PairDataset(resolve_dataset(dataset, data_dir), "test")
    if not 0 <= index < len(pairs):
        raise ValueError(f"pair_index must lie in 0..{len(pairs) - 1} for {dataset}, got {index}")
    return pairs, pairs[index]


# the last few registrations, so that the figures of one figures.save_figures call (grid,
# Jacobian, noisy patch) run each net on a pair once; keyed by the checkpoint's mtime and the
# pair's images, so a retrained run or other data is registered afresh
_REGISTERED: OrderedDict[tuple, dict] = OrderedDict()
_CACHE_SIZE = 16  # ≥ the 15 runs of a full grid (3 datasets × 5 metrics); ~100 MB for brains


@torch.no_grad()
def register_pair(run: str | Path, item: dict, num_classes: int) -> dict:
    """Register one pair (a ``PairDataset`` item) with a run's net on the CPU.

    Returns read-only numpy arrays: the displacement ``u`` (ndim, *spatial), ``warped`` = I∘Φ
    and ``warped_labels`` (nearest neighbours) (*spatial), ``det`` = det ∇Φ (*spatial; the
    full 3D determinant in 3D; forward differences), the pair's ``folding`` fraction
    (``transform.folding_fraction``) and its foreground ``dice`` (NaN if undefined).
    """
    moving, fixed = item["moving"][None], item["fixed"][None]  # (1, 1, *spatial)
    key = (
        str(Path(run).resolve()),
        checkpoint_path(run).stat().st_mtime_ns,
        item["moving_id"],
        item["fixed_id"],
        float(moving.sum()),
        float(fixed.sum()),
    )
    if key in _REGISTERED:
        _REGISTERED.move_to_end(key)
        return _REGISTERED[key]
    net, _ = load_registration_net(run, "cpu")
    u, warped = register(net, moving, fixed)  # (1, ndim, *spatial), (1, 1, *spatial)
    warped_labels = warp(item["moving_labels"][None], u, mode="nearest")
    result = {
        "u": u[0].numpy(),
        "warped": warped[0, 0].numpy(),
        "warped_labels": warped_labels[0, 0].numpy(),
        "det": jacobian_determinant(u)[0].numpy(),
    }
    for array in result.values():
        array.setflags(write=False)
    score = dice_or_nan(warped_labels, item["fixed_labels"][None], num_classes)
    _REGISTERED[key] = {**result, "dice": score, "folding": folding_fraction(u).item()}
    while len(_REGISTERED) > _CACHE_SIZE:
        _REGISTERED.popitem(last=False)
    return _REGISTERED[key]


# ----------------------------------------------------------------------------- the noisiest window


def window_sums(score: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``score`` ``(H, W)`` over every ``size × size`` window inside the image, by the
    integral image S: sum = S[r+s, c+s] − S[r, c+s] − S[r+s, c] + S[r, c]. Entry (r, c) is the
    window with top-left corner (r, c): shape ``(H − size + 1, W − size + 1)``."""
    s = np.pad(score.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return s[size:, size:] - s[:-size, size:] - s[size:, :-size] + s[:-size, :-size]


def highpass_variance(image: np.ndarray, size: int) -> np.ndarray:
    """Per ``size × size`` window (top-left corner indexing, as ``window_sums``): the variance
    E[r²] − E[r]² of the high-pass residual r = image − Gaussian blur(image, σ 2) — where the
    pixel noise is strongest when no noise mask says where it is."""
    r = image - gaussian_filter(image, 2.0)
    n = size * size
    return window_sums(r * r, size) / n - (window_sums(r, size) / n) ** 2


def noisiest_window(pairs: PairDataset, size: int) -> dict:
    """The 2D pair and ``size × size`` window with the most noise (the paper's Fig. 2b).

    With noise masks (the embedded data's ``noise_masks/``): the pair whose moving or fixed
    image has the largest noisy area, and in it the window with the most pixels noisy in
    either image. Without (real data): the pair and window of largest high-pass variance
    (``highpass_variance``) of either image. Returns ``index`` (of the pair), ``top``,
    ``left`` and ``masks`` (case id → bool mask ``(H, W)``; None when chosen without masks).
    """
    height, width = pairs[0]["fixed"].shape[1:]
    if not 4 <= size <= min(height, width):
        raise ValueError(f"size must lie in 4..{min(height, width)} pixels, got {size}")
    store = pairs.store
    masks = {c: read_noise_mask(store.root, pairs.info, c) for p in pairs.pairs for c in p}
    use_masks = all(m is not None for m in masks.values()) and any(m.any() for m in masks.values())
    best = None  # (score, pair index, top, left)
    for index, (moving_id, fixed_id) in enumerate(pairs.pairs):
        if use_masks:
            area = max(masks[moving_id].sum(), masks[fixed_id].sum())
            sums = window_sums((masks[moving_id] | masks[fixed_id]).astype(float), size)
            score = (area, sums.max())
        else:
            moving, fixed = (store[c][0][0].numpy() for c in (moving_id, fixed_id))
            sums = np.maximum(highpass_variance(moving, size), highpass_variance(fixed, size))
            score = (sums.max(),)
        if best is None or score > best[0]:
            top, left = np.unravel_index(sums.argmax(), sums.shape)
            best = (score, index, int(top), int(left))
    _, index, top, left = best
    return {"index": index, "top": top, "left": left, "masks": masks if use_masks else None}


# ----------------------------------------------------------------------------- features vs noise


@torch.no_grad()
def feature_maps_under_noise(
    results_dir: str | Path, data_dir: str | Path | None, dataset: str = "platelet-em",
    channels: int = 4, noise_sigma: float = 0.3, seed: int = 0,
) -> dict:  # fmt: skip
    """DeepSim's features F_l (the frozen segmentation U-Net's encoder stages) of one test
    image, clean and plus Gaussian noise of σ ``noise_sigma`` (seeded by ``seed``).

    Levels: ``deepsim_levels`` of the dataset's DeepSim run (all levels without one). Image: the
    first test case of ``dataset``. Returns ``case``, ``image`` and ``noisy`` ``(1, 1,
    *spatial)`` and ``levels``, per level a dict: ``level``, ``num_channels`` (C_l),
    ``channels`` (the ``channels`` indices of largest spatial variance on the clean image),
    ``clean`` and ``noisy`` (those channels, numpy ``(n, *spatial_l)``) and ``cosine``, the map
    of cos(F_l(clean), F_l(noisy)) over all C_l channels ``(*spatial_l)`` — the quantity Eq. 2
    averages; near 1 means noise-robust.
    """
    root = results_folder(results_dir)
    check_dataset_name(dataset)
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    extractor = load_segmentation_extractor(
        checkpoint_path(segmentation_folder(root, dataset)), dataset=dataset
    )
    levels = list(range(len(extractor.encoder)))
    deepsim = run_folder(root, dataset, "deepsim")
    if (deepsim / CONFIG).is_file():
        levels = read_config(deepsim).get("deepsim_levels") or levels
    store = CaseStore(resolve_dataset(dataset, data_dir))
    case = store.info.splits["test"][0]
    image = store[case][0][None]  # (1, 1, *spatial)
    generator = torch.Generator().manual_seed(seed)
    noisy = image + noise_sigma * torch.randn(image.shape, generator=generator)
    clean_f, noisy_f = extractor.encode(image), extractor.encode(noisy)
    n = min(channels, min(clean_f[level].shape[1] for level in levels))
    maps = []
    for level in levels:
        clean, noise = clean_f[level][0], noisy_f[level][0]  # (C_l, *spatial_l)
        order = clean.flatten(1).var(1).argsort(descending=True)[:n].tolist()
        maps.append({
            "level": level,
            "num_channels": clean.shape[0],
            "channels": order,
            "clean": clean[order].numpy(),
            "noisy": noise[order].numpy(),
            "cosine": cosine_similarity_map(clean_f[level], noisy_f[level])[0].numpy(),
        })  # fmt: skip
    return {"case": case, "image": image, "noisy": noisy, "levels": maps}
