"""Training loops, written out plainly: the segmentation net (DeepSim's feature extractor) and
the registration net (paper Eq. 1: L = D(I∘Φ, J) + λ R(u), Φ = id + u, u = net(I ⊕ J)).

Every run lives in one folder (``runs.py``): ``config.json``, ``log.csv`` (one row per epoch) and
``checkpoint.pt``, all written atomically at the end of every epoch, so a killed run leaves the
last finished epoch behind and ``resume=True`` continues from it. Each
optimiser step seeds the random number generators from (seed, step): batch sampling,
augmentation, noise and dropout are the same whether or not a run was interrupted.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .augment import AUGMENTATIONS, add_noise, augment_batch, random_crop
from .config import RegistrationConfig, SegmentationConfig
from .data.pairs import CaseStore, PairDataset, training_pairs
from .evaluate import dice_per_class, evaluate_pairs, mean_dice
from .features import DEFAULT_VGG_PATH, load_segmentation_extractor, load_vgg16
from .losses import DeepSimLoss, VGGLoss, diffusion_regulariser, get_loss, one_hot
from .runs import load_checkpoint, save_checkpoint, write_csv, write_json
from .transform import warp
from .unet import UNet, registration_unet, segmentation_unet


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
    steps_per_epoch = config.steps_per_epoch or math.ceil(len(cases) / config.batch_size)
    total = config.epochs * steps_per_epoch
    bar = tqdm(
        total=total,
        initial=start_epoch * steps_per_epoch,
        disable=not progress,
        desc=f"segmentation {info.name}",
        unit="step",
    )
    for epoch in range(start_epoch, config.epochs):
        model.train()
        started, losses = time.perf_counter(), []
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            torch.manual_seed(step_seed(config.seed, step))  # sampling, augmentation, dropout
            generator = torch.Generator().manual_seed(step_seed(config.seed, step))
            images, labels = sample_batch(store, cases, config.batch_size, generator)
            (images,), (labels,) = augment_batch([images], [labels], augmentation, generator)
            images, labels = random_crop([images, labels], config.crop, generator)
            images = add_noise(images, config.noise_sigma, generator)
            logits = model(images.to(device))
            loss = F.cross_entropy(logits, labels[:, 0].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            bar.update()
        row = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * steps_per_epoch,
            "train_loss": sum(losses) / len(losses),
            **evaluate_segmentation(model, store, "val", device),
            "seconds": time.perf_counter() - started,
        }
        log.append(row)
        bar.set_postfix(val_dice=f"{row['val_dice']:.3f}")
        save_checkpoint(
            out / "checkpoint.pt",
            {
                "model": model.state_dict(),
                "optimizer": optimiser.state_dict(),
                "epoch": epoch + 1,
                "config": run_config,
                "log": log,
            },
        )
        write_csv(out / "log.csv", log)
    bar.close()
    return log[-1] if log else {}


# ----------------------------------------------------------------------------- registration


def build_similarity(
    config: RegistrationConfig,
    ndim: int,
    extractor: str | Path | None,
    vgg: str | Path | None,
    device: str,
) -> torch.nn.Module:
    """The similarity D of ``config.metric``; DeepSim loads its extractor, VGG its weights."""
    if config.metric == "deepsim":
        if extractor is None:
            raise ValueError(
                "a DeepSim run needs the checkpoint of its feature extractor (train-seg)"
            )
        net = load_segmentation_extractor(
            extractor, dataset=config.dataset, ndim=ndim, device=device
        )
        return DeepSimLoss(net, levels=config.deepsim_levels)
    if config.metric == "vgg":
        return VGGLoss(load_vgg16(vgg or DEFAULT_VGG_PATH, device=device))
    if config.metric in ("ncc", "ncc-sup"):
        return get_loss(config.metric, window=config.ncc_window)
    return get_loss(config.metric)


def registration_loss(
    net, similarity, moving, fixed, moving_labels, fixed_labels, lam, num_classes, amp=False
):
    """Eq. 1: L = D(I∘Φ, J) + λ R(u), with u = net(I ⊕ J). Returns (L, D, R, u).

    ``amp``: run the U-Net in float16 (CUDA); warp, similarity and regulariser always run in
    float32 — NCC's local variances are differences of large sums that float16 cannot hold.
    """
    with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        u = net(torch.cat([moving, fixed], dim=1))  # (B, ndim, *spatial)
    u = u.float()
    warped = warp(moving, u)
    if getattr(similarity, "needs_labels", False):  # NCC-sup: linearly warped one-hot labels
        labels = (warp(one_hot(moving_labels, num_classes), u), one_hot(fixed_labels, num_classes))
        d = similarity(warped, fixed, *labels)
    else:
        d = similarity(warped, fixed)
    r = diffusion_regulariser(u)
    return d + lam * r, d, r, u


def _to(device: str, *tensors: Tensor) -> list[Tensor]:
    """Move a batch to ``device``; on CUDA through pinned memory without blocking."""
    if device == "cpu":
        return list(tensors)
    return [t.pin_memory().to(device, non_blocking=True) for t in tensors]


def sample_pairs(store: CaseStore, pairs: list[tuple[str, str]], batch_size: int, generator):
    """A random batch of pairs: moving, fixed ``(B, 1, *spatial)`` and their labels."""
    picks = torch.randint(len(pairs), (batch_size,), generator=generator).tolist()
    items = [store[pairs[i][0]] + store[pairs[i][1]] for i in picks]
    moving, moving_labels, fixed, fixed_labels = (torch.stack(x) for x in zip(*items))
    return moving, fixed, moving_labels, fixed_labels


@torch.no_grad()
def validate_registration(net, similarity, pairs: PairDataset, lam: float, device: str) -> dict:
    """Validation loss parts, mean foreground Dice and folding fraction over the pairs."""
    net.eval()
    losses, parts_d, parts_r = [], [], []
    for item in pairs:
        moving, fixed, ml, fl = _to(
            device,
            item["moving"][None],
            item["fixed"][None],
            item["moving_labels"][None],
            item["fixed_labels"][None],
        )
        loss, d, r, _ = registration_loss(
            net, similarity, moving, fixed, ml, fl, lam, pairs.info.num_classes
        )
        losses.append(loss.item()), parts_d.append(d.item()), parts_r.append(r.item())
    rows = evaluate_pairs(net, pairs, device)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "val_loss": mean(losses),
        "val_similarity": mean(parts_d),
        "val_regulariser": mean(parts_r),
        "val_dice": mean([r["dice"] for r in rows]),
        "val_folding": mean([r["folding_fraction"] for r in rows]),
    }


def train_registration(
    data: str | Path,
    out: str | Path,
    config: RegistrationConfig,
    device: str = "cpu",
    resume: bool = True,
    extractor: str | Path | None = None,
    vgg: str | Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train a registration U-Net with Eq. 1 on the dataset in ``data``; returns the epoch log.

    Plain loop: sample a batch of training pairs (neighbours redrawn every epoch), one random
    affine for the whole batch, optional random crop, L = D + λR, backward, an Adam step every
    ``accumulation`` batches. After each epoch: validation (loss parts, Dice, folding), the
    plateau LR schedule, early stopping, ``log.csv`` and an atomic ``checkpoint.pt``. On CUDA:
    mixed precision (fp16 autocast + gradient scaling), cudnn benchmark, pinned memory.
    """
    out = Path(out)
    store = CaseStore(data)
    info = store.info
    if info.name != config.dataset:
        raise ValueError(f"config is for dataset {config.dataset!r} but {data} holds {info.name!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    run_config = {
        **config.to_dict(),
        "kind": "registration",
        "ndim": info.ndim,
        "classes": info.classes,
    }
    similarity = build_similarity(config, info.ndim, extractor, vgg, device)
    use_amp = config.amp and device.startswith("cuda")
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(config.seed)
    net = registration_unet(info.ndim, config.encoder_channels, dropout=config.dropout).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, factor=config.lr_factor, patience=config.lr_patience
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    log: list[dict] = []
    start_epoch, finished = 0, False
    if resume and (out / "checkpoint.pt").exists():
        checkpoint = load_checkpoint(out / "checkpoint.pt", map_location=device)
        _check_resumable(checkpoint, run_config, out)
        net.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        log, start_epoch, finished = checkpoint["log"], checkpoint["epoch"], checkpoint["finished"]
    if finished:
        return log
    write_json(out / "config.json", run_config)

    augmentation = AUGMENTATIONS[config.augmentation]
    val_pairs = PairDataset(store, "val")
    n_train = len(training_pairs(info, "train", 0, config.seed))
    steps_per_epoch = config.steps_per_epoch or math.ceil(
        n_train / (config.batch_size * config.accumulation)
    )
    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        initial=start_epoch * steps_per_epoch,
        disable=not progress,
        desc=f"{info.name} {config.metric}",
        unit="step",
    )
    for epoch in range(start_epoch, config.epochs):
        net.train()
        pairs = training_pairs(info, "train", epoch, config.seed)  # neighbours redrawn per epoch
        started, sums = time.perf_counter(), {"loss": 0.0, "similarity": 0.0, "regulariser": 0.0}
        grad_norm_max = 0.0  # the largest ‖∂L/∂θ‖₂ of the epoch: a divergence shows here
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            optimiser.zero_grad(set_to_none=True)
            for micro in range(config.accumulation):
                seed = step_seed(config.seed, step * config.accumulation + micro)
                torch.manual_seed(seed)  # dropout
                generator = torch.Generator().manual_seed(seed)
                moving, fixed, ml, fl = sample_pairs(store, pairs, config.batch_size, generator)
                (moving, fixed), (ml, fl) = augment_batch(
                    [moving, fixed], [ml, fl], augmentation, generator
                )
                moving, fixed, ml, fl = _to(
                    device, *random_crop([moving, fixed, ml, fl], config.crop, generator)
                )
                loss, d, r, _ = registration_loss(
                    net, similarity, moving, fixed, ml, fl, config.lam, info.num_classes, use_amp
                )
                scaler.scale(loss / config.accumulation).backward()
                for key, value in zip(sums, (loss, d, r)):
                    sums[key] += value.item() / (steps_per_epoch * config.accumulation)
            scaler.unscale_(optimiser)  # the true gradient (undo the fp16 loss scaling)
            grads = [p.grad for p in net.parameters() if p.grad is not None]
            grad_norm_max = max(grad_norm_max, torch.nn.utils.get_total_norm(grads).item())
            scaler.step(optimiser)
            scaler.update()
            bar.update()
        row = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * steps_per_epoch,
            **sums,
            "grad_norm_max": grad_norm_max,
            **validate_registration(net, similarity, val_pairs, config.lam, device),
            "lr": optimiser.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        log.append(row)
        scheduler.step(row["val_loss"])
        best = min(range(len(log)), key=lambda i: log[i]["val_loss"])
        finished = (
            config.early_stopping is not None and len(log) - 1 - best >= config.early_stopping
        )
        bar.set_postfix(val_dice=f"{row['val_dice']:.3f}", lr=f"{row['lr']:.0e}")
        save_checkpoint(
            out / "checkpoint.pt",
            {
                "model": net.state_dict(),
                "optimizer": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "finished": finished or epoch + 1 == config.epochs,
                "config": run_config,
                "log": log,
            },
        )
        write_csv(out / "log.csv", log)
        if finished:
            break
    bar.close()
    return log
