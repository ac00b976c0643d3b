"""Download and unpack archives safely: the one implementation all of ``data_scripts/`` uses.

``download(url, dest, sha256=..., size=...)``
    Streams ``url`` into ``dest + ".part"`` and renames it to ``dest`` only once its size and
    checksum are verified, so ``dest`` is never a half-written or corrupt file. An interrupted
    or truncated download keeps the ``.part`` file; running again resumes it (HTTP ``Range``
    request; for ``file://`` URLs, by seeking — which is how the tests run offline). A checksum
    mismatch removes the ``.part`` file and raises.
``safe_extract(archive, target)``
    Unpacks a ``.zip`` or ``.tar``/``.tar.gz`` into a temporary sibling folder and renames it to
    ``target``. Every member is checked first: absolute paths, ``..`` components, links that
    point outside the folder and device files are refused before anything is written. A corrupt
    or truncated archive raises CorruptArchiveError naming it; the temporary folder is removed.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import lzma
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from tqdm import tqdm

CHUNK = 1 << 20  # bytes read per step
TIMEOUT_S = 60  # per network read
USER_AGENT = "deepsim-edu-data-scripts/0.1 (python urllib)"


class DownloadError(OSError):
    """A download that failed, was truncated or does not match its checksum; names URL and file."""


class UnreachableError(DownloadError):
    """The server could not be reached at all (offline?); nothing was downloaded."""


class ArchiveError(ValueError):
    """An archive that cannot be extracted; the message names the archive."""


class UnsafeArchiveError(ArchiveError):
    """An archive member that would land outside the extraction folder (or is a device file)."""


class CorruptArchiveError(ArchiveError):
    """A file that is not a zip or tar archive, or one that is corrupt or truncated."""


# ----------------------------------------------------------------------------- checksums


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(
    path: str | Path,
    origin: str,
    sha256: str | None = None,
    size: int | None = None,
    md5: str | None = None,
    label: str | None = None,
) -> str:
    """Check size and checksums of ``path``; return its sha256. Raise DownloadError on mismatch.

    ``sha256`` may be a prefix of at least 8 hex digits (torchvision publishes the first 8 in its
    file names). With no checksum pinned, the sha256 is printed so that the user can pin it.
    ``origin`` (the URL) is named in every message; ``label`` names the file there (default:
    its path; a download that is deleted on a mismatch is named by what it is, not its path).
    """
    path = Path(path)
    label = label or str(path)
    if size is not None and path.stat().st_size != size:
        raise DownloadError(
            f"{origin}: {label} has {path.stat().st_size} bytes, expected {size}"
        )
    actual = file_digest(path, "sha256")
    if sha256 is not None:
        expected = sha256.lower()
        if len(expected) < 8 or not re.fullmatch(r"[0-9a-f]+", expected):
            raise ValueError(f"sha256 {sha256!r} must be at least 8 hex digits")
        if not actual.startswith(expected):
            raise DownloadError(
                f"{origin}: checksum mismatch for {label}: expected sha256 {expected}, "
                f"got {actual} (corrupt download, or the file on the server changed)"
            )
    if md5 is not None and file_digest(path, "md5") != md5.lower():
        raise DownloadError(f"{origin}: checksum mismatch for {label}: expected md5 {md5}")
    if sha256 is None and md5 is None:
        print(
            f"note: no checksum is pinned for {origin}; it was checked by size/format only. "
            f"sha256 of {path.name}: {actual} (pin it in the script's SOURCES table)",
            file=sys.stderr,
        )
    return actual


# ----------------------------------------------------------------------------- download


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    size: int | None = None,
    md5: str | None = None,
    quiet: bool = False,
) -> Path:
    """Download ``url`` to ``dest`` (resumable, verified, atomic) and return ``dest``.

    If ``dest`` already exists it is verified and reused. Otherwise bytes go to ``dest.part``:
    a short result raises DownloadError saying "truncated" and keeps the ``.part`` file for the
    next run to resume; a checksum mismatch raises and removes it (the message says so and names
    the URL, not the removed file).
    """
    dest = Path(dest)
    if dest.exists():
        verify_file(dest, url, sha256, size, md5)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # longer than the real file: it cannot be resumed
        part.unlink()
        offset = 0
    if size is None or offset < size:
        total = _fetch(url, part, offset, quiet)
        _check_length(url, part, size if size is not None else total)
    try:
        verify_file(part, url, sha256, size, md5, label=f"the download of {dest.name}")
    except DownloadError as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{exc}; the download was deleted") from exc
    os.replace(part, dest)
    return dest


def _check_length(url: str, part: Path, expected: int | None) -> None:
    got = part.stat().st_size
    if expected is None or got == expected:
        return
    if got < expected:
        raise DownloadError(
            f"{url}: download truncated: got {got} of {expected} bytes; the partial file "
            f"{part} is kept — run the same command again to resume"
        )
    part.unlink()
    raise DownloadError(f"{url}: got {got} bytes, more than the expected {expected}; "
                        "the download was deleted")


def _fetch(url: str, part: Path, offset: int, quiet: bool) -> int | None:
    """Append the bytes of ``url`` from ``offset`` on to ``part``; return the full size if known."""
    scheme = urlparse(url).scheme
    if scheme == "file":
        stream, total, resumed = _open_local(url, offset)
    elif scheme in ("http", "https"):
        stream, total, resumed = _open_http(url, offset)
    else:
        raise DownloadError(f"{url}: unsupported URL scheme {scheme!r} (use http, https or file)")
    start = offset if resumed else 0
    with stream, open(part, "ab" if resumed else "wb") as out, tqdm(
        total=total, initial=start, unit="B", unit_scale=True, desc=part.name[:-5],
        disable=True if quiet else None,
    ) as bar:
        try:
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:  # connection dropped mid-stream
            out.flush()
            raise DownloadError(
                f"{url}: download interrupted after {out.tell()} bytes ({exc}); the partial "
                f"file {part} is kept — run the same command again to resume"
            ) from exc
    return total


def _open_local(url: str, offset: int) -> tuple[BinaryIO, int, bool]:
    """Open a ``file://`` URL positioned at ``offset`` (resume by seeking)."""
    path = Path(urllib.request.url2pathname(urlparse(url).path))
    if not path.is_file():
        raise DownloadError(f"{url}: no such file {path}")
    total = path.stat().st_size
    f = open(path, "rb")
    if offset > total:  # the partial file is longer than the source: start again
        return f, total, False
    f.seek(offset)
    return f, total, True


def _open_http(url: str, offset: int) -> tuple[BinaryIO, int | None, bool]:
    """Open an HTTP(S) URL, asking for the bytes from ``offset`` on with a Range header."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the partial file is complete
            return io.BytesIO(b""), None, True
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UnreachableError(
            f"{url}: cannot download ({reason}); is the internet reachable?"
        ) from exc
    if offset and response.status == 206:
        total = _content_range_total(response.headers.get("Content-Range", ""))
        return response, total, True
    # 200: the server ignored the Range header (or there was nothing to resume): start again.
    length = response.headers.get("Content-Length")
    return response, int(length) if length else None, False


def _content_range_total(header: str) -> int | None:
    """The full size in a ``Content-Range: bytes a-b/total`` header, or None."""
    match = re.fullmatch(r"bytes \d+-\d+/(\d+)", header.strip())
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------- extraction


def safe_extract(
    archive: str | Path,
    target: str | Path,
    members: Callable[[str], bool] | None = None,
) -> Path:
    """Unpack ``archive`` (.zip, .tar, .tar.gz, .tgz) into the new folder ``target``.

    Every member is checked before anything is written; an unsafe one (absolute path, ``..``,
    a link leading outside, a device file) raises UnsafeArchiveError and nothing is extracted.
    A file that is no archive, or a corrupt or truncated one, raises CorruptArchiveError.
    ``members(name) -> bool`` selects which members to extract (default: all). The files are
    extracted into a temporary sibling folder that is renamed to ``target`` at the end; on any
    error that folder is removed.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise FileExistsError(f"{target}: extraction target already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.extracting-"))
    try:
        with open(archive, "rb") as f:
            is_zip = f.read(2) == b"PK"  # by magic: a tar ending in a zip member is not a zip
        if is_zip and zipfile.is_zipfile(archive):
            _guarded(_extract_zip, archive, tmp, members)
        elif tarfile.is_tarfile(archive):
            _guarded(_extract_tar, archive, tmp, members)
        else:
            raise CorruptArchiveError(
                f"{archive}: not a zip or tar archive (corrupt or truncated download?)"
            )
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


# What zipfile, tarfile and the decompressors raise for damaged bytes. An OSError with an errno
# is a fault of the file system (disk full, no permission) and is passed on as it is.
_DAMAGED = (zipfile.BadZipFile, tarfile.ReadError, tarfile.CompressionError, zlib.error,
            lzma.LZMAError, EOFError, OSError)


def _guarded(extract: Callable, archive: Path, dest: Path, members) -> None:
    """Run ``extract(archive, dest, members)``; damaged archive data -> CorruptArchiveError."""
    try:
        extract(archive, dest, members)
    except tarfile.FilterError as exc:  # tarfile's own safety filter refused a member
        raise UnsafeArchiveError(f"{archive}: {exc}; refused") from exc
    except _DAMAGED as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise CorruptArchiveError(
            f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc})"
        ) from exc


def _check_name(name: str, archive: Path) -> None:
    """Refuse absolute member names and names with a ``..`` component (either slash)."""
    if not name or name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refused")
    if ".." in re.split(r"[\\/]+", name):
        raise UnsafeArchiveError(f"{archive}: member {name!r} escapes the target folder; refused")


def _extract_zip(archive: Path, dest: Path, members: Callable[[str], bool] | None) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(info.filename, archive)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeArchiveError(
                    f"{archive}: member {info.filename!r} is a symlink; refused"
                )
        for info in infos:
            if members is None or members(info.filename):
                zf.extract(info, dest)


def _extract_tar(archive: Path, dest: Path, members: Callable[[str], bool] | None) -> None:
    with tarfile.open(archive, "r:*") as tf:
        infos = tf.getmembers()
        _check_tar_end(tf, infos, archive)
        for info in infos:
            _check_tar_member(info, archive)
        chosen = [m for m in infos if members is None or members(m.name)]
        # The "data" filter (Python >= 3.11.4) repeats these checks and drops unsafe modes.
        tf.extractall(dest, members=chosen, filter="data")


def _check_tar_end(tf: tarfile.TarFile, infos: list[tarfile.TarInfo], archive: Path) -> None:
    """Refuse a tar without its end-of-archive marker (a zero block after the last member).

    ``tarfile`` stops without a word at a truncated or damaged header after the first one, so
    a download cut off between two members would otherwise lose the rest unnoticed.
    """
    tf.fileobj.seek(tf.offset)  # where tarfile looked for the header after the last member
    block = tf.fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.strip(b"\0"):
        last = repr(infos[-1].name) if infos else "none"
        raise CorruptArchiveError(
            f"{archive}: corrupt or truncated archive (no end-of-archive marker after byte "
            f"{tf.offset}; last complete member {last})"
        )


def _check_tar_member(info: tarfile.TarInfo, archive: Path) -> None:
    _check_name(info.name, archive)
    if info.ischr() or info.isblk() or info.isfifo():
        raise UnsafeArchiveError(f"{archive}: member {info.name!r} is a device file; refused")
    if info.issym() or info.islnk():
        link = info.linkname
        if link.startswith(("/", "\\")):
            raise UnsafeArchiveError(
                f"{archive}: link {info.name!r} -> {link!r} points to an absolute path; refused"
            )
        # A symlink is resolved from its own folder, a hard link from the archive root.
        base = posixpath.dirname(info.name) if info.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, link))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchiveError(
                f"{archive}: link {info.name!r} -> {link!r} points outside the target; refused"
            )
