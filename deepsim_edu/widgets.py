"""Interactive front-ends for the book (ipywidgets): thin wrappers over the library.

Each function returns an ``Explorer``: a ``VBox`` of plain controls (sliders, drop-downs,
toggle buttons) above an ``ipywidgets.Stack`` of pictures, one per position of the explorer's
*main control*, each an ``ipywidgets.Image`` (a matplotlib figure as WebP bytes) with an HTML
caption of its numbers.

Why a stack of pictures: the book's HTML has no kernel. It renders the widgets from the
*widget state* that papermill saves in the executed notebook, and in that state a Python
callback is gone but a ``jsdlink`` (a link run by the browser) is not. So the explorer draws
the pictures of its main control's positions when the chapter runs (at the other controls'
first values) and links the control's position to the stack's ``selected_index``: in the static
page, moving the main control switches between the stored pictures. In Jupyter, every control
still recomputes: a change of any control draws the picture of the new setting into the shown
slot (positions not drawn for the current setting show a short note until they are drawn).
Figures are at most 600 px wide at 80 dpi and lossy WebP (``figure_webp``), and an explorer
stores at most ``MAX_FRAMES`` pictures of a long control (evenly spread), so that one explorer
adds 0.1–0.6 MB to its page.

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
from ipywidgets.widgets.widget_string import HTMLStyle
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
QUALITY = 70  # WebP quality of the stored pictures: 20–30 kB a picture
MAX_FRAMES = 12  # stored pictures of a main control with more positions than this (evenly spread)


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


def figure_webp(fig: Figure, dpi: int = DPI, quality: int = QUALITY) -> bytes:
    """The figure as lossy WebP (``quality`` 0–100): equal figures give equal bytes.

    About half the bytes of ``figure_png`` at the same size and still crisp text and lines, so
    that an explorer can store a picture for each position of its main control.
    """
    from PIL import Image  # a dependency of matplotlib

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    out = io.BytesIO()
    Image.open(buffer).convert("RGB").save(out, format="webp", quality=quality, method=6)
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


def _position_trait(control: widgets.Widget) -> str:
    """The synced trait that is the control's position 0, 1, …: the browser links it."""
    if hasattr(control, "index") and hasattr(control, "options"):  # sliders/menus of options
        return "index"
    if isinstance(control, widgets.IntSlider) and control.min == 0:
        return "value"
    raise ValueError(f"a main control must be a selection widget or an IntSlider from 0, got "
                     f"{type(control).__name__}")  # fmt: skip


def _positions(control: widgets.Widget) -> int:
    """How many positions the control has."""
    return len(control.options) if _position_trait(control) == "index" else control.max + 1


def _value_at(control: widgets.Widget, position: int):
    """The control's value at ``position`` and its label (what its readout shows)."""
    if _position_trait(control) == "index":
        return control._options_values[position], control._options_labels[position]
    return position, str(position)


def _spread(count: int, most: int, keep: int) -> list[int]:
    """All of ``range(count)`` if it has at most ``most`` items, else ``most`` evenly spread
    positions (the first and the last among them) and ``keep``."""
    if count <= most:
        return list(range(count))
    return sorted({*np.linspace(0, count - 1, max(most, 2)).round().astype(int).tolist(), keep})


class Frame(widgets.VBox):
    """One stored picture: ``image`` (WebP bytes) above ``caption`` (HTML).

    ``layout``/``style``: shared by the frames of an explorer (each ``Layout`` model weighs
    about 1 kB in the saved state, several per frame otherwise).
    """

    def __init__(self, layout: widgets.Layout | None = None,
                 style: HTMLStyle | None = None):  # fmt: skip
        layout = layout or widgets.Layout()
        self.image = widgets.Image(format="webp", layout=layout)
        self.caption = widgets.HTML(layout=layout, style=style or HTMLStyle())
        super().__init__([self.image, self.caption], layout=layout)


class Explorer(widgets.VBox):
    """Controls above a stack of pictures: a VBox the book displays and the tests drive.

    Attributes:
        controls: name → control widget; setting ``controls[name].value`` redraws.
        main: the name of the main control, whose positions are stored pictures.
        frames: the ``ipywidgets.Stack`` with one child per position of the main control, a
            ``Frame`` drawn for the current setting of the other controls, or ``placeholder``;
            the browser sets its ``selected_index`` from the main control (``jsdlink``).
        image, caption: the ``Image`` and ``HTML`` of the shown frame.
        hint: a line under the controls: which control responds without a kernel.
        summary: the numbers of the shown picture (e.g. losses, Dice, folding fraction).

    Subclasses implement ``draw() -> Figure`` (reading ``self.value(name)``, setting
    ``self.summary``), may override ``update_controls(name)`` to adjust dependent controls
    (ranges, options) before a redraw, and call ``precompute()`` at the end of their
    ``__init__``. ``render()`` redraws synchronously. The main control is a selection widget
    (its ``index`` is the position) or an ``IntSlider`` from 0 (its ``value`` is).
    """

    def __init__(self, controls: dict[str, widgets.Widget], main: str,
                 max_frames: int = MAX_FRAMES):  # fmt: skip
        if main not in controls:
            raise ValueError(f"main control {main!r} is not among the controls {list(controls)}")
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.controls, self.main, self.max_frames = dict(controls), main, max_frames
        self.summary: dict = {}
        self.note = ""  # a line above the caption's table
        self._holding = False
        self._slots: list[Frame | None] = []  # one per position of the main control
        self._drawn: list[tuple | None] = []  # the other controls' values each slot shows
        self._summaries: list[dict] = []
        self._layout, self._style = widgets.Layout(), HTMLStyle()  # the frames share
        self.placeholder = widgets.HTML(layout=self._layout, style=self._style)
        self.frames = widgets.Stack()
        self.hint = widgets.HTML()
        box = widgets.HBox(
            list(self.controls.values()), layout=widgets.Layout(flex_flow="row wrap")
        )
        super().__init__([box, self.hint, self.frames])
        for name, control in self.controls.items():
            control.observe(lambda change, name=name: self._changed(name), names="value")
        source = self.controls[main]
        self._link = widgets.jsdlink((source, _position_trait(source)),
                                     (self.frames, "selected_index"))  # fmt: skip

    def value(self, name: str):
        return self.controls[name].value

    @property
    def position(self) -> int:
        """The main control's position: the index of the shown frame."""
        control = self.controls[self.main]
        return getattr(control, _position_trait(control))

    @property
    def image(self) -> widgets.Image:
        """The picture of the shown frame (after ``render()``: the current setting's)."""
        return self.frames.children[self.frames.selected_index].image

    @property
    def caption(self) -> widgets.HTML:
        return self.frames.children[self.frames.selected_index].caption

    def setting(self) -> tuple:
        """The values of the controls other than the main one (what a stored picture is for)."""
        return tuple((name, c.value) for name, c in self.controls.items() if name != self.main)

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

    def _resize(self) -> None:
        """One slot per position of the main control (its range may follow other controls)."""
        count = _positions(self.controls[self.main])
        for slot in self._slots[count:]:
            if slot is not None:
                _close(slot)
        del self._slots[count:], self._drawn[count:], self._summaries[count:]
        missing = count - len(self._slots)
        self._slots += [None] * missing
        self._drawn += [None] * missing
        self._summaries += [{}] * missing

    def _draw(self, position: int) -> None:
        """Draw the current setting into the slot of ``position`` (the main control's)."""
        figure = self.draw()
        if self._slots[position] is None:
            self._slots[position] = Frame(self._layout, self._style)
        slot = self._slots[position]
        slot.image.value = figure_webp(figure)
        table = _html_table(self.summary) if self.summary else ""
        slot.caption.value = f"<small>{escape(self.note)}</small>{table}" if self.note else table
        self._drawn[position], self._summaries[position] = self.setting(), dict(self.summary)

    def _show(self) -> None:
        """The stack: each slot drawn for the current setting, the placeholder elsewhere; a
        slot drawn for another setting is emptied (its bytes would only weigh on the page)."""
        setting, children, stored = self.setting(), [], []
        for position, slot in enumerate(self._slots):
            if slot is not None and self._drawn[position] != setting:
                slot.image.value, self._drawn[position] = b"", None
            if self._drawn[position] is None:
                children.append(self.placeholder)
            else:
                children.append(slot)
                stored.append(_value_at(self.controls[self.main], position)[1])
        control = self.controls[self.main]
        name = (control.description or self.main).split(" (")[0]  # "shift (voxels)": "shift"
        self.placeholder.value = (
            f"<p style='margin:2em 0'><i>No picture stored for this {escape(name)}</i> (the page"
            f" stores {escape(', '.join(stored))}). In Jupyter it is drawn when you pick it.</p>"
        )
        others = "; the other controls redraw in Jupyter" if len(self.controls) > 1 else ""
        some = "" if len(stored) == len(children) else f" ({len(stored)} of {len(children)})"
        self.hint.value = (f"<small>Without a kernel (the book's HTML) the {escape(name)} "
                           f"control switches between stored pictures{some}{others}.</small>")
        with self.frames.hold_sync():
            self.frames.children = tuple(children)
            self.frames.selected_index = self.position

    def render(self) -> None:
        """Show the picture of the current setting, drawing it if its slot does not hold it."""
        self._resize()
        position = self.position
        if self._drawn[position] != self.setting():
            self._draw(position)
        self.summary = dict(self._summaries[position])
        self._show()

    def stored_positions(self) -> list[int]:
        """The main control's positions ``precompute`` draws: all of them if there are at most
        ``max_frames``, else ``max_frames`` evenly spread ones and the current one."""
        return _spread(_positions(self.controls[self.main]), self.max_frames, self.position)

    def precompute(self) -> None:
        """Draw the picture of each ``stored_positions()`` at the other controls' current
        values, then show the current one: the pictures the static page switches between."""
        control, trait = self.controls[self.main], _position_trait(self.controls[self.main])
        values = {name: c.value for name, c in self.controls.items() if name != self.main}
        start = self.position
        self._resize()
        for position in [*self.stored_positions(), start]:  # the last one: back to the start
            with self.hold():
                setattr(control, trait, position)
                self.update_controls(self.main)
                for name, value in values.items():  # what update_controls may have moved
                    self.controls[name].value = value
            if self._drawn[position] != self.setting():
                self._draw(position)
        self.render()

    def stored_pictures(self) -> dict:
        """Main control value → the bytes of its picture in the stack (what the page shows
        at that position), for the positions that hold one."""
        control = self.controls[self.main]
        return {_value_at(control, position)[0]: bytes(child.image.value)
                for position, child in enumerate(self.frames.children)
                if isinstance(child, Frame)}  # fmt: skip


def _close(frame: Frame) -> None:
    """Close a frame and its image and caption (a closed widget leaves the saved state)."""
    frame.image.close()
    frame.caption.close()
    frame.close()


# ----------------------------------------------------------------------------- warp


AMPLITUDES = tuple(float(a) for a in range(9))  # the warp explorer's positions: 0, 1, …, 8 voxels


class WarpExplorer(Explorer):
    """A smooth random displacement u (``synth.random_displacement``) applied to an image."""

    def __init__(self, image: Tensor, seed: int = 0, amplitude: float = 2.0,
                 amplitudes: Sequence[float] = AMPLITUDES):  # fmt: skip
        self.moving = image
        height, width = image.shape[2:]
        if amplitude not in amplitudes:
            raise ValueError(f"amplitude {amplitude} is not one of the amplitudes {amplitudes}")
        controls = {
            "amplitude": widgets.SelectionSlider(
                options=[(f"{a:g}", float(a)) for a in amplitudes], value=float(amplitude),
                description="amplitude (voxels)", **SLIDER),
            "smoothness": widgets.FloatSlider(
                value=max(height, width) / 12, min=2.0, max=max(height, width) / 4, step=1.0,
                description="smoothness σ (voxels)", **SLIDER),
            "seed": widgets.IntSlider(value=seed, min=0, max=20, description="seed", **SLIDER),
        }  # fmt: skip
        super().__init__(controls, main="amplitude")
        self.precompute()

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


def warp_explorer(
    image=None, seed: int = 0, *, amplitude: float = 2.0,
    amplitudes: Sequence[float] = AMPLITUDES,
) -> WarpExplorer:  # fmt: skip
    """Sliders for a smooth random displacement u (amplitude, smoothness, seed) → panels:
    moving I, warped I∘Φ with the deformation grid of Φ = id + u, det ∇Φ with folding in black.

    ``image``: a 2D image ``(H, W)`` / ``(1, 1, H, W)`` (default: the demo's moving image).
    The amplitude slider is the main control: its positions ``amplitudes`` (voxels; the first
    picture at ``amplitude``) are stored pictures, which the static page switches between.
    """
    if image is None:
        image = make_demo_pair(size=96)["moving"]
    return WarpExplorer(_image2d(image), seed, amplitude, tuple(amplitudes))


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
                 landscape_step: int, noise: float, contrast: float, shift: int,
                 max_frames: int = 2 * MAX_FRAMES):  # fmt: skip
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
            "shift": widgets.SelectionSlider(
                options=list(range(-max_shift, max_shift + 1)), value=shift,
                description="shift (voxels)", **SLIDER),
        }  # fmt: skip
        super().__init__(controls, main="shift", max_frames=max_frames)
        self.note = "losses, 0 = perfect match (NCC: 1 − mean squared local NCC)"
        self.precompute()

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
    contrast: float = 1.0, shift: int = 3, max_frames: int = 2 * MAX_FRAMES,
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
        noise, contrast, shift: the first setting (the picture a static page shows first).
        max_frames: the shift slider is the main control: a picture for each shift is stored
            (at the first noise and contrast) if there are at most ``max_frames`` shifts (the
            default: every shift up to ``max_shift`` 11), else for ``max_frames`` evenly spread
            ones (see ``Explorer.stored_positions``).
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
    if shift not in range(-max_shift, max_shift + 1):
        raise ValueError(f"shift {shift} is outside the slider's range ±{max_shift}")
    return MetricExplorer(fixed, metrics, seed, max_shift, landscape_step, noise, contrast, shift,
                          max_frames)  # fmt: skip


# ----------------------------------------------------------------------------- λ sweep


def _slice(array, axis: int, index: int):
    """``array[..., index, ...]`` along spatial ``axis`` of a ``(*spatial)`` array or tensor."""
    return array.select(axis, index) if isinstance(array, Tensor) else np.take(array, index, axis)


class LambdaExplorer(Explorer):
    """A λ sweep's validation Dice vs λ, and one pair registered by the net of the chosen λ."""

    def __init__(self, table: pd.DataFrame, pairs: PairDataset | None,
                 max_frames: int = MAX_FRAMES):  # fmt: skip
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
        super().__init__(controls, main="lam", max_frames=max_frames)
        self.precompute()

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


def lambda_explorer(
    sweep_dir_or_run_root, data_dir=None, split: str = "val", *, max_frames: int = MAX_FRAMES
) -> LambdaExplorer:
    """A slider over the λs of a sweep → validation Dice vs λ with the chosen λ marked, and a
    ``split`` pair registered by that λ's net (grid, Dice, folding fraction) when the runs'
    checkpoints and the data are there.

    ``sweep_dir_or_run_root``: ``<root>/<dataset>/<metric>`` (with ``sweep.csv`` and
    ``sweep/lam_<λ>/``) or its ``sweep/`` folder (see ``runs.sweep_table``). ``data_dir``: the
    dataset (``data.embedded.resolve_dataset``); None: ``data/<dataset>`` if it exists, else
    the curve only. FileNotFoundError names the folder if it holds no runs.
    The λ slider is the main control: the page stores a picture for each λ (for the first pair;
    at most ``max_frames`` evenly spread λs).
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
    return LambdaExplorer(table, pairs, max_frames)


# ----------------------------------------------------------------------------- datasets


BROWSER_FRAMES = 8  # its pictures of noisy images are 30–45 kB each: 8 keep a page < 0.5 MB


class DatasetBrowser(Explorer):
    """The cases of the dataset folders in a data folder, with label contours and noisy patches."""

    def __init__(self, found: dict[str, Path], dataset: str, split: str, case: int,
                 max_frames: int = BROWSER_FRAMES):  # fmt: skip
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
        super().__init__(controls, main="case", max_frames=max_frames)
        with self.hold():
            self.update_controls("dataset")
            self.controls["case"].value = case
            self.update_controls("case")
        self.precompute()

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
    case: int = 0, max_frames: int = BROWSER_FRAMES,
) -> DatasetBrowser:  # fmt: skip
    """A drop-down over the datasets in ``data_dir``, the split, a case slider (3D: an axis and
    a slice slider) → the image with its label contours and, if stored, the outline of the
    noisy patches (``noise_masks/``). ``split`` and ``case`` (an index) set the first view.
    The case slider is the main control: the page stores the pictures of ``max_frames`` evenly
    spread cases of the first dataset and split (all of them if there are no more).

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
    return DatasetBrowser(found, dataset, split, case, max_frames)
