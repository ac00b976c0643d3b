"""Platelet-EM: download the bio3d-vision ``platelet-em`` archive and convert it to the layout.

Source: the *platelet-em* dataset of NIH/NIBIB LCIMB and the Storrie lab (Guay et al.), page
https://bio3d-vision.github.io/platelet-description — two serial-block-face SEM volumes of
human platelets, ``50-images.tif`` (50 × 800 × 800) and ``24-images.tif`` (24 × 800 × 800),
multi-page TIFFs, with semantic labels of 7 classes: 0 background, 1 cell, 2 mitochondrion,
3 alpha granule, 4 canalicular vessel, 5 dense granule, 6 dense granule core.

Archive structure this script expects (found anywhere below the archive root)::

    platelet-em/images/50-images.tif, 24-images.tif
    platelet-em/labels-semantic/50-semantic.tif, 24-semantic.tif    (colour TIFFs), or
    labels-class/50-class.tif, 24-class.tif                         (class-index TIFFs)

The download page's current archive (``images_and_labels_rgba.zip``) stores the semantic labels
as RGBA colours; an older release (``images-and-labels.zip``, 2019) as RGB colours; the paper's
own copy as class indices (``labels-class``). All three are read: index TIFFs directly, colour
TIFFs through the two colour tables below (taken from bio3d-vision's ``rgb_to_index.py`` for
RGB and from FastEstimator's loader of the RGBA archive). An unknown colour is an error that
names the file, never a silent background. **Not verified here**: the real archives could not be
downloaded offline; their member layout and colours are taken from those sources.

Conversion (the paper's, DeepSimRegistration: src/datasets/tif_stack_dataset.py and its helpers.py):
- classes reduced to 3 as in the paper's ``helpers.py`` (``label[label > 1] = 2``):
  0 background, 1 cytoplasm (= cell), 2 organelle (= classes 2–6);
- intensities / 256 (the paper's ``x / 2**8``; see ``_common.scale_intensity``);
- splits: train = all 50 sections of the 50-stack; val = sections 0–11 and test = sections
  12–23 of the 24-stack (the first and second half); each split ordered by section index;
- pairing ``neighbours`` with ``max_offset`` 2; spacing (1, 1) pixel (the voxels are about
  10 × 10 nm in-plane, 40 nm apart).

Usage: ``python -m data_scripts.platelet_em --out data/platelet-em``
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_scripts._common import (
    Source,
    find_unique,
    make_parser,
    read_tiff_stack,
    run,
    scale_intensity,
)
from deepsim_edu.data.layout import DatasetError, DatasetInfo, write_case, write_dataset_json

SOURCES = {
    # The download page's current "images and TIF labels" archive (95.3 MB). No checksum is
    # published: it is verified by format only, and its sha256 is printed for you to pin.
    "rgba": Source(
        url="https://www.dropbox.com/s/pvrfnurjq11k0l3/images_and_labels_rgba.zip?dl=1",
        filename="images_and_labels_rgba.zip",
    ),
    # The 2019 "images and labels" archive (95.8 MB), RGB labels; md5 as pinned by bio3d-vision's
    # own downloader (download_if_needed.py, 11 September 2019).
    "rgb-2019": Source(
        url="https://www.dropbox.com/s/lo6i7v2mc9z2wft/images-and-labels.zip?dl=1",
        filename="images-and-labels.zip",
        md5="e3a7bb0b0099220781bfea3e5ee9430c",
    ),
}
SOURCE = SOURCES["rgba"]

CLASSES = ["background", "cytoplasm", "organelle"]
TRAIN_STACK, EVAL_STACK = "50", "24"

# Colour (R, G, B) -> original class 0..6. Alpha 0 is background whatever the colour.
COLOURS_RGB = {  # bio3d-vision rgb_to_index.py, RGB release
    (0, 0, 0): 0, (1, 1, 224): 1, (1, 171, 254): 2, (1, 254, 1): 3,
    (255, 224, 0): 4, (250, 94, 0): 5, (245, 0, 203): 6,
}
COLOURS_RGBA = {  # FastEstimator's loader of images_and_labels_rgba.zip
    (0, 0, 0): 0, (0, 40, 255): 1, (0, 212, 255): 2, (124, 255, 121): 3,
    (127, 0, 0): 4, (255, 70, 0): 5, (255, 229, 0): 6,
}
COLOURS = {**COLOURS_RGB, **COLOURS_RGBA}


def reduce_classes(label: np.ndarray) -> np.ndarray:
    """Classes 0..6 -> 0 background, 1 cytoplasm, 2 organelle (the paper's ``> 1 -> 2``)."""
    return np.where(label > 1, 2, label).astype(np.uint8)


def colours_to_classes(rgb: np.ndarray, where: Path) -> np.ndarray:
    """``(..., 3 or 4)`` colour labels -> original class indices 0..6; unknown colour: error."""
    rgb = rgb.astype(np.int64)
    keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if rgb.shape[-1] == 4:
        keys = np.where(rgb[..., 3] == 0, 0, keys)  # transparent = background
    table = {(r << 16) | (g << 8) | b: c for (r, g, b), c in COLOURS.items()}
    unique, inverse = np.unique(keys, return_inverse=True)
    unknown = [k for k in unique.tolist() if k not in table]
    if unknown:
        shown = ", ".join(str(((k >> 16) & 255, (k >> 8) & 255, k & 255)) for k in unknown[:5])
        raise DatasetError(f"{where}: label colours not in the platelet-em colour tables: {shown}")
    classes = np.array([table[k] for k in unique.tolist()], dtype=np.uint8)
    return classes[inverse].reshape(keys.shape)


def read_labels(root: Path, stack: str) -> np.ndarray:
    """Class indices 0..6 of one stack, ``(sections, H, W)``, from whichever label file exists."""
    for pattern in (f"labels-class-all/{stack}-class.tif", f"labels-class/{stack}-class.tif"):
        if any(root.rglob(pattern)):
            path = find_unique(root, pattern)
            labels = read_tiff_stack(path)
            if labels.ndim != 3 or labels.max() > 6:
                raise DatasetError(f"{path}: expected class indices 0..6, got shape "
                                   f"{labels.shape} and maximum {labels.max()}")
            return labels
    path = find_unique(root, f"labels-semantic/{stack}-semantic.tif")
    labels = read_tiff_stack(path)
    if labels.ndim != 4 or labels.shape[-1] not in (3, 4):
        raise DatasetError(f"{path}: expected an RGB or RGBA stack, got shape {labels.shape}")
    return colours_to_classes(labels, path)


def read_stack(root: Path, stack: str) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1) and 3-class labels of one stack, both ``(sections, H, W)``."""
    path = find_unique(root, f"images/{stack}-images.tif")
    images = read_tiff_stack(path)
    if images.ndim != 3:
        raise DatasetError(f"{path}: expected a grey-value stack, got shape {images.shape}")
    labels = reduce_classes(read_labels(root, stack))
    if labels.shape != images.shape:
        raise DatasetError(f"{path}: images {images.shape} and labels {labels.shape} differ")
    return scale_intensity(images, path), labels


def convert(source_root: Path, out_dir: Path) -> DatasetInfo:
    """Convert an extracted platelet-em archive under ``source_root`` into ``out_dir``."""
    source_root, out_dir = Path(source_root), Path(out_dir)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for stack in (TRAIN_STACK, EVAL_STACK):
        images, labels = read_stack(source_root, stack)
        half = len(images) // 2
        for z in tqdm(range(len(images)), desc=f"{stack}-stack", disable=None):
            case = f"stack{stack}_z{z:03d}"
            write_case(out_dir, case, images[z], labels[z], spacing=(1.0, 1.0))
            split = "train" if stack == TRAIN_STACK else ("val" if z < half else "test")
            splits[split].append(case)
    info = DatasetInfo(
        name="platelet-em", ndim=2, spacing=[1.0, 1.0], classes=list(CLASSES), splits=splits,
        pairing={"rule": "neighbours", "max_offset": 2},
        source="bio3d-vision platelet-em (https://bio3d-vision.github.io/platelet-description), "
               "3 classes, intensity / 256; converted by data_scripts/platelet_em.py",
    )
    write_dataset_json(out_dir, info)  # last: a folder with dataset.json is complete
    return info


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, SOURCE)
    return run(parser.parse_args(argv), SOURCE, convert)


if __name__ == "__main__":
    sys.exit(main())
