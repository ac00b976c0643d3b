"""The paper's four claims, each tested by one statistic on a results root.

The paper claims that DeepSim, compared with MSE, NCC, NCC-sup and VGG,

1. has the best mean test Dice on every dataset;
2. significantly so: one-sided Wilcoxon signed-rank p < 0.05 against every baseline (and a
   large Cohen's d, d > 0.8, where the paper's table marks ‡);
3. converges faster, especially early: decided in advance on the per-pair learning curves
   (``convergence``): a greater mean gain over the unregistered Dice in the first quarter of
   training, and fewer steps to 50 % and 90 % of the own final gain, each with a one-sided
   Wilcoxon across validation pairs (runs without ``val_pairs.csv``: a higher validation Dice
   at the first ``EARLY_POINTS`` validations, from ``log.csv``);
4. gives smoother transformations on noisy patches: less folding and a smaller mean |∇u| inside
   the noisy regions than every baseline (the paper's two measures), and — where the true
   displacement u* is known — a smaller roughness error ‖∇u − ∇u*‖_F and endpoint error
   ‖u − u*‖ there, so that "smoother" cannot be won by not registering at all
   (``robustness.noisy_region_smoothness``; only datasets with noise masks, i.e. the embedded
   2D series).

``check_claims`` returns one row per claim × dataset × comparison with the statistic, its value
and whether the claim holds there — the numbers the results chapter prints, with no threshold
other than the ones stated above.

The published numbers live here too: ``PAPER_TABLE1`` (the MIDL paper's Table 1, mean test
Dice with its ‡ marks) and ``JOURNAL_TABLE`` (the authors' journal version: mean test Dice and
fraction of folding voxels, with the label-free variant DeepSim-AE). ``published_results``
returns them as one table and ``beside_published`` puts our results roots beside them, in both
Dice conventions.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .config import DATASETS
from .convergence import convergence_claims
from .robustness import NOISE_SIGMAS, noise_sweep, noisy_region_smoothness
from .runs import LOG, available_runs, load_log, load_results, read_table, run_folder, write_csv
from .stats import compare_metrics

EARLY_POINTS = 3
REFERENCE = "deepsim"

# The MIDL paper (Czolbe et al. 2021), Table 1: mean test Dice per dataset × metric and its mark,
# "‡" = one-sided Wilcoxon p < 0.001 against DeepSim with Cohen's d > 0.8 ("" = no mark).
PAPER_TABLE1 = {
    "brain-mri": {"mse": (0.70, ""), "ncc": (0.71, "‡"), "ncc-sup": (0.72, "‡"),
                  "vgg": (0.71, "‡"), "deepsim": (0.75, "")},
    "platelet-em": {"mse": (0.98, "‡"), "ncc": (0.98, "‡"), "ncc-sup": (0.98, "‡"),
                    "vgg": (0.98, "‡"), "deepsim": (0.99, "")},
    "phc-u373": {"mse": (0.98, ""), "ncc": (0.98, ""), "ncc-sup": (0.98, ""), "vgg": (0.98, ""),
                 "deepsim": (0.99, "")},
}  # fmt: skip
# The journal version (Czolbe et al. 2023): (mean test Dice, fraction of voxels with det ∇Φ < 0);
# no VGG row; DeepSim-AE: DeepSim on the features of an autoencoder, trained without labels.
JOURNAL_TABLE = {
    "brain-mri": {"mse": (0.666, 0.0042), "ncc": (0.657, 0.0093), "ncc-sup": (0.668, 0.0028),
                  "deepsim-ae": (0.671, 0.0020), "deepsim": (0.675, 0.0012)},
    "platelet-em": {"mse": (0.894, 0.0040), "ncc": (0.875, 0.0415), "ncc-sup": (0.888, 0.0403),
                    "deepsim-ae": (0.895, 0.0004), "deepsim": (0.895, 0.0014)},
    "phc-u373": {"mse": (0.965, 0.0002), "ncc": (0.965, 0.0071), "ncc-sup": (0.969, 0.0057),
                 "deepsim-ae": (0.967, 0.0035), "deepsim": (0.968, 0.0032)},
}  # fmt: skip
PUBLISHED_METRICS = ("mse", "ncc", "ncc-sup", "vgg", "deepsim-ae", "deepsim")
UNREGISTERED = "unregistered"  # the row of the Dice before registration in ``beside_published``


def _row(claim: int, dataset: str, versus: str, statistic: str, value: float, holds: bool):
    return {"claim": claim, "dataset": dataset, "versus": versus, "statistic": statistic,
            "value": float(value), "holds": bool(holds)}  # fmt: skip


def best_mean_dice(results: pd.DataFrame) -> list[dict]:
    """Claim 1: DeepSim's mean test Dice minus each baseline's (holds when > 0)."""
    rows = []
    means = results.groupby(["dataset", "metric"])["dice"].mean()
    for dataset in results["dataset"].unique():
        ours = means.get((dataset, REFERENCE))
        if ours is None:
            continue
        for metric, value in means[dataset].items():
            if metric != REFERENCE:
                delta = ours - value
                rows.append(_row(1, dataset, metric, "Δ mean test Dice", delta, delta > 0))
    return rows


def significance(results: pd.DataFrame) -> list[dict]:
    """Claim 2: one-sided Wilcoxon p (holds when < 0.05) and Cohen's d (reported) per baseline."""
    rows = []
    table = compare_metrics(results, reference=REFERENCE)
    for _, r in table[table["metric"] != REFERENCE].iterrows():
        rows.append(_row(2, r["dataset"], r["metric"], "Wilcoxon p (one-sided)", r["pvalue"],
                         r["pvalue"] < 0.05))  # fmt: skip
        rows.append(_row(2, r["dataset"], r["metric"], "Cohen's d", r["d"], r["d"] > 0.8))
    return rows


CURVE_STATISTICS = {  # convergence statistic → (its name in claims.csv, faster = DeepSim −
    # baseline > 0 when True, baseline − DeepSim > 0 when False)
    "early_area": ("Δ mean gain over the first quarter (DeepSim − baseline)", True),
    "steps_to_50": ("Δ steps to 50 % of the own final gain (baseline − DeepSim)", False),
    "steps_to_90": ("Δ steps to 90 % of the own final gain (baseline − DeepSim)", False),
}


def learning_curve_claims(results_dir: str | Path) -> tuple[list[dict], set[str]]:
    """Claim 3 from the per-pair learning curves (``val_pairs.csv``; ``convergence``): per
    baseline and statistic the difference of the mean curves' values, holding when it favours
    DeepSim and the one-sided paired Wilcoxon across validation pairs has p < 0.05. Returns the
    rows and the datasets they cover."""
    table = convergence_claims(results_dir, REFERENCE)
    rows = []
    for _, r in table.iterrows():
        name, higher = CURVE_STATISTICS[r["statistic"]]
        delta = r["deepsim"] - r["baseline"] if higher else r["baseline"] - r["deepsim"]
        holds = bool(delta > 0 and r["pvalue"] < 0.05)  # NaN (no gain to reach): False
        rows.append(_row(3, r["dataset"], r["versus"], name, delta, holds))
    return rows, set(table["dataset"]) if len(table) else set()


def early_convergence(results_dir: str | Path, points: int = EARLY_POINTS) -> list[dict]:
    """Claim 3: from the per-pair learning curves where the runs logged them
    (``learning_curve_claims``); else DeepSim's validation Dice minus each baseline's at the
    first ``points`` validations (runs of older versions, without ``val_pairs.csv``).

    Validation happens every ``steps_per_epoch`` steps (the same for every metric of a preset),
    so the k-th row of every log is the same gradient step.
    """
    rows, covered = learning_curve_claims(results_dir)
    logged = available_runs(results_dir, LOG)
    for dataset in sorted(logged):  # datasets and baselines in name order
        if REFERENCE not in logged[dataset] or dataset in covered:
            continue
        ours = load_log(run_folder(results_dir, dataset, REFERENCE))
        for metric in sorted(m for m in logged[dataset] if m != REFERENCE):
            run = run_folder(results_dir, dataset, metric)
            theirs = load_log(run)
            for k in range(min(points, len(ours), len(theirs))):
                step = int(ours["step"].iloc[k])
                if int(theirs["step"].iloc[k]) != step:
                    raise ValueError(f"{run}: validation steps differ from {REFERENCE}'s")
                delta = ours["val_dice"].iloc[k] - theirs["val_dice"].iloc[k]
                statistic = f"Δ validation Dice at step {step}"
                rows.append(_row(3, dataset, metric, statistic, delta, delta > 0))
    return rows


CLAIM4_MEASURES = {  # column of noise_regions.csv → its name in claims.csv
    "folding_inside": "folding",
    "gradient_inside": "mean |∇u|",
    "gradient_error_inside": "mean ‖∇u − ∇u*‖",
    "endpoint_error_inside": "mean ‖u − u*‖",
}


def noisy_smoothness(regions: pd.DataFrame) -> list[dict]:
    """Claim 4: baseline minus DeepSim inside the noisy patches, per measure (holds when > 0).

    Measures: those of ``CLAIM4_MEASURES`` present in ``regions`` with values (the two error
    measures need the true displacement, which only the embedded data stores).
    """
    rows = []
    columns = [c for c in CLAIM4_MEASURES if c in regions and regions[c].notna().any()]
    means = regions.groupby(["dataset", "metric"])[columns].mean()
    for dataset in regions["dataset"].unique():
        if (dataset, REFERENCE) not in means.index:
            continue
        ours = means.loc[(dataset, REFERENCE)]
        for metric in means.loc[dataset].index:
            if metric == REFERENCE:
                continue
            theirs = means.loc[(dataset, metric)]
            for column in columns:
                name = CLAIM4_MEASURES[column]
                delta = theirs[column] - ours[column]
                if pd.isna(delta):  # a measure this dataset has no values for
                    continue
                # ties (e.g. no folding for either) do not count as "less folding"
                rows.append(_row(4, dataset, metric, f"{name} in noisy patches: baseline − DeepSim",
                                 delta, delta > 0))  # fmt: skip
    return rows


def check_claims(results_dir: str | Path, regions: pd.DataFrame | None = None) -> pd.DataFrame:
    """All four claims on one results root: columns claim, dataset, versus, statistic, value, holds.

    ``regions``: the output of ``robustness.noisy_region_smoothness`` (for claim 4; a
    ``noise_regions.csv`` next to the runs is read when not given, and claim 4 is left out when
    there is neither).
    """
    results = load_results(results_dir)
    rows = best_mean_dice(results) + significance(results) + early_convergence(results_dir)
    path = Path(results_dir) / "noise_regions.csv"
    if regions is None and path.is_file():
        redo = "run `python -m deepsim_edu claims` again: it measures and rewrites it"
        regions = read_table(path, ("dataset", "metric"), redo=redo)
    if regions is not None:
        rows += noisy_smoothness(regions)
    return pd.DataFrame(rows)


def claim_summary(claims: pd.DataFrame) -> pd.DataFrame:
    """Per claim × dataset: how many of the comparisons hold (``holds`` / ``of``).

    For claim 2 only the Wilcoxon rows count (d is reported beside it).
    """
    counted = claims[~claims["statistic"].eq("Cohen's d")]
    summary = counted.groupby(["claim", "dataset"])["holds"].agg(holds="sum", of="count")
    summary["verdict"] = [
        "holds" if h == n else ("does not hold" if h == 0 else f"partly ({h}/{n})")
        for h, n in zip(summary["holds"], summary["of"])
    ]
    return summary.reset_index()


def run_claims(
    results_dir: str | Path, data_dir: str | Path | None = None, device: str = "cpu",
    sweep_dataset: str | None = "platelet-em", sigmas=NOISE_SIGMAS,
) -> dict[str, pd.DataFrame]:  # fmt: skip
    """Measure everything the claims need on a results root and write it next to the runs.

    Writes ``noise_regions.csv`` (claim 4, datasets with noise masks), ``noise_sweep.csv`` (the
    added-noise study on ``sweep_dataset`` at noise levels ``sigmas``; None skips it) and
    ``claims.csv``; returns the three tables (``regions``/``sweep`` empty when not measured)
    under those names.
    """
    root = Path(results_dir)
    trained = available_runs(root)
    regions = []
    for dataset in sorted(trained):
        try:
            regions.append(noisy_region_smoothness(root, data_dir, dataset, device=device))
        except (ValueError, FileNotFoundError) as exc:  # no masks / no runs: no claim-4 rows
            print(f"claim 4 skipped for {dataset}: {exc}")
    regions = pd.concat(regions, ignore_index=True) if regions else pd.DataFrame()
    if len(regions):
        write_csv(root / "noise_regions.csv", regions.to_dict("records"))
    sweep = pd.DataFrame()
    if sweep_dataset is not None and sweep_dataset in trained:
        sweep = noise_sweep(root, data_dir, sweep_dataset, sigmas, device=device)
        write_csv(root / "noise_sweep.csv", sweep.to_dict("records"))
    claims = check_claims(root, regions if len(regions) else None)
    write_csv(root / "claims.csv", claims.to_dict("records"))
    return {"claims": claims, "regions": regions, "sweep": sweep}


# ----------------------------------------------------------------------------- published numbers


def published_results() -> pd.DataFrame:
    """The published numbers, one row per dataset × metric (index ``(dataset, metric)``).

    Columns (NaN / "" where a paper has no such row): ``("paper 2021", "Dice")`` and
    ``("paper 2021", "mark")`` from ``PAPER_TABLE1``; ``("journal 2023", "Dice")`` and
    ``("journal 2023", "folding %")`` (the folding fraction × 100) from ``JOURNAL_TABLE``.
    """
    rows = {}
    for dataset in DATASETS:
        for metric in PUBLISHED_METRICS:
            dice, mark = PAPER_TABLE1[dataset].get(metric, (math.nan, ""))
            j_dice, j_folding = JOURNAL_TABLE[dataset].get(metric, (math.nan, math.nan))
            rows[(dataset, metric)] = {("paper 2021", "Dice"): dice, ("paper 2021", "mark"): mark,
                                       ("journal 2023", "Dice"): j_dice,
                                       ("journal 2023", "folding %"): 100 * j_folding}  # fmt: skip
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.names = ["dataset", "metric"]
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def beside_published(roots: dict[str, str | Path]) -> pd.DataFrame:
    """``published_results`` with the means of our results roots beside it.

    ``roots``: label → results root (``runs.load_results``). Per label three columns, the mean
    over the test pairs of ``(label, "Dice, all classes")`` (``dice_paper_convention``, the
    convention of the paper's code), ``(label, "Dice, foreground")`` (``dice``, ours) and
    ``(label, "folding %")`` (``folding_fraction`` × 100). An extra row per dataset,
    ``UNREGISTERED``, holds the mean Dice before registration (``dice_before``, foreground
    convention only; the papers publish none). Datasets or metrics a root lacks are NaN.
    """
    rows = [(d, m) for d in DATASETS for m in (UNREGISTERED, *PUBLISHED_METRICS)]
    index = pd.MultiIndex.from_tuples(rows, names=["dataset", "metric"])
    table = published_results().reindex(index)
    table[("paper 2021", "mark")] = table[("paper 2021", "mark")].fillna("")
    for label, root in roots.items():
        results = load_results(root)
        means = results.groupby(["dataset", "metric"])[
            ["dice_paper_convention", "dice", "folding_fraction"]].mean()  # fmt: skip
        before = results.groupby("dataset")["dice_before"].mean()
        table[(label, "Dice, all classes")] = means["dice_paper_convention"].reindex(table.index)
        table[(label, "Dice, foreground")] = means["dice"].reindex(table.index)
        table[(label, "folding %")] = 100 * means["folding_fraction"].reindex(table.index)
        for dataset, value in before.items():
            if (dataset, UNREGISTERED) in table.index:
                table.loc[(dataset, UNREGISTERED), (label, "Dice, foreground")] = value
    return table
