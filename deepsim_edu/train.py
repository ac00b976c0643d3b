"""Training loops, written out plainly: the segmentation net (DeepSim's feature extractor) and
the registration net (paper Eq. 1, ``registration.registration_loss``:
L = D(I∘Φ, J) + λ R(u), Φ = id + u, u = net(I ⊕ J)).

Every run lives in one folder (``runs.py``): ``config.json``, ``log.csv`` (one row per epoch) and
``checkpoint.pt``, all written atomically at the end of every epoch, so a killed run leaves the
last finished epoch behind and ``resume=True`` continues from it. Every micro-batch (an
optimiser step sums the gradients of ``accumulation`` of them) seeds the random number
generators from (seed, index): batch sampling, augmentation, noise and dropout are the same
whether or not a run was interrupted.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .augment import AUGMENTATIONS, add_noise, augment_batch, random_crop
from .config import RegistrationConfig, SegmentationConfig
from .data.pairs import CaseStore, PairDataset, training_pairs
from .distributed import Processes, StepShare, current, no_sync, share_step
from .evaluate import dice_per_class, evaluate_pairs, mean_dice
from .features import load_segmentation_extractor, load_vgg16
from .losses import DeepSimLoss, VGGLoss, get_loss
from .registration import registration_loss
from .runs import (
    CONFIG,
    LOG,
    VAL_PAIRS,
    checkpoint_path,
    csv_bytes,
    load_checkpoint,
    save_checkpoint,
    write_csv,
    write_json,
)
from .unet import UNet, registration_unet, segmentation_unet


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of micro-batch ``step`` of a run seeded with ``seed``."""
    return (seed * 1_000_003 + step) % 2**63


def check_device(device: str) -> str:
    """``device`` if it is ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` and usable here.

    The one device check of both training loops: a ValueError naming the device otherwise.
    """
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ValueError(
            f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return device


# ----------------------------------------------------------------------------- both loops


def _open_run(
    data: str | Path, config, kind: str, device: str, processes: Processes | None = None
) -> tuple[CaseStore, dict]:
    """The dataset of a run (checked against ``config.dataset``) and the run's config dict.

    The whole dataset is checked here, before the first step and before anything is written
    (``CaseStore.check``: one DatasetError naming every file at fault); the training and
    validation cases it read stay in memory. Under torchrun the config dict also records how a
    step is shared among the processes (``distributed.share_step``).
    """
    store = CaseStore(data)
    info = store.info
    if info.name != config.dataset:
        raise ValueError(f"config is for dataset {config.dataset!r} but {data} holds {info.name!r}")
    check_device(device)
    store.check(keep=("train", "val"))
    run_config = {**config.to_dict(), "kind": kind, "ndim": info.ndim, "classes": info.classes}
    if processes is not None and processes.distributed:
        run_config["distributed"] = share_step(config.batch_size, config.accumulation,
                                               processes).record  # fmt: skip
    return store, run_config


def _check_resumable(checkpoint: dict, config: dict, out: Path) -> None:
    # a field added since the checkpoint was written, with its default None, is no change
    old, new = checkpoint.get("config", {}), config
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        raise ValueError(
            f"{checkpoint_path(out)} was made with another config (differs in: "
            f"{', '.join(differ)}); use another output folder or resume=False"
        )


def _resume(out: Path, run_config: dict, states: dict, device: str) -> tuple[dict, int, bool]:
    """Continue the run in ``out`` if it has a checkpoint of the same config.

    ``states``: checkpoint key → object with ``load_state_dict`` (model, optimiser, ...), loaded
    in place. Returns (checkpoint, epochs done, finished) — the checkpoint holds the ``log``
    (and, for registration, ``val_pairs``); ``({"log": []}, 0, False)`` for a new run.
    """
    if not checkpoint_path(out).exists():
        return {"log": []}, 0, False
    checkpoint = load_checkpoint(checkpoint_path(out), map_location=device)
    _check_resumable(checkpoint, run_config, out)
    for key, obj in states.items():
        obj.load_state_dict(checkpoint[key])
    return checkpoint, checkpoint["epoch"], checkpoint.get("finished", False)


def _end_epoch(
    out: Path, log: list[dict], run_config: dict, states: dict, val_pairs: list[dict] | None = None,
    **progress,
) -> None:  # fmt: skip
    """After an epoch: ``checkpoint.pt`` (every state of ``states``, ``progress`` such as the
    epoch, the config, the log and the per-pair validation rows), then ``log.csv`` and
    ``val_pairs.csv`` — each written atomically."""
    checkpoint = {key: obj.state_dict() for key, obj in states.items()}
    checkpoint.update(progress, config=run_config, log=log)
    if val_pairs is not None:
        checkpoint["val_pairs"] = val_pairs
    save_checkpoint(checkpoint_path(out), checkpoint)
    write_csv(out / LOG, log)
    if val_pairs is not None:
        write_csv(out / VAL_PAIRS, val_pairs)


def _mend_log(out: Path, log: list[dict], name: str = LOG) -> None:
    """A finished run's ``log.csv`` (or ``name``) as its checkpoint holds it (rewritten only if
    it differs): a run stopped (Ctrl-C) between the checkpoint and the log of its last epoch,
    or whose log was damaged, is mended by running it again."""
    if not (out / name).is_file() or (out / name).read_bytes() != csv_bytes(log):
        write_csv(out / name, log)


def _progress_bar(epochs: int, steps_per_epoch: int, start_epoch: int, show: bool, desc: str):
    """A tqdm bar over all optimiser steps of the run, starting after the epochs already done."""
    return tqdm(total=epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
                disable=not show, desc=desc, unit="step")  # fmt: skip


def seeded(seed: int, index: int) -> torch.Generator:
    """Seed micro-batch ``index``: torch's global RNG (dropout) and the returned generator
    (sampling, augmentation, noise) both start from ``step_seed(seed, index)``."""
    torch.manual_seed(step_seed(seed, index))
    return torch.Generator().manual_seed(step_seed(seed, index))


# ----------------------------------------------------------------------------- segmentation


def sample_batch(store: CaseStore, cases: list[str], batch_size: int, generator: torch.Generator):
    """A random batch (with replacement) of images ``(B, 1, *spatial)`` and labels."""
    picks = torch.randint(len(cases), (batch_size,), generator=generator).tolist()
    images, labels = zip(*(store[cases[i]] for i in picks))
    return torch.stack(images), torch.stack(labels)


def segmentation_batch(
    store: CaseStore, cases: list[str], config: SegmentationConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A training batch: sampled, one random affine, random crop, noise. ``(B, 1, *spatial)``."""
    images, labels = sample_batch(store, cases, config.batch_size, generator)
    (images,), (labels,) = augment_batch(
        [images], [labels], AUGMENTATIONS[config.augmentation], generator
    )
    images, labels = random_crop([images, labels], config.crop, generator)
    return add_noise(images, config.noise_sigma, generator), labels


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


@torch.enable_grad()  # trains even when called under torch.no_grad()
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
    (``config.noise_sigma``, ours); an optimiser step averages the gradients of
    ``config.accumulation`` batches. After every epoch: validation loss and foreground Dice,
    the plateau LR schedule (``config.lr_patience``; None: constant lr), early stopping,
    ``log.csv``, ``checkpoint.pt``; ``config.max_steps`` ends the run after that many optimiser
    steps (the paper's brain extractor). Returns the last log row. With ``resume=True`` an existing
    checkpoint of the same config is continued (a finished run returns at once).
    """
    out, processes = Path(out), current()
    device = processes.device(device)
    processes.start(device)
    store, run_config = _open_run(data, config, "segmentation", device, processes)
    info, accumulation = store.info, config.accumulation
    share = share_step(config.batch_size, accumulation, processes)
    torch.manual_seed(config.seed)
    model = segmentation_unet(
        info.ndim, info.num_classes, config.encoder_channels, dropout=config.dropout
    ).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    states = {"model": model, "optimizer": optimiser}
    if config.lr_patience is not None:  # the paper's plateau schedule (lr ×0.1)
        states["scheduler"] = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimiser, factor=config.lr_factor, patience=config.lr_patience
        )
    done, start_epoch, finished = (
        _resume(out, run_config, states, device) if resume else ({"log": []}, 0, False)
    )
    log = done["log"]
    if finished:
        if processes.main:
            _mend_log(out, log)
        return log[-1]
    if processes.main:
        write_json(out / CONFIG, run_config)
    forward = processes.wrap(model)  # DistributedDataParallel under torchrun

    cases = info.splits["train"]
    steps_per_epoch = config.steps_per_epoch or math.ceil(
        len(cases) / (config.batch_size * accumulation)
    )
    epochs = config.epochs
    if config.max_steps is not None:  # the paper's brain extractor: a step budget
        epochs = min(epochs, math.ceil(config.max_steps / steps_per_epoch))
    bar = _progress_bar(epochs, steps_per_epoch, start_epoch, progress and processes.main,
                        f"segmentation {info.name}")  # fmt: skip
    for epoch in range(start_epoch, epochs):
        model.train()
        started, losses = time.perf_counter(), []
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            if config.max_steps is not None and step >= config.max_steps:
                break
            optimiser.zero_grad(set_to_none=True)
            for i, micro in enumerate(share.micro_batches):  # this process's share of the step
                generator = seeded(config.seed, step * accumulation + micro)
                images, labels = share.keep(segmentation_batch(store, cases, config, generator))
                with no_sync(forward, last=i == len(share.micro_batches) - 1):
                    loss = F.cross_entropy(forward(images.to(device)), labels[:, 0].to(device))
                    (loss / share.divisor).backward()  # the mean gradient of the micro-batches
                losses.append(loss.item())
            optimiser.step()
            bar.update()
        row = {
            "epoch": epoch + 1,
            "step": min((epoch + 1) * steps_per_epoch, config.max_steps or math.inf),
            **processes.mean({"train_loss": sum(losses) / len(losses)}),
            **evaluate_segmentation(model, store, "val", device),
            "seconds": time.perf_counter() - started,
        }
        log.append(row)
        if "scheduler" in states:
            states["scheduler"].step(row["val_loss"])
        finished = _no_improvement(log, config.early_stopping)
        bar.set_postfix(val_dice=f"{row['val_dice']:.3f}")
        if processes.main:
            _end_epoch(out, log, run_config, states, epoch=epoch + 1,
                       finished=finished or epoch + 1 == epochs)  # fmt: skip
        processes.barrier()
        if finished:
            break
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
    """The similarity D of ``config.metric``; DeepSim loads its extractor, VGG its weights.

    NCC and NCC-sup get ``config.ncc_window`` and ``config.ncc_border``; VGG is fed its input
    in the convention ``config.vgg_input``.
    """
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
        # vgg None: features.vgg_weights_path(), the file data_scripts writes
        return VGGLoss(load_vgg16(vgg, device=device, convention=config.vgg_input))
    if config.metric in ("ncc", "ncc-sup"):
        return get_loss(config.metric, window=config.ncc_window, border=config.ncc_border)
    return get_loss(config.metric)


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


def registration_batch(
    store: CaseStore, pairs: list[tuple[str, str]], config: RegistrationConfig, generator
) -> list[Tensor]:
    """A training batch of pairs: sampled, one random affine for all, random crop.

    Returns moving, fixed ``(B, 1, *spatial)`` and their integer labels, on the CPU.
    """
    moving, fixed, ml, fl = sample_pairs(store, pairs, config.batch_size, generator)
    (moving, fixed), (ml, fl) = augment_batch(
        [moving, fixed], [ml, fl], AUGMENTATIONS[config.augmentation], generator
    )
    return random_crop([moving, fixed, ml, fl], config.crop, generator)


def registration_gradients(
    forward, store: CaseStore, pairs: list[tuple[str, str]], config: RegistrationConfig,
    step: int, share: StepShare, similarity, device: str, scaler=None, amp: bool = False,
):  # fmt: skip
    """Accumulate the gradients of optimiser step ``step`` into ``forward``'s parameters.

    This process's micro-batches of the step (``share``; one process: all ``accumulation`` of
    them), each drawn by its seeded generator, Eq. 1 (``registration_loss``) divided by
    ``share.divisor`` and backpropagated (through ``scaler`` when given); under DDP the
    gradients are averaged over the processes at the last micro-batch. Yields each
    micro-batch's ``LossParts``.
    """
    for i, micro in enumerate(share.micro_batches):
        generator = seeded(config.seed, step * config.accumulation + micro)
        moving, fixed, ml, fl = _to(
            device, *share.keep(registration_batch(store, pairs, config, generator))
        )
        with no_sync(forward, last=i == len(share.micro_batches) - 1):
            parts = registration_loss(
                forward, moving, fixed, similarity=similarity, lam=config.lam, moving_labels=ml,
                fixed_labels=fl, num_classes=store.info.num_classes, amp=amp,
            )  # fmt: skip
            loss = parts.loss / share.divisor
            (scaler.scale(loss) if scaler is not None else loss).backward()
        yield parts


def _no_improvement(log: list[dict], patience: int | None) -> bool:
    """Early stopping: ``patience`` epochs have passed since the lowest validation loss."""
    best = min(range(len(log)), key=lambda i: log[i]["val_loss"])
    return patience is not None and len(log) - 1 - best >= patience


@torch.no_grad()
def validate_registration(
    net, similarity, pairs: PairDataset, lam: float, device: str
) -> tuple[dict, list[dict]]:
    """Validation: the means over the pairs, and one row per pair.

    One forward pass per pair (``evaluate.evaluate_pairs`` with the similarity and λ). The
    means are the loss parts, foreground Dice and folding fraction (``val_*``, a ``log.csv``
    row); a pair's row holds its ``moving``/``fixed`` ids, ``dice``, ``dice_before`` and
    ``folding_fraction`` (``val_pairs.csv``: the per-pair learning curves of claim 3).
    """
    rows = evaluate_pairs(net, pairs, device, similarity=similarity, lam=lam)
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    summary = {
        "val_loss": mean("loss"),
        "val_similarity": mean("similarity"),
        "val_regulariser": mean("regulariser"),
        "val_dice": mean("dice"),
        "val_folding": mean("folding_fraction"),
    }
    keep = ("moving", "fixed", "dice", "dice_before", "folding_fraction")
    return summary, [{k: r[k] for k in keep} for r in rows]


def _pair_rows(epoch: int, step: int, rows: list[dict]) -> list[dict]:
    """Per-pair validation rows of one validation, prefixed with its epoch and step."""
    return [{"epoch": epoch, "step": step, **r} for r in rows]


@torch.enable_grad()  # trains even when called under torch.no_grad()
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
    out, processes = Path(out), current()
    device = processes.device(device)
    processes.start(device)
    store, run_config = _open_run(data, config, "registration", device, processes)
    info, accumulation = store.info, config.accumulation
    share = share_step(config.batch_size, accumulation, processes)
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
    states = {"model": net, "optimizer": optimiser, "scheduler": scheduler, "scaler": scaler}
    done, start_epoch, finished = (
        _resume(out, run_config, states, device) if resume else ({"log": []}, 0, False)
    )
    log, pair_log = done["log"], done.get("val_pairs", [])
    if finished:
        if processes.main:
            _mend_log(out, log)
            if pair_log:
                _mend_log(out, pair_log, VAL_PAIRS)
        return log
    if processes.main:
        write_json(out / CONFIG, run_config)
    forward = processes.wrap(net)  # DistributedDataParallel under torchrun

    val_pairs = PairDataset(store, "val", limit=config.max_val_pairs)
    if start_epoch == 0:  # step 0: the untrained net, where every learning curve starts
        pair_log = _pair_rows(0, 0, validate_registration(
            net, similarity, val_pairs, config.lam, device)[1])  # fmt: skip
    n_train = len(training_pairs(info, "train", 0, config.seed))
    steps_per_epoch = config.steps_per_epoch or math.ceil(
        n_train / (config.batch_size * accumulation)
    )
    bar = _progress_bar(config.epochs, steps_per_epoch, start_epoch, progress and processes.main,
                        f"{info.name} {config.metric}")  # fmt: skip
    for epoch in range(start_epoch, config.epochs):
        net.train()
        pairs = training_pairs(info, "train", epoch, config.seed)  # neighbours redrawn per epoch
        started, sums = time.perf_counter(), {"loss": 0.0, "similarity": 0.0, "regulariser": 0.0}
        grad_norm_max = 0.0  # the largest ‖∂L/∂θ‖₂ of the epoch: a divergence shows here
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            optimiser.zero_grad(set_to_none=True)
            for parts in registration_gradients(forward, store, pairs, config, step, share,
                                                similarity, device, scaler, use_amp):  # fmt: skip
                for key in sums:  # loss, similarity, regulariser: epoch means
                    sums[key] += getattr(parts, key).item() / (steps_per_epoch * share.divisor)
            scaler.unscale_(optimiser)  # the true gradient (undo the fp16 loss scaling)
            grads = [p.grad for p in net.parameters() if p.grad is not None]
            grad_norm_max = max(grad_norm_max, torch.nn.utils.get_total_norm(grads).item())
            scaler.step(optimiser)
            scaler.update()
            bar.update()
        validation, per_pair = validate_registration(net, similarity, val_pairs, config.lam, device)
        row = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * steps_per_epoch,
            **processes.mean(sums),
            "grad_norm_max": grad_norm_max,
            **validation,
            "lr": optimiser.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        log.append(row)
        pair_log += _pair_rows(row["epoch"], row["step"], per_pair)
        scheduler.step(row["val_loss"])
        finished = _no_improvement(log, config.early_stopping)
        bar.set_postfix(val_dice=f"{row['val_dice']:.3f}", lr=f"{row['lr']:.0e}")
        if processes.main:
            _end_epoch(out, log, run_config, states, pair_log, epoch=epoch + 1,
                       finished=finished or epoch + 1 == config.epochs)  # fmt: skip
        processes.barrier()
        if finished:
            break
    bar.close()
    return log
