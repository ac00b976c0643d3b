"""Instance optimisation: register one pair by optimising its displacement field itself.

A registration net (``train.py``) learns a function u = net(I ⊕ J) that makes paper Eq. 1 small
on average over the training pairs; here the unknown is the field of one pair,

    u* = argmin_u  L(u) = D(I∘Φ, J) + λ R(u),    Φ = id + u                        (Eq. 1)

with I the moving and J the fixed image ``(1, 1, *spatial)``, u ``(1, ndim, *spatial)`` in
voxels (channel k along spatial axis k: the networks' output convention, ``transform.py``),
D any similarity of ``losses.py`` (MSE, NCC, NCC-sup, VGG, DeepSim with a trained extractor) and
R the diffusion regulariser mean |∇u|² / ndim (``losses.diffusion_regulariser``). It is the
classical, per-pair ("instance") use of a similarity, and the outlook of the DeepSim paper: a
learned semantic similarity does not need a registration network to be useful.

**Same λ as training.** ``metric_similarity`` builds D with ``train.build_similarity`` from the
``config.registration_config`` of a dataset × metric (or a run's own config), so λ, the NCC
window and border, DeepSim's levels and VGG's input convention are those the networks were
trained with, and the last level below minimises exactly the per-pair loss of training.

**Coarse to fine.** Level k = K−1, …, 0 (0 = full resolution) works on the images resampled to
n_k = ⌊n_0 / 2^k⌋ voxels per axis (area averaging). Its field, in level-k voxels, is

    u_k = S_k(u_init) + δ_k,

with u_init the starting field (0: the identity, or a network's prediction) resampled to the
level (S_k: area averaging, values × n_k / n_0 per axis), and the correction δ_k is what Adam
optimises, for ``iterations[k]`` steps of Eq. 1 on the level's images. Going one level finer,
δ is upsampled ×2 in resolution *and* in value (linear interpolation with ``align_corners=
False``, which lines the voxel centres up with the area averaging; a constant shift of c coarse
voxels becomes 2c fine voxels). R is nearly scale-free — halving both the field's values and the
grid spacing leaves ∂u/∂x unchanged — so λ weighs D and R alike at every level. Starting from a
field and running no iteration returns that field exactly (δ = 0).

**DeepSim and VGG** compare the features of I∘Φ with those of J; J's are computed once per level
(the fixed image does not change), which saves one extractor pass per iteration. A DeepSim
extractor (a segmentation U-Net with L stages) needs every level's size divisible by 2^L, which
limits the number of levels (``max_levels``).

``optimise`` returns an ``InstanceResult``: the displacement u ``(1, ndim, *spatial)``, the warped
image I∘Φ ``(1, 1, *spatial)`` and a log with one row per iteration (the loss parts of Eq. 1
before that step; the last row is the returned field at full resolution).

``compare_methods`` registers test pairs by the network, by ``optimise`` from the identity and by
``optimise`` from the network's prediction, and scores them (Dice, folding, seconds);
``method_table`` summarises those rows per dataset × method × metric with the one-sided
Wilcoxon test of DeepSim against each other metric (``stats.compare_metrics``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .config import RegistrationConfig, check_lambda, check_seed, registration_config
from .evaluate import dice_or_nan
from .losses import (
    DeepSimLoss,
    FeatureSimilarity,
    cosine_similarity_map,
    diffusion_regulariser,
    one_hot,
)
from .registration import register
from .stats import compare_metrics
from .train import build_similarity
from .transform import folding_fraction, warp
from .unet import UNet

MIN_LEVEL_SIZE = 8  # the coarsest level keeps at least this many voxels per axis
DEFAULT_ITERATIONS = 100  # per level
DEFAULT_LR = 0.1  # Adam's step, in voxels of the level (≈ the largest change per iteration)

# ----------------------------------------------------------------------------- the similarity


def metric_similarity(
    dataset: str, metric: str, ndim: int, *, preset: str = "default",
    config: RegistrationConfig | dict | None = None, extractor: str | Path | UNet | None = None,
    vgg: str | Path | None = None, device: str = "cpu", **overrides,
) -> tuple[nn.Module, float]:  # fmt: skip
    """D and λ of Eq. 1 for ``dataset`` × ``metric``, as a registration run of ``preset`` has them.

    ``config``: a run's config instead of the preset (a ``RegistrationConfig`` or the dict of a
    run's ``config.json`` / checkpoint); ``overrides`` replace single fields (e.g. ``lam=0.5``).
    D comes from ``train.build_similarity``: DeepSim needs ``extractor``, the checkpoint of the
    dataset's trained segmentation net (``experiment.feature_extractor``) or that net itself;
    VGG reads ``vgg`` (None: ``features.vgg_weights_path()``). Unknown metrics, datasets or
    presets are ValueErrors (``config.registration_config``).
    """
    if config is None:
        config = registration_config(dataset, metric, preset, **overrides)
    else:
        if isinstance(config, dict):
            names = {f.name for f in fields(RegistrationConfig)}
            config = RegistrationConfig(**{
                k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in names
            })  # fmt: skip
        if (config.dataset, config.metric) != (dataset, metric):
            raise ValueError(
                f"config is for {config.dataset}/{config.metric}, not {dataset}/{metric}"
            )
        config = replace(config, **overrides)
    if config.metric == "deepsim" and isinstance(extractor, UNet):
        if extractor.ndim != ndim:
            raise ValueError(f"the feature extractor is {extractor.ndim}D, the images {ndim}D")
        return DeepSimLoss(extractor.to(device).eval(), levels=config.deepsim_levels), config.lam
    return build_similarity(config, ndim, extractor, vgg, device), config.lam


def _size_factor(similarity: nn.Module) -> int:
    """What every level's size must be divisible by: 2^L for a DeepSim U-Net of L stages."""
    extractor = getattr(similarity, "extractor", None)
    return 2 ** len(extractor.encoder) if isinstance(extractor, UNet) else 1


def _target(
    similarity: nn.Module, fixed: Tensor, fixed_one_hot: Tensor | None
) -> Callable[[Tensor, Tensor | None], Tensor]:
    """D(·, J) of one level as a function of (warped, warped one-hot labels).

    For a feature similarity (DeepSim, VGG) J's features F_l(J) are computed here once:
    D(I∘Φ, J) = 1 − 1/L Σ_l mean_p cos(F_l(I∘Φ)_p, F_l(J)_p), the formula of
    ``losses.FeatureSimilarity`` with one extractor pass per call instead of two.
    """
    if isinstance(similarity, FeatureSimilarity):
        similarity.extractor.eval()
        with torch.no_grad():
            target = similarity.features(fixed)

        def feature_loss(warped: Tensor, _labels: Tensor | None) -> Tensor:
            found = similarity.features(warped)
            cosines = [cosine_similarity_map(found[level], target[level], similarity.eps).mean()
                       for level in similarity.levels]  # fmt: skip
            return 1.0 - sum(cosines) / len(cosines)

        return feature_loss
    if getattr(similarity, "needs_labels", False):
        return lambda warped, labels: similarity(warped, fixed, labels, fixed_one_hot)
    return lambda warped, _labels: similarity(warped, fixed)


# ----------------------------------------------------------------------------- the pyramid


def level_shapes(spatial: Sequence[int], levels: int) -> list[tuple[int, ...]]:
    """The grid of every level, coarse to fine: ``[(⌊n / 2^(K−1)⌋, …), …, tuple(spatial)]``."""
    return [tuple(n // 2**k for n in spatial) for k in reversed(range(levels))]


def max_levels(spatial: Sequence[int], similarity: nn.Module | None = None, limit: int = 3) -> int:
    """The most levels (at most ``limit``) with every axis ≥ ``MIN_LEVEL_SIZE`` at the coarsest
    level and, for a DeepSim extractor of L stages, every level's size divisible by 2^L."""
    factor = 1 if similarity is None else _size_factor(similarity)
    levels = 0
    for k in range(limit):
        shape = [n // 2**k for n in spatial]
        if min(shape) < MIN_LEVEL_SIZE or any(n % factor for n in shape):
            break
        levels = k + 1
    return levels


def resample_image(image: Tensor, shape: Sequence[int]) -> Tensor:
    """``(B, C, *spatial)`` → ``(B, C, *shape)`` by area averaging (unchanged at its own size)."""
    if tuple(image.shape[2:]) == tuple(shape):
        return image
    return F.interpolate(image, size=tuple(shape), mode="area")


def resample_field(u: Tensor, shape: Sequence[int]) -> Tensor:
    """A displacement ``(B, ndim, *spatial)`` in voxels on another grid ``(B, ndim, *shape)``.

    Coarser: area averaging; finer: linear interpolation (``align_corners=False``: voxel i of a
    grid of n voxels spans [i, i + 1) · (length / n), so centres line up with the averaging).
    Channel k is multiplied by shape_k / n_k, the voxel-size ratio: a field of constant c voxels
    at half resolution becomes 2c voxels at full resolution.
    """
    old, shape = tuple(u.shape[2:]), tuple(shape)
    if old == shape:
        return u
    if all(new <= n for new, n in zip(shape, old, strict=True)):
        resampled = F.interpolate(u, size=shape, mode="area")
    else:
        mode = "bilinear" if len(shape) == 2 else "trilinear"
        resampled = F.interpolate(u, size=shape, mode=mode, align_corners=False)
    scale = torch.tensor([new / n for new, n in zip(shape, old, strict=True)], dtype=u.dtype,
                         device=u.device)  # fmt: skip
    return resampled * scale.view(1, -1, *[1] * len(shape))


# ----------------------------------------------------------------------------- checks


def _check_image(name: str, x: Tensor) -> None:
    if x.dim() not in (4, 5) or x.shape[:2] != (1, 1):
        raise ValueError(
            f"{name} must be one image (1, 1, H, W) or (1, 1, D, H, W), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point image, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")


def _check_pair(moving: Tensor, fixed: Tensor) -> int:
    _check_image("moving", moving)
    _check_image("fixed", fixed)
    if moving.shape != fixed.shape:
        raise ValueError(
            f"moving and fixed must have the same shape, got {tuple(moving.shape)} and "
            f"{tuple(fixed.shape)}"
        )
    return moving.dim() - 2


def _check_labels(name: str, labels: Tensor, like: Tensor, num_classes: int) -> None:
    if labels.shape != like.shape or labels.is_floating_point():
        raise ValueError(
            f"{name} must be an integer label map of the images' shape {tuple(like.shape)}, "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{name} must lie in 0..{num_classes - 1}, found "
                         f"{int(labels.min())}..{int(labels.max())}")  # fmt: skip


def _initial_field(initial: Tensor | nn.Module | None, moving: Tensor, fixed: Tensor) -> Tensor:
    """u_init ``(1, ndim, *spatial)``: zeros, the given field, or a network's prediction."""
    ndim = moving.dim() - 2
    if initial is None:
        return moving.new_zeros(1, ndim, *moving.shape[2:])
    if isinstance(initial, nn.Module):
        was_training = initial.training
        initial.eval()
        with torch.no_grad():
            u, _ = register(initial, moving, fixed)
        initial.train(was_training)
        return u.detach()
    if initial.shape != (1, ndim, *moving.shape[2:]):
        raise ValueError(
            f"initial displacement must be (1, {ndim}, *spatial) = "
            f"{(1, ndim, *moving.shape[2:])}, got {tuple(initial.shape)}"
        )
    if not initial.is_floating_point() or not torch.isfinite(initial).all():
        raise ValueError("initial displacement must be floating point and finite (no NaN/inf)")
    return initial.detach().to(moving.dtype)


def _iterations(iterations: int | Sequence[int], levels: int) -> list[int]:
    counts = [iterations] * levels if isinstance(iterations, int) else list(iterations)
    if len(counts) != levels:
        raise ValueError(
            f"iterations must be one count or one per level ({levels}, coarse to fine), got "
            f"{len(counts)}: {counts}"
        )
    for n in counts:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"iterations must be whole numbers >= 0, got {counts}")
    return counts


def _check_levels(levels: int | None, spatial: Sequence[int], similarity: nn.Module) -> int:
    most = max_levels(spatial, similarity, limit=max(levels or 3, 3))
    if levels is None:
        if most == 0:
            raise ValueError(
                f"images of size {tuple(spatial)} are too small for {type(similarity).__name__}"
                f" (every axis ≥ {MIN_LEVEL_SIZE}, divisible by {_size_factor(similarity)})"
            )
        return most
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a whole number >= 1, got {levels!r}")
    if levels > most:
        factor = _size_factor(similarity)
        need = f"every axis ≥ {MIN_LEVEL_SIZE}" + (
            f" and divisible by {factor} (the extractor's {int(math.log2(factor))} stages)"
            if factor > 1 else ""
        )  # fmt: skip
        raise ValueError(
            f"{levels} levels need {need} at every level; images of size {tuple(spatial)} allow "
            f"at most {most}: {level_shapes(spatial, max(most, 1))}"
        )
    return levels


# ----------------------------------------------------------------------------- optimisation


@dataclass(frozen=True)
class InstanceResult:
    """What ``optimise`` returns.

    ``displacement``: u ``(1, ndim, *spatial)`` in voxels; ``warped``: I∘Φ ``(1, 1, *spatial)``;
    ``log``: one dict per iteration — ``level`` (0 = full resolution), ``iteration`` (counted over
    all levels), ``loss``, ``similarity``, ``regulariser`` (Eq. 1 at the level's grid, before the
    step), ``seconds`` since the start and, with ``log_dice``, ``dice`` (foreground mean of the
    labels warped by the level's field brought to full resolution) — and a last row for the
    returned field; ``shapes``: the levels' grids, coarse to fine; ``seconds``: the wall time.
    """

    displacement: Tensor
    warped: Tensor
    log: list[dict]
    shapes: list[tuple[int, ...]]
    seconds: float


def optimise(
    moving: Tensor, fixed: Tensor, similarity: nn.Module, lam: float, *,
    initial: Tensor | nn.Module | None = None, levels: int | None = None,
    iterations: int | Sequence[int] = DEFAULT_ITERATIONS, lr: float = DEFAULT_LR,
    moving_labels: Tensor | None = None, fixed_labels: Tensor | None = None,
    num_classes: int | None = None, log_dice: bool = False, seed: int = 0,
    progress: bool = True, desc: str = "instance optimisation",
) -> InstanceResult:  # fmt: skip
    """Minimise Eq. 1, D(I∘Φ, J) + λ R(u), over u for one pair, coarse to fine, with Adam.

    Args:
        moving, fixed: I and J, ``(1, 1, H, W)`` or ``(1, 1, D, H, W)``, finite, one device.
        similarity: D, a loss of ``losses.py`` (``metric_similarity`` builds it as training does).
        lam: λ ≥ 0.
        initial: where to start — None (u = 0, the identity), a field ``(1, ndim, *spatial)``, or
            a registration net, whose prediction ``registration.register(net, I, J)`` is used.
        levels: pyramid levels (None: as many as ``max_levels`` allows, at most 3).
        iterations: Adam steps per level, one count or one per level (coarse to fine).
        lr: Adam's learning rate, in voxels of each level.
        moving_labels, fixed_labels, num_classes: integer label maps ``(1, 1, *spatial)``; needed
            by NCC-sup (its label term, as in training) and by ``log_dice``.
        log_dice: add the foreground Dice of the warped labels to every log row.
        seed: seeds torch's random generator (forked, the caller's stream is left as it was) for
            any similarity that draws random numbers; the optimisation itself draws none. On the
            CPU two calls give bit-identical results; on CUDA the warp's backward adds with
            atomics, so they agree to float rounding.
        progress: show a tqdm bar; desc: its label.

    Returns:
        ``InstanceResult`` (displacement, warped image, per-iteration log, level shapes, seconds).
    """
    started = time.perf_counter()
    ndim = _check_pair(moving, fixed)
    lam = check_lambda(lam)
    check_seed(seed)
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    needs_labels = getattr(similarity, "needs_labels", False)
    has_labels = moving_labels is not None and fixed_labels is not None and num_classes is not None
    if (needs_labels or log_dice) and not has_labels:
        why = f"{type(similarity).__name__} compares label maps" if needs_labels else "log_dice"
        raise ValueError(f"{why}: pass moving_labels, fixed_labels (integer, (1, 1, *spatial)) "
                         "and num_classes")  # fmt: skip
    if has_labels:
        for name, labels in (("moving_labels", moving_labels), ("fixed_labels", fixed_labels)):
            _check_labels(name, labels, moving, num_classes)
    u_init = _initial_field(initial, moving, fixed)
    shapes = level_shapes(moving.shape[2:], _check_levels(levels, moving.shape[2:], similarity))
    counts = _iterations(iterations, len(shapes))
    one_hots = (one_hot(moving_labels, num_classes), one_hot(fixed_labels, num_classes)) \
        if needs_labels else None  # fmt: skip

    devices = [moving.device.index or 0] if moving.is_cuda else []
    log: list[dict] = []
    bar = tqdm(total=sum(counts), disable=not progress, desc=desc, unit="it")
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        delta = moving.new_zeros(1, ndim, *shapes[0])
        for index, (shape, count) in enumerate(zip(shapes, counts, strict=True)):
            level = len(shapes) - 1 - index
            delta = resample_field(delta, shape).detach().requires_grad_(True)
            problem = _Level(moving, fixed, u_init, shape, similarity, lam, one_hots)
            optimiser = torch.optim.Adam([delta], lr=lr)
            for _ in range(count):
                parts = problem.loss(delta)
                dice = _dice(u_init, delta, moving_labels, fixed_labels, num_classes) \
                    if log_dice else None  # fmt: skip
                log.append(_row(level, len(log), parts, started, dice))
                optimiser.zero_grad(set_to_none=True)
                parts[0].backward()
                optimiser.step()
                bar.update()
                if len(log) % 10 == 0:
                    bar.set_postfix(loss=f"{log[-1]['loss']:.4f}", level=level)
        bar.close()
        u = (u_init + resample_field(delta.detach(), moving.shape[2:])).detach()
        with torch.no_grad():
            final = _Level(moving, fixed, u, moving.shape[2:], similarity, lam, one_hots)
            parts = final.loss(torch.zeros_like(u))
            dice = _dice(u, torch.zeros_like(u), moving_labels, fixed_labels, num_classes) \
                if log_dice else None  # fmt: skip
            log.append(_row(0, len(log), parts, started, dice))
    return InstanceResult(u, warp(moving, u), log, shapes, time.perf_counter() - started)


class _Level:
    """Eq. 1 on one level's grid as a function of the correction δ (``(1, ndim, *shape)``)."""

    def __init__(self, moving, fixed, u_init, shape, similarity, lam, one_hots):
        self.moving = resample_image(moving, shape)
        self.base = resample_field(u_init, shape)  # S_k(u_init), level voxels
        self.lam = lam
        self.moving_one_hot = fixed_one_hot = None
        if one_hots is not None:
            self.moving_one_hot = resample_image(one_hots[0], shape)
            fixed_one_hot = resample_image(one_hots[1], shape)
        self.target = _target(similarity, resample_image(fixed, shape), fixed_one_hot)

    def loss(self, delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(L, D, R) at u_k = S_k(u_init) + δ."""
        u = self.base + delta
        labels = None if self.moving_one_hot is None else warp(self.moving_one_hot, u)
        d = self.target(warp(self.moving, u), labels)
        r = diffusion_regulariser(u)
        return d + self.lam * r, d, r


def _row(level: int, iteration: int, parts, started: float, dice: float | None) -> dict:
    row = {"level": level, "iteration": iteration, "loss": parts[0].item(),
           "similarity": parts[1].item(), "regulariser": parts[2].item(),
           "seconds": time.perf_counter() - started}  # fmt: skip
    if dice is not None:
        row["dice"] = dice
    return row


@torch.no_grad()
def _dice(u_init, delta, moving_labels, fixed_labels, num_classes) -> float:
    """Foreground Dice of the moving labels warped (nearest) by u_init + δ at full resolution."""
    u = u_init + resample_field(delta.detach(), u_init.shape[2:])
    return dice_or_nan(warp(moving_labels, u, mode="nearest"), fixed_labels, num_classes)


# ----------------------------------------------------------------------------- network vs instance

METHODS = ("network", "optimise", "network+optimise")
"""How a pair is registered: the net's prediction alone, instance optimisation from the
identity, and instance optimisation started from the net's prediction."""


def _timed(fn: Callable, *args, **kwargs) -> tuple:
    """``fn(*args, **kwargs)`` and its wall and CPU (``time.process_time``, all threads) seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def compare_methods(
    pairs, similarity: nn.Module, lam: float, *, net: nn.Module | None = None,
    indices: Sequence[int] | None = None, methods: Sequence[str] = METHODS,
    device: str = "cpu", **options,
) -> list[dict]:  # fmt: skip
    """Register test pairs by each of ``methods`` and score them; one row per pair × method.

    ``pairs``: a ``data.pairs.PairDataset``; ``indices``: which of its pairs (None: all).
    ``net``: the registration net of the same metric (needed by the two methods that use it);
    ``options`` go to ``optimise`` (``levels``, ``iterations``, ``lr``, ``seed``, ``progress``).
    Row: ``moving``, ``fixed``, ``method``, ``dice`` and ``dice_before`` (foreground mean, labels
    warped by nearest neighbours), ``folding_fraction`` (det ∇Φ < 0), ``seconds`` (wall) and
    ``cpu_seconds`` of the registration (network+optimise: both parts).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    if net is None and any(m != "optimise" for m in methods):
        raise ValueError("methods 'network' and 'network+optimise' need the registration net")
    if getattr(similarity, "needs_labels", False) and any(m != "network" for m in methods):
        raise ValueError(
            "NCC-sup compares label maps: optimising it on a test pair would fit the very labels "
            "its Dice is scored on; compare it with methods=('network',) only"
        )
    if net is not None:
        net = net.to(device).eval()
    classes = pairs.info.num_classes
    rows = []
    for index in range(len(pairs)) if indices is None else indices:
        item = pairs[index]
        moving, fixed = item["moving"][None].to(device), item["fixed"][None].to(device)
        labels = item["moving_labels"][None].to(device), item["fixed_labels"][None].to(device)
        before = dice_or_nan(labels[0], labels[1], classes)
        predicted = None
        if net is not None:
            with torch.no_grad():
                (predicted, _), net_wall, net_cpu = _timed(register, net, moving, fixed)
        for method in methods:
            if method == "network":
                u, wall, cpu = predicted, net_wall, net_cpu
            else:
                start = predicted if method == "network+optimise" else None
                result, wall, cpu = _timed(optimise, moving, fixed, similarity, lam,
                                           initial=start, **options)  # fmt: skip
                u = result.displacement
                if method == "network+optimise":
                    wall, cpu = wall + net_wall, cpu + net_cpu
            rows.append({
                "moving": item["moving_id"], "fixed": item["fixed_id"], "method": method,
                "dice": dice_or_nan(warp(labels[0], u, mode="nearest"), labels[1], classes),
                "dice_before": before, "folding_fraction": folding_fraction(u).item(),
                "seconds": wall, "cpu_seconds": cpu,
            })  # fmt: skip
    return rows


def method_table(rows: list[dict] | pd.DataFrame, reference: str = "deepsim") -> pd.DataFrame:
    """Per dataset × method × metric: mean Dice, folding % and seconds per pair, and the
    one-sided Wilcoxon p of ``reference`` (DeepSim) against each other metric with its mark.

    ``rows``: ``compare_methods`` rows with ``dataset`` and ``metric`` added (a list of dicts or
    a DataFrame). The statistics are ``stats.compare_metrics`` on each method's rows: pairs
    matched by (moving, fixed), p = P(W+ ≥ observed) under H0 (DeepSim not greater), Cohen's d.
    Returns a ``pandas.DataFrame`` with columns dataset, method, metric, n, dice, dice_sd,
    dice_before, folding_percent, seconds, pvalue, d, mark.
    """
    frame = pd.DataFrame(rows)
    tables = []
    for method in [m for m in METHODS if m in set(frame["method"])]:
        of_method = frame[frame["method"] == method]
        stats = compare_metrics(of_method, reference=reference)
        means = of_method.groupby(["dataset", "metric"], sort=False).agg(
            dice_before=("dice_before", "mean"), folding=("folding_fraction", "mean"),
            seconds=("seconds", "mean")).reset_index()  # fmt: skip
        table = stats.merge(means, on=["dataset", "metric"])
        table.insert(1, "method", method)
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    table["folding_percent"] = 100 * table.pop("folding")
    table = table.rename(columns={"mean": "dice", "sd": "dice_sd"})
    columns = ["dataset", "method", "metric", "n", "dice", "dice_sd", "dice_before",
               "folding_percent", "seconds", "pvalue", "d", "mark"]  # fmt: skip
    return table[columns]
