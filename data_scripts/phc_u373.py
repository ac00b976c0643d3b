"""PhC-U373: download the Cell Tracking Challenge's PhC-C2DH-U373 training set and convert it.

Source: Cell Tracking Challenge (http://celltrackingchallenge.net), 2D training dataset
"PhC-C2DH-U373" — glioblastoma-astrocytoma U373 cells on a polyacrylamide substrate, phase
contrast, two time-lapse sequences of 115 frames, 696 × 520 pixels. Archive structure::

    PhC-C2DH-U373/01/t000.tif … t114.tif            raw frames, sequence 01
    PhC-C2DH-U373/02/t000.tif … t114.tif            raw frames, sequence 02
    PhC-C2DH-U373/01_ST/SEG/man_seg000.tif …        silver-truth segmentations (cell ids)
    PhC-C2DH-U373/02_ST/SEG/man_seg000.tif …
    PhC-C2DH-U373/0?_GT/...                         gold truth (sparse; not used)

Conversion, as in the paper's ``PhC-U373_download_and_preprocess.py``:
- labels: the silver truth ``0?_ST/SEG`` (instance ids) -> 2 classes, 0 background, 1 cell
  (``np.clip(label, 0, 1)``);
- crop: 688 × 512 pixels, centred — for 696 × 520 frames the window ``[4:516, 4:692]``, which
  is the paper's ``PIL.crop((4, 4, 692, 516))``;
- intensities / 256 (the paper's loader, 8-bit frames; see ``_common.scale_intensity``);
- splits (frame numbers): train = sequence 01, every frame; val = sequence 02, frames 0–49;
  test = sequence 02, frames 60–114; each split ordered by frame;
- pairing ``neighbours`` with ``max_offset`` 2; spacing (1, 1) pixel.
A frame of a split without its silver-truth file is an error naming the missing file.
**Not verified here**: that the current archive has a silver-truth file for every frame (the
paper's script assumes it does); no checksum is published, so the archive is checked by format
and its sha256 printed for you to pin.

Usage: ``python -m data_scripts.phc_u373 --out data/phc-u373``
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_scripts._common import (
    Source,
    count_argument,
    make_parser,
    read_tiff_stack,
    run,
    scale_intensity,
)
from deepsim_edu.data.layout import DatasetError, DatasetInfo, write_case, write_dataset_json

SOURCE = Source(
    url="http://data.celltrackingchallenge.net/training-datasets/PhC-C2DH-U373.zip",
    filename="PhC-C2DH-U373.zip",
    note="no published checksum: verified by format only; the sha256 is printed to pin",
)
CLASSES = ["background", "cell"]
CROP = (512, 688)  # (height, width) after the centred crop
TRAIN_SEQUENCE, EVAL_SEQUENCE = "01", "02"
VAL_FRAMES = range(0, 50)
TEST_FRAMES = range(60, 115)


def crop_centre(frame: np.ndarray, size: tuple[int, int], where: Path) -> np.ndarray:
    """The centred ``size = (height, width)`` window of a 2D frame."""
    height, width = frame.shape[:2]
    if height < size[0] or width < size[1]:
        raise DatasetError(f"{where}: frame {height}x{width} is smaller than the crop {size}")
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return frame[top:top + size[0], left:left + size[1]]


def find_dataset_root(root: Path) -> Path:
    """The folder that holds ``01/`` and ``01_ST/SEG/`` (the archive's ``PhC-C2DH-U373/``)."""
    candidates = [d for d in (root, *root.rglob("*")) if (d / TRAIN_SEQUENCE).is_dir()
                  and (d / f"{TRAIN_SEQUENCE}_ST" / "SEG").is_dir()]
    if len(candidates) != 1:
        raise DatasetError(f"{root}: expected one folder with 01/ and 01_ST/SEG/ in the archive, "
                           f"found {len(candidates)}")
    return candidates[0]


def frame_files(folder: Path, prefix: str) -> dict[int, Path]:
    """``{frame number: path}`` for ``<prefix><digits>.tif`` files in ``folder``."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder missing from the archive")
    pattern = re.compile(rf"{prefix}(\d+)\.tif")
    return {int(m.group(1)): p for p in folder.iterdir() if (m := pattern.fullmatch(p.name))}


def read_frame(image_path: Path, label_path: Path | None, crop: tuple[int, int]):
    """One cropped frame in [0, 1) and its 2-class label."""
    if label_path is None:
        raise DatasetError(f"{image_path}: no silver-truth segmentation for this frame")
    image = read_tiff_stack(image_path)[0]
    label = read_tiff_stack(label_path)[0]
    if image.ndim != 2 or image.shape != label.shape:
        raise DatasetError(f"{label_path}: shape {label.shape} does not match frame {image.shape}")
    image = crop_centre(scale_intensity(image, image_path), crop, image_path)
    label = crop_centre(np.clip(label, 0, 1).astype(np.uint8), crop, label_path)
    return image, label


def convert_sequence(root: Path, out_dir: Path, sequence: str, frames: list[int] | None,
                     crop: tuple[int, int]) -> list[str]:
    """Write the given frames (all if None) of one sequence; return their case ids in order."""
    images = frame_files(root / sequence, "t")
    labels = frame_files(root / f"{sequence}_ST" / "SEG", "man_seg")
    frames = sorted(images) if frames is None else frames
    missing = [t for t in frames if t not in images]
    if missing:
        raise DatasetError(f"{root / sequence}: frames {missing[:5]} are missing from the archive")
    cases = []
    for t in tqdm(frames, desc=f"sequence {sequence}", disable=None):
        image, label = read_frame(images[t], labels.get(t), crop)
        case = f"seq{sequence}_t{t:03d}"
        write_case(out_dir, case, image, label, spacing=(1.0, 1.0))
        cases.append(case)
    return cases


def convert(source_root: Path, out_dir: Path, crop: tuple[int, int] = CROP,
            val_frames: range = VAL_FRAMES, test_frames: range = TEST_FRAMES) -> DatasetInfo:
    """Convert an extracted PhC-C2DH-U373 archive under ``source_root`` into ``out_dir``."""
    root = find_dataset_root(Path(source_root))
    out_dir = Path(out_dir)
    splits = {
        "train": convert_sequence(root, out_dir, TRAIN_SEQUENCE, None, crop),
        "val": convert_sequence(root, out_dir, EVAL_SEQUENCE, list(val_frames), crop),
        "test": convert_sequence(root, out_dir, EVAL_SEQUENCE, list(test_frames), crop),
    }
    info = DatasetInfo(
        name="phc-u373", ndim=2, spacing=[1.0, 1.0], classes=list(CLASSES), splits=splits,
        pairing={"rule": "neighbours", "max_offset": 2},
        source=f"Cell Tracking Challenge PhC-C2DH-U373 ({SOURCE.url}), silver truth, centred "
               f"crop {crop[1]}x{crop[0]}, intensity / 256; converted by data_scripts/phc_u373.py",
    )
    write_dataset_json(out_dir, info)  # last: a folder with dataset.json is complete
    return info


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, SOURCE)
    parser.add_argument("--crop", type=count_argument(1), nargs=2, default=list(CROP),
                        metavar=("H", "W"),
                        help="height and width of the centred crop (default: the paper's 512 688)")
    args = parser.parse_args(argv)
    crop = (args.crop[0], args.crop[1])
    return run(args, SOURCE, lambda src, out: convert(src, out, crop=crop))


if __name__ == "__main__":
    sys.exit(main())
