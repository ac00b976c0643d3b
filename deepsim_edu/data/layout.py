"""The one on-disk layout every dataset uses, embedded (generated) or real (``data_scripts/``).

::

    <root>/
      dataset.json                 name, ndim, spacing, classes, splits, pairing rule
      images/<case>.nii.gz         intensities, float32, shape (H, W) or (D, H, W)
      labels/<case>.nii.gz         class indices 0 .. C-1, same shape as the image
      displacements/<case>.nii.gz  optional: the generator's true displacement u, (ndim, *spatial),
                                   for the test pair whose moving image is <case>, in voxels:
                                   warp(moving, u) ~ fixed (atlas rule: fixed = the atlas;
                                   neighbours rule: fixed = the next section/frame)
      noise_masks/<case>.nii.gz    optional (embedded 2D series): uint8 0/1, where strong noise
                                   was added — the "noisy patches" of the paper's Fig. 2b

2D datasets are stored as 2D NIfTI files. ``dataset.json`` looks like::

    {"name": "platelet-em", "ndim": 2, "spacing": [1.0, 1.0],
     "classes": ["background", "cytoplasm", "organelle"],
     "pairing": {"rule": "neighbours", "max_offset": 2},
     "splits": {"train": ["train_000", ...], "val": [...], "test": [...]},
     "source": "embedded, seed 0"}

``pairing.rule`` is ``"atlas"`` (every case is registered to the case named by
``pairing.atlas``; Brain-MRI) or ``"neighbours"`` (each split is an ordered series of
sections/frames and a case is paired with a neighbour; Platelet-EM, PhC-U373).

Every reader here validates what it reads and names the file at fault; every writer writes to
a temporary file first and renames it, so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

DATASET_NAMES = ("brain-mri", "platelet-em", "phc-u373")
SPLITS = ("train", "val", "test")
PAIRING_RULES = ("atlas", "neighbours")


class DatasetError(ValueError):
    """A dataset folder that does not follow the layout; the message names the file at fault."""


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is a known dataset, else raise a ValueError listing the valid names."""
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return name


@dataclass
class DatasetInfo:
    """The contents of ``dataset.json``."""

    name: str
    ndim: int
    spacing: list[float]
    classes: list[str]
    splits: dict[str, list[str]]
    pairing: dict = field(default_factory=lambda: {"rule": "neighbours", "max_offset": 2})
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def atlas(self) -> str | None:
        """The id of the atlas case for ``pairing.rule == "atlas"``, else None."""
        return self.pairing.get("atlas") if self.pairing["rule"] == "atlas" else None

    def validate(self, where: str = "dataset.json") -> DatasetInfo:
        """Raise DatasetError naming ``where`` if any field is malformed."""
        check = _checker(where)
        check(
            self.name in DATASET_NAMES,
            f"unknown dataset name {self.name!r}; valid names: {', '.join(DATASET_NAMES)}",
        )
        check(self.ndim in (2, 3), f"ndim must be 2 or 3, got {self.ndim!r}")
        check(
            len(self.spacing) == self.ndim and all(s > 0 for s in self.spacing),
            f"spacing must be {self.ndim} positive numbers, got {self.spacing!r}",
        )
        check(
            len(self.classes) >= 2,
            f"need at least 2 classes (incl. background), got {self.classes!r}",
        )
        for split in SPLITS:
            check(split in self.splits, f"split {split!r} is missing")
            check(len(self.splits[split]) > 0, f"split {split!r} is empty")
        rule = self.pairing.get("rule")
        check(rule in PAIRING_RULES, f"pairing rule must be one of {PAIRING_RULES}, got {rule!r}")
        if rule == "atlas":
            check(
                isinstance(self.pairing.get("atlas"), str),
                "pairing rule 'atlas' needs an 'atlas' case id",
            )
        else:
            check(int(self.pairing.get("max_offset", 0)) >= 1, "pairing 'max_offset' must be >= 1")
            for split in SPLITS:
                check(
                    len(self.splits[split]) >= 2,
                    f"split {split!r} needs at least 2 sections/frames to form a neighbour pair",
                )
        return self

    def cases(self) -> list[str]:
        """Every case id the dataset refers to (splits, then the atlas), without repeats."""
        ids = [c for split in SPLITS for c in self.splits[split]]
        if self.atlas is not None:
            ids.append(self.atlas)
        return list(dict.fromkeys(ids))


def _checker(where: str):
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise DatasetError(f"{where}: {message}")

    return check


# ----------------------------------------------------------------------------- atomic writing


def _make_readable(path: str | Path) -> None:
    """Give a temporary file the permissions of an ordinary new file (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_dataset_json(root: str | Path, info: DatasetInfo) -> Path:
    """Validate ``info`` and write it atomically as ``<root>/dataset.json``."""
    info.validate()
    path = Path(root) / "dataset.json"
    atomic_write_bytes(path, (json.dumps(asdict(info), indent=2) + "\n").encode())
    return path


def save_nifti(path: Path, array: np.ndarray, spacing: list[float] | tuple[float, ...]) -> None:
    """Save ``array`` as NIfTI with a diagonal affine of ``spacing`` (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.eye(4)
    for axis, s in enumerate(spacing):
        affine[axis, axis] = s
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:-7]}.", suffix=".nii.gz")
    os.close(fd)
    try:
        nib.save(nib.Nifti1Image(array, affine), tmp)
        _make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_case(
    root: str | Path,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray,
    spacing: list[float] | tuple[float, ...],
    displacement: np.ndarray | None = None,
) -> None:
    """Write one case: image (float32), label (uint8) and optionally its true displacement.

    Shapes: image and label ``(H, W)`` or ``(D, H, W)``; displacement ``(ndim, *spatial)`` in
    voxel units, channel 0 = first spatial axis (the convention of ``transform.warp``).
    """
    root = Path(root)
    image = np.asarray(image, dtype=np.float32)
    label = np.asarray(label)
    if image.shape != label.shape:
        raise DatasetError(
            f"case {case_id!r}: image shape {image.shape} != label shape {label.shape}"
        )
    if not np.isfinite(image).all():
        raise DatasetError(f"case {case_id!r}: image has non-finite values")
    if label.min() < 0 or label.max() > 255:
        raise DatasetError(f"case {case_id!r}: labels must lie in 0..255")
    save_nifti(root / "images" / f"{case_id}.nii.gz", image, spacing)
    save_nifti(root / "labels" / f"{case_id}.nii.gz", label.astype(np.uint8), spacing)
    if displacement is not None:
        displacement = np.asarray(displacement, dtype=np.float32)
        if displacement.shape != (image.ndim, *image.shape):
            raise DatasetError(
                f"case {case_id!r}: displacement must have shape {(image.ndim, *image.shape)}, "
                f"got {displacement.shape}"
            )
        save_nifti(root / "displacements" / f"{case_id}.nii.gz", displacement, spacing)


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A temporary sibling of ``out`` that becomes ``out`` only if the block finishes.

    On an exception the temporary folder is removed and ``out`` is left as it was; on success
    an existing ``out`` is replaced, so nobody ever sees a half-written dataset.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset should not be
    try:
        yield tmp
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap


def _swap_in(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` is moved aside first and deleted after."""
    if not out.exists():
        os.replace(new, out)
        return
    aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.replace(out, aside / out.name)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(aside / out.name, out)  # put the old dataset back
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


# ----------------------------------------------------------------------------- reading


def load_info(root: str | Path) -> DatasetInfo:
    """Read and validate ``<root>/dataset.json``."""
    path = Path(root) / "dataset.json"
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: not a dataset folder (it does not exist)")
    if not path.is_file():
        raise DatasetError(
            f"{path}: missing; {root} is not in the dataset layout "
            "(python -m deepsim_edu data --dataset NAME makes one)"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    known = {"name", "ndim", "spacing", "classes", "splits", "pairing", "source"}
    missing = {"name", "ndim", "spacing", "classes", "splits"} - raw.keys()
    if missing:
        raise DatasetError(f"{path}: missing keys {sorted(missing)}")
    unknown = raw.keys() - known
    if unknown:
        raise DatasetError(f"{path}: unknown keys {sorted(unknown)}")
    return DatasetInfo(**raw).validate(str(path))


def read_nifti(path: str | Path, ndim: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """Load a NIfTI file as a numpy array with exactly ``ndim`` (+ leading channel) axes.

    Trailing singleton axes (some tools save 2D images as (H, W, 1)) are dropped.
    Raises DatasetError naming ``path`` when it is missing, truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    try:
        img = nib.load(path)
        array = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for a broken file
        raise DatasetError(
            f"{path}: corrupt or truncated NIfTI ({type(exc).__name__}: {exc})"
        ) from exc
    while array.ndim > ndim and array.shape[-1] == 1:
        array = array[..., 0]
    spacing = tuple(float(z) for z in img.header.get_zooms()[:ndim])
    return array, spacing


def read_case(root: str | Path, info: DatasetInfo, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one case.

    Returns ``image`` float32 ``(*spatial)`` and ``label`` int64 ``(*spatial)`` with values in
    ``0 .. num_classes - 1``. Raises DatasetError naming the file at fault.
    """
    root = Path(root)
    image_path = root / "images" / f"{case_id}.nii.gz"
    label_path = root / "labels" / f"{case_id}.nii.gz"
    image, _ = read_nifti(image_path, info.ndim)
    label, _ = read_nifti(label_path, info.ndim)
    if image.ndim != info.ndim:
        raise DatasetError(f"{image_path}: expected a {info.ndim}D image, got shape {image.shape}")
    if image.shape != label.shape:
        raise DatasetError(f"{label_path}: label shape {label.shape} != image shape {image.shape}")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise DatasetError(f"{image_path}: image has non-finite values (NaN or inf)")
    if not np.array_equal(label, np.round(label)):
        raise DatasetError(f"{label_path}: labels must be integers")
    label = label.astype(np.int64)
    if label.min() < 0 or label.max() >= info.num_classes:
        raise DatasetError(
            f"{label_path}: labels must lie in 0..{info.num_classes - 1} "
            f"({', '.join(info.classes)}), found {label.min()}..{label.max()}"
        )
    return image, label


def read_displacement(root: str | Path, info: DatasetInfo, case_id: str) -> np.ndarray | None:
    """The generator's true displacement of a case, ``(ndim, *spatial)``, or None if not stored."""
    path = Path(root) / "displacements" / f"{case_id}.nii.gz"
    if not path.exists():
        return None
    array, _ = read_nifti(path, info.ndim + 1)
    return array.astype(np.float32)


def read_noise_mask(root: str | Path, info: DatasetInfo, case_id: str) -> np.ndarray | None:
    """Where a case carries strong noise (embedded 2D series): bool ``(*spatial)``, or None.

    The embedded generators save ``noise_masks/<case>.nii.gz`` (1 inside the noisy patches);
    real datasets have none.
    """
    path = Path(root) / "noise_masks" / f"{case_id}.nii.gz"
    if not path.exists():
        return None
    array, _ = read_nifti(path, info.ndim)
    return array > 0
