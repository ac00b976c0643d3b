"""Evaluation: the Sørensen–Dice overlap (the paper's accuracy measure) and per-pair results.

For class c with voxel sets A (warped moving labels) and B (fixed labels):

    Dice_c = 2 |A ∩ B| / (|A| + |B|).

Two conventions for the mean over classes:

* ``"foreground"`` (ours, the default): mean over the foreground classes 1..C−1; a class absent
  from *both* maps has no defined Dice and is left out of the mean.
* ``"paper"`` (the paper's code): mean over *all* classes including background, and a class
  absent from both maps counts as 0. Background is large and easy, so this reads higher on
  sparse foregrounds; results tables say which convention they use.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from .data.pairs import PairDataset
from .runs import load_checkpoint, write_csv
from .transform import jacobian_determinant, warp
from .unet import registration_unet

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
def evaluate_pairs(net, pairs, device: str = "cpu", classes: list[str] | None = None) -> list[dict]:
    """Register every pair of ``pairs`` (a ``data.pairs.PairDataset``) one at a time.

    Per pair: foreground-mean Dice before and after registration, the paper-convention Dice,
    per-class Dice (``dice_<class>``), the folding fraction and statistics of det ∇Φ.
    The labels are warped with nearest-neighbour interpolation.
    """
    classes = classes or pairs.info.classes
    net.eval()
    rows = []
    for index in range(len(pairs)):
        item = pairs[index]
        moving, fixed = item["moving"][None].to(device), item["fixed"][None].to(device)
        u = net(torch.cat([moving, fixed], dim=1)).float()
        warped_labels = warp(item["moving_labels"][None].to(device), u, mode="nearest").cpu()
        fixed_labels, moving_labels = item["fixed_labels"][None], item["moving_labels"][None]
        per_class = dice_per_class(warped_labels, fixed_labels, len(classes))
        det = jacobian_determinant(u).cpu()
        row = {
            "moving": item["moving_id"],
            "fixed": item["fixed_id"],
            "dice": mean_dice(per_class).item(),
            "dice_before": dice(moving_labels, fixed_labels, len(classes)).item(),
            "dice_paper_convention": mean_dice(per_class, "paper").item(),
            "folding_fraction": (det <= 0).float().mean().item(),
            "jacobian_min": det.min().item(),
            "jacobian_mean": det.mean().item(),
            "jacobian_std": det.std().item(),
        }
        row.update({f"dice_{name}": per_class[0, c].item() for c, name in enumerate(classes)})
        rows.append(row)
    return rows


def load_registration_net(run: str | Path, device: str = "cpu"):
    """The trained registration U-Net of a run folder (``checkpoint.pt``), in eval mode."""
    checkpoint = load_checkpoint(Path(run) / "checkpoint.pt", map_location=device)
    config = checkpoint["config"]
    if config.get("kind") != "registration":
        raise ValueError(f"{run}: not a registration run (kind {config.get('kind')!r})")
    net = registration_unet(config["ndim"], config["encoder_channels"], dropout=config["dropout"])
    net.load_state_dict(checkpoint["model"])
    return net.to(device).eval(), config


def evaluate_run(
    run: str | Path, data: str | Path, split: str = "test", device: str = "cpu"
) -> Path:
    """Evaluate a trained run on ``split``: one row per pair → ``<run>/<split>_results.csv``."""
    net, config = load_registration_net(run, device)
    pairs = PairDataset(data, split)
    if pairs.info.name != config["dataset"]:
        raise ValueError(
            f"{run} was trained on {config['dataset']!r}, {data} holds {pairs.info.name!r}"
        )
    rows = [{"dataset": config["dataset"], "metric": config["metric"], **row}
            for row in evaluate_pairs(net, pairs, device)]  # fmt: skip
    path = Path(run) / f"{split}_results.csv"
    write_csv(path, rows)
    return path


def load_results(results_dir: str | Path, split: str = "test") -> pd.DataFrame:
    """All per-pair results under a results root: ``<dataset>/<metric>/<split>_results.csv``.

    One row per (dataset, metric, test pair), the columns of ``evaluate_pairs`` plus ``dataset``
    and ``metric``. λ-sweep runs (``<metric>/sweep/…``) are not included. Raises
    ``FileNotFoundError`` naming the folder when it holds no results file at all.
    """
    root = Path(results_dir)
    files = sorted(root.glob(f"*/*/{split}_results.csv"))
    if not files:
        raise FileNotFoundError(
            f"no {split}_results.csv under {root}/<dataset>/<metric>/ — run "
            "`python -m deepsim_edu experiment` (or `evaluate`) first"
        )
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def load_log(run: str | Path) -> pd.DataFrame:
    """The per-epoch training log of a run folder (``log.csv``: step, losses, val_dice, …)."""
    path = Path(run) / "log.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log (is {run} a run folder?)")
    return pd.read_csv(path)
