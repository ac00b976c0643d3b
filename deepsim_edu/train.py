"""Training loops, written out plainly: the segmentation net (DeepSim's feature extractor).

Every run lives in one folder (``runs.py``): ``config.json``, ``log.csv`` (one row per epoch) and
``checkpoint.pt``, all written atomically at the end of every epoch, so a killed run leaves the
last finished epoch behind and ``resume=True`` continues from it. Each
optimiser step seeds the random number generators from (seed, step): batch sampling,
augmentation, noise and dropout are the same whether or not a run was interrupted.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .augment import AUGMENTATIONS, add_noise, augment_batch
from .config import SegmentationConfig
from .data.pairs import CaseStore
from .evaluate import dice_per_class, mean_dice
from .runs import load_checkpoint, save_checkpoint, write_csv, write_json
from .unet import UNet, segmentation_unet


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of optimiser step ``step`` of a run seeded with ``seed``."""
    return (seed * 1_000_003 + step) % 2**63


# ----------------------------------------------------------------------------- segmentation


def sample_batch(store: CaseStore, cases: list[str], batch_size: int, generator: torch.Generator):
    """A random batch (with replacement) of images ``(B, 1, *spatial)`` and labels."""
    picks = torch.randint(len(cases), (batch_size,), generator=generator).tolist()
    images, labels = zip(*(store[cases[i]] for i in picks))
    return torch.stack(images), torch.stack(labels)


@torch.no_grad()
def evaluate_segmentation(model: UNet, store: CaseStore, split: str, device: str) -> dict:
    """Mean cross-entropy and mean foreground Dice of ``model`` over the cases of ``split``."""
    model.eval()
    losses, per_class = [], []
    for case in store.info.splits[split]:
        image, labels = store[case]
        logits = model(image[None].to(device))
        losses.append(F.cross_entropy(logits, labels.to(device)).item())
        per_class.append(dice_per_class(logits.argmax(1).cpu(), labels, store.info.num_classes))
    dice = mean_dice(torch.cat(per_class))
    return {"val_loss": sum(losses) / len(losses), "val_dice": dice.mean().item()}


def _check_resumable(checkpoint: dict, config: dict, out: Path) -> None:
    if checkpoint.get("config") != config:
        old, new = checkpoint.get("config", {}), config
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(
            f"{out / 'checkpoint.pt'} was made with another config (differs in: "
            f"{', '.join(differ)}); use another output folder or resume=False"
        )


def train_segmentation(
    data: str | Path,
    out: str | Path,
    config: SegmentationConfig,
    device: str = "cpu",
    resume: bool = True,
    progress: bool = True,
) -> dict:
    """Train the segmentation U-Net on the training split of the dataset in ``data``.

    Cross-entropy, Adam, one random affine per batch (the paper) plus noise augmentation
    (``config.noise_sigma``, ours). After every epoch: validation loss and foreground Dice,
    ``log.csv``, ``checkpoint.pt``. Returns the last log row. With ``resume=True`` an existing
    checkpoint of the same config is continued (a finished run returns at once).
    """
    out = Path(out)
    store = CaseStore(data)
    info = store.info
    if info.name != config.dataset:
        raise ValueError(f"config is for dataset {config.dataset!r} but {data} holds {info.name!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    run_config = {
        **config.to_dict(),
        "kind": "segmentation",
        "ndim": info.ndim,
        "classes": info.classes,
    }

    torch.manual_seed(config.seed)
    model = segmentation_unet(
        info.ndim, info.num_classes, config.encoder_channels, dropout=config.dropout
    )
    model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    log: list[dict] = []
    start_epoch = 0
    if resume and (out / "checkpoint.pt").exists():
        checkpoint = load_checkpoint(out / "checkpoint.pt", map_location=device)
        _check_resumable(checkpoint, run_config, out)
        model.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimizer"])
        log, start_epoch = checkpoint["log"], checkpoint["epoch"]
    write_json(out / "config.json", run_config)

    augmentation = AUGMENTATIONS[config.augmentation]
    cases = info.splits["train"]
    total = config.epochs * config.steps_per_epoch
    bar = tqdm(total=total, initial=start_epoch * config.steps_per_epoch, disable=not progress,
               desc=f"segmentation {info.name}", unit="step")  # fmt: skip
    for epoch in range(start_epoch, config.epochs):
        model.train()
        started, losses = time.perf_counter(), []
        for step in range(epoch * config.steps_per_epoch, (epoch + 1) * config.steps_per_epoch):
            torch.manual_seed(step_seed(config.seed, step))  # sampling, augmentation, dropout
            generator = torch.Generator().manual_seed(step_seed(config.seed, step))
            images, labels = sample_batch(store, cases, config.batch_size, generator)
            (images,), (labels,) = augment_batch([images], [labels], augmentation, generator)
            images = add_noise(images, config.noise_sigma, generator)
            logits = model(images.to(device))
            loss = F.cross_entropy(logits, labels[:, 0].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            bar.update()
        row = {"epoch": epoch + 1, "step": (epoch + 1) * config.steps_per_epoch,
               "train_loss": sum(losses) / len(losses),
               **evaluate_segmentation(model, store, "val", device),
               "seconds": time.perf_counter() - started}  # fmt: skip
        log.append(row)
        bar.set_postfix(val_dice=f"{row['val_dice']:.3f}")
        save_checkpoint(out / "checkpoint.pt", {
            "model": model.state_dict(), "optimizer": optimiser.state_dict(),
            "epoch": epoch + 1, "config": run_config, "log": log,
        })  # fmt: skip
        write_csv(out / "log.csv", log)
    bar.close()
    return log[-1] if log else {}
