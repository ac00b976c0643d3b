"""Register a user's pair of files with a trained model: ``python -m deepsim_edu register``.

``register_files(fixed, moving, out, model)`` reads the two images (``imageio``), brings their
intensities to the range the nets were trained on, finds the displacement u — predicted by
the model's registration U-Net (``network``), optimised for this pair from the identity
(``optimise``, ``instance.optimise``: Eq. 1 with the model's λ) or both (``network+optimise``)
— warps the moving image and writes into ``out``::

    warped.nii.gz                 I∘Φ: the moving file's own intensities, linearly interpolated
    displacement.nii.gz           u in voxels, NIfTI vector field (X, Y, Z, 1, ndim)
    jacobian_determinant.nii.gz   det ∇Φ (forward differences, transform.jacobian_determinant)
    warped_labels.nii.gz          the moving labels warped by nearest neighbours (if given)
    overview.png                  moving, fixed, warped, differences, det ∇Φ with the grid
    metrics.json                  Dice before/after (both label maps given), folding %, seconds

Every NIfTI output lies on the fixed image's grid and carries its geometry (affine, qform/sform
codes, units), so it overlays the fixed image in any viewer. Φ(x) = x + u(x) maps a fixed
voxel x to where the moving image is read, (I∘Φ)(x) = I(x + u(x)) (``transform.warp``).

Intensities (``normalise_intensity``). The nets were trained on images in [0, 1], without any
further normalisation in training: the embedded data are generated in [0, 1], the converters of
``data_scripts/`` divide 8-bit data by 256 (the paper's loader) and the embedded brains are
scaled so that the 99.9th percentile of the brain is 1. Rule ``auto`` therefore leaves an
image already in [0, 1] as it is, divides 8-bit integer images (0…255) by 256, and maps any
other image to [0, 1] by its minimum (→ 0) and the 99.9th percentile of the voxels above the
minimum (→ 1), clipped. ``none`` uses the values as stored.

Image size. The U-Nets are fully convolutional: they register an image of any size whose sides
are multiples of 2^L (L encoder stages, 8 for the released nets), and were trained on crops
smaller than the whole test images anyway. An image of another size is padded (edge values
repeated, evenly on both sides) to the next multiple, registered, and the displacement cropped
back to the image: no resampling, no interpolation of the result. What the net cannot adapt to
is another *voxel size*: it predicts displacements in voxels for structures of the size it saw.
``resample=(mm, ...)`` resamples both images to that spacing first (the released Brain-MRI
nets: 2 mm) and maps the displacement back to the original grid (``displacement_to_grid``).
The moving and the fixed image must share one grid (same shape); the moving image is taken
voxel by voxel on the fixed grid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import METRICS
from .data.layout import DATASET_NAMES
from .evaluate import dice_per_class
from .imageio import (
    InputError,
    UserImage,
    read_image,
    read_labels,
    write_displacement,
    write_nifti,
)
from .registration import register
from .runs import checkpoint_path, load_registration_net, write_json
from .transform import folding_fraction, jacobian_determinant, warp

METHODS = ("network", "optimise", "network+optimise")
INTENSITY_RULES = ("auto", "none")
OUTPUTS = {
    "warped": "warped.nii.gz",
    "displacement": "displacement.nii.gz",
    "jacobian_determinant": "jacobian_determinant.nii.gz",
    "warped_labels": "warped_labels.nii.gz",
    "overview": "overview.png",
    "metrics": "metrics.json",
}
SPACING_NOTE_RATIO = 1.1  # a 3D input whose voxels differ from the model's by more: a note

# ----------------------------------------------------------------------------- the model


@dataclass
class Model:
    """A registration net to apply and what is known of it.

    ``name``: ``<dataset>/<metric>`` of a release, or the run folder; ``trained_on``: what its
    training data were (a release's manifest says; a run folder: its config's dataset);
    ``spacing``: the voxel size of the training data (None when unknown); ``extractor``:
    loads DeepSim's feature extractor of the same dataset (for ``--metric deepsim``).
    """

    net: torch.nn.Module
    config: dict
    name: str
    trained_on: str
    spacing: tuple[float, ...] | None
    extractor: Callable[[], torch.nn.Module] | None

    @property
    def ndim(self) -> int:
        return int(self.config["ndim"])

    @property
    def dataset(self) -> str:
        return str(self.config["dataset"])


def _released_model(dataset: str, metric: str, release: str | Path, device: str) -> Model:
    from . import pretrained

    net, config = pretrained.load(dataset, metric, release, device)
    manifest = pretrained.read_manifest(release)
    about = manifest["datasets"][dataset]
    extractor = None
    if f"{dataset}/{pretrained.SEGMENTATION}" in manifest["models"]:
        extractor = partial(pretrained.load_extractor, dataset, release, device)
    return Model(net, config, f"{dataset}/{metric} (release {release})", about["trained_on"],
                 tuple(about["spacing"]), extractor)  # fmt: skip


def _run_model(run: Path, device: str) -> Model:
    from .features import load_segmentation_extractor

    net, config = load_registration_net(run, device)
    dataset = config["dataset"]
    segmentation = [folder / "segmentation" for folder in (run.parent, *run.parents[1:3])]
    found = next((checkpoint_path(s) for s in segmentation if checkpoint_path(s).is_file()), None)
    extractor = None
    if found is not None:
        extractor = partial(load_segmentation_extractor, found, dataset, device=device)
    trained_on = (f"the {dataset} dataset the run {run} was trained on (preset "
                  f"{config.get('preset')}, crops {config.get('crop')})")  # fmt: skip
    return Model(net, config, str(run), trained_on, None, extractor)


def resolve_model(spec: str, release: str | Path = "default", device: str = "cpu") -> Model:
    """``--model``: a run folder (holding ``checkpoint.pt``), or ``DATASET/METRIC`` of the
    release ``release`` (``pretrained.load``, checksums verified)."""
    path = Path(spec)
    if checkpoint_path(path).is_file():
        return _run_model(path, device)
    dataset, _, metric = spec.partition("/")
    if dataset in DATASET_NAMES and metric in METRICS:
        return _released_model(dataset, metric, release, device)
    raise ValueError(
        f"--model {spec}: neither a run folder with a checkpoint.pt nor DATASET/METRIC of a "
        f"release (datasets {', '.join(DATASET_NAMES)}; metrics {', '.join(METRICS)})"
    )


# ----------------------------------------------------------------------------- intensities


def normalise_intensity(array: np.ndarray, rule: str = "auto") -> tuple[np.ndarray, str]:
    """The intensities the nets expect, float32 in [0, 1], and the rule applied, in words.

    ``auto``: floats (or booleans) within [0, 1] unchanged; integers within 0…255 divided by 256
    (8 bit, as ``data_scripts`` convert them); anything else x → clip((x − lo) / (hi − lo), 0, 1)
    with lo = the minimum and hi = the 99.9th percentile of the voxels above it. ``none``: as
    stored. A constant image is refused (it has nothing to register).
    """
    if rule not in INTENSITY_RULES:
        raise ValueError(f"intensity rule must be one of {', '.join(INTENSITY_RULES)}, "
                         f"got {rule!r}")  # fmt: skip
    values = array.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if rule == "none":
        return values, "none: as stored"
    if low == high:
        raise InputError(f"the image is constant ({low:g}): nothing to register")
    if array.dtype.kind in "fb" and low >= 0 and high <= 1:
        return values, "as stored (already in [0, 1], like the training data)"
    if array.dtype.kind in "iu" and low >= 0 and high <= 255:
        return values / 256, "8-bit values divided by 256"
    above = values[values > low]
    top = float(np.percentile(above, 99.9)) if above.size else high
    top = top if top > low else high
    scaled = np.clip((values - low) / (top - low), 0, 1).astype(np.float32)
    return scaled, f"(x - {low:g}) / ({top:g} - {low:g}) clipped to [0, 1] (minimum and 99.9th " \
                   "percentile of the voxels above it)"  # fmt: skip


# ----------------------------------------------------------------------------- the network


def padding(shape: tuple[int, ...], factor: int) -> list[tuple[int, int]]:
    """Voxels to add (before, after) along each axis so that every side is a multiple of
    ``factor``: the missing ones, split evenly (one more after when odd)."""
    missing = [(-n) % factor for n in shape]
    return [(m // 2, m - m // 2) for m in missing]


def padded_displacement(net: torch.nn.Module, moving: Tensor, fixed: Tensor) -> Tensor:
    """u = net(moving ⊕ fixed) for images ``(1, 1, *spatial)`` of any size: both padded by
    edge replication to multiples of 2^L (``padding``), u cropped back, ``(1, ndim, *spatial)``."""
    factor = 2 ** len(net.encoder)
    pads = padding(tuple(moving.shape[2:]), factor)
    if not any(a or b for a, b in pads):
        return register(net, moving, fixed)[0]
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad: last axis first
    u, _ = register(net, *(F.pad(x, flat, mode="replicate") for x in (moving, fixed)))
    crop = tuple(slice(a, a + n) for (a, _), n in zip(pads, moving.shape[2:], strict=True))
    return u[(slice(None), slice(None)) + crop]


def resampled_shape(
    shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]
) -> tuple[int, ...]:
    """The grid of the same field of view at voxel size ``target``: n' = round(n s / t) ≥ 2."""
    return tuple(max(2, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))


def resample(image: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``(1, C, *spatial)`` linearly resampled to ``shape``; corner voxels stay at the corners
    (``align_corners=True``: voxel x of n maps to x (n' − 1) / (n − 1))."""
    mode = "bilinear" if image.dim() == 4 else "trilinear"
    return F.interpolate(image, size=shape, mode=mode, align_corners=True)


def displacement_to_grid(u: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A displacement ``(1, ndim, *spatial')`` in voxels of a resampled grid, on the grid of
    ``shape``: interpolated there and component k scaled by (n_k − 1) / (n'_k − 1), the size of
    a resampled voxel in original voxels (the inverse of ``resample``'s map)."""
    scale = [(n - 1) / max(m - 1, 1) for n, m in zip(shape, u.shape[2:], strict=True)]
    factors = torch.tensor(scale, dtype=u.dtype, device=u.device).view(1, -1, *[1] * len(shape))
    return resample(u, shape) * factors


def network_displacement(
    net: torch.nn.Module, moving: Tensor, fixed: Tensor,
    spacing: tuple[float, ...], target: tuple[float, ...] | None = None,
) -> Tensor:  # fmt: skip
    """The net's u ``(1, ndim, *spatial)`` on the images' grid; with ``target`` the images are
    resampled from ``spacing`` to that voxel size first and u mapped back."""
    with torch.no_grad():
        if target is None:
            return padded_displacement(net, moving, fixed)
        grid = resampled_shape(tuple(moving.shape[2:]), spacing, target)
        u = padded_displacement(net, resample(moving, grid), resample(fixed, grid))
        return displacement_to_grid(u, tuple(moving.shape[2:]))


# ----------------------------------------------------------------------------- optimisation


def consecutive_labels(*maps: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Label maps of any whole-number labels renumbered 0…C−1 together (0 stays 0): the
    integer maps a loss with ``num_classes`` = C needs; returns (maps, C)."""
    values = np.union1d(np.concatenate([np.unique(m) for m in maps]), [0])
    return [np.searchsorted(values, m) for m in maps], max(len(values), 2)


def _pad(x: Tensor, pads: list[tuple[int, int]]) -> Tensor:
    """``(1, C, *spatial)`` padded by edge replication (integer maps through float)."""
    if not any(a or b for a, b in pads):
        return x
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad: last axis first
    if x.is_floating_point():
        return F.pad(x, flat, mode="replicate")
    return F.pad(x.double(), flat, mode="replicate").round().to(x.dtype)


def optimised_displacement(
    model: Model, moving: Tensor, fixed: Tensor, initial: Tensor | None, metric: str, *,
    labels: tuple[np.ndarray, np.ndarray] | None = None, iterations: int | None = None,
    seed: int = 0, progress: bool = False,
) -> Tensor:  # fmt: skip
    """u optimised for this pair (``instance.optimise``): Eq. 1 with ``metric`` as D and λ of
    the model's own config when ``metric`` is the model's metric, else of its preset's config
    for ``metric``; coarse to fine from ``initial`` (None: the identity).

    Both images (and ``initial``) are padded like the network's input (``padding``; to a
    multiple of the DeepSim extractor's 2^L too), optimised there, and u cropped back.
    DeepSim uses the model's dataset's feature extractor; NCC-sup needs ``labels`` (moving,
    fixed).
    """
    from .instance import metric_similarity, optimise

    same = metric == model.config["metric"]
    extractor = None
    if metric == "deepsim":
        if model.extractor is None:
            raise ValueError(f"--metric deepsim needs the feature extractor of {model.dataset}; "
                             f"{model.name} has none beside it (a release's {model.dataset}/"
                             "segmentation, or a run's ../segmentation/)")  # fmt: skip
        extractor = model.extractor()
    similarity, lam = metric_similarity(
        model.dataset, metric, model.ndim, preset=model.config.get("preset", "default"),
        config=model.config if same else None, extractor=extractor, device=str(moving.device),
    )  # fmt: skip
    factor = math.lcm(2 ** len(model.net.encoder), 2 ** len(getattr(extractor, "encoder", [])))
    pads = padding(tuple(moving.shape[2:]), factor)
    extra = {}
    if getattr(similarity, "needs_labels", False):
        if labels is None:
            raise ValueError(f"--metric {metric} compares label maps: give --moving-labels and "
                             "--fixed-labels")  # fmt: skip
        (moving_l, fixed_l), classes = consecutive_labels(*labels)
        extra = {"moving_labels": _pad(torch.from_numpy(moving_l)[None, None], pads),
                 "fixed_labels": _pad(torch.from_numpy(fixed_l)[None, None], pads),
                 "num_classes": classes}  # fmt: skip
        extra = {k: v.to(moving.device) if isinstance(v, Tensor) else v for k, v in extra.items()}
    result = optimise(
        _pad(moving, pads), _pad(fixed, pads), similarity, lam,
        initial=None if initial is None else _pad(initial, pads),
        iterations=_iterations(iterations), seed=seed,
        progress=progress, desc=f"optimising {metric}", **extra,
    )  # fmt: skip
    crop = tuple(slice(a, a + n) for (a, _), n in zip(pads, moving.shape[2:], strict=True))
    return result.displacement[(slice(None), slice(None)) + crop]


# ----------------------------------------------------------------------------- scores


def label_dice(pred: np.ndarray, target: np.ndarray) -> tuple[float | None, dict[str, float]]:
    """Foreground-mean Dice of two label maps of any whole-number labels, and Dice per label.

    The labels present in either map (and 0, the background) are numbered 0…C−1 and scored by
    ``evaluate.dice_per_class``: the mean over the labels other than 0 present in either map
    (None when there is none). Per label: ``{"<label>": Dice}``.
    """
    values = np.union1d(np.union1d(np.unique(pred), np.unique(target)), [0])
    if len(values) < 2:
        return None, {}
    index = [torch.from_numpy(np.searchsorted(values, x))[None] for x in (pred, target)]
    per_class = dice_per_class(index[0], index[1], len(values))[0]  # (C,)
    foreground = per_class[1:]
    per_label = {str(int(v)): float(d) for v, d in zip(values[1:], foreground, strict=True)
                 if not math.isnan(d)}  # fmt: skip
    return (float(foreground.nanmean()) if per_label else None), per_label


def label_dtype(labels: np.ndarray) -> type:
    """The smallest unsigned type that holds the labels (uint8, uint16), else int32."""
    top = int(labels.max()) if labels.size else 0
    return np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32


# ----------------------------------------------------------------------------- the overview


def _fmt(dice: float | None) -> str:
    return "—" if dice is None else f"{dice:.3f}"


def overview_figure(
    moving: np.ndarray, fixed: np.ndarray, warped: np.ndarray, u: np.ndarray, det: np.ndarray,
    moving_labels: np.ndarray | None, fixed_labels: np.ndarray | None,
    warped_labels: np.ndarray | None, dice_before: float | None, dice_after: float | None,
    folding: float, title: str,
):  # fmt: skip
    """Two rows: moving I, fixed J, warped I∘Φ (label contours where given); |J − I|,
    |J − I∘Φ|, det ∇Φ with the deformation grid. Images ``(*spatial)`` in [0, 1], u
    ``(ndim, *spatial)``; a 3D volume is shown by its middle slice along the last axis
    (``viz.axial_slice``)."""
    from . import viz  # matplotlib: imported only when drawing

    if moving.ndim == 3:
        cut = viz.axial_slice
        moving, fixed, warped, det = (cut(x) for x in (moving, fixed, warped, det))
        moving_labels, fixed_labels, warped_labels = (
            None if x is None else cut(x) for x in (moving_labels, fixed_labels, warped_labels))
        u = viz.axial_displacement(u)
    fig = viz.new_figure(figsize=(10.5, 7.2), layout="constrained")
    axes = fig.subplots(2, 3)
    grey = {"vmin": 0.0, "vmax": 1.0}
    viz.show_image(axes[0, 0], moving, moving_labels, "moving I", **grey)
    viz.show_image(axes[0, 1], fixed, fixed_labels, "fixed J", **grey)
    viz.show_image(axes[0, 2], warped, warped_labels, "warped I∘Φ", **grey)
    viz.show_image(axes[1, 0], np.abs(fixed - moving), None,
                   f"|J − I|, Dice before {_fmt(dice_before)}", cmap="magma", **grey)  # fmt: skip
    viz.show_image(axes[1, 1], np.abs(fixed - warped), None,
                   f"|J − I∘Φ|, Dice after {_fmt(dice_after)}", cmap="magma", **grey)  # fmt: skip
    viz.draw_jacobian(axes[1, 2], det, title=f"det ∇Φ, folding {100 * folding:.3f} %")
    viz.draw_grid(axes[1, 2], u, viz.grid_spacing(det.shape), color="#333333", linewidth=0.4,
                  clip=True)  # fmt: skip
    fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------- the command


def _check_pair(fixed: UserImage, moving: UserImage, model: Model) -> list[str]:
    """Refuse what cannot be registered; notes on what may be registered badly."""
    if fixed.ndim != moving.ndim or fixed.array.shape != moving.array.shape:
        raise InputError(
            f"{moving.path}: shape {moving.array.shape}, but the fixed image {fixed.path.name} "
            f"has shape {fixed.array.shape}; register needs both on one grid (resample the "
            "moving image onto the fixed one first, e.g. nibabel.processing.resample_from_to)"
        )
    if fixed.ndim != model.ndim:
        raise InputError(f"{fixed.path}: a {fixed.ndim}D image, but the model {model.name} "
                         f"registers {model.ndim}D images")  # fmt: skip
    notes = fixed.notes + moving.notes
    if fixed.kind == moving.kind == "nifti" and not np.allclose(
        fixed.geometry.affine, moving.geometry.affine, atol=1e-4
    ):
        notes.append("the moving image's affine differs from the fixed one's: it is registered "
                     "voxel by voxel on the fixed grid (resample it onto that grid first if the "
                     "two are not already aligned)")  # fmt: skip
    if model.ndim == 3 and fixed.kind == "nifti":
        import nibabel as nib

        axes = "".join(nib.aff2axcodes(fixed.geometry.affine))
        if axes != "RAS":
            notes.append(f"the fixed image is stored {axes}; the released 3D nets saw RAS "
                         "volumes (reorient both with nibabel.as_closest_canonical)")  # fmt: skip
        spacing = fixed.geometry.spacing(3)
        if model.spacing is not None and any(
            max(s, m) / min(s, m) > SPACING_NOTE_RATIO for s, m in zip(spacing, model.spacing)
        ):
            notes.append(f"voxels of {tuple(round(s, 3) for s in spacing)} mm, the model was "
                         f"trained at {model.spacing} mm: consider --resample "
                         f"{' '.join(f'{m:g}' for m in model.spacing)}, or --method "
                         "network+optimise")  # fmt: skip
    return notes


def _labels(path, image: UserImage) -> np.ndarray | None:
    return None if path is None else read_labels(path, image)


def _target_spacing(resample_to, ndim: int) -> tuple[float, ...] | None:
    if resample_to is None:
        return None
    values = tuple(float(v) for v in resample_to)
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"--resample needs 1 or {ndim} voxel sizes > 0, got {list(resample_to)}")
    return values


def _displacement(
    model: Model, method: str, moving: Tensor, fixed: Tensor, spacing: tuple[float, ...],
    target: tuple[float, ...] | None, *, metric: str, labels: dict, iterations: int | None,
    seed: int, progress: bool,
) -> tuple[Tensor, dict[str, float]]:  # fmt: skip
    """u ``(1, ndim, *spatial)`` of ``method`` and the seconds each step took."""
    seconds: dict[str, float] = {}
    u = None
    if method in ("network", "network+optimise"):
        tick = time.perf_counter()
        u = network_displacement(model.net, moving, fixed, spacing, target)
        seconds["network"] = time.perf_counter() - tick
    if method in ("optimise", "network+optimise"):
        tick = time.perf_counter()
        given = all(v is not None for v in labels.values())
        pair = (labels["moving"], labels["fixed"]) if given else None
        u = optimised_displacement(model, moving, fixed, u, metric, labels=pair,
                                   iterations=iterations, seed=seed, progress=progress)  # fmt: skip
        seconds["optimise"] = time.perf_counter() - tick
    return u.detach().float(), seconds


@torch.no_grad()
def _write_results(
    out: Path, moving: UserImage, moving_normalised: Tensor, moving_labels: np.ndarray | None,
    u: Tensor, geometry,
) -> dict:  # fmt: skip
    """Warp the moving image (its own intensities, and the normalised ones for the overview)
    and labels by u ``(1, ndim, *spatial)``, write the NIfTI outputs on the fixed grid, and
    return the arrays: ``u``, ``det``, ``folding``, ``warped_normalised``, ``warped_labels``."""
    raw = torch.from_numpy(moving.array.astype(np.float32))[None, None].to(u.device)
    det = jacobian_determinant(u)[0].cpu().numpy()
    arrays = {
        "u": u[0].cpu().numpy(),
        "det": det,
        "folding": folding_fraction(u).item(),
        "warped_normalised": warp(moving_normalised, u)[0, 0].cpu().numpy(),
        "warped_labels": None,
    }
    write_nifti(out / OUTPUTS["warped"], warp(raw, u)[0, 0].cpu().numpy(), geometry,
                "moving image warped to the fixed")  # fmt: skip
    write_displacement(out / OUTPUTS["displacement"], arrays["u"], geometry)
    write_nifti(out / OUTPUTS["jacobian_determinant"], det.astype(np.float32), geometry,
                "det of the Jacobian of x -> x + u(x), forward differences")  # fmt: skip
    if moving_labels is not None:
        labels = torch.from_numpy(moving_labels)[None, None].to(u.device)
        warped = warp(labels, u, mode="nearest")[0, 0].cpu().numpy()
        write_nifti(out / OUTPUTS["warped_labels"], warped.astype(label_dtype(warped)), geometry,
                    "moving labels warped to the fixed, nearest neighbour")  # fmt: skip
        arrays["warped_labels"] = warped
    return arrays


def _scores(
    moving: np.ndarray | None, fixed: np.ndarray | None, warped: np.ndarray | None,
    notes: list[str],
) -> dict:  # fmt: skip
    """Dice before (moving vs fixed labels) and after (warped vs fixed), overall and per label;
    None where a label map is missing (and a note saying so)."""
    if moving is None or fixed is None:
        if moving is not None or fixed is not None:
            notes.append("Dice needs both --moving-labels and --fixed-labels")
        return {"dice_before": None, "dice_after": None, "dice_per_label": None}
    before, per_before = label_dice(moving, fixed)
    after, per_after = label_dice(warped, fixed)
    per_label = {k: {"before": per_before.get(k), "after": per_after.get(k)}
                 for k in sorted(set(per_before) | set(per_after), key=int)}  # fmt: skip
    return {"dice_before": before, "dice_after": after, "dice_per_label": per_label}


def _iterations(iterations: int | None) -> int:
    from .instance import DEFAULT_ITERATIONS

    return DEFAULT_ITERATIONS if iterations is None else iterations


def register_files(
    fixed: str | Path, moving: str | Path, out: str | Path, model: Model, *,
    moving_labels: str | Path | None = None, fixed_labels: str | Path | None = None,
    method: str = "network", metric: str | None = None, device: str = "cpu",
    intensity: str = "auto", resample_to: tuple[float, ...] | None = None, seed: int = 0,
    iterations: int | None = None, progress: bool = False,
) -> dict:  # fmt: skip
    """Register the file ``moving`` to ``fixed`` with ``model``; write the outputs of the module
    docstring into ``out``; return the contents of ``metrics.json``.

    ``method``: ``network`` (the model's U-Net), ``optimise`` (per-pair optimisation from the
    identity under ``metric``, default the model's) or ``network+optimise`` (from the
    network's u); ``iterations`` per pyramid level (None: ``instance.DEFAULT_ITERATIONS``),
    ``seed`` and ``progress`` (a bar on stderr) go to ``instance.optimise``. Every input is
    read and checked before anything is computed or written.
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    fixed_image, moving_image = read_image(fixed), read_image(moving)
    notes = _check_pair(fixed_image, moving_image, model)
    labels = {"moving": _labels(moving_labels, moving_image),
              "fixed": _labels(fixed_labels, fixed_image)}  # fmt: skip
    target = _target_spacing(resample_to, model.ndim)
    (m, m_rule), (f, f_rule) = (normalise_intensity(x.array, intensity)
                                for x in (moving_image, fixed_image))  # fmt: skip
    moving_t, fixed_t = (torch.from_numpy(x)[None, None].to(device) for x in (m, f))
    spacing = fixed_image.geometry.spacing(model.ndim)

    u, seconds = _displacement(model, method, moving_t, fixed_t, spacing, target,
                               metric=metric or model.config["metric"], labels=labels,
                               iterations=iterations, seed=seed, progress=progress)  # fmt: skip
    out = Path(out)
    arrays = _write_results(out, moving_image, moving_t, labels["moving"], u,
                            fixed_image.geometry)  # fmt: skip
    written = [OUTPUTS[k] for k in ("warped", "displacement", "jacobian_determinant")]
    if labels["moving"] is not None:
        written.append(OUTPUTS["warped_labels"])
    scores = _scores(labels["moving"], labels["fixed"], arrays["warped_labels"], notes)
    det, folding = arrays["det"], arrays["folding"]

    title = f"{model.name}, {method}"
    figure = overview_figure(m, f, arrays["warped_normalised"], arrays["u"], det,
                             labels["moving"], labels["fixed"], arrays["warped_labels"],
                             scores["dice_before"], scores["dice_after"], folding,
                             title)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / OUTPUTS["overview"], dpi=110)
    written += [OUTPUTS["overview"], OUTPUTS["metrics"]]
    seconds["total"] = time.perf_counter() - started

    metrics = {
        "fixed": str(fixed_image.path),
        "moving": str(moving_image.path),
        "moving_labels": None if moving_labels is None else str(moving_labels),
        "fixed_labels": None if fixed_labels is None else str(fixed_labels),
        "model": model.name,
        "trained_on": model.trained_on,
        "method": method,
        "metric": None if method == "network" else (metric or model.config["metric"]),
        "iterations_per_level": None if method == "network" else _iterations(iterations),
        "device": device,
        "shape": list(fixed_image.array.shape),
        "spacing": list(spacing),
        "intensity": {"moving": m_rule, "fixed": f_rule},
        "grid": {
            "padded_to_multiple_of": 2 ** len(model.net.encoder),
            "resampled_to_spacing": None if target is None else list(target),
        },
        **scores,
        "dice_convention": "mean over the labels other than 0 present in either map",
        "folding_percent": 100 * folding,
        "jacobian_min": float(det.min()),
        "seconds": seconds["total"],
        "seconds_by_step": seconds,
        "displacement": "voxels of the fixed grid; component k along array axis k; "
        "the moving image is read at x + u(x)",
        "outputs": written,
        "notes": notes,
    }
    write_json(out / OUTPUTS["metrics"], metrics)
    return metrics
