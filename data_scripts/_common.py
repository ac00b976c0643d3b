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

A failure is one line ``error: ...`` on stderr and exit status 1 (2 for a bad argument, 130 for
Ctrl-C), and it leaves nothing behind: ``--out`` is checked before anything is downloaded, the
temporary folder is removed, so are the folders this run created for ``--out`` or
``--download-dir`` and an archive it downloaded (unless ``--keep-archive``). Only a truncated
download keeps its ``.part`` file, which the same command resumes. Messages name only paths
that exist when they are printed: a file of the extracted archive (gone with the temporary
folder) is named ``ARCHIVE!MEMBER``, e.g. ``PhC-C2DH-U373.zip!PhC-C2DH-U373/02/t070.tif``, and a
download deleted after the failure by its URL.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from data_scripts._download import (
    ArchiveError,
    DownloadError,
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


class OutputError(OSError):
    """An output path that cannot be created or written; names the option and the path."""


# What a script reports as one ``error:`` line (anything else is a bug and shows a traceback).
FAILURES = (DownloadError, ArchiveError, DatasetError, OSError)


# ----------------------------------------------------------------------------- command line


def sha256_argument(text: str) -> str:
    """argparse type of ``--sha256``: at least 8 hex digits (a prefix is allowed)."""
    if not re.fullmatch(r"[0-9a-fA-F]{8,64}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a sha256 (8 to 64 hex digits)")
    return text.lower()


def count_argument(minimum: int) -> Callable[[str], int]:
    """argparse type of an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return parse


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
    parser.add_argument("--sha256", type=sha256_argument,
                        help="expected sha256 (or its first 8+ hex digits) of the archive "
                        "(default: the pinned one for the default URL, none for another URL "
                        "or --archive)")
    parser.add_argument("--download-dir", type=Path,
                        help="where the archive is downloaded to (default: next to --out)")
    parser.add_argument("--keep-archive", action="store_true",
                        help="keep the downloaded archive after a successful conversion")
    return parser


def download_path(args: argparse.Namespace, source: Source) -> Path:
    """Where the archive is downloaded to: ``--download-dir`` or the folder of ``--out``."""
    pinned = args.url == source.url
    filename = source.filename if pinned else Path(urlparse(args.url).path).name or source.filename
    return (args.download_dir or Path(args.out).resolve().parent) / filename


def obtain_archive(args: argparse.Namespace, source: Source) -> tuple[Path, bool]:
    """The archive to convert and whether it is a download (then it may be deleted)."""
    if args.archive is not None:
        if not args.archive.is_file():
            raise DownloadError(f"{args.archive}: --archive is not an existing file")
        verify_file(args.archive, str(args.archive), sha256=args.sha256, label="this archive")
        return args.archive, False
    pinned = args.url == source.url
    dest = download(
        args.url,
        download_path(args, source),
        sha256=args.sha256 or (source.sha256 if pinned else None),
        md5=source.md5 if pinned and not args.sha256 else None,
        size=source.size if pinned else None,
    )
    return dest, True


# ----------------------------------------------------------------------------- output paths


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (a file or a folder)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_creatable(path: Path, option: str) -> None:
    """Refuse, before anything is downloaded or written, a ``path`` that cannot be created.

    Its closest existing ancestor must be a folder this process may write in.
    """
    ancestor = nearest_existing(Path(path).parent)
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: no permission to create it in {ancestor}")


def check_output_folders(args: argparse.Namespace) -> None:
    """``--out`` must not exist and must be creatable; ``--download-dir`` a folder or creatable."""
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise DatasetError(f"{out}: already exists; remove it or choose another --out")
    check_creatable(out, "--out")
    folder = args.download_dir
    if folder is None or args.archive is not None:
        return
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--download-dir {folder}: is a file, not a folder")
    if not folder.exists():
        check_creatable(folder, "--download-dir")
    elif not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"--download-dir {folder}: no permission to write in it")


@contextmanager
def removing_new_folders(*folders: Path) -> Iterator[None]:
    """On any exception, remove those of ``folders`` and their ancestors that the block created.

    Only folders missing when the block starts, and only while they are empty (``rmdir``), so
    nothing that was there before, and no kept partial download, is ever removed.
    """
    missing = {p for f in folders for p in (Path(os.path.abspath(f)),
                                             *Path(os.path.abspath(f)).parents) if not p.exists()}
    try:
        yield
    except BaseException:
        for folder in sorted(missing, key=lambda p: len(p.parts), reverse=True):  # deepest first
            with suppress(OSError):
                folder.rmdir()
        raise


@contextmanager
def staged_output(out: str | Path) -> Iterator[tuple[Path, Path]]:
    """Yield ``(dataset_dir, scratch_dir)`` inside a temporary sibling of ``out``.

    On success ``dataset_dir`` is renamed to ``out``; in every case the temporary folder
    (extracted archive included) is removed. The parent folders of ``out`` are created as
    needed; ``removing_new_folders`` removes them again after a failure.
    """
    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out}: already exists; remove it or choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create it ({exc.strerror or exc})") from exc
    try:
        dataset_dir = work / "dataset"
        dataset_dir.mkdir()
        yield dataset_dir, work / "scratch"
        try:
            os.replace(dataset_dir, out)
        except OSError as exc:  # e.g. another process created ``out`` meanwhile
            raise OutputError(f"--out {out}: cannot move the finished dataset there "
                              f"({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def public_message(message: str, extracted: Path, archive: Path, staged: Path, out: Path) -> str:
    """``message`` without the temporary paths, which are gone by the time it is printed.

    A path under the extraction folder ``extracted`` becomes ``ARCHIVE!MEMBER``, one under the
    staged dataset folder ``staged`` the same path under ``out``.
    """
    message = message.replace(str(extracted) + os.sep, f"{archive}!")
    message = message.replace(str(extracted), str(archive))
    return message.replace(str(staged), str(out))


def extract_and_convert(
    archive: Path,
    out: Path,
    convert: Callable[[Path, Path], DatasetInfo],
    members: Callable[[str], bool] | None = None,
) -> DatasetInfo:
    """Extract ``archive`` and convert it into the new folder ``out`` (staged, atomic).

    Errors name the archive's members and ``--out``, never the temporary folder, which is gone
    by the time they are printed.
    """
    with staged_output(out) as (dataset_dir, scratch):
        extracted = scratch / "extracted"
        try:
            safe_extract(archive, extracted, members=members)
            return convert(extracted, dataset_dir)
        except (DatasetError, ArchiveError) as exc:
            message = public_message(str(exc), extracted, archive, dataset_dir, out)
            raise type(exc)(message) from exc
        except OSError as exc:
            if exc.filename is None or not str(exc.filename).startswith(str(scratch.parent)):
                raise
            raise OutputError(
                f"--out {out}: cannot write the dataset ({exc.strerror or exc})"
            ) from exc


def failure_message(exc: BaseException) -> str:
    """The message of a failure: ``PATH: reason`` for a file-system error, else its text."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        where = str(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {exc.filename2}"
        return f"{where}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def run(
    args: argparse.Namespace,
    source: Source,
    convert: Callable[[Path, Path], DatasetInfo],
    members: Callable[[str], bool] | None = None,
) -> int:
    """Obtain, extract, convert, rename; print one summary line. Returns the exit status.

    On a failure: one ``error:`` line, status 1, and nothing left behind (see the module
    docstring); on Ctrl-C status 130.
    """
    out = Path(args.out)
    fetch = download_path(args, source) if args.archive is None else None
    existed = fetch is not None and fetch.exists()
    keep, shown = "", {}  # note on the download; {deleted download: its URL} for the message
    try:
        check_output_folders(args)
        with removing_new_folders(out.parent, *([fetch.parent] if fetch else [])):
            try:
                archive, downloaded = obtain_archive(args, source)
                info = extract_and_convert(archive, out, convert, members)
            except BaseException:
                if fetch is not None and fetch.exists() and not existed:
                    if args.keep_archive:
                        keep = f" (the download is kept: {fetch})"
                    else:
                        with suppress(OSError):
                            fetch.unlink()
                        keep = " (the downloaded archive was deleted; --keep-archive keeps it)"
                        shown = {str(fetch): args.url}
                raise
        if downloaded and not args.keep_archive:
            archive.unlink()
    except KeyboardInterrupt:
        part = fetch.with_name(fetch.name + ".part") if fetch is not None else None
        resume = (f"; the partial download {part} is kept, the same command resumes it"
                  if part is not None and part.exists() else "")
        print(f"interrupted: nothing was written to {out}{resume}{keep}", file=sys.stderr)
        return 130
    except FAILURES as exc:
        message = failure_message(exc)
        for path, name in shown.items():
            message = message.replace(path, name)
        print(f"error: {message}{keep}", file=sys.stderr)
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
