"""Brain-MRI: download the neurite-oasis v1.0 release of OASIS-1 and convert it to the layout.

Source: "Neurite OASIS sample data" by A. Hoopes and A. V. Dalca
(https://github.com/adalca/medical-datasets/blob/master/neurite-oasis.md): 414 OASIS-1 T1 scans
processed with FreeSurfer and SAMSEG — skull-stripped, bias-corrected, scaled to [0, 1], affinely
aligned to FreeSurfer's Talairach space and cropped to 160 × 192 × 224 at 1 mm. Use is governed
by the OASIS Data Use Agreement; cite HyperMorph (Hoopes et al. 2021) and OASIS (Marcus et al.
2007). Archive structure (a plain ``.tar``, 6.6 GB)::

    OASIS_OAS1_0001_MR1/aligned_norm.nii.gz     the image used here
    OASIS_OAS1_0001_MR1/aligned_seg4.nii.gz     4-label tissue map
    OASIS_OAS1_0001_MR1/aligned_seg35.nii.gz    35-label anatomical map
    OASIS_OAS1_0001_MR1/{orig,norm,seg*,slice_*}.nii.gz   scanner space / 2D slices: not used
    seg4_labels.txt, seg35_labels.txt           FreeSurfer colour tables (id name r g b a)
    subjects.txt

Only the files above that are used are extracted (the archive is still checked member by
member). Conversion:
- ``--labels 4`` (default) or ``35``: ``aligned_seg4`` (0 background, 1 cortex, 2 subcortical
  grey matter, 3 white matter, 4 CSF) or ``aligned_seg35``. Class names and ids are read from
  the archive's ``seg*_labels.txt`` and the ids renumbered 0..C-1 in id order (the identity when
  they are consecutive); class 0 is named "background". Without the colour table the ids must
  be 0..4 (or 0..35) and get the names above (or ``label_01`` …).
- intensities: ``aligned_norm`` as stored (already in [0, 1]), float32; spacing from its header.
- pairing ``atlas``: every subject is registered to one atlas subject, by default the first in
  sorted order (``OASIS_OAS1_0001_MR1`` in the real release; ``--atlas`` chooses another). The
  atlas is in no split. Of the other subjects, sorted by id, the last 50 are test, the 50 before
  them val, the rest (313 in the real release) train (``--n-val``, ``--n-test``).
**Not verified here**: whether the tar has a top-level folder (subjects are found at any depth)
and the exact colour-table names; the real archive could not be downloaded offline, and no
checksum is published (its sha256 is printed for you to pin).

Usage: ``python -m data_scripts.oasis --out data/brain-mri [--labels 35]``
"""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
from tqdm import tqdm

from data_scripts._common import Source, count_argument, make_parser, run
from deepsim_edu.data.layout import DatasetError, DatasetInfo, write_case, write_dataset_json

SOURCE = Source(
    url="https://surfer.nmr.mgh.harvard.edu/ftp/data/neurite/data/neurite-oasis.v1.0.tar",
    filename="neurite-oasis.v1.0.tar",
    note="no published checksum: verified by format only; the sha256 is printed to pin",
)
IMAGE_FILE = "aligned_norm.nii.gz"
SEG4_NAMES = ["background", "cortex", "subcortical-grey-matter", "white-matter", "csf"]
N_VAL, N_TEST = 50, 50


def wanted_member(labels: int):
    """A predicate choosing the archive members this conversion reads."""
    keep = {IMAGE_FILE, f"aligned_seg{labels}.nii.gz", f"seg{labels}_labels.txt"}
    return lambda name: PurePosixPath(name).name in keep


def read_colour_table(path: Path) -> list[tuple[int, str]]:
    """``(id, name)`` rows of a FreeSurfer colour table (``id name r g b a``), sorted by id."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            rows.append((int(parts[0]), parts[1]))
    if not rows:
        raise DatasetError(f"{path}: no 'id name r g b a' rows found")
    return sorted(rows)


def class_table(root: Path, labels: int) -> tuple[list[str], np.ndarray]:
    """Class names and a lookup array ``original id -> class index`` (-1: unknown id)."""
    tables = sorted(root.rglob(f"seg{labels}_labels.txt"))
    if tables:
        rows = read_colour_table(tables[0])
        ids, names = [i for i, _ in rows], [n for _, n in rows]
    else:
        ids = list(range(labels + 1))
        names = SEG4_NAMES if labels == 4 else [f"label_{i:02d}" for i in ids]
    names = list(names)
    if ids[0] == 0:
        names[0] = "background"
    lookup = np.full(max(ids) + 1, -1, dtype=np.int64)
    lookup[ids] = np.arange(len(ids))
    return names, lookup


def find_subjects(root: Path, labels: int) -> dict[str, Path]:
    """``{subject id: folder}`` of every folder holding the image and the chosen label map."""
    subjects = {}
    for image in sorted(root.rglob(IMAGE_FILE)):
        folder = image.parent
        if not (folder / f"aligned_seg{labels}.nii.gz").is_file():
            raise DatasetError(f"{folder}: has {IMAGE_FILE} but no aligned_seg{labels}.nii.gz")
        subjects[folder.name] = folder
    if not subjects:
        raise DatasetError(f"{root}: no subject folders with {IMAGE_FILE} in the archive")
    return subjects


def make_splits(ids: list[str], atlas: str, n_val: int, n_test: int) -> dict[str, list[str]]:
    """Sorted non-atlas subjects: last ``n_test`` test, ``n_val`` before them val, rest train."""
    rest = sorted(i for i in ids if i != atlas)
    if len(rest) < n_val + n_test + 1:
        raise DatasetError(f"{len(rest)} subjects besides the atlas are too few for "
                           f"{n_val} val + {n_test} test + at least 1 train")
    n_train = len(rest) - n_val - n_test
    return {"train": rest[:n_train], "val": rest[n_train:n_train + n_val],
            "test": rest[n_train + n_val:]}


def read_subject(folder: Path, labels: int, lookup: np.ndarray):
    """Image (float32), label (class indices) and spacing of one subject."""
    image_path, label_path = folder / IMAGE_FILE, folder / f"aligned_seg{labels}.nii.gz"
    try:
        nifti = nib.load(image_path)
        image = np.asarray(nifti.dataobj, dtype=np.float32)
        label = np.asarray(nib.load(label_path).dataobj)
    except Exception as exc:  # nibabel raises many types for a broken file
        raise DatasetError(f"{folder}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    if image.ndim != 3 or image.shape != label.shape:
        raise DatasetError(f"{label_path}: shape {label.shape} does not match image {image.shape}")
    if not np.array_equal(label, np.round(label)) or label.min() < 0 or label.max() >= len(lookup):
        raise DatasetError(f"{label_path}: label values outside the colour table's ids")
    classes = lookup[label.astype(np.int64)]
    if (classes < 0).any():
        unknown = np.unique(label[classes < 0]).astype(int).tolist()
        raise DatasetError(f"{label_path}: label ids {unknown[:5]} are not in the colour table")
    spacing = [float(s) for s in nifti.header.get_zooms()[:3]]
    return image, classes.astype(np.uint8), spacing


def convert(source_root: Path, out_dir: Path, labels: int = 4, atlas: str | None = None,
            n_val: int = N_VAL, n_test: int = N_TEST) -> DatasetInfo:
    """Convert an extracted neurite-oasis archive under ``source_root`` into ``out_dir``."""
    if labels not in (4, 35):
        raise DatasetError(f"--labels must be 4 or 35, got {labels}")
    source_root, out_dir = Path(source_root), Path(out_dir)
    subjects = find_subjects(source_root, labels)
    atlas = atlas or sorted(subjects)[0]
    if atlas not in subjects:
        raise DatasetError(f"{source_root}: atlas subject {atlas!r} is not in the archive")
    splits = make_splits(list(subjects), atlas, n_val, n_test)
    classes, lookup = class_table(source_root, labels)
    spacing = None
    for subject in tqdm([atlas, *sum(splits.values(), [])], desc="subjects", disable=None):
        image, label, spacing_here = read_subject(subjects[subject], labels, lookup)
        spacing = spacing or spacing_here
        write_case(out_dir, subject, image, label, spacing=spacing_here)
    info = DatasetInfo(
        name="brain-mri", ndim=3, spacing=spacing, classes=classes, splits=splits,
        pairing={"rule": "atlas", "atlas": atlas},
        source=f"neurite-oasis v1.0 ({SOURCE.url}), aligned_norm + aligned_seg{labels}; "
               "OASIS Data Use Agreement applies; converted by data_scripts/oasis.py",
    )
    write_dataset_json(out_dir, info)  # last: a folder with dataset.json is complete
    return info


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, SOURCE)
    parser.add_argument("--labels", type=int, choices=(4, 35), default=4,
                        help="which label map: 4 tissue classes or 35 structures (default 4)")
    parser.add_argument("--atlas", help="subject id of the atlas (default: the first, sorted)")
    parser.add_argument("--n-val", type=count_argument(0), default=N_VAL,
                        help=f"val subjects (default {N_VAL})")
    parser.add_argument("--n-test", type=count_argument(0), default=N_TEST,
                        help=f"test subjects (default {N_TEST})")
    args = parser.parse_args(argv)

    def convert_args(src: Path, out: Path) -> DatasetInfo:
        return convert(src, out, labels=args.labels, atlas=args.atlas,
                       n_val=args.n_val, n_test=args.n_test)

    return run(args, SOURCE, convert_args, members=wanted_member(args.labels))


if __name__ == "__main__":
    sys.exit(main())
