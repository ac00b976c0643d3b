"""The U-Net used twice in DeepSim: as the registration network and as the segmentation network.

The paper (Sec. 3, Fig. 1) uses the same U-Net backbone for both tasks:

* **registration net**: input moving ⊕ fixed (2 channels), output the displacement u
  (``ndim`` channels, voxel units); its last convolution starts near zero, so training starts
  at Φ = id;
* **segmentation net**: input one image, output class logits; after training it is frozen and
  the outputs of its encoder stages are DeepSim's feature maps F_l (paper Eq. 2).

Architecture, as in the paper's code (DeepSimRegistration: src/models/backbone.py for the
backbone and the registration head ``FlowPredictor``, src/models/UNet.py for the segmentation
head):

* encoder stage: BatchNorm → conv 4×4 stride 2 (downsamples, no pooling) → LeakyReLU(0.2) →
  conv 3×3 → LeakyReLU(0.2) → channel dropout;
* decoder stage: conv 3×3 → LeakyReLU → conv 3×3 → LeakyReLU → channel dropout (no BatchNorm),
  then ×2 (bi/tri)linear upsampling and concatenation of the encoder activation of the same
  resolution (the raw input at full resolution);
* head: conv 3×3 → LeakyReLU → conv 3×3 → LeakyReLU → a last conv to the output channels,
  3×3 in the registration net, 1×1 (a per-pixel linear classifier) in the segmentation net.

With encoder channels (64, 128, 256) a 2D input ``(B, C, H, W)`` gives encoder outputs
``(B, 64, H/2, W/2)``, ``(B, 128, H/4, W/4)``, ``(B, 256, H/8, W/8)``. 2D and 3D share the code:
the layer types are picked by ``ndim`` (``nn.Conv2d`` / ``nn.Conv3d`` …).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _layers(ndim: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    """(Conv, BatchNorm, channel Dropout) classes for 2D or 3D."""
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    return (
        getattr(nn, f"Conv{ndim}d"),
        getattr(nn, f"BatchNorm{ndim}d"),
        getattr(nn, f"Dropout{ndim}d"),
    )


def _two_convs(
    ndim: int, in_channels: int, out_channels: int, dropout: float, first: dict
) -> list[nn.Module]:
    """conv (``first``: its kernel, stride, padding) → LReLU(0.2) → conv 3 → LReLU(0.2)
    [→ channel dropout]: the body of every encoder and decoder stage."""
    Conv, _, Dropout = _layers(ndim)
    layers: list[nn.Module] = [
        Conv(in_channels, out_channels, **first),
        nn.LeakyReLU(0.2),
        Conv(out_channels, out_channels, kernel_size=3, padding=1),
        nn.LeakyReLU(0.2),
    ]
    return layers + [Dropout(dropout)] if dropout > 0 else layers


class EncoderStage(nn.Sequential):
    """BatchNorm → conv 4, stride 2 → LReLU → conv 3 → LReLU → dropout. Halves the size."""

    def __init__(
        self, ndim: int, in_channels: int, out_channels: int, dropout: float, batchnorm: bool
    ):
        _, BatchNorm, _ = _layers(ndim)
        layers: list[nn.Module] = [BatchNorm(in_channels)] if batchnorm else []
        down = {"kernel_size": 4, "stride": 2, "padding": 1}  # the strided 4-conv halves the size
        super().__init__(*layers, *_two_convs(ndim, in_channels, out_channels, dropout, down))


class DecoderStage(nn.Sequential):
    """conv 3 → LReLU → conv 3 → LReLU → dropout. Keeps the spatial size."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int, dropout: float):
        same = {"kernel_size": 3, "padding": 1}
        super().__init__(*_two_convs(ndim, in_channels, out_channels, dropout, same))


class UNet(nn.Module):
    """U-Net for 2D or 3D inputs ``(B, in_channels, *spatial)`` → ``(B, out_channels, *spatial)``.

    Args:
        ndim: 2 or 3.
        in_channels: 2 for registration (moving ⊕ fixed), 1 for segmentation.
        out_channels: ``ndim`` for registration (the displacement), number of classes for
            segmentation.
        encoder_channels: channels of the encoder stages; each stage halves the resolution, so
            every spatial size must be divisible by ``2 ** len(encoder_channels)``.
        decoder_channels: channels of the decoder stages; default: the encoder's, reversed.
        dropout: channel-dropout probability (the paper: 0.5; active in ``train()`` mode only).
        batchnorm: BatchNorm at the start of each encoder stage.
        zero_init_output: draw the last convolution's weights from N(0, 1e-5²) and zero its bias,
            so a registration net starts at u ≈ 0, i.e. Φ ≈ id.
        output_kernel_size: kernel size of the last convolution, 3 (registration) or 1
            (segmentation), odd so that the spatial size is kept.
        checkpointing: activation checkpointing in training: each encoder and decoder stage
            and the head keep only their input and recompute their activations in the backward
            pass (less memory, about one more forward pass of compute; the same gradients).
            BatchNorm's running statistics are then updated twice per step (the recomputation
            runs it again), which only matters for the eval-mode statistics.
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        out_channels: int,
        encoder_channels: Sequence[int] = (64, 128, 256),
        decoder_channels: Sequence[int] | None = None,
        dropout: float = 0.5,
        batchnorm: bool = True,
        zero_init_output: bool = False,
        output_kernel_size: int = 3,
        checkpointing: bool = False,
    ):
        super().__init__()
        self.checkpointing = checkpointing
        Conv, _, _ = _layers(ndim)
        if output_kernel_size < 1 or output_kernel_size % 2 == 0:
            raise ValueError(f"output_kernel_size must be odd and >= 1, got {output_kernel_size}")
        encoder_channels = list(encoder_channels)
        decoder_channels = list(decoder_channels or reversed(encoder_channels))
        if len(decoder_channels) != len(encoder_channels):
            raise ValueError(
                f"need one decoder stage per encoder stage, got {len(encoder_channels)} encoder "
                f"and {len(decoder_channels)} decoder channel counts"
            )
        self.ndim, self.in_channels, self.out_channels = ndim, in_channels, out_channels
        self.encoder_channels = encoder_channels

        self.encoder = nn.ModuleList()
        previous = in_channels
        for channels in encoder_channels:
            self.encoder.append(EncoderStage(ndim, previous, channels, dropout, batchnorm))
            previous = channels

        # skip connections, coarse to fine: encoder outputs below the bottleneck, then the input
        skips = list(reversed([in_channels] + encoder_channels[:-1]))
        self.decoder = nn.ModuleList()
        for channels, skip in zip(decoder_channels, skips, strict=False):
            self.decoder.append(DecoderStage(ndim, previous, channels, dropout))
            previous = channels + skip

        self.head = nn.Sequential(
            Conv(previous, previous, kernel_size=3, padding=1),
            nn.LeakyReLU(0.2),
            Conv(previous, previous, kernel_size=3, padding=1),
            nn.LeakyReLU(0.2),
            Conv(
                previous,
                out_channels,
                kernel_size=output_kernel_size,
                padding=output_kernel_size // 2,
            ),
        )
        if zero_init_output:
            last = self.head[-1]
            nn.init.normal_(last.weight, mean=0.0, std=1e-5)
            nn.init.zeros_(last.bias)
        # the convolution weights in the channels-last memory layout (``channels_last``)
        self.to(memory_format=torch.channels_last if ndim == 2 else torch.channels_last_3d)

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError unless ``x`` is ``(B, in_channels, *spatial)`` with usable sizes."""
        if x.dim() != self.ndim + 2:
            raise ValueError(
                f"{self.ndim}D U-Net expects (B, C, {'D, ' if self.ndim == 3 else ''}H, W) input, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"U-Net expects {self.in_channels} input channels, got {x.shape[1]}")
        factor = 2 ** len(self.encoder)
        if any(n % factor for n in x.shape[2:]):
            raise ValueError(
                f"every spatial size must be divisible by {factor} (one halving per encoder "
                f"stage), got {tuple(x.shape[2:])}"
            )

    def encode(self, x: Tensor) -> list[Tensor]:
        """The encoder stages' outputs, fine to coarse: ``[(B, c_1, S/2), (B, c_2, S/4), ...]``.

        These are DeepSim's feature maps F_l when this is the trained segmentation net.
        """
        self.check_input(x)
        x = channels_last(x)
        features = []
        for stage in self.encoder:
            x = self._run(stage, x)
            features.append(x)
        return features

    def _run(self, stage: nn.Module, x: Tensor) -> Tensor:
        """``stage(x)``, with activation checkpointing when enabled and gradients are needed."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, *spatial)`` → ``(B, out_channels, *spatial)``."""
        features = self.encode(x)
        skips = [channels_last(x)] + features[:-1]  # activations at S, S/2, S/4, ... to concatenate
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        y = features[-1]
        for stage in self.decoder:
            y = self._run(stage, y)
            y = F.interpolate(y, scale_factor=2, mode=mode, align_corners=False)
            y = torch.cat([y, skips.pop()], dim=1)  # (B, c_dec + c_skip, *finer spatial)
        return self._run(self.head, y).contiguous()  # the usual layout for what follows


def channels_last(x: Tensor) -> Tensor:
    """``x`` in the channels-last memory layout on a CPU (the same values and shape; only the
    order in memory changes); as it is on other devices.

    The U-Net keeps its convolution weights in that layout, and every activation follows them:
    oneDNN's CPU convolutions run about 1.6× faster on it for our nets, in a 2D training step
    and a 3D forward pass (``bench/unet_layout.py``). The values agree with the usual layout up
    to float rounding (another order of summation). ``UNet.forward`` returns the usual layout.
    """
    if x.device.type != "cpu" or x.dim() not in (4, 5):
        return x
    layout = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return x.contiguous(memory_format=layout)


def registration_unet(ndim: int, encoder_channels: Sequence[int] = (64, 128, 256), **kw) -> UNet:
    """Registration net: moving ⊕ fixed ``(B, 2, *spatial)`` → u ``(B, ndim, *spatial)``.

    Last convolution 3×3, weights ~ N(0, 1e-5²), bias 0 (DeepSimRegistration:
    src/models/backbone.py, ``FlowPredictor``).
    """
    return UNet(ndim, 2, ndim, encoder_channels, zero_init_output=True, **kw)


def segmentation_unet(
    ndim: int, num_classes: int, encoder_channels: Sequence[int] = (64, 128, 256), **kw
) -> UNet:
    """The segmentation net (DeepSim's feature extractor): image ``(B, 1, *spatial)`` → logits.

    Last convolution 1×1, a per-pixel linear classifier (DeepSimRegistration:
    src/models/UNet.py, ``UNet.pred``).
    """
    return UNet(ndim, 1, num_classes, encoder_channels, output_kernel_size=1, **kw)
