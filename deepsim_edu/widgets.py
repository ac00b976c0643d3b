"""Interactive front-ends for the book (ipywidgets): thin wrappers over the library.

Each function returns an ``Explorer``: a ``VBox`` of plain controls (sliders, drop-downs,
toggle buttons) above one ``ipywidgets.Image`` and an HTML caption. Every change of a control's
``value`` redraws the figure with matplotlib and stores it in the Image as PNG bytes.

Why PNG bytes in an Image and not ``plt.show()`` in an ``Output`` widget: the picture then is
part of the *widget state*, which papermill saves in the executed notebook, so the static HTML of
the book shows each widget's first picture without a kernel. (Without a kernel the controls move
but nothing redraws; in Jupyter everything responds.) Figures are at most 600 px wide at 80 dpi
to keep the saved state small.

* ``warp_explorer``   Φ = id + u for a smooth random u: I∘Φ, its grid, det ∇Φ (``transform``)
* ``metric_explorer`` MSE, NCC, VGG, DeepSim of a shifted, contrast-changed, noisy image, and
  their landscapes over the shift (``losses``, ``landscape``)
* ``lambda_explorer`` a λ sweep: validation Dice vs λ, a pair registered by each λ's net
  (``runs.sweep_table``, ``registration``, ``evaluate``)
* ``dataset_browser`` the cases of a dataset folder, label contours, noisy patches (``data``)

Only widgets live here: no registration math, no finding of runs or datasets. The widgets call
``transform``, ``losses``, ``landscape``, ``registration``, ``evaluate``, ``runs``, ``data`` and
``viz``, and only arrange the pictures.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from contextlib import contextmanager
from html import escape
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure
from torch import Tensor

from . import registration
from .data.demo_pair import make_demo_pair
from .data.embedded import datasets_in, resolve_dataset
from .data.layout import SPLITS, check_dataset_name, load_info, read_case, read_noise_mask
from .data.pairs import PairDataset
from .data.synth import random_displacement
from .evaluate import dice
from .landscape import metric_landscape
from .losses import DeepSimLoss, VGGLoss, get_loss
from .runs import has_checkpoint, load_registration_net, sweep_table
from .transform import folding_fraction, jacobian_determinant, warp
from .viz import draw_grid, show_image

DPI = 80
WIDTH_INCHES = 7.5  # 600 px at 80 dpi
SLIDER = {"continuous_update": False, "style": {"description_width": "initial"}}


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as a 256-colour PNG: equal figures give equal bytes.

    Matplotlib writes RGBA; noisy microscopy compresses badly, so the picture is reduced to a
    palette of 256 colours (median cut, no dithering): 2–3× fewer bytes in the saved state.
    """
    from PIL import Image  # a dependency of matplotlib

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    picture = Image.open(buffer).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    out = io.BytesIO()
    picture.save(out, format="png", optimize=True)
    return out.getvalue()


def _image2d(image, name: str = "image") -> Tensor:
    """A float ``(1, 1, H, W)`` tensor from ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)``."""
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image)
    x, shape = x.detach().float().cpu(), tuple(x.shape)
    while x.dim() > 2 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2:
        raise ValueError(f"{name} must be one 2D image (H, W), got shape {shape}")
    return x[None, None]


def _fit_axes(ax, height: int, width: int) -> None:
    """Keep a grid drawn over an image inside the image's frame."""
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)


def _html_table(summary: dict) -> str:
    """One-row HTML table of a summary dict (numbers with 4 significant digits)."""

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else escape(str(v))

    head = "".join(f"<th style='padding:0 8px'>{escape(str(k))}</th>" for k in summary)
    row = "".join(f"<td style='padding:0 8px;text-align:center'>{cell(v)}</td>"
                  for v in summary.values())  # fmt: skip
    return f"<table><tr>{head}</tr><tr>{row}</tr></table>"


class Explorer(widgets.VBox):
    """Controls above a picture: a VBox the book displays and the tests drive.

    Attributes:
        controls: name → control widget; setting ``controls[name].value`` redraws.
        image: the ``ipywidgets.Image`` holding the current figure as PNG bytes.
        caption: an ``ipywidgets.HTML`` with ``note`` and ``summary`` as a table.
        summary: the numbers of the current picture (e.g. losses, Dice, folding fraction).

    Subclasses implement ``draw() -> Figure`` (reading ``self.value(name)``, setting
    ``self.summary``) and may override ``update_controls(name)`` to adjust dependent controls
    (ranges, options) before a redraw. ``render()`` redraws synchronously.
    """

    def __init__(self, controls: dict[str, widgets.Widget]):
        self.controls = dict(controls)
        self.image = widgets.Image(format="png")
        self.caption = widgets.HTML()
        self.summary: dict = {}
        self.note = ""  # a line above the caption's table
        self._holding = False
        box = widgets.HBox(
            list(self.controls.values()), layout=widgets.Layout(flex_flow="row wrap")
        )
        super().__init__([box, self.image, self.caption])
        for name, control in self.controls.items():
            control.observe(lambda change, name=name: self._changed(name), names="value")

    def value(self, name: str):
        return self.controls[name].value

    @contextmanager
    def hold(self):
        """Change several controls without a redraw for each (call ``render()`` after)."""
        holding, self._holding = self._holding, True
        try:
            yield
        finally:
            self._holding = holding

    def _changed(self, name: str) -> None:
        if self._holding:
            return
        with self.hold():
            self.update_controls(name)
        self.render()

    def update_controls(self, name: str) -> None:
        """Adjust controls that depend on control ``name`` (nothing by default)."""

    def draw(self) -> Figure:
        raise NotImplementedError

    def render(self) -> None:
        """Redraw the figure into ``image`` and the summary into ``caption``."""
        self.image.value = figure_png(self.draw())
        table = _html_table(self.summary) if self.summary else ""
        self.caption.value = f"<small>{escape(self.note)}</small>{table}" if self.note else table


# ----------------------------------------------------------------------------- warp


class WarpExplorer(Explorer):
    """A smooth random displacement u (``synth.random_displacement``) applied to an image."""

    def __init__(self, image: Tensor, seed: int = 0):
        self.moving = image
        height, width = image.shape[2:]
        controls = {
            "amplitude": widgets.FloatSlider(
                value=2.0, min=0.0, max=8.0, step=0.25,
                description="amplitude (voxels)", **SLIDER),
            "smoothness": widgets.FloatSlider(
                value=max(height, width) / 12, min=2.0, max=max(height, width) / 4, step=1.0,
                description="smoothness σ (voxels)", **SLIDER),
            "seed": widgets.IntSlider(value=seed, min=0, max=20, description="seed", **SLIDER),
        }  # fmt: skip
        super().__init__(controls)
        self.render()

    def displacement(self) -> Tensor:
        """u ``(1, 2, H, W)``: each component a smooth field of std = amplitude voxels."""
        rng = np.random.default_rng(self.value("seed"))
        u = random_displacement(
            tuple(self.moving.shape[2:]), self.value("smoothness"), self.value("amplitude"), rng
        )
        return torch.from_numpy(u)[None]

    def draw(self) -> Figure:
        u = self.displacement()
        warped = warp(self.moving, u)
        det = jacobian_determinant(u)[0]  # (H, W)
        folding = folding_fraction(u).item()
        height, width = det.shape
        self.summary = {"folding fraction": folding, "min det ∇Φ": det.min().item(),
                        "max |u| (voxels)": u.norm(dim=1).max().item()}  # fmt: skip

        fig = Figure(figsize=(WIDTH_INCHES, 2.9), layout="constrained")
        axes = fig.subplots(1, 3)
        show_image(axes[0], self.moving, title="moving I")
        show_image(axes[1], warped, title="warped I∘Φ and the grid of Φ")
        draw_grid(axes[1], u, spacing=max(4, height // 16))
        _fit_axes(axes[1], height, width)
        # det ∇Φ: white = volume kept (1), red = expanded, blue = shrunk; black = folded (< 0)
        shown = axes[2].imshow(det.numpy(), cmap="RdBu_r", norm=TwoSlopeNorm(1.0, 0.0, 2.0))
        folded = np.ma.masked_where(det.numpy() > 0, np.zeros(det.shape))
        axes[2].imshow(folded, cmap=ListedColormap(["black"]), interpolation="nearest")
        axes[2].set_title(f"det ∇Φ, folding (black) {100 * folding:.1f} %", fontsize=9)
        axes[2].set_axis_off()
        fig.colorbar(shown, ax=axes[2], shrink=0.8, ticks=[0, 0.5, 1, 1.5, 2])
        return fig


def warp_explorer(image=None, seed: int = 0) -> WarpExplorer:
    """Sliders for a smooth random displacement u (amplitude, smoothness, seed) → panels:
    moving I, warped I∘Φ with the deformation grid of Φ = id + u, det ∇Φ with folding in black.

    ``image``: a 2D image ``(H, W)`` / ``(1, 1, H, W)`` (default: the demo's moving image).
    """
    if image is None:
        image = make_demo_pair(size=96)["moving"]
    return WarpExplorer(_image2d(image), seed)


# ----------------------------------------------------------------------------- metrics


class _Contrasted:
    """A loss with a contrast change of its first argument: mean + c (I∘Φ − mean), as in the
    embedded data's noise model (``data.series.add_noise``). Keeps the last pair it saw, so the
    widget shows exactly the images that were compared."""

    def __init__(self, loss, contrast: float):
        self.loss, self.contrast, self.last = loss, contrast, None

    def __call__(self, warped: Tensor, fixed: Tensor) -> Tensor:
        mean = warped.mean()
        warped = mean + self.contrast * (warped - mean)
        self.last = (warped, fixed)
        return self.loss(warped, fixed)


class MetricExplorer(Explorer):
    """The losses of ``losses.py`` for one (shift, contrast, noise) setting and their landscapes.

    The images are those of ``landscape.metric_landscape``: J = the image + noise, I∘Φ = the
    image translated along the last axis + independent noise of the same σ, then the contrast
    change. Values are *losses* (0 = perfect match); NCC is 1 − the mean squared local NCC.
    """

    def __init__(self, fixed: Tensor, metrics: dict, seed: int, max_shift: int,
                 landscape_step: int, noise: float, contrast: float, shift: int):  # fmt: skip
        self.fixed, self.metrics, self.seed = fixed, metrics, seed
        self.landscape_shifts = list(range(-max_shift, max_shift + 1, landscape_step))
        if 0 not in self.landscape_shifts:
            self.landscape_shifts = sorted({*self.landscape_shifts, 0})
        self._landscapes: dict[tuple[float, float], pd.DataFrame] = {}
        controls = {
            "noise": widgets.FloatSlider(value=noise, min=0.0, max=0.3, step=0.01,
                                         description="noise σ", **SLIDER),
            "contrast": widgets.FloatSlider(value=contrast, min=0.5, max=1.5, step=0.05,
                                            description="contrast ×", **SLIDER),
            "shift": widgets.IntSlider(value=shift, min=-max_shift, max=max_shift,
                                       description="shift (voxels)", **SLIDER),
        }  # fmt: skip
        super().__init__(controls)
        self.note = "losses, 0 = perfect match (NCC: 1 − mean squared local NCC)"
        self.render()

    def _evaluate(self, shifts: Sequence[float]) -> tuple[pd.DataFrame, tuple[Tensor, Tensor]]:
        noise, contrast = self.value("noise"), self.value("contrast")
        wrapped = {name: _Contrasted(loss, contrast) for name, loss in self.metrics.items()}
        table = metric_landscape(self.fixed, wrapped, shifts, noise=(noise,), seed=self.seed)
        return table, next(iter(wrapped.values())).last

    def landscape(self) -> pd.DataFrame:
        """Losses at ``landscape_shifts`` for the current noise and contrast (cached)."""
        key = (self.value("noise"), self.value("contrast"))
        if key not in self._landscapes:
            self._landscapes[key] = self._evaluate(self.landscape_shifts)[0]
        return self._landscapes[key]

    def draw(self) -> Figure:
        shift = self.value("shift")
        current, (moving, fixed) = self._evaluate([shift])
        self.summary = dict(zip(current["metric"], current["value"].astype(float)))
        landscape = self.landscape()

        fig = Figure(figsize=(WIDTH_INCHES, 2.7), layout="constrained")
        grid = fig.add_gridspec(1, 3, width_ratios=(1, 1, 1.5))
        ax_fixed, ax_moving, ax_land = (fig.add_subplot(g) for g in grid)
        show_image(ax_fixed, fixed, title="fixed J")
        show_image(ax_moving, moving, title=f"moving I∘Φ (shift {shift})")
        for (metric, group), color in zip(landscape.groupby("metric", sort=False),
                                          ("C0", "C1", "C2", "C3", "C4")):  # fmt: skip
            value = group["value"].to_numpy()
            low, span = value.min(), max(value.max() - value.min(), 1e-12)
            ax_land.plot(group["shift"], (value - low) / span, ".-", color=color, label=metric)
            ax_land.plot([shift], [(self.summary[metric] - low) / span], "o", color=color)
        ax_land.axvline(shift, color="grey", linewidth=0.5)
        ax_land.set_xlabel("shift (voxels)", fontsize=8)
        ax_land.set_ylabel("loss, rescaled to [0, 1]", fontsize=8)
        ax_land.set_title("landscape (0 = true alignment)", fontsize=9)
        ax_land.tick_params(labelsize=7)
        ax_land.legend(fontsize=7)
        return fig


def _center_crop(image: Tensor, size: int | None) -> Tensor:
    """The central ``size`` × ``size`` part of ``(1, 1, H, W)`` (axes shorter than it are kept)."""
    if size is None:
        return image
    height, width = image.shape[2:]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[..., top : top + size, left : left + size]


def metric_explorer(
    fixed=None, extractor=None, vgg=None, seed: int = 0, *, max_shift: int = 8,
    landscape_step: int | None = None, crop: int | None = 128, noise: float = 0.05,
    contrast: float = 1.0, shift: int = 3,
) -> MetricExplorer:  # fmt: skip
    """Sliders for noise σ, contrast factor and shift → the fixed and the moving image, the
    losses MSE, NCC (+ VGG, DeepSim) at that setting (``summary``, the caption table) and
    their landscapes over the shift at the current noise and contrast, each rescaled to [0, 1].

    Args:
        fixed: a 2D image in [0, 1] (default: the demo's fixed image), centre-cropped to
            ``crop`` × ``crop`` so that a redraw stays fast on a CPU.
        extractor: DeepSim's segmentation net (a ``UNet``) or its checkpoint path; None: no
            DeepSim.
        vgg: a ``features.VGG16Features`` or its weights path; None: no VGG.
        seed: the noise draw (``landscape.metric_landscape``).
        max_shift: the shift slider's range ±max_shift voxels (along the last axis), also the
            landscape's range; ``landscape_step`` its spacing (default 1; 4 with VGG, whose
            two VGG16 passes cost ≈0.2 s per evaluation at 128² on one CPU core, so that a
            change of noise or contrast redraws in < 2 s; a change of shift only evaluates once).
        noise, contrast, shift: the first setting (the picture a static page shows).
    """
    fixed = _center_crop(_image2d(make_demo_pair(size=96)["fixed"] if fixed is None else fixed,
                                  "fixed"), crop)  # fmt: skip
    metrics = {"MSE": get_loss("mse"), "NCC": get_loss("ncc")}
    if vgg is not None:
        metrics["VGG"] = VGGLoss(str(vgg) if isinstance(vgg, str | Path) else vgg)
    if extractor is not None:
        if isinstance(extractor, str | Path):
            from .features import load_segmentation_extractor

            extractor = load_segmentation_extractor(extractor, ndim=2)
        metrics["DeepSim"] = DeepSimLoss(extractor)
    if landscape_step is None:
        landscape_step = 4 if vgg is not None else 1
    if max_shift < 1 or landscape_step < 1:
        raise ValueError(f"max_shift and landscape_step must be >= 1, got {max_shift}, "
                         f"{landscape_step}")  # fmt: skip
    return MetricExplorer(fixed, metrics, seed, max_shift, landscape_step, noise, contrast, shift)


# ----------------------------------------------------------------------------- λ sweep


def _slice(array, axis: int, index: int):
    """``array[..., index, ...]`` along spatial ``axis`` of a ``(*spatial)`` array or tensor."""
    return array.select(axis, index) if isinstance(array, Tensor) else np.take(array, index, axis)


class LambdaExplorer(Explorer):
    """A λ sweep's validation Dice vs λ, and one pair registered by the net of the chosen λ."""

    def __init__(self, table: pd.DataFrame, pairs: PairDataset | None):
        self.table, self.pairs = table, pairs
        self._nets: dict[float, torch.nn.Module] = {}
        options = [(f"{lam:g}", float(lam)) for lam in table["lam"]]
        selected = float(table.loc[table["selected"], "lam"].iloc[0])
        controls = {"lam": widgets.SelectionSlider(options=options, value=selected,
                                                   description="λ", **SLIDER)}  # fmt: skip
        if pairs is not None:
            controls["pair"] = widgets.IntSlider(
                value=0, min=0, max=len(pairs) - 1, description=f"{pairs.split} pair", **SLIDER
            )
        super().__init__(controls)
        self.render()

    def _net(self, lam: float):
        if lam not in self._nets:
            run = self.table.loc[self.table["lam"] == lam, "run"].iloc[0]
            net, config = load_registration_net(run)
            if config["dataset"] != self.pairs.info.name:
                raise ValueError(f"{run} was trained on {config['dataset']!r}, the data "
                                 f"folder holds {self.pairs.info.name!r}")  # fmt: skip
            self._nets[lam] = net
        return self._nets[lam]

    @torch.no_grad()
    def register(self, lam: float, index: int) -> dict:
        """Register pair ``index`` with λ's net: images, u, Dice before/after, folding."""
        item = self.pairs[index]
        moving, fixed = item["moving"][None], item["fixed"][None]  # (1, 1, *spatial)
        u, warped = registration.register(self._net(lam), moving, fixed)  # u: (1, ndim, ...)
        warped_labels = warp(item["moving_labels"][None], u, mode="nearest")
        classes = self.pairs.info.num_classes
        return {
            "item": item, "u": u, "warped": warped,
            "dice_before": dice(item["moving_labels"][None], item["fixed_labels"][None],
                                classes).item(),
            "dice": dice(warped_labels, item["fixed_labels"][None], classes).item(),
            "folding": folding_fraction(u).item(), "warped_labels": warped_labels,
        }  # fmt: skip

    def draw(self) -> Figure:
        lam = self.value("lam")
        row = self.table.loc[self.table["lam"] == lam].iloc[0]
        has_run = has_checkpoint(row["run"])
        show_pair = self.pairs is not None and has_run
        self.summary = {"λ": f"{lam:g}", "best val Dice": float(row["best_val_dice"])}

        fig = Figure(figsize=(WIDTH_INCHES if show_pair else 3.6, 2.9), layout="constrained")
        grid = fig.add_gridspec(
            1, 3 if show_pair else 1, width_ratios=(1.3, 1, 1)[: 3 if show_pair else 1]
        )
        ax = fig.add_subplot(grid[0])
        lams, dices = self.table["lam"].to_numpy(), self.table["best_val_dice"].to_numpy()
        ax.plot(lams, dices, "o-", color="C0", markersize=4)
        picked = self.table["selected"].to_numpy()
        ax.plot(lams[picked], dices[picked], "*", color="C2", markersize=11, label="selected")
        ax.plot(
            [lam],
            [row["best_val_dice"]],
            "o",
            color="C3",
            markersize=11,
            fillstyle="none",
            label="shown",
        )
        if (lams > 0).all():
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=lams[lams > 0].min() if (lams > 0).any() else 1)
        ax.set_xlabel("λ", fontsize=8)
        ax.set_ylabel("best validation Dice", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
        ax.set_title("validation Dice vs λ", fontsize=9)
        if show_pair:
            self._draw_pair(fig, grid, lam)
        return fig

    def _draw_pair(self, fig: Figure, grid, lam: float) -> None:
        r = self.register(lam, self.value("pair"))
        item, u = r["item"], r["u"]
        ndim = u.shape[1]
        # 3D: the middle slice along the first axis, with the in-plane components of u
        middle = item["fixed"].shape[1] // 2
        cut = (lambda x: _slice(x, 0, middle)) if ndim == 3 else (lambda x: x)  # noqa: E731
        plane = u[0, 1:, middle] if ndim == 3 else u[0]  # (2, H, W)
        height, width = cut(item["fixed"][0]).shape
        ax_fixed, ax_warped = fig.add_subplot(grid[1]), fig.add_subplot(grid[2])
        show_image(ax_fixed, cut(item["fixed"][0]), cut(item["fixed_labels"][0]),
                   f"fixed J ({item['fixed_id']})")  # fmt: skip
        show_image(ax_warped, cut(r["warped"][0, 0]), cut(r["warped_labels"][0, 0]),
                   f"I∘Φ, Dice {r['dice']:.3f}, folding {100 * r['folding']:.2f} %")  # fmt: skip
        draw_grid(ax_warped, plane, spacing=max(4, height // 16))
        _fit_axes(ax_warped, height, width)
        self.summary.update({"pair": f"{item['moving_id']} → {item['fixed_id']}",
                             "Dice before": r["dice_before"], "Dice after": r["dice"],
                             "folding fraction": r["folding"]})  # fmt: skip


def lambda_explorer(sweep_dir_or_run_root, data_dir=None, split: str = "val") -> LambdaExplorer:
    """A slider over the λs of a sweep → validation Dice vs λ with the chosen λ marked, and a
    ``split`` pair registered by that λ's net (grid, Dice, folding fraction) when the runs'
    checkpoints and the data are there.

    ``sweep_dir_or_run_root``: ``<root>/<dataset>/<metric>`` (with ``sweep.csv`` and
    ``sweep/lam_<λ>/``) or its ``sweep/`` folder (see ``runs.sweep_table``). ``data_dir``: the
    dataset (``data.embedded.resolve_dataset``); None: ``data/<dataset>`` if it exists, else
    the curve only. FileNotFoundError names the folder if it holds no runs.
    """
    table = sweep_table(sweep_dir_or_run_root)
    runs = [Path(r) for r in table["run"] if has_checkpoint(r)]
    pairs = None
    if runs:
        dataset = load_registration_net(runs[0])[1]["dataset"]
        if data_dir is not None:
            pairs = PairDataset(resolve_dataset(dataset, data_dir), split)
        elif (Path("data") / dataset / "dataset.json").is_file():
            pairs = PairDataset(Path("data") / dataset, split)
    return LambdaExplorer(table, pairs)


# ----------------------------------------------------------------------------- datasets


class DatasetBrowser(Explorer):
    """The cases of the dataset folders in a data folder, with label contours and noisy patches."""

    def __init__(self, found: dict[str, Path], dataset: str, split: str, case: int):
        self.found = found
        self.infos = {name: load_info(root) for name, root in found.items()}
        self._cache: dict[tuple[str, str], tuple] = {}
        controls = {
            "dataset": widgets.Dropdown(options=list(found), value=dataset, description="dataset"),
            "split": widgets.ToggleButtons(options=SPLITS, value=split, description="split",
                                           style={"button_width": "60px"}),
            "case": widgets.IntSlider(value=0, min=0, max=0, description="case", **SLIDER),
            "axis": widgets.ToggleButtons(options=[("0", 0), ("1", 1), ("2", 2)], value=0,
                                          description="axis", style={"button_width": "40px"}),
            "slice": widgets.IntSlider(value=0, min=0, max=0, description="slice", **SLIDER),
        }  # fmt: skip
        super().__init__(controls)
        with self.hold():
            self.update_controls("dataset")
            self.controls["case"].value = case
        self.render()

    @property
    def info(self):
        return self.infos[self.value("dataset")]

    def case_id(self) -> str:
        return self.info.splits[self.value("split")][self.value("case")]

    def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Image, labels and noise mask (None if the dataset has none) of the current case."""
        key = (self.value("dataset"), self.case_id())
        if key not in self._cache:
            root, info = self.found[key[0]], self.info
            image, label = read_case(root, info, key[1])
            mask = read_noise_mask(root, info, key[1])
            self._cache = {key: (image, label, mask)}  # one case at a time: 3D volumes are big
        return self._cache[key]

    def update_controls(self, name: str) -> None:
        info = self.info
        case, slices = self.controls["case"], self.controls["slice"]
        if name in ("dataset", "split"):
            case.max = len(info.splits[self.value("split")]) - 1
        three_d = info.ndim == 3
        for control in ("axis", "slice"):
            self.controls[control].layout.display = None if three_d else "none"
        if three_d:
            shape = self.read()[0].shape
            slices.max = shape[self.value("axis")] - 1
            if name in ("dataset", "axis"):
                slices.value = shape[self.value("axis")] // 2

    def draw(self) -> Figure:
        info = self.info
        image, label, mask = self.read()
        shape = image.shape
        if info.ndim == 3:
            axis, index = self.value("axis"), self.value("slice")
            image, label = _slice(image, axis, index), _slice(label, axis, index)
            mask = None if mask is None else _slice(mask, axis, index)
        split, n = self.value("split"), len(info.splits[self.value("split")])
        present = [info.classes[c] for c in np.unique(label)]
        self.summary = {"case": self.case_id(), "shape": "×".join(map(str, shape)),
                        "classes in view": ", ".join(present)}  # fmt: skip
        if mask is not None:
            self.summary["noisy patches"] = f"{100 * float(mask.mean()):.0f} %"

        fig = Figure(figsize=(4.2, 4.4), layout="constrained")
        ax = fig.add_subplot()
        where = f", axis {self.value('axis')} slice {self.value('slice')}" if info.ndim == 3 else ""
        show_image(ax, image, label, f"{info.name} {split} {self.value('case') + 1}/{n}: "
                                     f"{self.case_id()}{where}")  # fmt: skip
        if mask is not None and mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=0.8,
                       linestyles="--")
        ax.text(0.0, -0.02, "lines: label boundaries"
                + ("; cyan dashes: noisy patches" if mask is not None else ""),
                transform=ax.transAxes, fontsize=7, va="top")  # fmt: skip
        return fig


def dataset_browser(
    data_dir: str | Path = "data", dataset: str = "platelet-em", *, split: str = "train",
    case: int = 0,
) -> DatasetBrowser:  # fmt: skip
    """A drop-down over the datasets in ``data_dir``, the split, a case slider (3D: an axis and
    a slice slider) → the image with its label contours and, if stored, the outline of the
    noisy patches (``noise_masks/``). ``split`` and ``case`` (an index) set the first view.

    Errors: FileNotFoundError if ``data_dir`` is missing or does not hold ``dataset``;
    ``DatasetError`` (a ValueError) for an unknown dataset name.
    """
    check_dataset_name(dataset)
    found = datasets_in(data_dir)
    if dataset not in found:
        raise FileNotFoundError(
            f"{data_dir}: no dataset {dataset!r} in it (no {Path(data_dir) / dataset}/dataset.json"
            f"); present: {', '.join(found) or 'none'} — make it with "
            f"`python -m deepsim_edu data --dataset {dataset}`"
        )
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return DatasetBrowser(found, dataset, split, case)
