"""What the dataset scripts share: the source table entry, the command line, staged output, TIFFs.

Every dataset script runs the same four steps (``run``):

1. obtain the archive — download it (``_download.download``: resumable, verified) or take
   ``--archive PATH``;
2. extract it safely into a scratch folder (``_download.safe_extract``);
3. convert it with the script's ``convert(source_root, out_dir)``, which writes the cases with
   ``write_case`` and ``dataset.json`` last;
4. rename the finished folder to ``--out``.

Steps 2–3 happen inside a temporary sibling of ``--out`` (``.NAME.partial-XXXX``), so a killed
conversion leaves no half-written dataset behind: a folder at ``--out`` is always complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from data_scripts._download import (
    DownloadError,
    UnsafeArchiveError,
    download,
    safe_extract,
    verify_file,
)
from deepsim_edu.data.layout import DatasetError, DatasetInfo


@dataclass(frozen=True)
class Source:
    """Where a file comes from and how to check it. ``sha256=None``: not pinned (see note)."""

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    note: str = ""


# ----------------------------------------------------------------------------- command line


def make_parser(description: str, source: Source) -> argparse.ArgumentParser:
    """The arguments every dataset script takes."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path,
                        help="dataset folder to create (must not exist yet)")
    parser.add_argument("--url", default=source.url, help=f"archive URL (default: {source.url})")
    parser.add_argument("--archive", type=Path,
                        help="use this local copy of the archive instead of downloading")
    parser.add_argument("--sha256", help="expected sha256 of the archive (default: the pinned "
                        "one for the default URL, none for another URL or --archive)")
    parser.add_argument("--download-dir", type=Path,
                        help="where the archive is downloaded to (default: next to --out)")
    parser.add_argument("--keep-archive", action="store_true",
                        help="keep the downloaded archive after a successful conversion")
    return parser


def obtain_archive(args: argparse.Namespace, source: Source) -> tuple[Path, bool]:
    """The archive to convert and whether this run downloaded it (then it may be deleted)."""
    if args.archive is not None:
        if not args.archive.is_file():
            raise DownloadError(f"{args.archive}: archive not found")
        verify_file(args.archive, str(args.archive), sha256=args.sha256)
        return args.archive, False
    pinned = args.url == source.url
    filename = source.filename if pinned else Path(urlparse(args.url).path).name or source.filename
    folder = args.download_dir or Path(args.out).resolve().parent
    dest = download(
        args.url,
        folder / filename,
        sha256=args.sha256 or (source.sha256 if pinned else None),
        md5=source.md5 if pinned and not args.sha256 else None,
        size=source.size if pinned else None,
    )
    return dest, True


@contextmanager
def staged_output(out: str | Path) -> Iterator[tuple[Path, Path]]:
    """Yield ``(dataset_dir, scratch_dir)`` inside a temporary sibling of ``out``.

    On success ``dataset_dir`` is renamed to ``out``; in every case the temporary folder
    (extracted archive included) is removed.
    """
    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out}: already exists; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        dataset_dir = work / "dataset"
        dataset_dir.mkdir()
        yield dataset_dir, work / "scratch"
        os.replace(dataset_dir, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(
    args: argparse.Namespace,
    source: Source,
    convert: Callable[[Path, Path], DatasetInfo],
    members: Callable[[str], bool] | None = None,
) -> int:
    """Obtain, extract, convert, rename; print one summary line. Returns the exit status."""
    try:
        archive, downloaded = obtain_archive(args, source)
        with staged_output(args.out) as (dataset_dir, scratch):
            extracted = safe_extract(archive, scratch / "extracted", members=members)
            info = convert(extracted, dataset_dir)
        if downloaded and not args.keep_archive:
            archive.unlink()
    except (DownloadError, UnsafeArchiveError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{k} {len(v)}" for k, v in info.splits.items())
    print(f"wrote {info.name} to {args.out}: {sizes}; classes {', '.join(info.classes)}")
    return 0


# ----------------------------------------------------------------------------- helpers


def find_unique(root: Path, pattern: str) -> Path:
    """The one path under ``root`` matching ``pattern`` (``rglob``); else DatasetError."""
    hits = sorted(root.rglob(pattern))
    if len(hits) != 1:
        found = "nothing" if not hits else ", ".join(str(h.relative_to(root)) for h in hits)
        raise DatasetError(f"{root}: expected one {pattern!r} in the archive, found {found}")
    return hits[0]


def read_tiff_stack(path: Path) -> np.ndarray:
    """All pages of a (multi-page) TIFF: ``(pages, H, W)`` or ``(pages, H, W, channels)``."""
    from PIL import Image  # Pillow comes with matplotlib

    try:
        with Image.open(path) as stack:
            pages = []
            for index in range(getattr(stack, "n_frames", 1)):
                stack.seek(index)
                pages.append(np.array(stack))
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: cannot read TIFF ({exc})") from exc
    shapes = sorted({p.shape for p in pages})
    if len(shapes) != 1:
        raise DatasetError(f"{path}: pages have different shapes {shapes}")
    return np.stack(pages)


def scale_intensity(image: np.ndarray, where: Path) -> np.ndarray:
    """Integer intensities to float32 in [0, 1): divided by 256 if every value fits in 8 bits.

    This is the paper's loader (``x / 2**bits``, ``bits`` from the TIFF mode): 8-bit data / 256;
    16-bit data / 65536. Unlike it, a 16-bit container that holds only 8-bit values is divided
    by 256, so that its intensities are not squeezed into [0, 0.004).
    """
    if not np.issubdtype(image.dtype, np.integer):
        raise DatasetError(f"{where}: expected integer intensities, got {image.dtype}")
    if image.min() < 0:
        raise DatasetError(f"{where}: negative intensities")
    divisor = 256.0 if image.max() <= 255 else 65536.0
    return (image / divisor).astype(np.float32)
