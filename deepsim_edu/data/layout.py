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

A case id is a file name, never a path: no ``/`` or ``\\``, no leading ``.`` (so no ``..``),
not empty; ``load_info`` refuses any other. Every file of a case is named by one function,
``case_file(root, kind, case_id)``, which also refuses a path that leads out of the dataset
folder (through a link, say). The splits are disjoint and list each case once.

``check_dataset(root)`` reads every file once — images, labels, and the optional
displacements and noise masks — and checks what the training and evaluation loops rely on
(dims, one shape for what is stacked or paired, integer labels in 0..C-1, finite values); it
raises one DatasetError naming every file at fault, one line each. Training, evaluation and
``python -m deepsim_edu data --source PATH`` run it before anything else.

Every reader here validates what it reads and names the file at fault; every writer writes to
a temporary file first and renames it, so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import nibabel as nib
import numpy as np

DATASET_NAMES = ("brain-mri", "platelet-em", "phc-u373")
SPLITS = ("train", "val", "test")
PAIRING_RULES = ("atlas", "neighbours")
CASE_FOLDERS = ("images", "labels", "displacements", "noise_masks")
CASE_ID_RULE = "a case id names the file images/<id>.nii.gz, so it must be a plain file name"


class DatasetError(ValueError):
    """A dataset folder that does not follow the layout; the message names the file at fault."""


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is a known dataset, else raise a ValueError listing the valid names."""
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return name


# ----------------------------------------------------------------------------- case ids and files


def case_id_problem(case_id: object) -> str | None:
    """Why ``case_id`` is not a plain file name (the reason, as words), or None if it is one."""
    if not isinstance(case_id, str):
        return f"is not a string but {type(case_id).__name__}"
    if not case_id:
        return "is empty"
    if "/" in case_id or "\\" in case_id:
        return "contains a path separator (/ or \\)"
    if case_id.startswith("."):
        return "starts with '.' (a hidden file, '.' or '..')"
    if ":" in case_id or any(ord(c) < 32 for c in case_id):
        return "contains ':' or a control character"
    return None


def case_file(root: str | Path, kind: str, case_id: str) -> Path:
    """``<root>/<kind>/<case_id>.nii.gz``: the one function that names a file of a case.

    ``kind`` is one of ``CASE_FOLDERS``. Raises DatasetError if ``case_id`` is not a plain
    file name (``case_id_problem``) or if the path, links resolved, leaves ``root`` (a dataset
    folder may itself be a link, but what is inside it must stay inside).
    """
    if kind not in CASE_FOLDERS:
        raise ValueError(f"kind must be one of {', '.join(CASE_FOLDERS)}, got {kind!r}")
    root = Path(root)
    problem = case_id_problem(case_id)
    if problem is not None:
        raise DatasetError(f"{root}: case id {case_id!r} {problem}; {CASE_ID_RULE}")
    path = root / kind / f"{case_id}.nii.gz"
    inside, resolved = root.resolve(), path.resolve()
    if not resolved.is_relative_to(inside):
        raise DatasetError(
            f"{path}: leads to {resolved}, outside the dataset folder {inside}; "
            "the files of a dataset must lie inside its folder"
        )
    return path


def _few(items, limit: int = 5) -> str:
    """``'a', 'b', 'c'`` — at most ``limit`` items, then how many more."""
    items = sorted(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _problem_list(where: str | Path, problems: list[str]) -> str:
    """One problem as it is; several under a header line, one line each."""
    if len(problems) == 1:
        return problems[0]
    return f"{where}: {len(problems)} problems, one line each:\n" + "\n".join(
        f"  {p}" for p in problems
    )


# ----------------------------------------------------------------------------- dataset.json


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
        """Raise one DatasetError listing every malformed field (``problems``), naming ``where``."""
        problems = self.problems()
        if problems:
            raise DatasetError(_problem_list(where, [f"{where}: {p}" for p in problems]))
        return self

    def problems(self) -> list[str]:
        """Every way these fields break the layout, one message each; empty if there is none."""
        found: list[str] = []

        def need(ok: bool, message: str) -> bool:
            if not ok:
                found.append(message)
            return ok

        need(
            self.name in DATASET_NAMES,
            f"unknown dataset name {self.name!r}; valid names: {', '.join(DATASET_NAMES)}",
        )
        ndim_ok = type(self.ndim) is int and self.ndim in (2, 3)
        need(ndim_ok, f"ndim must be 2 or 3, got {self.ndim!r}")
        need(
            isinstance(self.spacing, list | tuple)
            and len(self.spacing) == self.ndim
            and all(_is_number(s) and math.isfinite(s) and s > 0 for s in self.spacing),
            f"spacing must be {self.ndim} positive numbers, got {self.spacing!r}",
        )
        need(
            isinstance(self.classes, list | tuple)
            and len(self.classes) >= 2
            and all(isinstance(c, str) for c in self.classes),
            f"need at least 2 class names (incl. background), got {self.classes!r}",
        )
        splits = self._split_problems(need)
        self._pairing_problems(need, splits)
        return found

    def _split_problems(self, need: Callable[[bool, str], bool]) -> dict[str, list[str]]:
        """Each split a non-empty list of plain, unique ids; the splits disjoint.

        Returns the string ids of every split that is a list (for the pairing checks).
        """
        if not need(
            isinstance(self.splits, dict),
            f"splits must map {', '.join(SPLITS)} to lists of case ids, got {self.splits!r}",
        ):
            return {}
        splits = {}
        for split in SPLITS:
            ids = self.splits.get(split)
            if not need(split in self.splits, f"split {split!r} is missing") or not need(
                isinstance(ids, list), f"split {split!r} must be a list of case ids, got {ids!r}"
            ):
                continue
            need(len(ids) > 0, f"split {split!r} is empty")
            for case in ids:
                problem = case_id_problem(case)
                need(problem is None, f"case id {case!r} in split {split!r} {problem}; "
                     f"{CASE_ID_RULE}")  # fmt: skip
            splits[split] = [c for c in ids if isinstance(c, str)]
            repeated = [c for c, n in Counter(splits[split]).items() if n > 1]
            need(not repeated, f"split {split!r} lists {_few(repeated)} more than once")
        for a, b in combinations(splits, 2):
            shared = set(splits[a]) & set(splits[b])
            if shared and set(splits[a]) == set(splits[b]):
                need(False, f"split {b!r} holds exactly the cases of split {a!r} "
                     f"({len(shared)} cases): results on {b!r} would be results on {a!r}; "
                     "the splits must be disjoint")  # fmt: skip
            else:
                need(not shared, f"splits {a!r} and {b!r} share {len(shared)} case(s): "
                     f"{_few(shared)}; a case may be in one split only")  # fmt: skip
        return splits

    def _pairing_problems(
        self, need: Callable[[bool, str], bool], splits: dict[str, list[str]]
    ) -> None:
        if not need(isinstance(self.pairing, dict), f"pairing must be an object, got "
                    f"{self.pairing!r}"):  # fmt: skip
            return
        rule = self.pairing.get("rule")
        if not need(rule in PAIRING_RULES, f"pairing rule must be one of {PAIRING_RULES}, "
                    f"got {rule!r}"):  # fmt: skip
            return
        if rule == "atlas":
            atlas = self.pairing.get("atlas")
            if need(isinstance(atlas, str), "pairing rule 'atlas' needs an 'atlas' case id"):
                problem = case_id_problem(atlas)
                need(problem is None, f"atlas case id {atlas!r} {problem}; {CASE_ID_RULE}")
            return
        offset = self.pairing.get("max_offset", 0)
        need(type(offset) is int and offset >= 1, "pairing 'max_offset' must be a whole "
             f"number >= 1, got {offset!r}")  # fmt: skip
        for split, ids in splits.items():
            need(
                len(ids) != 1,
                f"split {split!r} needs at least 2 sections/frames to form a neighbour pair",
            )

    def cases(self) -> list[str]:
        """Every case id the dataset refers to (splits, then the atlas), without repeats."""
        ids = [c for split in SPLITS for c in self.splits[split]]
        if self.atlas is not None:
            ids.append(self.atlas)
        return list(dict.fromkeys(ids))


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


# ----------------------------------------------------------------------------- atomic writing


def _make_readable(path: str | Path) -> None:
    """Give a temporary file the permissions of an ordinary new file (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    An OSError names ``path``: a write that fails for a full disk names no file, and the
    temporary file is no file the user knows. One that names a folder that could not be made
    (an output under a file, an unwritable folder) keeps naming that folder.
    """
    path = Path(path)
    try:
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
    except OSError as exc:
        named = None if exc.filename is None else Path(os.fsdecode(exc.filename))
        if exc.errno is not None and (named is None or named.name.startswith(f".{path.name}.")):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
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
    noise_mask: np.ndarray | None = None,
) -> None:
    """Write one case: image (float32), label (uint8), optionally its true displacement
    (float32) and noise mask (uint8 0/1); every array is checked before any file is written.

    Shapes: image, label and noise mask ``(H, W)`` or ``(D, H, W)``; displacement
    ``(ndim, *spatial)`` in voxel units, channel 0 = first spatial axis (the convention of
    ``transform.warp``). The files are named by ``case_file`` (a plain case id, inside ``root``).
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
    if not (0 <= label.min() and label.max() <= 255 and np.array_equal(label, np.round(label))):
        raise DatasetError(f"case {case_id!r}: labels must be whole numbers in 0..255")
    files = {"images": image, "labels": label.astype(np.uint8)}
    if displacement is not None:
        displacement = np.asarray(displacement, dtype=np.float32)
        if displacement.shape != (image.ndim, *image.shape):
            raise DatasetError(
                f"case {case_id!r}: displacement must have shape {(image.ndim, *image.shape)}, "
                f"got {displacement.shape}"
            )
        files["displacements"] = displacement
    if noise_mask is not None:
        noise_mask = np.asarray(noise_mask)
        if noise_mask.shape != image.shape or not np.isin(noise_mask, (0, 1)).all():
            raise DatasetError(f"case {case_id!r}: noise mask must be 0/1 of shape {image.shape}")
        files["noise_masks"] = noise_mask.astype(np.uint8)
    paths = {kind: case_file(root, kind, case_id) for kind in files}  # refuses a bad id first
    for kind, array in files.items():
        save_nifti(paths[kind], array, spacing)


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
    """Read and validate ``<root>/dataset.json`` (every problem of it in one DatasetError)."""
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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: must hold a JSON object, got {type(raw).__name__}")
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
        detail = str(exc).replace(f' of "{path}"', "").replace(str(path), "the file")
        raise DatasetError(
            f"{path}: corrupt or truncated NIfTI ({type(exc).__name__}: {detail})"
        ) from exc
    while array.ndim > ndim and array.shape[-1] == 1:
        array = array[..., 0]
    spacing = tuple(float(z) for z in img.header.get_zooms()[:ndim])
    return array, spacing


def _read_image(root: Path, info: DatasetInfo, case_id: str) -> np.ndarray:
    """``images/<case>``: float32 ``(*spatial)``, ``info.ndim`` axes, every voxel finite."""
    path = case_file(root, "images", case_id)
    image, _ = read_nifti(path, info.ndim)
    if image.ndim != info.ndim:
        raise DatasetError(f"{path}: expected a {info.ndim}D image, got shape {image.shape}")
    if image.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: image must hold real numbers, got dtype {image.dtype}")
    image = image.astype(np.float32)
    finite = np.isfinite(image)
    if not finite.all():
        nan = int(np.isnan(image).sum())
        raise DatasetError(
            f"{path}: image has non-finite values (NaN or inf): {nan} NaN and "
            f"{int(finite.size - finite.sum()) - nan} inf voxel(s)"
        )
    return image


def _read_label(
    root: Path, info: DatasetInfo, case_id: str, shape: tuple[int, ...] | None
) -> np.ndarray:
    """``labels/<case>``: int64 class indices in 0..C-1, of the image's ``shape`` (if known)."""
    path = case_file(root, "labels", case_id)
    label, _ = read_nifti(path, info.ndim)
    if shape is not None and label.shape != shape:
        raise DatasetError(f"{path}: label shape {label.shape} != image shape {shape}")
    if label.ndim != info.ndim:
        raise DatasetError(f"{path}: expected a {info.ndim}D label map, got shape {label.shape}")
    if label.dtype.kind == "f":  # whole numbers stored as floats are fine
        fractional = ~np.isfinite(label) | (label != np.round(label))
        if fractional.any():
            raise DatasetError(f"{path}: labels must be integers (class indices), found "
                               f"{label[fractional].flat[0]}")  # fmt: skip
    elif label.dtype.kind not in "biu":
        raise DatasetError(f"{path}: labels must be integers (class indices), found dtype "
                           f"{label.dtype}")  # fmt: skip
    label = label.astype(np.int64)
    if label.min() < 0 or label.max() >= info.num_classes:
        raise DatasetError(
            f"{path}: labels must lie in 0..{info.num_classes - 1} "
            f"({', '.join(info.classes)}), found {label.min()}..{label.max()}"
        )
    return label


def read_case(root: str | Path, info: DatasetInfo, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one case.

    Returns ``image`` float32 ``(*spatial)`` and ``label`` int64 ``(*spatial)`` with values in
    ``0 .. num_classes - 1``. Raises DatasetError naming the file at fault.
    """
    root = Path(root)
    image = _read_image(root, info, case_id)
    return image, _read_label(root, info, case_id, image.shape)


def _read_displacement(
    path: Path, info: DatasetInfo, shape: tuple[int, ...] | None
) -> np.ndarray:
    """A displacement file: float32 ``(ndim, *shape)``, finite."""
    array, _ = read_nifti(path, info.ndim + 1)
    expected = (info.ndim, *shape) if shape is not None else None
    if (expected is not None and array.shape != expected) or (
        array.ndim != info.ndim + 1 or array.shape[0] != info.ndim
    ):
        want = expected or f"({info.ndim}, *spatial)"
        raise DatasetError(f"{path}: displacement must have shape {want}, got {array.shape}")
    if array.dtype.kind not in "biuf" or not np.isfinite(array).all():
        raise DatasetError(f"{path}: displacement has non-finite values (NaN or inf)")
    return array.astype(np.float32)


def read_displacement(root: str | Path, info: DatasetInfo, case_id: str) -> np.ndarray | None:
    """The generator's true displacement of a case, ``(ndim, *spatial)``, or None if not stored."""
    path = case_file(root, "displacements", case_id)
    if not path.exists():
        return None
    return _read_displacement(path, info, None)


def _read_noise_mask(path: Path, info: DatasetInfo, shape: tuple[int, ...] | None) -> np.ndarray:
    """A noise mask file: 0/1 ``(*shape)`` as bool."""
    array, _ = read_nifti(path, info.ndim)
    if (shape is not None and array.shape != shape) or array.ndim != info.ndim:
        want = shape or f"{info.ndim} axes"
        raise DatasetError(f"{path}: noise mask must have the image's shape {want}, "
                           f"got {array.shape}")  # fmt: skip
    if array.dtype.kind not in "biuf" or not np.isin(array, (0, 1)).all():
        raise DatasetError(f"{path}: noise mask must hold 0 and 1 only")
    return array > 0


def read_noise_mask(root: str | Path, info: DatasetInfo, case_id: str) -> np.ndarray | None:
    """Where a case carries strong noise (embedded 2D series): bool ``(*spatial)``, or None.

    The embedded generators save ``noise_masks/<case>.nii.gz`` (1 inside the noisy patches);
    real datasets have none.
    """
    path = case_file(root, "noise_masks", case_id)
    if not path.exists():
        return None
    return _read_noise_mask(path, info, None)


# ----------------------------------------------------------------------------- the full check


@dataclass
class CaseSummary:
    """What ``check_dataset`` keeps of a case: its shape, intensity range, voxels per class."""

    shape: tuple[int, ...]
    low: float
    high: float
    class_voxels: np.ndarray  # (C,) int


@dataclass
class DatasetReport:
    """The outcome of ``check_dataset``: a dataset with no problems, and what is in it."""

    root: Path
    info: DatasetInfo
    cases: dict[str, CaseSummary]
    optional_files: dict[str, int]  # folder -> files checked ("displacements", "noise_masks")
    seconds: float

    @property
    def files(self) -> int:
        """How many files were read: an image and a label per case, plus the optional ones."""
        return 2 * len(self.cases) + sum(self.optional_files.values())

    def summary(self) -> list[str]:
        """One line per split (cases, shapes, intensity range, classes present), the atlas, and
        what was checked."""
        info, lines = self.info, []
        for split in SPLITS:
            cases = [self.cases[c] for c in info.splits[split]]
            shape = ", ".join(str(s) for s in sorted({c.shape for c in cases}))
            voxels = sum(c.class_voxels for c in cases)
            missing = [info.classes[k] for k in range(info.num_classes) if voxels[k] == 0]
            lines.append(
                f"{info.name} {split:<5}: {len(cases):3d} cases, shape {shape}, intensity "
                f"{min(c.low for c in cases):.2f}..{max(c.high for c in cases):.2f}, classes "
                f"present {info.num_classes - len(missing)}/{info.num_classes}"
                + (f" (missing: {', '.join(missing)})" if missing else "")
            )
        if info.atlas is not None:
            lines.append(f"{info.name} atlas: {info.atlas}, shape {self.cases[info.atlas].shape}")
        optional = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in self.optional_files.items())
        lines.append(f"{info.name} check: {self.files} files read ({len(self.cases)} images, "
                     f"{len(self.cases)} labels, {optional}) in {self.seconds:.1f} s, "
                     "no problems")  # fmt: skip
        return lines


def _collect(problems: list[str], read: Callable, *args):
    """``read(*args)``, or None with its DatasetError's message appended to ``problems``."""
    try:
        return read(*args)
    except DatasetError as exc:
        problems.append(str(exc))
        return None


# root → (the files' state when it was checked, the report): a dataset whose files are as they
# were when it passed is not read again in this process (``checked_before``)
_PASSED: dict[Path, tuple[tuple, DatasetReport]] = {}


def _files_state(root: Path) -> tuple:
    """(path, inode, size, mtime_ns) of every file under ``root``, sorted: any write changes it
    (the library writes a new file and moves it into place, which also changes the inode)."""
    state = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            st = os.stat(path)
            state.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(sorted(state))


def checked_before(root: str | Path) -> DatasetReport | None:
    """The report of this process's last ``check_dataset(root)`` that passed, if no file under
    ``root`` was added, removed or written since; else None (the dataset must be checked)."""
    root = Path(root).resolve()
    passed = _PASSED.get(root)
    return passed[1] if passed is not None and passed[0] == _files_state(root) else None


def check_dataset(
    root: str | Path, keep: Callable[[str, np.ndarray, np.ndarray], None] | None = None
) -> DatasetReport:
    """Check a whole dataset folder before it is used; return what is in it.

    ``dataset.json`` first (``load_info``: plain unique case ids, disjoint splits, ...), then
    every file of every case, each read once: the image (``info.ndim`` axes, finite), the
    label (the image's shape, integers in 0..C-1), and the optional displacement
    ``(ndim, *spatial)`` (finite) and noise mask (the image's shape, 0/1). Last, one shape for
    what is stacked or paired together: with the atlas rule every case has the atlas's shape;
    with the neighbour rule the cases of a split share one shape.

    ``keep(case, image, label)`` is called for each case that passed (``CaseStore.check``
    keeps them in memory, so nothing is read twice). Raises one DatasetError that names every
    file at fault, one line each.
    """
    started, root = time.perf_counter(), Path(root)
    state = _files_state(root.resolve()) if root.is_dir() else None
    info = load_info(root)
    problems: list[str] = []
    cases, shapes = {}, {}
    optional = {"displacements": 0, "noise_masks": 0}
    readers = {"displacements": _read_displacement, "noise_masks": _read_noise_mask}
    for case in info.cases():
        image = _collect(problems, _read_image, root, info, case)
        shape = None if image is None else image.shape
        if shape is not None:
            shapes[case] = shape
        label = _collect(problems, _read_label, root, info, case, shape)
        if image is not None and label is not None:
            voxels = np.bincount(label.ravel(), minlength=info.num_classes)
            cases[case] = CaseSummary(shape, float(image.min()), float(image.max()), voxels)
            if keep is not None:
                keep(case, image, label)
        for kind, read in readers.items():
            path = _collect(problems, case_file, root, kind, case)
            if path is not None and path.exists():
                optional[kind] += 1
                _collect(problems, read, path, info, shape)
    problems += _shape_problems(root, info, shapes)
    if problems:
        raise DatasetError(_problem_list(root, problems))
    report = DatasetReport(root, info, cases, optional, time.perf_counter() - started)
    _PASSED[root.resolve()] = (state, report)
    return report


def _shape_problems(root: Path, info: DatasetInfo, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Images whose shape differs from the one they are stacked or paired with.

    Atlas rule: every subject is paired with the atlas, so every case needs the atlas's shape.
    Neighbour rule: a split's cases are stacked into batches and paired with each other, so
    each split needs one shape (the most common one is taken as right).
    """
    if info.atlas is not None:
        groups = {"the atlas (every case is paired with it)": info.cases()}
        reference = {next(iter(groups)): shapes.get(info.atlas)}
    else:
        groups = {f"split {s!r} (its cases are stacked and paired)": info.splits[s] for s in SPLITS}
        reference = {}
    problems = []
    for group, ids in groups.items():
        found = [shapes[c] for c in ids if c in shapes]
        want = reference.get(group) or (Counter(found).most_common(1)[0][0] if found else None)
        for case in ids:
            if case in shapes and shapes[case] != want:
                problems.append(f"{case_file(root, 'images', case)}: shape {shapes[case]} differs "
                                f"from the shape {want} of {group}")  # fmt: skip
    return problems
