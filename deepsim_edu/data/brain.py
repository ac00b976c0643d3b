"""Brain-MRI, embedded: 3D T1 subjects made from the MNI152 2009a template (real anatomy).

The data
--------
The **atlas** is the ICBM 2009a Nonlinear Symmetric template ("MNI152 2009a sym"): its T1 image
and its grey- and white-matter probability maps, 1 mm, 197×233×189, as shipped inside the
``nilearn`` wheel: ``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted
.nii.gz``. We find the installed package and read the files with nibabel; nilearn itself is
never imported.
:func:`load_mni152` turns them into the atlas:

1. *resample and crop* in one step: smooth by a Gaussian of σ = (step − 1)/2 input voxels
   (anti-aliasing), then sample a ``shape`` grid of ``spacing_mm`` voxels with trilinear
   interpolation (``scipy.ndimage.affine_transform``), centred on the brain's bounding box
   extended 8 mm upwards (the template cuts the brainstem at its lower edge, so only the top of
   the brain needs room to move when a subject is deformed);
2. *skull strip*: brain mask = voxels with P(GM) + P(WM) > 0.5, closed by a 3-voxel ball (fills
   the sulci), holes filled (the ventricles), dilated by one voxel (a CSF rim around the cortex);
   the T1 is set to 0 outside (nilearn's copy is already skull-stripped; the mask makes image and
   labels agree) and scaled to a maximum of 1;
3. *labels* 0 background, 1 CSF, 2 GM, 3 WM: inside the mask, the tissue of largest probability.
   The wheel has no CSF map, so **CSF is derived** as what lies inside the brain mask but is
   neither grey nor white matter: P(CSF) = clip(1 − P(GM) − P(WM), 0, 1). That is the ventricles,
   the sulci and the rim around the cortex — voxels that are dark in the T1, as CSF should be.

Arrays are ``(X, Y, Z)``: axis 0 left→right, axis 1 posterior→anterior, axis 2
inferior→superior (RAS, the template's own axis order); 80×96×80 at 2 mm by default.

**Subjects** (:func:`make_subject`) are the atlas warped by a random smooth deformation plus a
small affine, then given a gamma change, a bias field and Rician noise. The true displacement
``u`` saved with each subject maps it onto the atlas (moving = subject, fixed = atlas, as in the
paper): ``warp(subject, u) ≈ atlas``. :func:`make_brain_mri` writes a whole dataset in the layout
of :mod:`deepsim_edu.data.layout`.

Licence of the template
-----------------------
The nilearn wheel ships the files without a licence text (its description page says "License:
unknown"). The MNI's notice for the ICBM 2009 templates, to be kept with every copy::

    Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
    Institute, McGill University. Permission to use, copy, modify, and distribute this software
    and its documentation for any purpose and without fee is hereby granted, provided that the
    above copyright notice appear in all copies. The authors and McGill University make no
    representations about the suitability of this software for any purpose. It is provided
    "as is" without express or implied warranty. The authors are not responsible for any data
    loss, equipment damage, property loss, or injury to subjects or patients resulting from the
    use or misuse of this software package.

References: Fonov et al., NeuroImage 47 (2009) S102; Fonov et al., NeuroImage 54 (2011) 313–327.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .. import __version__
from ..transform import jacobian_determinant
from .layout import DatasetInfo, load_info, staging_folder, write_case, write_dataset_json
from .synth import bias_field, invert_displacement, random_displacement, warp_array

CLASSES = ("background", "CSF", "GM", "WM")
MNI152_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
NILEARN_PIN = "nilearn==0.14.1"
MIN_JACOBIAN = 0.1  # a deformation with det ∇Φ below this anywhere is drawn again


# ----------------------------------------------------------------------------- the atlas


def mni152_files() -> dict[str, Path]:
    """Paths of the MNI152 2009a sym ``"t1"``, ``"gm"`` and ``"wm"`` files in the nilearn package.

    ``importlib.util.find_spec`` locates a top-level package without running its ``__init__``,
    so nilearn is found but not imported. Raises FileNotFoundError, naming the pip command, if
    nilearn or one of the files is missing.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the MNI152 template ships in the nilearn wheel, which is not installed: "
            f"pip install {NILEARN_PIN}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    files = {key: folder / name for key, name in MNI152_FILES.items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"MNI152 template file(s) missing from the installed nilearn: {', '.join(missing)}; "
            f"pip install --force-reinstall {NILEARN_PIN}"
        )
    return files


def _ball(radius: int) -> np.ndarray:
    """A ball of ``radius`` voxels, ``(2r+1, 2r+1, 2r+1)`` boolean, as a structuring element."""
    r = np.arange(-radius, radius + 1)
    return r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2 <= radius**2


def _brain_mask(tissue: np.ndarray) -> np.ndarray:
    """Skull strip: ``tissue`` = P(GM)+P(WM) > 0.5, closed, holes filled, dilated by 1 voxel."""
    mask = ndimage.binary_dilation(tissue > 0.5, _ball(3))
    mask = ndimage.binary_erosion(mask, _ball(3), border_value=1)  # closing; keeps border voxels
    mask = ndimage.binary_fill_holes(mask)
    return ndimage.binary_dilation(mask, _ball(1))


def load_mni152(
    spacing_mm: float = 2.0, shape: tuple[int, int, int] = (80, 96, 80)
) -> tuple[np.ndarray, np.ndarray]:
    """The atlas: the MNI152 2009a sym T1, resampled, cropped and skull-stripped, with labels.

    Returns ``t1`` float32 ``shape`` in [0, 1] (0 outside the brain, maximum 1) and ``labels``
    uint8 ``shape``: 0 background, 1 CSF, 2 GM, 3 WM. The module docstring says how the brain
    mask and the CSF class are made.
    """
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm!r}")
    if len(shape) != 3 or any(int(n) != n or n < 8 for n in shape):
        raise ValueError(f"shape must be 3 whole numbers of voxels >= 8, got {shape!r}")
    shape = tuple(int(n) for n in shape)
    volumes = {}
    for key, path in mni152_files().items():
        image = nib.load(path)
        if not np.allclose(image.header.get_zooms()[:3], 1.0):
            raise ValueError(f"{path}: expected 1 mm voxels, got {image.header.get_zooms()}")
        volumes[key] = np.asarray(image.dataobj, dtype=np.float32) / 255.0  # stored as uint8

    # output voxel o samples input voxel start + step·o; start is rounded so that at 2 mm every
    # output voxel is the centre of an input voxel
    step = float(spacing_mm)
    brain = np.argwhere(volumes["gm"] + volumes["wm"] > 0.5)  # (N, 3) voxel indices
    low, high = brain.min(0), brain.max(0) + np.array([0, 0, 8])  # 8 mm of room above
    start = np.round((low + high) / 2 - (np.array(shape) - 1) / 2 * step)

    def resample(volume: np.ndarray) -> np.ndarray:
        smooth = ndimage.gaussian_filter(volume, sigma=max(step - 1.0, 0.0) / 2)
        return ndimage.affine_transform(
            smooth, [step] * 3, offset=start, output_shape=shape, order=1, cval=0.0
        )

    t1, gm, wm = (resample(volumes[key]) for key in ("t1", "gm", "wm"))
    mask = _brain_mask(gm + wm)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    # (3, X, Y, Z) -> (X, Y, Z): 1 + index of the most probable tissue, 0 outside the brain
    labels = np.where(mask, 1 + np.argmax(np.stack([csf, gm, wm]), axis=0), 0).astype(np.uint8)
    t1 = np.clip(t1, 0.0, None) * mask
    return (t1 / t1.max()).astype(np.float32), labels


# ----------------------------------------------------------------------------- subjects


def _random_affine(
    points: np.ndarray,
    centre: np.ndarray,
    rng: np.random.Generator,
    rotation_deg: float,
    scaling: float,
    shift: float,
) -> np.ndarray:
    """u(x) = (A − I)(x − centre) + t at ``points`` ``(3, *grid)``, in voxels; ``(3, *grid)``.

    A = R·S: R rotates by up to ``rotation_deg`` about each axis, S scales each axis by up to
    1 ± ``scaling``; t shifts each axis by up to ``shift`` voxels (all uniform).
    """
    angles = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))
    matrix = np.diag(1.0 + rng.uniform(-scaling, scaling, 3))
    for axis, angle in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]  # the plane the rotation turns
        rotation = np.eye(3)
        rotation[[i, i, j, j], [i, j, i, j]] = [
            np.cos(angle),
            -np.sin(angle),
            np.sin(angle),
            np.cos(angle),
        ]
        matrix = rotation @ matrix
    t = rng.uniform(-shift, shift, 3).reshape(3, 1, 1, 1)
    return np.einsum("ij,j...->i...", matrix - np.eye(3), points - centre.reshape(3, 1, 1, 1)) + t


def random_deformation(
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    sigma: float = 12.0,
    magnitude: float = 1.0,
    rotation_deg: float = 3.0,
    scaling: float = 0.03,
    shift: float = 1.0,
    grid: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """A random smooth deformation and its inverse: ``(u, w)``, each ``(3, *shape)`` in voxels.

    u = a smooth random field (``synth.random_displacement``: correlation length ``sigma``,
    standard deviation ``magnitude`` per axis, both in voxels) + a small random affine
    (``_random_affine``). Both are drawn on control points every ``grid`` voxels and upsampled
    trilinearly: a field this smooth loses nothing, and inverting it on the control grid
    (``synth.invert_displacement``) takes 0.05 s instead of 2 s. w is the inverse of u: warping
    by w and then by u gives back the input, up to interpolation error (|u(x) + w(x + u(x))| is
    ≈ 0.04 voxel on average, 0.1 at the 99th percentile, for the defaults).
    u is rounded to 1/1024 voxel, which makes its file a third smaller.
    """
    coarse = tuple(-(-(n - 1) // grid) + 1 for n in shape)  # control points span the volume
    # control point j sits at voxel j·ratio (corners aligned, as the upsampling below assumes)
    ratio = (np.array(shape) - 1) / (np.array(coarse) - 1)
    ratio = ratio.reshape(3, 1, 1, 1)  # broadcasts over (3, *grid)
    points = np.stack(np.meshgrid(*[np.arange(c) for c in coarse], indexing="ij")) * ratio
    u = random_displacement(coarse, sigma / grid, magnitude, rng)
    u = u + _random_affine(points, (np.array(shape) - 1) / 2, rng, rotation_deg, scaling, shift)
    # invert in control-grid units (u / ratio), then back to voxels; the fixed point converges
    # like max|∇u|^k: 10 iterations reach 1e-6 voxel for the default fields
    w = invert_displacement((u / ratio).astype(np.float32), iterations=10) * ratio

    def upsample(field: np.ndarray) -> np.ndarray:  # (3, *coarse) -> (3, *shape)
        field = torch.from_numpy(field.astype(np.float32))[None]
        return F.interpolate(field, size=shape, mode="trilinear", align_corners=True)[0].numpy()

    return np.round(upsample(u) * 1024) / 1024, upsample(w)


def min_jacobian_determinant(u: np.ndarray) -> float:
    """The smallest det ∇Φ for Φ = id + u, ``u`` ``(3, X, Y, Z)``; < 0 means Φ folds.

    Central differences, on purpose: this guard decided which random draws the generated
    datasets kept, and it stays as it was so that they stay byte-identical. (For these smooth
    fields the two schemes differ by < 0.01, far above the 0.1 threshold.)
    """
    u_t = torch.from_numpy(np.ascontiguousarray(u))[None]
    return float(jacobian_determinant(u_t, scheme="central").min())


def make_subject(
    atlas_t1: np.ndarray,
    atlas_labels: np.ndarray,
    rng: np.random.Generator,
    sigma: float = 12.0,
    magnitude: float = 1.0,
    bias: float = 0.15,
    gamma: float = 0.3,
    noise: float = 0.03,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic subject ``(t1, labels, u)`` with ``warp(t1, u) ≈ atlas_t1``.

    Args:
        atlas_t1: float ``(X, Y, Z)`` in [0, 1]; atlas_labels: integer ``(X, Y, Z)``.
        rng: the subject's random generator; everything random is drawn from it.
        sigma, magnitude: the smooth part of the deformation (:func:`random_deformation`, which
            also adds rotations ≤ 3°, scalings ≤ 3 %, shifts ≤ 1 voxel); a draw that folds
            (det ∇Φ ≤ 0.1 somewhere) is drawn again.
        gamma: contrast change t1 ** exp(g), g ~ U(−gamma, gamma) (exponent 0.74–1.35).
        bias: multiplicative bias field exp(s · smooth noise), correlation length 20 voxels,
            s ~ U(0, bias) (up to ±15 % per standard deviation); then the brain's 99.9th
            percentile is scaled to 1, as intensity normalisation would.
        noise: Rician noise |t1 + σ·(n₁ + i·n₂)|, n₁, n₂ ~ N(0, 1), σ ~ noise · U(0.5, 1.5).

    Returns:
        t1 float32 ``(X, Y, Z)`` in [0, 1], 0 outside the subject's brain (skull-stripped like
        the atlas); labels uint8 ``(X, Y, Z)``; u float32 ``(3, X, Y, Z)`` in voxels: the true
        displacement from subject (moving) to atlas (fixed), ``warp(labels, u) ≈ atlas_labels``.
        The subject is the atlas warped by the *inverse* of Φ = id + u, so that u is the answer
        a registration network should find.
    """
    if atlas_t1.ndim != 3 or atlas_t1.shape != atlas_labels.shape:
        raise ValueError(
            f"atlas_t1 and atlas_labels must be 3D arrays of one shape, got "
            f"{atlas_t1.shape} and {atlas_labels.shape}"
        )
    for name, value in [
        ("sigma", sigma),
        ("magnitude", magnitude),
        ("bias", bias),
        ("gamma", gamma),
        ("noise", noise),
    ]:
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    shape = atlas_t1.shape
    for _ in range(10):  # draws come from the same rng, so this stays deterministic
        u, w = random_deformation(shape, rng, sigma=sigma, magnitude=magnitude)
        if min_jacobian_determinant(u) > MIN_JACOBIAN:
            break
    else:
        raise ValueError(
            f"10 random deformations in a row folded (det ∇Φ <= {MIN_JACOBIAN}); "
            f"magnitude {magnitude} is too large for sigma {sigma}"
        )
    t1 = warp_array(atlas_t1.astype(np.float32), w)
    labels = warp_array(atlas_labels.astype(np.uint8), w, mode="nearest")

    t1 = np.clip(t1, 0.0, 1.0) ** np.exp(rng.uniform(-gamma, gamma))
    t1 = t1 * bias_field(shape, 20.0, rng.uniform(0.0, bias), rng)
    t1 = t1 / np.percentile(t1[labels > 0], 99.9)
    s = noise * rng.uniform(0.5, 1.5)
    t1 = np.hypot(t1 + s * rng.standard_normal(shape), s * rng.standard_normal(shape))
    t1 = np.where(labels > 0, np.clip(t1, 0.0, 1.0), 0.0)
    return t1.astype(np.float32), labels.astype(np.uint8), u.astype(np.float32)


# ----------------------------------------------------------------------------- the dataset


def make_brain_mri(
    out: str | Path,
    seed: int = 0,
    n_train: int = 40,
    n_val: int = 5,
    n_test: int = 10,
    noise: float = 0.03,
    spacing_mm: float = 2.0,
    shape: tuple[int, int, int] = (80, 96, 80),
) -> Path:
    """Write the embedded Brain-MRI dataset to ``out`` and return ``out`` as a Path.

    Cases: ``"atlas"`` (image, labels) and subjects ``sub-000``, ``sub-001``, … (train, then
    val, then test), each with image and labels, val/test subjects also with their true
    displacement to the atlas (train ones would only take disk space). Subject i is
    made from ``np.random.default_rng([seed, i])``: the same seed gives identical files, and a
    subject does not depend on how many others are made before it. Everything is written to a
    temporary sibling folder, ``dataset.json`` last, which is renamed to ``out`` at the end: an
    interrupted run leaves nothing behind.

    ``out`` works as a cache: if it already holds a dataset made with the same parameters (the
    ``source`` in its ``dataset.json``), it is returned as it is; if it holds anything else,
    FileExistsError (delete the folder to make it again).
    """
    out = Path(out)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in counts.items():
        if int(n) != n or n < 1:
            raise ValueError(f"n_{split} must be a positive integer, got {n!r}")
    shape = tuple(shape)
    source = (
        f"embedded: MNI152 2009a symmetric template (ICBM 2009a Nonlinear Symmetric, "
        f"Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, MNI, McGill "
        f"University; from nilearn {importlib.metadata.version('nilearn')}) as the atlas; "
        f"subjects = atlas warped by random smooth deformations + small affines, with gamma, "
        f"bias field and Rician noise (deepsim_edu {__version__}, data/brain.py); seed {seed}, "
        f"noise {noise}, spacing {spacing_mm} mm, shape {list(shape)}, "
        f"subjects {n_train}/{n_val}/{n_test}"
    )
    if out.exists() and any(out.iterdir()):  # an empty folder (a staging folder) is fine
        if (out / "dataset.json").is_file() and load_info(out).source == source:
            return out
        raise FileExistsError(
            f"{out} exists and is not this dataset (seed {seed}, noise "
            f"{noise}, ...); delete it to make the dataset again"
        )

    spacing = [float(spacing_mm)] * 3
    atlas_t1, atlas_labels = load_mni152(spacing_mm, shape)
    ids = iter(f"sub-{i:03d}" for i in range(sum(counts.values())))
    splits = {split: [next(ids) for _ in range(n)] for split, n in counts.items()}
    info = DatasetInfo(
        name="brain-mri",
        ndim=3,
        spacing=spacing,
        classes=list(CLASSES),
        splits=splits,
        pairing={"rule": "atlas", "atlas": "atlas"},
        source=source,
    )

    with staging_folder(out) as tmp:  # becomes `out` only when complete
        write_case(tmp, "atlas", atlas_t1, atlas_labels, spacing)
        subjects = [case for split in counts for case in splits[split]]
        for i, case in enumerate(subjects):
            rng = np.random.default_rng([seed, i])
            t1, labels, u = make_subject(atlas_t1, atlas_labels, rng, noise=noise)
            # the true displacement is an evaluation aid: kept for val/test subjects only
            keep = case not in splits["train"]
            write_case(tmp, case, t1, labels, spacing, displacement=u if keep else None)
        write_dataset_json(tmp, info)
    return out
