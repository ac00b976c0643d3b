"""Similarity metrics D and the regulariser R of the registration loss (paper Eq. 1):

    L(I, J, Φ) = D(I∘Φ, J) + λ R(Φ).

Every similarity here is a *loss*: 0 at a perfect match, larger is worse. Inputs are the warped
moving image I∘Φ and the fixed image J, both ``(B, C, H, W)`` or ``(B, C, D, H, W)``.

* ``mse``   mean squared intensity difference.
* ``ncc``   local normalised cross-correlation over a ``window``⁽ⁿᵈⁱᵐ⁾ neighbourhood, squared as in
  the paper's code (NCC is the squared cosine similarity of zero-mean patch vectors — the
  analogy DeepSim, Eq. 2, builds on).
* ``ncc-sup`` NCC plus a supervised label term (MSE of warped one-hot labels; the paper's NCCsup).
* ``deepsim`` paper Eq. 2: mean cosine similarity of the frozen segmentation net's feature maps.
* ``vgg``     the same cosine formula on ImageNet VGG16 features (a perceptual-loss baseline).
* ``diffusion_regulariser``  R(u) = mean |∇u|², the paper's choice of R.

``get_loss(name, **kw)`` builds a similarity by name; ``LOSSES`` lists the names. Losses that
need the label maps (``ncc-sup``) say so with ``needs_labels = True``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


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


def box_sum(x: Tensor, window: int) -> Tensor:
    """Sum of ``x`` over a ``window``-wide cube around every voxel (zeros outside the image).

    Separable: one 1-D pass of a ones-kernel per axis, all channels at once through a grouped
    convolution — ndim·w multiply-adds per voxel instead of wⁿᵈⁱᵐ for a dense w×w×w kernel.
    ``(B, C, *spatial)`` → ``(B, C, *spatial)``.
    """
    ndim, channels = x.dim() - 2, x.shape[1]
    conv = getattr(F, f"conv{ndim}d")
    for axis in range(ndim):
        size, padding = [1] * ndim, [0] * ndim
        size[axis], padding[axis] = window, window // 2
        kernel = x.new_ones(channels, 1, *size)  # one ones-kernel per channel (groups=channels)
        x = conv(x, kernel, padding=tuple(padding), groups=channels)
    return x


def local_ncc(
    warped: Tensor, fixed: Tensor, window: int = 9, squared: bool = True, eps: float = 1e-6
) -> Tensor:
    """Local normalised cross-correlation map, ``(B, C, *spatial)``, each value in [0, 1] (squared).

    For the window P(x) around voxel x, with n(x) = the number of its voxels inside the image
    and sums Σ over those voxels:

        cross = Σ I J − Σ I Σ J / n        (n · covariance)
        var_I = Σ I² − (Σ I)² / n           (n · variance)
        cc    = cross² / max(var_I var_J, eps)          squared (the paper's code)
        cc    = cross / sqrt(max(var_I var_J, eps))     not squared, in [−1, 1]

    cc is the squared cosine similarity of the zero-mean patch vectors I_P − mean, J_P − mean.
    A constant window has var = 0 and cross = 0, so cc = 0 there: finite, never NaN.

    Ours: at the border the paper's code divides by the full window size wⁿᵈⁱᵐ, treating the zero
    padding as image content; we use the true count n(x), so NCC(a I + b, I) is optimal for any
    a > 0 right up to the border, not only in the interior.
    """
    check_pair(warped, fixed)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    channels = fixed.shape[1]
    # voxels of each window that lie inside the image: (1, 1, *spatial)
    n = box_sum(fixed.new_ones(1, 1, *fixed.shape[2:]), window)
    # five local sums in one grouped, separable pass: (B, 5C, *spatial)
    stacked = torch.cat([warped, fixed, warped * warped, fixed * fixed, warped * fixed], dim=1)
    sum_i, sum_j, sum_ii, sum_jj, sum_ij = box_sum(stacked, window).split(channels, dim=1)
    cross = sum_ij - sum_i * sum_j / n
    var_i = sum_ii - sum_i * sum_i / n
    var_j = sum_jj - sum_j * sum_j / n
    denominator = torch.clamp(var_i * var_j, min=eps)
    return cross * cross / denominator if squared else cross / denominator.sqrt()


class NCC(nn.Module):
    """D_NCC(I∘Φ, J) = 1 − mean_x cc(x), with cc the local NCC of ``local_ncc``.

    Args:
        window: side of the local window (9 in the paper, in 2D and 3D).
        squared: square the correlation as the paper's code does (optimum also for negatively
            correlated patches); ``False`` gives the plain correlation coefficient.
    """

    def __init__(self, window: int = 9, squared: bool = True, eps: float = 1e-6):
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be a positive odd number, got {window}")
        self.window, self.squared, self.eps = window, squared, eps

    def forward(self, warped: Tensor, fixed: Tensor) -> Tensor:
        return 1.0 - local_ncc(warped, fixed, self.window, self.squared, self.eps).mean()


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

    def __init__(self, window: int = 9, squared: bool = True):
        super().__init__()
        self.ncc = NCC(window, squared)

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
    it runs in eval mode on every call. The fixed image's features are computed without a graph.
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

    def features(self, image: Tensor) -> list[Tensor]:
        return self.extractor(image)

    def similarity(self, warped: Tensor, fixed: Tensor) -> Tensor:
        """Eq. 2: Σ over the selected levels of the mean cosine similarity (= L when equal)."""
        check_pair(warped, fixed)
        self.extractor.eval()  # no dropout, BatchNorm uses its running statistics
        with torch.no_grad():
            fixed_features = self.features(fixed)
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

    ``vgg``: a ``features.VGG16Features`` (or the path of the weights file made by
    ``python -m data_scripts.vgg16_weights``).
    """

    def __init__(
        self, vgg: nn.Module | str = "data/vgg16_conv.pt", levels: Sequence[int | str] | None = None
    ):  # fmt: skip
        if isinstance(vgg, str):
            from .features import load_vgg16

            vgg = load_vgg16(vgg)
        names = list(vgg.levels)
        super().__init__(vgg, range(len(names)) if levels is None else levels, names)


# ----------------------------------------------------------------------------- regulariser


def forward_differences(u: Tensor) -> list[Tensor]:
    """Forward differences u(x + e_k) − u(x) along every spatial axis k, each ``u.shape``.

    The last slice along k is padded by replication, so its difference is 0 (the paper's code).
    """
    ndim = u.dim() - 2
    diffs = []
    for axis in range(2, ndim + 2):
        d = torch.diff(u, dim=axis)
        # append a zero slice at the far end: replicate padding of u
        diffs.append(torch.cat([d, torch.zeros_like(u.narrow(axis, 0, 1))], dim=axis))
    return diffs


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
