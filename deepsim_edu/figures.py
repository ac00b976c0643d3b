"""The paper's figures, drawn from a results root, checkpoints and the data (returns Figures).

A results root is what ``experiment.run_experiment`` writes (the layout: ``runs.py``)::

    <root>/<dataset>/<metric>/        config.json, log.csv, checkpoint.pt, test_results.csv
    <root>/<dataset>/segmentation/    checkpoint.pt of DeepSim's feature extractor

=========================  ================================================================
function                   what it draws (paper)
=========================  ================================================================
``plot_convergence``       validation Dice vs gradient steps per metric, smoothed ("DeepSim
                           converged faster ..., particularly during the initial epochs")
``plot_registration_grid`` moving, fixed, warped per metric + deformation grid (Fig. 2a)
``plot_noisy_patch``       zoom on the noisiest Platelet-EM window: NCC vs DeepSim (Fig. 2b)
``plot_feature_maps``      the extractor's feature maps per level, clean vs. noisy input
``plot_dice_boxplots``     test Dice per metric, one panel per dataset (Table 1 as boxes)
``plot_jacobian``          det ∇Φ per metric, folding (det < 0) highlighted (ours)
``save_figures``           every figure the available runs allow, as PNG files
=========================  ================================================================

This module only draws. Which runs exist and their files come from ``runs.py``; the numbers
(a test pair registered by a run's net with det ∇Φ, the noisiest window, the feature maps
under noise) from ``evaluate.py``. Every figure is made with ``viz.new_figure`` (an Agg canvas,
not pyplot): nothing is shown and there is nothing to close. Networks run on the CPU, one test
pair at a time, without gradients. Brain-MRI volumes are shown by their middle axial slice
(``viz.axial_slice``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .config import METRICS
from .data.embedded import find_dataset, resolve_dataset
from .data.layout import DATASET_NAMES, atomic_write_bytes, check_dataset_name
from .data.pairs import PairDataset
from .evaluate import (
    dice_or_nan,
    feature_maps_under_noise,
    load_test_pair,
    noisiest_window,
    register_pair,
)
from .runs import (
    LOG,
    available_runs,
    has_checkpoint,
    load_log,
    load_results,
    results_files,
    results_folder,
    run_folder,
    segmentation_folder,
    trained_runs,
)
from .viz import (
    BEFORE_COLOUR,
    LABEL_COLOURS,
    METRIC_LABELS,
    axial_displacement,
    axial_slice,
    blank,
    draw_grid,
    draw_jacobian,
    frame_only,
    grid_spacing,
    metric_colour,
    new_figure,
    show_image,
    smooth_curve,
)


def _plane(array: np.ndarray) -> np.ndarray:
    """A 2D image as it is; a 3D volume ``(X, Y, Z)`` → its middle axial slice."""
    return axial_slice(array) if array.ndim == 3 else array


def _plane_u(u: np.ndarray) -> np.ndarray:
    """A 2D displacement as it is; a 3D one → its in-plane part on the middle axial slice."""
    return axial_displacement(u) if u.shape[0] == 3 else u


# ----------------------------------------------------------------------------- curves and boxes


def plot_convergence(
    results_dir: str | Path, dataset: str | None = None, smoothing: float = 0.0
) -> Figure:
    """Validation Dice (``val_dice`` of ``log.csv``) against gradient steps, one curve per metric.

    One panel per dataset of ``results_dir`` (or only ``dataset``). ``smoothing`` in [0, 1) is
    the weight of TensorBoard's exponential moving average (``viz.smooth_curve``; 0 = raw
    curves, 0.6 is TensorBoard's default); when it is > 0 the raw curves are drawn faintly
    behind the smoothed ones. A panel's title gives the validation Dice of the dataset's DeepSim
    feature extractor when its log is there (DeepSim is only as good as its features).
    """
    smooth_curve([], smoothing)  # validates smoothing before anything is read
    root = results_folder(results_dir)
    runs = available_runs(root, LOG)
    if dataset is not None:
        runs = {dataset: list(trained_runs(root, dataset, needs=LOG))}
    if not runs:
        raise FileNotFoundError(f"{root}: no <dataset>/<metric>/log.csv; train runs first")
    fig = new_figure(figsize=(4.2 * len(runs), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(runs), squeeze=False)[0])
    for ax, (name, metrics) in zip(axes, runs.items()):
        for metric in metrics:
            log = load_log(run_folder(root, name, metric))
            colour = metric_colour(metric)
            if smoothing > 0:
                ax.plot(log["step"], log["val_dice"], color=colour, alpha=0.25, linewidth=1)
            ax.plot(
                log["step"],
                smooth_curve(log["val_dice"], smoothing),
                color=colour,
                label=METRIC_LABELS[metric],
                linewidth=1.6,
                marker="." if len(log) < 20 else None,
            )
        title = name
        seg = segmentation_folder(root, name)
        if (seg / LOG).is_file():
            title += f"  (extractor val Dice {load_log(seg)['val_dice'].iloc[-1]:.2f})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("gradient steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation Dice" + (f" (EMA {smoothing:g})" if smoothing else ""))
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    fig.legend(handles.values(), handles.keys(), loc="outside right center", fontsize=8)
    return fig


def plot_dice_boxplots(results_dir: str | Path) -> Figure:
    """Boxplots of the per-pair test Dice (foreground mean) of every metric, one panel per
    dataset, with the Dice before registration (Φ = id) in grey as the baseline; the dots are
    the single test pairs, the white diamonds the means. Reads ``runs.load_results``."""
    table = load_results(results_dir)
    datasets = [d for d in DATASET_NAMES if d in set(table["dataset"])]
    fig = new_figure(figsize=(0.75 * len(METRICS) * len(datasets) + 1.5, 3.6), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    rng = np.random.default_rng(0)  # jitter of the dots
    for ax, name in zip(axes, datasets):
        rows = table[table["dataset"] == name]
        metrics = [m for m in METRICS if m in set(rows["metric"])]
        first = rows[rows["metric"] == metrics[0]]
        values = [first["dice_before"].to_numpy()]
        values += [rows.loc[rows["metric"] == m, "dice"].to_numpy() for m in metrics]
        colours = [BEFORE_COLOUR] + [metric_colour(m) for m in metrics]
        boxes = ax.boxplot(
            values,
            patch_artist=True,
            widths=0.6,
            showfliers=False,
            showmeans=True,
            medianprops={"color": "black"},
            meanprops={
                "marker": "D",
                "markerfacecolor": "white",
                "markeredgecolor": "black",
                "markersize": 4,
            },
        )
        for patch, colour in zip(boxes["boxes"], colours):
            patch.set_facecolor(colour)
            patch.set_alpha(0.55)
        for i, (v, colour) in enumerate(zip(values, colours), start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=6, color=colour, zorder=3)
        ax.set_xticks(
            range(1, len(values) + 1), ["before"] + [METRIC_LABELS[m] for m in metrics], rotation=30
        )
        ax.set_title(f"{name}  ({len(first)} test pairs)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test Dice (foreground mean)")
    return fig


# ----------------------------------------------------------------------------- images


def plot_registration_grid(
    results_dir: str | Path,
    data_dir: str | Path | None,
    pair_index: int = 0,
    metrics: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> Figure:
    """The paper's Fig. 2a: rows = datasets; columns = moving I, fixed J, and I∘Φ per metric.

    Every panel carries its label contours (the warped panels: the moving labels warped with
    nearest neighbours) and the warped panels the deformation grid of Φ in the metric's colour,
    with the pair's Dice in the title. ``pair_index`` picks the test pair (``PairDataset(...,
    "test")``) of each dataset, found with ``resolve_dataset(dataset, data_dir)``; ``datasets``
    (default: all with runs) and ``metrics`` (default: all runs of a dataset) select the grid.
    Brain-MRI: the middle axial slice, with the in-plane part of the displacement.
    """
    root = results_folder(results_dir)
    runs = available_runs(root)
    datasets = list(runs) if datasets is None else [check_dataset_name(d) for d in datasets]
    if not datasets:
        raise FileNotFoundError(f"{root}: no <dataset>/<metric>/checkpoint.pt; train runs first")
    chosen = {d: trained_runs(root, d, metrics) for d in datasets}
    columns = [m for m in METRICS if any(m in ms for ms in chosen.values())]
    fig = new_figure(
        figsize=(2.1 * (2 + len(columns)), 2.25 * len(datasets) + 0.3), layout="constrained"
    )
    axes = fig.subplots(len(datasets), 2 + len(columns), squeeze=False)
    for row, name in zip(axes, datasets):
        pairs, item = load_test_pair(name, data_dir, pair_index)
        fixed_labels = _plane(item["fixed_labels"][0].numpy())
        moving, fixed = _plane(item["moving"][0].numpy()), _plane(item["fixed"][0].numpy())
        kw = {"label_colours": LABEL_COLOURS, "vmin": 0.0, "vmax": max(fixed.max(), 1e-6)}
        show_image(
            row[0],
            moving,
            _plane(item["moving_labels"][0].numpy()),
            f"moving {item['moving_id']}",
            **kw,
        )
        show_image(row[1], fixed, fixed_labels, f"fixed {item['fixed_id']}", **kw)
        frame_only(row[0])
        row[0].set_ylabel(name + (" (axial)" if pairs.info.ndim == 3 else ""), fontsize=10)
        spacing = grid_spacing(fixed.shape)
        for ax, metric in zip(row[2:], columns):
            if metric not in chosen[name]:
                blank(ax, "no run")
                continue
            result = register_pair(chosen[name][metric], item, pairs.info.num_classes)
            show_image(
                ax,
                _plane(result["warped"]),
                _plane(result["warped_labels"]),
                f"{METRIC_LABELS[metric]}  Dice {result['dice']:.3f}",
                **kw,
            )
            ax.title.set_color(metric_colour(metric))
            draw_grid(ax, _plane_u(result["u"]), spacing, metric_colour(metric), 0.5, clip=True)
    fig.suptitle(
        f"test pair {pair_index}: moving, fixed, warped I∘Φ with the grid of Φ", fontsize=10
    )
    return fig


def _det_halfwidth(dets: list[np.ndarray], border: int = 0) -> float:
    """One colour scale for several det ∇Φ maps: h of ``viz.draw_jacobian``'s [1 − h, 1 + h].

    The 99th percentile of |det − 1| over all maps without a ``border`` of voxels (the one-sided
    differences at the image border would otherwise wash the maps out), kept within [0.05, 1].
    """
    inner = tuple(slice(border, n - border) if n > 4 * border else slice(None)
                  for n in dets[0].shape)  # fmt: skip
    deviation = max(np.quantile(np.abs(det[inner] - 1), 0.99) for det in dets)
    return float(np.clip(deviation, 0.05, 1.0))


def plot_jacobian(
    results_dir: str | Path,
    data_dir: str | Path | None,
    dataset: str = "platelet-em",
    pair_index: int = 0,
    metrics: Sequence[str] | None = None,
) -> Figure:
    """det ∇Φ of one test pair per metric: diverging colours centred at 1 (blue shrinks, red
    expands, one shared scale), folding voxels (det < 0) in bright green, the fixed labels as
    thin grey contours. Titles: the folding fraction and the range of det ∇Φ over the whole
    image or volume. Brain-MRI: the middle axial slice of the full 3D determinant."""
    chosen = trained_runs(results_dir, dataset, metrics)
    pairs, item = load_test_pair(dataset, data_dir, pair_index)
    results = {m: register_pair(run, item, pairs.info.num_classes) for m, run in chosen.items()}
    halfwidth = _det_halfwidth([r["det"] for r in results.values()], border=2)
    fixed_labels = _plane(item["fixed_labels"][0].numpy())
    fig = new_figure(figsize=(2.6 * len(results) + 0.8, 3.0), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (metric, result) in zip(axes, results.items()):
        det = result["det"]
        title = (
            f"{METRIC_LABELS[metric]}\nfolding {100 * result['folding']:.2f} %, "
            f"det ∈ [{det.min():.2f}, {det.max():.2f}]"
        )
        artist = draw_jacobian(ax, _plane(det), halfwidth, title)
        ax.title.set_color(metric_colour(metric))
        if fixed_labels.max() > 0:
            ax.contour(
                fixed_labels,
                levels=np.arange(fixed_labels.max()) + 0.5,
                colors="0.4",
                linewidths=0.4,
            )
    fig.colorbar(artist, ax=list(axes), shrink=0.8, label="det ∇Φ  (green: < 0, folding)")
    fig.suptitle(
        f"{dataset}, test pair {pair_index} ({item['moving_id']} → {item['fixed_id']})", fontsize=10
    )
    return fig


def plot_noisy_patch(
    results_dir: str | Path,
    data_dir: str | Path | None,
    metrics: Sequence[str] = ("ncc", "deepsim"),
    size: int = 48,
) -> Figure:
    """The paper's Fig. 2b: a ``size × size`` zoom on noise, registered by NCC and by DeepSim.

    The Platelet-EM test pair whose moving or fixed image has the largest noisy area (the
    embedded data's ``noise_masks/``) is registered by each metric, and the window with the
    most noisy pixels (of both images) is cropped. Without noise masks (real data) the window
    of largest variance of the high-pass residual is used instead, and the title says so.
    Top row: moving and fixed crops, then per metric the warped crop with its labels and the
    deformation grid; bottom row: the fixed image with the window marked, the noise mask, and
    det ∇Φ in the window per metric. Dice in the title of a warped crop is over the window.
    """
    chosen = trained_runs(results_dir, "platelet-em", metrics)
    pairs = PairDataset(resolve_dataset("platelet-em", data_dir), "test")
    found = noisiest_window(pairs, size)  # the pair and window (evaluate.noisiest_window)
    index, top, left, masks = found["index"], found["top"], found["left"], found["masks"]
    use_masks = masks is not None
    item = pairs[index]
    window = (slice(top, top + size), slice(left, left + size))
    crop = {
        k: item[k][0].numpy()[window] for k in ("moving", "fixed", "moving_labels", "fixed_labels")
    }
    vmin, vmax = np.percentile(crop["fixed"], [1, 99])
    kw = {"label_colours": LABEL_COLOURS, "vmin": vmin, "vmax": vmax}
    fig = new_figure(figsize=(2.5 * (2 + len(chosen)) + 0.8, 5.4), layout="constrained")
    axes = fig.subplots(2, 2 + len(chosen), squeeze=False)
    show_image(
        axes[0, 0], crop["moving"], crop["moving_labels"], f"moving {item['moving_id']}", **kw
    )
    show_image(axes[0, 1], crop["fixed"], crop["fixed_labels"], f"fixed {item['fixed_id']}", **kw)
    show_image(axes[1, 0], item["fixed"][0], None, "fixed, the window")
    axes[1, 0].add_patch(
        Rectangle(
            (left - 0.5, top - 0.5), size, size, fill=False, edgecolor="#ffd92f", linewidth=1.5
        )
    )
    if use_masks:
        both = masks[item["moving_id"]].astype(int) + 2 * masks[item["fixed_id"]]
        colours = ("#1a1a1a", "#6a6a6a", "#b0b0b0", "#ffffff")  # none, moving, fixed, both
        axes[1, 1].imshow(
            both[window], cmap=ListedColormap(colours), vmin=-0.5, vmax=3.5, interpolation="nearest"
        )
        names = ("clean", "moving noisy", "fixed noisy", "both noisy")
        axes[1, 1].legend(
            handles=[
                Patch(facecolor=c, edgecolor="black", label=n) for c, n in zip(colours, names)
            ],
            fontsize=6,
            loc="lower left",
            framealpha=0.9,
        )
        axes[1, 1].set_title("noise masks in the window", fontsize=9)
        axes[1, 1].set_axis_off()
    else:
        blank(axes[1, 1], "no noise masks")
    num_classes = pairs.info.num_classes
    results = {m: register_pair(run, item, num_classes) for m, run in chosen.items()}
    halfwidth = _det_halfwidth([r["det"][window] for r in results.values()])
    fixed_labels = torch.from_numpy(crop["fixed_labels"])[None]
    for column, (metric, result) in enumerate(results.items(), start=2):
        warped_labels = torch.tensor(result["warped_labels"][window])[None]  # (a copy)
        score = dice_or_nan(warped_labels, fixed_labels, num_classes)
        ax, colour = axes[0, column], metric_colour(metric)
        title = f"{METRIC_LABELS[metric]}  Dice {score:.3f} (window)"
        show_image(ax, result["warped"][window], result["warped_labels"][window], title, **kw)
        ax.title.set_color(colour)
        u = result["u"][(slice(None), *window)]  # (2, size, size): the grid of the window
        draw_grid(ax, u, max(3, size // 12), colour, 0.6, clip=True)
        det = result["det"][window]
        title = f"det ∇Φ, folding {100 * (det < 0).mean():.1f} % (window)"
        artist = draw_jacobian(axes[1, column], det, halfwidth, title)
    fig.colorbar(artist, ax=list(axes[1, 2:]), shrink=0.8, label="det ∇Φ")
    how = (
        "noise masks"
        if use_masks
        else "no noise masks in the data: the window of largest high-pass variance"
    )
    fig.suptitle(
        f"platelet-em test pair {index}, {size}×{size} window at (row {top}, col {left});"
        f" chosen by {how}",
        fontsize=9,
    )
    return fig


def plot_feature_maps(
    results_dir: str | Path,
    data_dir: str | Path | None,
    dataset: str = "platelet-em",
    channels: int = 4,
    noise_sigma: float = 0.3,
    seed: int = 0,
) -> Figure:
    """DeepSim's features F_l (the frozen segmentation U-Net's encoder stages) of one test image.

    One row per encoder level that DeepSim uses (``deepsim_levels`` of the dataset's DeepSim
    run; all levels without one); per level the ``channels`` channels of largest spatial
    variance on the clean image, for the clean image and for the image plus Gaussian noise of
    σ ``noise_sigma`` (same colour scale per channel), and the map of cos(F_l(clean),
    F_l(noisy)) over channels — the quantity Eq. 2 averages; near 1 means noise-robust.
    Input: the first test case of ``dataset``; Brain-MRI: the middle axial slice. The numbers
    are ``evaluate.feature_maps_under_noise``.
    """
    maps = feature_maps_under_noise(results_dir, data_dir, dataset, channels, noise_sigma, seed)
    levels = maps["levels"]
    n = len(levels[0]["channels"])
    fig = new_figure(
        figsize=(1.55 * (2 * n + 1) + 2.2, 1.75 * len(levels) + 0.6), layout="constrained"
    )
    left, right = fig.subfigures(1, 2, width_ratios=[1.1, 2 * n + 1])
    for ax, x, title in zip(
        left.subplots(2, 1),
        (maps["image"], maps["noisy"]),
        ("clean input", f"+ noise σ {noise_sigma:g}"),
    ):
        show_image(ax, _plane(x[0, 0].numpy()), None, title, vmin=0, vmax=1)
    axes = right.subplots(len(levels), 2 * n + 1, squeeze=False)
    for row, level in zip(axes, levels):
        for k, c in enumerate(level["channels"]):
            a, b = _plane(level["clean"][k]), _plane(level["noisy"][k])
            lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
            show_image(row[k], a, None, f"clean ch {c}", cmap="viridis", vmin=lo, vmax=hi)
            show_image(row[n + k], b, None, f"noisy ch {c}", cmap="viridis", vmin=lo, vmax=hi)
        cos = level["cosine"]
        show_image(
            row[-1],
            _plane(cos),
            None,
            f"cos, mean {cos.mean():.2f}",
            cmap="RdBu_r",
            vmin=-1,
            vmax=1,
        )
        frame_only(row[0])
        depth = level["level"] + 1
        row[0].set_ylabel(f"level {depth}\n1/{2**depth}, {level['num_channels']} ch", fontsize=9)
    fig.suptitle(
        f"{dataset}: DeepSim feature maps of {maps['case']}, clean vs. noisy", fontsize=10
    )
    return fig


# ----------------------------------------------------------------------------- all of them


def _save(fig: Figure, path: Path) -> Path:
    """PNG through a temporary file and a rename (never a half-written figure; an OSError
    names the file or the folder that could not be made)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_figures(
    results_dir: str | Path, out_dir: str | Path, data_dir: str | Path | None = "data"
) -> list[Path]:
    """Render every figure the available runs and data allow into ``out_dir/*.png``.

    Files: ``convergence.png`` (EMA 0.6 when a log has ≥ 20 rows, raw otherwise),
    ``dice_boxplots.png``, ``registration_grid.png`` (datasets with runs and data),
    ``jacobian_<dataset>.png``, ``noisy_patch.png`` (needs Platelet-EM with an NCC or DeepSim
    run) and ``feature_maps_<dataset>.png`` (needs the dataset's extractor). A figure that
    cannot be made is skipped with a printed reason. Returns the paths written. ``data_dir``
    holds ``<dataset>/`` folders (``None``: the embedded datasets, generated in ``data/``).
    The CLI ``python -m deepsim_edu figures --results DIR --out DIR [--data DIR]`` calls this.
    """
    root, out = results_folder(results_dir), Path(out_dir)
    written: list[Path] = []

    def skip(name: str, reason: str) -> None:
        print(f"skipped {name}: {reason}")

    # every log and results file is read before the first PNG: one that cannot be read stops
    # the command with its name, and nothing is written
    logs = available_runs(root, LOG)
    lengths = [len(load_log(run_folder(root, d, m))) for d, ms in logs.items() for m in ms]
    if results_files(root):
        load_results(root)
    if logs:
        longest = max(lengths)
        fig = plot_convergence(root, smoothing=0.6 if longest >= 20 else 0.0)
        written.append(_save(fig, out / "convergence.png"))
    else:
        skip("convergence", f"no <dataset>/<metric>/log.csv under {root}")
    if results_files(root):
        written.append(_save(plot_dice_boxplots(root), out / "dice_boxplots.png"))
    else:
        skip("dice_boxplots", f"no test_results.csv under {root}")
    runs = available_runs(root)
    with_data = [d for d in runs if find_dataset(d, data_dir) is not None]
    for name in [d for d in runs if d not in with_data]:
        skip(f"{name} images", f"no {name} dataset in {data_dir}")
    if with_data:
        fig = plot_registration_grid(root, data_dir, datasets=with_data)
        written.append(_save(fig, out / "registration_grid.png"))
    else:
        skip("registration_grid", "no dataset with both a registration run and its data")
    for name in with_data:
        written.append(_save(plot_jacobian(root, data_dir, name), out / f"jacobian_{name}.png"))
    patch_metrics = [m for m in ("ncc", "deepsim") if m in runs.get("platelet-em", [])]
    if "platelet-em" in with_data and patch_metrics:
        fig = plot_noisy_patch(root, data_dir, patch_metrics)
        written.append(_save(fig, out / "noisy_patch.png"))
    else:
        skip("noisy_patch", "needs platelet-em data and its NCC or DeepSim run")
    for name in DATASET_NAMES:
        extractor = segmentation_folder(root, name)
        if not has_checkpoint(extractor):
            skip(f"feature_maps_{name}", f"no feature extractor in {extractor}")
        elif find_dataset(name, data_dir) is None:
            skip(f"feature_maps_{name}", f"no {name} dataset in {data_dir}")
        else:
            fig = plot_feature_maps(root, data_dir, name)
            written.append(_save(fig, out / f"feature_maps_{name}.png"))
    return written
