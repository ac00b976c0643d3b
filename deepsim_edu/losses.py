"""Similarity metrics D and the regulariser R of the registration loss (paper Eq. 1):

    L(I, J, Φ) = D(I∘Φ, J) + λ R(Φ).

Every similarity here is a *loss*: smaller is better, 0 its lower bound. Inputs are the warped
moving image I∘Φ and the fixed image J, both ``(B, C, H, W)`` or ``(B, C, D, H, W)``.

* ``mse``   mean squared intensity difference; 0 exactly when I∘Φ = J.
* ``ncc``   local normalised cross-correlation over a ``window``⁽ⁿᵈⁱᵐ⁾ neighbourhood, squared as in
  the paper's code (NCC is the squared cosine similarity of zero-mean patch vectors — the
  analogy DeepSim, Eq. 2, builds on); ``border`` picks how windows that stick out of the image
  are normalised. 0 exactly when in every window the centred patches are parallel with
  var_I·var_J ≥ eps: so I∘Φ = J scores above 0 if any window of J is flat (cc = 0 there).
* ``ncc-sup`` NCC plus a supervised label term (MSE of warped one-hot labels; the paper's NCCsup).
* ``deepsim`` paper Eq. 2: mean cosine similarity of the frozen segmentation net's feature maps;
  0 exactly when at every position and level the two feature vectors point the same way and
  both have |F|² ≥ eps: so I∘Φ = J scores above 0 where a feature vector is dead (zero).
* ``vgg``     the same cosine formula on ImageNet VGG16 features (a perceptual-loss baseline).
* ``diffusion_regulariser``  R(u) = (1/ndim) · mean over batch, components c and voxels x of
  Σ_k (∂_k u_c(x))², forward differences — the paper's choice of R (DeepSimRegistration:
  torchreg/metrics/metrics.py, ``GradNorm``: per voxel (dx² + dy² [+ dz²]) / ndims, mean over
  everything). In terms of the Frobenius norm, R = mean_x |∇u(x)|² / ndim².

``get_loss(name, **kw)`` builds a similarity by name; ``LOSSES`` lists the names. Losses that
need the label maps (``ncc-sup``) say so with ``needs_labels = True``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .transform import forward_differences


def check_pair(warped: Tensor, fixed: Tensor) -> int:
    """Validate a (warped, fixed) pair: same shape, 2D/3D batched, finite. Returns ndim."""
    if warped.shape != fixed.shape:
        raise ValueError(
            f"warped and fixed must have the same shape, got {tuple(warped.shape)} "
            f"and {tuple(fixed.shape)}"
        )
    ndim = fixed.dim() - 2
    if ndim not in (2, 3):
        raise ValueError(
            f"images must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(fixed.shape)}"
        )
    for name, x in (("warped", warped), ("fixed", fixed)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} image contains NaN or inf values")
    return ndim


# ----------------------------------------------------------------------------- MSE


class MSE(nn.Module):
    """D_MSE(I∘Φ, J) = mean_x (I∘Φ(x) − J(x))²."""

    def forward(self, warped: Tensor, fixed: Tensor) -> Tensor:
        check_pair(warped, fixed)
        return F.mse_loss(warped, fixed)


# ----------------------------------------------------------------------------- local NCC


BORDERS = ("in-image", "zero-padding")


def check_window_and_border(window: int, border: str) -> None:
    """ValueError unless ``window`` is a positive odd number and ``border`` one of ``BORDERS``."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    if border not in BORDERS:
        raise ValueError(f"unknown NCC border rule {border!r}; valid: {', '.join(BORDERS)}")


def window_sum_along(x: Tensor, axis: int, window: int) -> Tensor:
    """s(i) = Σ_{|j − i| ≤ r} x(j) along ``axis``, r = window // 2, zeros outside; ``x.shape``.

    Sliding sums by doubling on the axis padded with r zeros per side: with S_m(i) = x(i) + … +
    x(i + m − 1), S_2m(i) = S_m(i) + S_m(i + m) and S_m+1(i) = S_m(i) + x(i + m); the binary
    digits of ``window`` after the leading 1 say which steps build S_window (9 = 1001₂:
    S_1 → S_2 → S_4 → S_8 → S_9). That is ⌊log₂ w⌋ + popcount(w) − 1 additions of whole
    tensors (4 for w = 9), and every sum is a tree of partial sums of similar size, so float32
    rounding stays at a few units of the last place — unlike a long cumulative sum.
    """
    r = window // 2
    padded = F.pad(x, [0, 0] * (x.dim() - 1 - axis) + [r, r])  # F.pad lists the last axis first
    n = padded.shape[axis]

    def entries(s: Tensor, start: int, width: int) -> Tensor:
        return s.narrow(axis, start, n - width + 1)  # S_width has n − width + 1 entries

    total, width = padded, 1  # S_1
    for bit in f"{window:b}"[1:]:
        total = entries(total, 0, 2 * width) + entries(total, width, 2 * width)
        width *= 2
        if bit == "1":
            total = entries(total, 0, width + 1) + entries(padded, width, width + 1)
            width += 1
    return total  # S_window: n − window + 1 = x.shape[axis] entries


class BoxSum(torch.autograd.Function):
    """The box filter B(x) of ``box_sum`` as an autograd function with its adjoint by hand.

    B is symmetric — voxel j lies in the window of i exactly when i lies in the window of j,
    zero padding included — so its adjoint is B itself: ∂L/∂x = B(∂L/∂B(x)). That replaces
    autograd's record of every slice and addition by one more box filter pass.
    """

    @staticmethod
    def forward(ctx, x: Tensor, window: int) -> Tensor:
        ctx.window = window
        for axis in range(2, x.dim()):
            x = window_sum_along(x, axis, window)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return BoxSum.apply(grad, ctx.window), None


def box_sum(x: Tensor, window: int) -> Tensor:
    """Sum of ``x`` over the ``window``-wide cube around every voxel (zeros outside the image).

    Separable: one sliding-window sum per axis (``window_sum_along``, 4 tensor additions for
    w = 9) — the same numbers as a dense convolution with a wⁿᵈⁱᵐ ones-kernel and zero padding,
    at a fraction of the cost. The backward pass is the same box filter applied to the incoming
    gradient (the filter is symmetric). ``(B, C, *spatial)`` → ``(B, C, *spatial)``.
    """
    return BoxSum.apply(x, window)


def in_image_counts(spatial: Sequence[int], window: int, like: Tensor) -> Tensor:
    """n(x) = Π_k #{j in 0..size_k − 1 : |j − x_k| ≤ r}: the voxels of each window inside the image.

    Returns a tensor of shape ``spatial`` with ``like``'s dtype and device (wⁿᵈⁱᵐ in the interior).
    """
    r, ndim = window // 2, len(spatial)
    n = like.new_ones(())
    for k, size in enumerate(spatial):
        i = torch.arange(size, dtype=like.dtype, device=like.device)
        count = (i + r).clamp(max=size - 1) - (i - r).clamp(min=0) + 1
        n = n * count.view([-1 if axis == k else 1 for axis in range(ndim)])
    return n


def local_ncc(
    warped: Tensor, fixed: Tensor, window: int = 9, squared: bool = True, eps: float = 1e-6,
    border: str = "in-image",
) -> Tensor:  # fmt: skip
    """Local normalised cross-correlation map, ``(B, C, *spatial)``, each value in [0, 1] (squared).

    For the window P(x) around voxel x, with sums Σ over its voxels inside the image (box sums)
    and n(x) the number of voxels the window is averaged over:

        cross = Σ I J − Σ I Σ J / n        (n · covariance)
        var_I = Σ I² − (Σ I)² / n           (n · variance)
        cc    = cross² / max(var_I var_J, eps)          squared (the paper's code)
        cc    = cross / sqrt(max(var_I var_J, eps))     not squared, in [−1, 1]

    cc is the squared cosine similarity of the zero-mean patch vectors I_P − mean, J_P − mean.
    A constant window (its n values equal; with zero padding the zeros are among them) has
    var = 0 and cross = 0, so cc = 0 there: finite, never NaN.

    ``border`` — how a window that sticks out of the image is normalised (identical in the
    interior, where n = wⁿᵈⁱᵐ):

    * ``"zero-padding"``: n = wⁿᵈⁱᵐ everywhere, i.e. the image continues with zeros, as in the
      paper's code (DeepSimRegistration: src/loss_metrics.py, ``NCC``: ``conv_fn(..., padding=
      win // 2)`` with ``win_size = np.prod(filt.shape)``) and MONAI's
      ``LocalNormalizedCrossCorrelationLoss`` (rectangular kernel).
    * ``"in-image"`` (ours): n(x) = the voxels of the window inside the image, so the border
      windows hold only image content and NCC(a I + b, I) is optimal (cc = 1) for any a ≠ 0
      (a > 0 if not squared) and any b right up to the border; with zero padding, b ≠ 0 lowers
      cc near the border.
    """
    check_pair(warped, fixed)
    check_window_and_border(window, border)
    if border == "zero-padding":
        n: Tensor | float = float(window ** (fixed.dim() - 2))
    else:
        n = in_image_counts(fixed.shape[2:], window, fixed)
    sum_i, sum_j = box_sum(warped, window), box_sum(fixed, window)
    sum_ii, sum_jj = box_sum(warped * warped, window), box_sum(fixed * fixed, window)
    sum_ij = box_sum(warped * fixed, window)
    cross = sum_ij - sum_i * sum_j / n
    var_i = sum_ii - sum_i * sum_i / n
    var_j = sum_jj - sum_j * sum_j / n
    denominator = torch.clamp(var_i * var_j, min=eps)
    return cross * cross / denominator if squared else cross / denominator.sqrt()


class NCC(nn.Module):
    """D_NCC(I∘Φ, J) = 1 − mean_x cc(x), with cc the local NCC of ``local_ncc``.

    0 exactly when every window's centred patches of I∘Φ and J are parallel (same direction if
    not ``squared``) with var_I·var_J ≥ eps; so identical images score above 0 where a window is
    flat (cc = 0 there, not 1). The paper's squared NCC is ``NCC(9, squared=True,
    border="zero-padding")``.

    Args:
        window: side of the local window (9 in the paper, in 2D and 3D).
        squared: square the correlation as the paper's code does (optimum also for negatively
            correlated patches); ``False`` gives the plain correlation coefficient.
        eps: lower clamp of var_I·var_J (1e-6 in the paper's code).
        border: ``"in-image"`` (ours, default) or ``"zero-padding"`` (the paper's code and
            MONAI); see ``local_ncc``.
    """

    def __init__(
        self, window: int = 9, squared: bool = True, eps: float = 1e-6, border: str = "in-image"
    ):
        super().__init__()
        check_window_and_border(window, border)
        self.window, self.squared, self.eps, self.border = window, squared, eps, border

    def forward(self, warped: Tensor, fixed: Tensor) -> Tensor:
        cc = local_ncc(warped, fixed, self.window, self.squared, self.eps, self.border)
        return 1.0 - cc.mean()


# ----------------------------------------------------------------------------- NCC-sup


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """Integer labels ``(B, 1, *spatial)`` → float one-hot maps ``(B, num_classes, *spatial)``."""
    if labels.is_floating_point() or labels.dim() < 3 or labels.shape[1] != 1:
        raise ValueError(
            f"labels must be integer (B, 1, *spatial), got {labels.dtype} {tuple(labels.shape)}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}"
        )
    return F.one_hot(labels[:, 0], num_classes).movedim(-1, 1).float()


class NCCSupervised(nn.Module):
    """NCC-sup: D = D_NCC(I∘Φ, J) + mean (S_I∘Φ − S_J)², the paper's supervised NCC baseline.

    S_I, S_J are the one-hot label maps ``(B, num_classes, *spatial)`` of moving and fixed image
    (all classes including background, weight 1, as in the paper's code); S_I is warped with
    *linear* interpolation so that the label term has a gradient.
    """

    needs_labels = True

    def __init__(self, window: int = 9, squared: bool = True, border: str = "in-image"):
        super().__init__()
        self.ncc = NCC(window, squared, border=border)

    def forward(
        self, warped: Tensor, fixed: Tensor, warped_labels: Tensor | None = None,
        fixed_labels: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        if warped_labels is None or fixed_labels is None:
            raise ValueError(
                "ncc-sup needs the warped one-hot moving labels and the fixed one-hot labels"
            )
        if warped_labels.shape != fixed_labels.shape or warped_labels.shape[2:] != fixed.shape[2:]:
            raise ValueError(
                f"one-hot label maps must both be (B, classes, *spatial) like the images, got "
                f"{tuple(warped_labels.shape)} and {tuple(fixed_labels.shape)}"
            )
        return self.ncc(warped, fixed) + F.mse_loss(warped_labels, fixed_labels)


# ----------------------------------------------------------------------------- DeepSim and VGG


def cosine_similarity_map(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """Cosine similarity over channels at every position: ``(B, C, *s), (B, C, *s) → (B, *s)``.

    cos = <a, b> / sqrt(max(|a|², eps) · max(|b|², eps)); a zero feature vector gives 0, not NaN.
    """
    dot = (a * b).sum(1)
    norms = torch.clamp((a * a).sum(1), min=eps) * torch.clamp((b * b).sum(1), min=eps)
    return dot / norms.sqrt()


class FeatureSimilarity(nn.Module):
    """1 − (1/L) Σ_l mean_p cos(F_l(I∘Φ)_p, F_l(J)_p): paper Eq. 2 turned into a loss.

    Eq. 2 sums the mean cosine similarity over the L levels (L at a perfect match); dividing by L
    and subtracting from 1 makes a loss in [0, 2] with optimum 0. ``extractor`` maps an image
    ``(B, 1, *spatial)`` to a list of feature maps; it is frozen: its weights get no gradient and
    it runs in eval mode on every call. The fixed image's features are computed without a graph,
    and kept for the next call while it gets the same fixed tensor, unchanged (``fixed_features``:
    every Brain-MRI pair has the atlas as its fixed image).
    """

    def __init__(
        self, extractor: nn.Module, levels: Sequence[int | str], level_names: Sequence[str],
        eps: float = 1e-6,
    ):  # fmt: skip
        super().__init__()
        self.extractor, self.eps = extractor, eps
        self.level_names = list(level_names)
        # a level is an index into the extractor's outputs or one of their names
        levels = [self.level_names.index(lv) if lv in self.level_names else lv for lv in levels]
        for level in levels:
            if level not in range(len(self.level_names)):
                raise ValueError(
                    f"unknown level {level!r}; valid levels: "
                    + ", ".join(f"{i} ({n})" for i, n in enumerate(self.level_names))
                )
        self.levels = list(levels)
        for p in self.extractor.parameters():
            p.requires_grad_(False)
        self._fixed_kept = None  # (key, fixed tensor, its features): see fixed_features

    def features(self, image: Tensor) -> list[Tensor]:
        return self.extractor(image)

    def fixed_features(self, fixed: Tensor) -> list[Tensor]:
        """F(J) without a graph. Under ``torch.no_grad`` (validation, evaluation) the last fixed
        image's features are kept and reused while the call gets a view of the same memory (the
        same storage, offset, shape and strides, so the same values: the reference kept to it
        stops that memory from being reused) that nothing has written to since (its version
        counter), and the extractor's weights are unchanged. In training (a new batch at every
        step) nothing is kept, so no memory is held between steps."""
        if torch.is_grad_enabled():
            self._fixed_kept = None
            with torch.no_grad():
                return self.features(fixed)
        weights = self.extractor.state_dict(keep_vars=True).values()
        key = (fixed.untyped_storage().data_ptr(), fixed.storage_offset(), tuple(fixed.shape),
               fixed.stride(), fixed.dtype, fixed.device, fixed._version,
               tuple(t._version for t in weights))  # fmt: skip
        kept = self._fixed_kept
        if kept is not None and kept[0] == key:
            return kept[2]
        with torch.no_grad():
            features = self.features(fixed)
        self._fixed_kept = (key, fixed, features)  # the tensor itself: its memory stays taken
        return features

    def similarity(self, warped: Tensor, fixed: Tensor) -> Tensor:
        """Eq. 2: Σ over the selected levels of the mean cosine similarity (= L when equal)."""
        check_pair(warped, fixed)
        self.extractor.eval()  # no dropout, BatchNorm uses its running statistics
        fixed_features = self.fixed_features(fixed)
        warped_features = self.features(warped)
        return sum(
            cosine_similarity_map(warped_features[level], fixed_features[level], self.eps).mean()
            for level in self.levels
        )

    def forward(self, warped: Tensor, fixed: Tensor) -> Tensor:
        return 1.0 - self.similarity(warped, fixed) / len(self.levels)


class DeepSimLoss(FeatureSimilarity):
    """DeepSim (Eq. 2) on the encoder stages of a trained, frozen segmentation U-Net.

    ``extractor``: the segmentation ``UNet``; its ``encode`` gives F_1..F_L (1/2, 1/4, 1/8 of the
    resolution). ``levels``: which stages to use (default all, equal weights, as in the paper).
    """

    def __init__(
        self, extractor: nn.Module, levels: Sequence[int] | None = None, eps: float = 1e-6
    ):
        n = len(extractor.encoder)
        names = [f"encoder stage {i + 1} (1/{2 ** (i + 1)} resolution)" for i in range(n)]
        super().__init__(extractor, range(n) if levels is None else levels, names, eps)

    def features(self, image: Tensor) -> list[Tensor]:
        if image.shape[1] != self.extractor.in_channels:
            raise ValueError(
                f"DeepSim's extractor takes {self.extractor.in_channels}-channel images, "
                f"got {image.shape[1]}"
            )
        return self.extractor.encode(image)


class VGGLoss(FeatureSimilarity):
    """The VGG baseline: Eq. 2's cosine formula on ImageNet VGG16 relu1_2, relu2_2, relu3_3.

    ``vgg``: a ``features.VGG16Features`` (its ``convention`` is the input fed to the weights),
    or the path of the weights file made by ``python -m data_scripts.vgg16_weights`` (None:
    ``features.vgg_weights_path()``), loaded with the weights' own input convention. Which
    weights: the paper's code uses torchvision's ImageNet VGG16 on the unnormalised [0, 1] image;
    our offline default file holds the Keras/Caffe ImageNet VGG16 (see ``features``).
    """

    def __init__(
        self, vgg: nn.Module | str | None = None, levels: Sequence[int | str] | None = None
    ):  # fmt: skip
        if vgg is None or isinstance(vgg, str):
            from .features import load_vgg16

            vgg = load_vgg16(vgg)
        names = list(vgg.levels)
        super().__init__(vgg, range(len(names)) if levels is None else levels, names)


# ----------------------------------------------------------------------------- regulariser


def diffusion_regulariser(displacement: Tensor) -> Tensor:
    """R(u) = mean over batch, components and voxels of (Σ_k (∂_k u)²) / ndim.

    ``displacement``: ``(B, ndim, *spatial)``; ∂_k by forward differences. Zero for a constant
    (translation) field; a²(H−1)/(4H) for the 2D field u = (a·x₀, 0) on an H×W grid.
    """
    ndim = displacement.dim() - 2
    if ndim not in (2, 3) or displacement.shape[1] != ndim:
        raise ValueError(
            f"displacement must be (B, ndim, *spatial), got shape {tuple(displacement.shape)}"
        )
    if not torch.isfinite(displacement).all():
        raise ValueError("displacement contains NaN or inf values")
    return sum(d.pow(2) for d in forward_differences(displacement)).mean() / ndim


# ----------------------------------------------------------------------------- registry

LOSSES: dict[str, Callable[..., nn.Module]] = {
    "mse": MSE,
    "ncc": NCC,
    "ncc-sup": NCCSupervised,
    "deepsim": DeepSimLoss,
    "vgg": VGGLoss,
}


def get_loss(name: str, **kwargs) -> nn.Module:
    """Build the similarity loss called ``name`` (see ``LOSSES``) with keyword arguments."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](**kwargs)
