"""A user's images and label maps in, registration results out: NIfTI (2D or 3D), PNG and TIFF
(2D, read with Pillow).

* ``read_image(path)`` → ``UserImage``: the voxels ``(H, W)`` or ``(D, H, W)`` in the order the
  file stores them (NIfTI: the data array's axes i, j, k; PNG/TIFF: rows, columns) and the
  geometry that places them in the world (NIfTI: its affine, qform/sform codes and units;
  PNG/TIFF: the identity, one pixel = one unit).
* ``read_labels(path, like)``: a label map of class indices (whole numbers ≥ 0) of the image's
  shape, as int64.
* ``write_nifti`` / ``write_displacement``: arrays on the fixed image's grid, written with its
  geometry, so that every output overlays the fixed image in a viewer.

Every problem is an ``InputError`` (a ValueError) of one line that names the file: missing,
unreadable, not 2D/3D (a 4D volume), not one real number per voxel, NaN or inf, a label map
that is not whole numbers or not of its image's shape.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .data.layout import atomic_write_bytes

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PILLOW_SUFFIXES = (".png", ".tif", ".tiff")
SUFFIXES = NIFTI_SUFFIXES + PILLOW_SUFFIXES
# Pillow modes holding one number per pixel (1: bilevel, L: 8 bit, I;16*: 16 bit, I: 32-bit
# integers, F: 32-bit floats; P: palette indices, read as the indices)
GREY_MODES = ("1", "L", "P", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


class InputError(ValueError):
    """A file that ``register`` cannot use; the message (one line) names it and why."""


@dataclass
class Geometry:
    """Where voxels lie in the world: a 4×4 affine (voxel index → world, mm for NIfTI) and, for
    NIfTI, its qform/sform codes and units, kept so that outputs carry them unchanged."""

    affine: np.ndarray
    qform_code: int = 1
    sform_code: int = 1
    units: tuple[str, str] = ("mm", "sec")

    def spacing(self, ndim: int) -> tuple[float, ...]:
        """The voxel size along each array axis: the length of the affine's column k."""
        return tuple(float(np.linalg.norm(self.affine[:3, k])) for k in range(ndim))


@dataclass
class UserImage:
    """An image read by ``read_image``: ``array`` ``(*spatial)`` (its stored dtype), where it
    came from and its ``geometry``; ``notes`` say what was done to it on reading."""

    path: Path
    array: np.ndarray
    geometry: Geometry
    kind: str  # "nifti" | "png" | "tiff"
    notes: list[str] = field(default_factory=list)

    @property
    def ndim(self) -> int:
        return self.array.ndim


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    try:
        img = nib.load(path)
        array = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for a broken file
        raise InputError(f"{path}: not a readable NIfTI file ({_first_line(exc)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path}: not a NIfTI image but {type(img).__name__}")
    header = img.header
    units = tuple(u or "unknown" for u in header.get_xyzt_units())
    geometry = Geometry(np.asarray(img.affine, dtype=float), int(header["qform_code"]),
                        int(header["sform_code"]), units)  # fmt: skip
    return array, geometry


def _read_pillow(path: Path, labels: bool) -> tuple[np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    try:
        with Image.open(path) as picture:
            frames = getattr(picture, "n_frames", 1)
            if frames > 1:
                raise InputError(f"{path}: a TIFF of {frames} pages; register reads 2D TIFF "
                                 "images of one page (save a 3D volume as NIfTI)")  # fmt: skip
            mode, notes = picture.mode, []
            if mode not in GREY_MODES:
                if labels:
                    raise InputError(f"{path}: a {mode} image; a label map needs one class index "
                                     "per pixel (a greyscale or palette image)")  # fmt: skip
                picture = picture.convert("L")
                notes.append(f"{path.name}: {mode} converted to grey (ITU-R 601 luma, 8 bit)")
            array = np.array(picture)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: not a readable PNG/TIFF image ({_first_line(exc)})") from None
    return array, notes


def _load(path: str | Path, labels: bool = False) -> UserImage:
    """A file's voxels as stored, trailing axes of size 1 dropped; 2D or 3D, real numbers."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; register reads "
                         f"{', '.join(SUFFIXES)}")  # fmt: skip
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if suffix in NIFTI_SUFFIXES:
        (array, geometry), notes, kind = _read_nifti(path), [], "nifti"
    else:
        array, notes = _read_pillow(path, labels)
        geometry, kind = Geometry(np.eye(4), units=("unknown", "unknown")), suffix[1:4]
        kind = "tiff" if kind == "tif" else kind
    while array.ndim > 2 and array.shape[-1] == 1:  # (H, W, 1) → (H, W), as many tools save 2D
        array = array[..., 0]
    if array.ndim > 3:
        raise InputError(f"{path}: a {array.ndim}D volume of shape {array.shape}; register reads "
                         "one 2D or 3D image (take one volume of a series first)")  # fmt: skip
    if array.ndim < 2 or min(array.shape) < 2:
        raise InputError(f"{path}: shape {array.shape} is no 2D or 3D image (≥ 2 voxels per axis)")
    if array.dtype.kind not in "buif":
        raise InputError(f"{path}: voxels of type {array.dtype} (RGB or complex?); register needs "
                         "one real number per voxel")  # fmt: skip
    return UserImage(path, array, geometry, kind, notes)


def read_image(path: str | Path) -> UserImage:
    """An image for registration: 2D or 3D, one finite real number per voxel (colour PNG/TIFF
    converted to grey, noted in ``notes``). InputError naming the file otherwise."""
    image = _load(path)
    finite = np.isfinite(image.array)
    if not finite.all():
        raise InputError(f"{image.path}: {int(finite.size - finite.sum())} NaN or inf voxel(s); "
                         "register needs finite intensities")  # fmt: skip
    return image


def read_labels(path: str | Path, like: UserImage) -> np.ndarray:
    """A label map for ``like``: class indices, whole numbers ≥ 0 (stored as integers or as
    whole floats), of ``like``'s shape; int64 ``(*spatial)``. InputError naming the file."""
    labels = _load(path, labels=True)
    array, path = labels.array, labels.path
    if array.shape != like.array.shape:
        raise InputError(f"{path}: label map of shape {array.shape}, but its image "
                         f"{like.path.name} has shape {like.array.shape}")  # fmt: skip
    if array.dtype.kind == "f":
        fractional = ~np.isfinite(array) | (array != np.round(array))
        if fractional.any():
            raise InputError(f"{path}: labels must be whole numbers (class indices), found "
                             f"{array[fractional].flat[0]!r}")  # fmt: skip
    if array.min() < 0:
        raise InputError(f"{path}: labels must be class indices >= 0, found {array.min()}")
    return array.astype(np.int64)


# ----------------------------------------------------------------------------- writing


def nifti_bytes(
    array: np.ndarray, geometry: Geometry, description: str = "", intent: str | None = None
) -> bytes:
    """The bytes of a gzipped NIfTI-1 file of ``array`` with ``geometry`` (affine as both
    qform and sform, with their codes; the units) and ``intent`` (e.g. "vector"). The same
    input gives the same bytes."""
    img = nib.Nifti1Image(np.asarray(array), geometry.affine)
    img.set_qform(geometry.affine, code=max(geometry.qform_code, 1))
    img.set_sform(geometry.affine, code=max(geometry.sform_code, 1))
    units = [u if u in nib.nifti1.unit_codes.value_set("label") else "unknown"
             for u in geometry.units]  # fmt: skip
    img.header.set_xyzt_units(*units)
    if description:
        img.header["descrip"] = description[:79].encode()
    if intent is not None:
        img.header.set_intent(intent)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def write_nifti(path: str | Path, array: np.ndarray, geometry: Geometry, description: str = ""):
    """Write ``array`` ``(*spatial)`` as ``path`` (.nii.gz) with ``geometry`` (atomic)."""
    atomic_write_bytes(path, nifti_bytes(array, geometry, description))


def displacement_array(u: np.ndarray) -> np.ndarray:
    """A displacement ``(ndim, *spatial)`` as the NIfTI vector layout ``(X, Y, Z, 1, ndim)``:
    spatial axes first (a 2D grid gets Z = 1), time 1, then the components."""
    ndim = u.shape[0]
    data = np.moveaxis(u, 0, -1)  # (*spatial, ndim)
    for _ in range(3 - ndim):
        data = data[..., None, :]
    return data[..., None, :].astype(np.float32)


def write_displacement(path: str | Path, u: np.ndarray, geometry: Geometry) -> None:
    """Write the displacement u ``(ndim, *spatial)`` (voxels; component k along array axis k)
    as a NIfTI vector field ``(X, Y, Z, 1, ndim)`` (intent "vector") with ``geometry``."""
    about = "u in voxels, component k along array axis k; moving read at x+u(x)"
    atomic_write_bytes(path, nifti_bytes(displacement_array(u), geometry, about, "vector"))


def read_displacement(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A displacement written by ``write_displacement``: u ``(ndim, *spatial)`` and the affine."""
    img = nib.load(path)
    data = np.asarray(img.dataobj)  # (X, Y, Z, 1, ndim)
    ndim = data.shape[-1]
    u = np.moveaxis(data[..., 0, :], -1, 0)  # (ndim, X, Y, Z)
    return u[(slice(None),) + (slice(None),) * ndim + (0,) * (3 - ndim)], np.asarray(img.affine)
