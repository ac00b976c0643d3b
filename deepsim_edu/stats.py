"""Statistics of the results: the paper's Table 1 — test Dice, Wilcoxon marks, Cohen's d.

Inputs are per-pair test Dice of one dataset: ``reference`` (DeepSim's) and ``baseline`` (another
metric's), 1-D of shape ``(n,)``, one value per test pair (moving, fixed), in the same pair order
(or two ``pandas.Series`` indexed by pair id, which are matched by id). Differences
``d_i = reference_i − baseline_i``.

* **Wilcoxon signed-rank test** (paired, ``scipy.stats.wilcoxon`` on the d_i). Zero differences are
  dropped (scipy's ``zero_method="wilcox"``), the n' others ranked by |d_i| (ties share the mean
  rank), and the ranks of the positive ones summed: ``W+ = Σ_{d_i > 0} rank(|d_i|)``. Under H0
  (the d_i are symmetric about 0) every sign is a fair coin, so W+ is a sum of ranks picked by
  coin flips. **One-sided** (the paper's ``alternative="greater"``): ``p = P(W+ ≥ W+_obs | H0)``,
  small when the reference wins on most pairs and by the larger margins. It asks "is DeepSim's Dice
  greater?", not "are they different?". scipy 1.17 (``method="auto"``): the exact null
  distribution for n ≤ 50 without ties or zeros, all 2^n sign flips for n ≤ 13 with ties or zeros,
  else the normal approximation. ``statistic`` is W+ for one-sided alternatives, min(W+, W−) for
  ``"two-sided"`` (scipy's convention).
* **All differences zero** (two models with identical Dice on every pair, e.g. two runs that both
  stayed at the identity): no pair is left to rank. scipy 1.17 returns statistic 0, p = 1.0, with
  a RuntimeWarning (0/0 in its normal approximation); we report the same without calling it:
  ``statistic = 0``, ``pvalue = 1.0`` for every alternative, so no mark — no evidence either way.
* **Cohen's d** with pooled sd, ddof 1, as in the paper's code (its significance-test script,
  src/plots/statistical_significance_test.py, ``cohen_d``):
  ``d = (mean(a) − mean(b)) / s_p``, ``s_p² = ((n_a − 1) s_a² + (n_b − 1) s_b²) / (n_a + n_b − 2)``,
  which for n_a = n_b is ``s_p = sqrt((s_a² + s_b²) / 2)``. It ignores the pairing.
* **Paired d_z** (ours): ``d_z = mean(d_i) / sd(d_i)`` (ddof 1). Pairs share their difficulty, so
  sd(d) is often far below s_p and d_z far above d.
  Zero spread: 0/0 gives 0 (no effect), x/0 gives ±inf.
* Effect labels on |d|: > 0.2 small, > 0.5 medium, > 0.8 large, > 1.2 very large, > 2 huge —
  Sawilowsky's rules of thumb (S. Sawilowsky, "New effect size rules of thumb", J. Mod. Appl.
  Stat. Methods 8(2), 2009), which extend Cohen's 0.2 / 0.5 / 0.8. The paper's code uses the
  same thresholds (DeepSimRegistration: src/plots/statistical_significance_test.py, which also
  calls 0.01 < |d| ≤ 0.2 "very small" and |d| ≤ 0.01 "none"); we call every |d| ≤ 0.2
  negligible. Marks (the paper's Table 1): * p < 0.05, ** p < 0.01, *** p < 0.001,
  ‡ p < 0.001 and d > 0.8.

Every statistic here needs at least ``MIN_PAIRS = 2`` pairs (an sd with ddof 1 needs two values).
With n pairs the one-sided p is at least 1/2^n: fewer than 5 pairs can never reach p < 0.05.

``compare_metrics`` applies all of this per dataset × metric to ``runs.load_results`` output;
``results_table`` (Table 1) and ``folding_table`` render it as markdown, LaTeX or CSV.

**Gain over not registering** (ours): ``dice_gain`` gives per dataset × metric the mean of
``Dice_k − Dice_before_k`` over the test pairs (``Dice_before``: the unregistered pair). A
significance mark says only that DeepSim's Dice is *consistently* above a baseline's, however
small the difference; on nets that barely moved (a smoke run) that can be a mark on a gain of
0.0005. ``results_table(..., min_gain=MIN_GAIN)`` therefore bolds a dataset's best mean only
where that run gained more than ``min_gain`` over the unregistered Dice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as sps

from .config import DATASETS, METRICS
from .runs import load_results

ALTERNATIVES = ("greater", "less", "two-sided")
MIN_PAIRS = 2
EFFECT_SIZES = ((2.0, "huge"), (1.2, "very large"), (0.8, "large"), (0.5, "medium"), (0.2, "small"))
MARKS = ((0.001, "***"), (0.01, "**"), (0.05, "*"))
DAGGER = "‡"  # p < 0.001 with a large effect (d > 0.8)
MISSING = "–"  # a dataset × metric run without results
MIN_GAIN = 0.01  # Dice gain over the unregistered pairs below which no run is called the best
# the results column that holds each Dice convention (see evaluate.py)
DICE_COLUMNS = {"foreground": "dice", "paper": "dice_paper_convention"}
_CONVENTION_TEXT = {
    "foreground": "foreground, the mean over the foreground classes; a class absent from both "
    "label maps is left out",
    "paper": "paper, the mean over all classes including background; a class absent from both "
    "label maps counts as 0",
}


@dataclass(frozen=True)
class WilcoxonResult:
    """``statistic``: W+ (one-sided) or min(W+, W−) (two-sided); ``n``: pairs; ``n_nonzero``:
    pairs with a non-zero difference (those the test ranks)."""

    statistic: float
    pvalue: float
    n: int
    alternative: str
    n_nonzero: int


# ----------------------------------------------------------------------------- inputs


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a 1-D float array; ValueError for another shape, NaN or ±inf."""
    try:
        v = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must hold numbers: {e}") from e
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per pair), got shape {v.shape}")
    bad = ~np.isfinite(v)
    if bad.any():
        where = list(x.index[bad]) if isinstance(x, pd.Series) else np.flatnonzero(bad).tolist()
        raise ValueError(f"{name} holds NaN or infinite values at {where[:5]}")
    return v


def _check_count(n: int, what: str = "pairs") -> None:
    if n < MIN_PAIRS:
        raise ValueError(f"need at least {MIN_PAIRS} {what} (an sd with ddof 1 needs two), got {n}")


def _paired(reference: ArrayLike, baseline: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Two paired samples as arrays of the same length; Series are matched by their index."""
    if isinstance(reference, pd.Series) and isinstance(baseline, pd.Series):
        for name, s in (("reference", reference), ("baseline", baseline)):
            if s.index.has_duplicates:
                dup = list(s.index[s.index.duplicated()])
                raise ValueError(f"{name} has repeated pair ids: {dup[:5]}")
        only_ref = reference.index.difference(baseline.index)
        only_base = baseline.index.difference(reference.index)
        if len(only_ref) or len(only_base):
            raise ValueError(
                "reference and baseline are not paired: different pair ids, only in reference: "
                f"{list(only_ref)[:5]}, only in baseline: {list(only_base)[:5]}"
            )
        baseline = baseline.loc[reference.index]  # same pair order as the reference
    a, b = _vector(reference, "reference"), _vector(baseline, "baseline")
    if len(a) != len(b):
        raise ValueError(
            f"reference and baseline must be paired (same length), got {len(a)} and {len(b)} values"
        )
    _check_count(len(a))
    return a, b


def _sd(x: np.ndarray) -> float:
    """Sample sd (ddof 1); exactly 0 when all values are equal (no float residue)."""
    return 0.0 if np.all(x == x[0]) else float(x.std(ddof=1))


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / den


# ----------------------------------------------------------------------------- tests, effects


def paired_wilcoxon(
    reference: ArrayLike, baseline: ArrayLike, alternative: str = "greater"
) -> WilcoxonResult:
    """Paired Wilcoxon signed-rank test of ``reference − baseline`` (see the module docstring).

    ``alternative="greater"``: H1 is that the reference (DeepSim) has the greater Dice.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"unknown alternative {alternative!r}; valid: {', '.join(ALTERNATIVES)}")
    a, b = _paired(reference, baseline)
    diff = a - b  # (n,)
    nonzero = int(np.count_nonzero(diff))
    if nonzero == 0:  # nothing to rank: no evidence either way (module docstring)
        return WilcoxonResult(0.0, 1.0, len(diff), alternative, 0)
    res = sps.wilcoxon(diff, alternative=alternative)  # zero_method="wilcox", method="auto"
    return WilcoxonResult(float(res.statistic), float(res.pvalue), len(diff), alternative, nonzero)


def cohens_d(a: ArrayLike, b: ArrayLike) -> float:
    """Cohen's d with pooled sd (ddof 1), the paper's code:
    ``(mean(a) − mean(b)) / sqrt(((n_a − 1) s_a² + (n_b − 1) s_b²) / (n_a + n_b − 2))``,
    i.e. ``/ sqrt((s_a² + s_b²) / 2)`` for equal sizes. Zero pooled sd: 0 if the means are
    equal, else ±inf."""
    a, b = _vector(a, "a"), _vector(b, "b")
    _check_count(len(a), "values in a")
    _check_count(len(b), "values in b")
    na, nb = len(a), len(b)
    pooled = math.sqrt(((na - 1) * _sd(a) ** 2 + (nb - 1) * _sd(b) ** 2) / (na + nb - 2))
    return _ratio(float(a.mean() - b.mean()), pooled)


def cohens_dz(a: ArrayLike, b: ArrayLike) -> float:
    """Paired effect size ``mean(a − b) / sd(a − b)`` (ddof 1); all-zero differences give 0,
    constant non-zero ones ±inf."""
    a, b = _paired(a, b)
    diff = a - b
    return _ratio(float(diff.mean()), _sd(diff))


def effect_size_label(d: float) -> str:
    """The label of |d|: negligible (≤ 0.2), small, medium, large, very large, huge (> 2)."""
    d = float(d)
    if math.isnan(d):
        raise ValueError("effect size d is NaN")
    for threshold, label in EFFECT_SIZES:
        if abs(d) > threshold:
            return label
    return "negligible"


def significance_mark(p: float, d: float) -> str:
    """``"‡"`` for p < 0.001 and d > 0.8, else ``"***"``/``"**"``/``"*"`` below
    0.001/0.01/0.05, else ``""``."""
    p, d = float(p), float(d)
    if not 0.0 <= p <= 1.0:  # also NaN
        raise ValueError(f"p-value must lie in [0, 1], got {p}")
    if math.isnan(d):
        raise ValueError("effect size d is NaN")
    if p < 0.001 and d > 0.8:
        return DAGGER
    for threshold, mark in MARKS:
        if p < threshold:
            return mark
    return ""


# ----------------------------------------------------------------------------- per-run comparison


def _ordered(names, known) -> list:
    """``names`` in the order of ``known``, unknown ones sorted at the end."""
    names = set(names)
    return [k for k in known if k in names] + sorted(names - set(known))


def compare_metrics(
    results: pd.DataFrame, reference: str = "deepsim", value: str = "dice"
) -> pd.DataFrame:
    """One row per dataset × metric: n, mean, sd of ``value`` over the test pairs and, for the
    metrics other than ``reference``, the one-sided Wilcoxon p (reference greater), Cohen's d,
    d_z (both reference − metric), the effect label and the mark (from p and d).

    ``results``: ``runs.load_results`` output, one row per dataset × metric × pair. Pairs are
    matched by (moving, fixed) within a dataset. A dataset without a reference run gets NaN / ""
    in the comparison columns; differing pair sets, NaN values or < 2 pairs raise ValueError.
    """
    missing = {"dataset", "metric", "moving", "fixed", value} - set(results.columns)
    if missing:
        raise ValueError(f"results lack the columns {sorted(missing)}")
    if reference not in METRICS and reference not in set(results["metric"]):
        raise ValueError(
            f"unknown reference metric {reference!r}; results hold {sorted(set(results.metric))}"
        )
    rows = []
    for dataset in _ordered(results["dataset"].unique(), DATASETS):
        of_dataset = results[results["dataset"] == dataset]
        values = {}  # metric -> Series of `value` indexed by (moving, fixed)
        for metric in _ordered(of_dataset["metric"].unique(), METRICS):
            s = of_dataset[of_dataset["metric"] == metric].set_index(["moving", "fixed"])[value]
            if s.index.has_duplicates:
                dup = list(s.index[s.index.duplicated()])
                raise ValueError(f"{dataset}, {metric}: repeated test pairs {dup[:5]}")
            _check_count(len(s), f"test pairs in {dataset}, {metric}")
            values[metric] = pd.Series(_vector(s, f"{dataset}, {metric}: {value}"), s.index)
        ref = values.get(reference)
        for metric, s in values.items():
            row = {"dataset": dataset, "metric": metric, "n": len(s), "mean": s.mean(),
                   "sd": _sd(s.to_numpy()), "pvalue": math.nan, "d": math.nan,
                   "d_z": math.nan, "effect": "", "mark": ""}  # fmt: skip
            if metric != reference and ref is not None:
                try:
                    test = paired_wilcoxon(ref, s)
                except ValueError as e:
                    raise ValueError(f"{dataset}: {reference} vs {metric}: {e}") from e
                d = cohens_d(ref, s)
                mark = significance_mark(test.pvalue, d)
                row.update(pvalue=test.pvalue, d=d, d_z=cohens_dz(ref, s),
                           effect=effect_size_label(d), mark=mark)  # fmt: skip
            rows.append(row)
    columns = ["dataset", "metric", "n", "mean", "sd", "pvalue", "d", "d_z", "effect", "mark"]
    return pd.DataFrame(rows, columns=columns)


def dice_gain(results: pd.DataFrame) -> pd.DataFrame:
    """What registering gained over not registering, per dataset × metric.

    ``results``: ``runs.load_results`` output (columns ``dice`` and ``dice_before``, the
    foreground-convention Dice of each test pair after and before registration). Columns:
    dataset, metric, n, ``dice`` (mean), ``dice_before`` (mean), ``gain`` = mean_k (Dice_k −
    Dice_before_k) (= dice − dice_before), ``gain_sd`` (sd of the per-pair gains, ddof 1) and
    ``improved`` (share of pairs with Dice_k > Dice_before_k).
    """
    missing = {"dataset", "metric", "dice", "dice_before"} - set(results.columns)
    if missing:
        raise ValueError(f"results lack the columns {sorted(missing)}")
    rows = []
    for dataset in _ordered(results["dataset"].unique(), DATASETS):
        of_dataset = results[results["dataset"] == dataset]
        for metric in _ordered(of_dataset["metric"].unique(), METRICS):
            run = of_dataset[of_dataset["metric"] == metric]
            after = _vector(run["dice"], f"{dataset}, {metric}: dice")
            before = _vector(run["dice_before"], f"{dataset}, {metric}: dice_before")
            _check_count(len(after), f"test pairs in {dataset}, {metric}")
            gain = after - before  # (n,)
            rows.append({"dataset": dataset, "metric": metric, "n": len(gain),
                         "dice": after.mean(), "dice_before": before.mean(),
                         "gain": gain.mean(), "gain_sd": _sd(gain),
                         "improved": float((gain > 0).mean())})  # fmt: skip
    columns = ["dataset", "metric", "n", "dice", "dice_before", "gain", "gain_sd", "improved"]
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- tables


_LATEX = str.maketrans({
    "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "±": r"$\pm$", "–": "--",
    "‡": r"$^{\ddagger}$", "≤": r"$\leq$", "<": "$<$", ">": "$>$", "Φ": r"$\Phi$",
    "∇": r"$\nabla$", "−": "$-$",
})  # fmt: skip
_LATEX_MARKS = {"": "", "*": "$^{*}$", "**": "$^{**}$", "***": "$^{***}$", DAGGER: r"$^{\ddagger}$"}


@dataclass(frozen=True, eq=False)
class ResultsTable:
    """A results table: metrics (rows) × datasets (columns).

    ``stats``: the numbers, one row per dataset × metric (``compare_metrics`` columns);
    ``display``: the cells as text, "mean ± sd" + mark, ``MISSING`` ("–") for a missing run;
    ``marks``: the marks alone; ``best``: True where the mean is the best of its column;
    ``convention``: the Dice convention (None for the folding table); ``caption``: lines saying
    what the cells are, the convention and the marks; ``best_rule``: what the bold means.
    """

    stats: pd.DataFrame
    display: pd.DataFrame
    marks: pd.DataFrame
    best: pd.DataFrame
    convention: str | None
    caption: tuple[str, ...]
    best_rule: str

    def _cells(self):
        """Per row: (metric, [(number text, mark, best), ...])."""
        for metric, row in self.display.iterrows():
            cells = []
            for dataset, text in row.items():
                mark = self.marks.at[metric, dataset]
                cells.append(
                    (text[: len(text) - len(mark)], mark, bool(self.best.at[metric, dataset]))
                )
            yield metric, cells

    def to_markdown(self) -> str:
        """A GitHub/MyST markdown table, then the caption as one paragraph."""

        def cell(text: str, mark: str, best: bool) -> str:
            return (f"**{text}**" if best else text) + mark.replace("*", r"\*")

        lines = ["| metric | " + " | ".join(self.display.columns) + " |"]
        lines.append("|---" * (len(self.display.columns) + 1) + "|")
        for metric, cells in self._cells():
            lines.append(f"| {metric} | " + " | ".join(cell(*c) for c in cells) + " |")
        caption = " ".join(self.caption).replace("*", r"\*").replace("|", r"\|")
        return "\n".join(lines) + f"\n\n{caption} Bold: {self.best_rule}\n"

    def to_latex(self) -> str:
        """A ``table`` environment (plain ``\\hline`` rules, no packages), caption included."""

        def cell(text: str, mark: str, best: bool) -> str:
            text = text.translate(_LATEX)
            return (rf"\textbf{{{text}}}" if best else text) + _LATEX_MARKS[mark]

        caption = " ".join(self.caption).translate(_LATEX)
        columns = " & ".join(c.translate(_LATEX) for c in self.display.columns)
        lines = [
            r"\begin{table}",
            r"\centering",
            rf"\caption{{{caption} Bold: {self.best_rule.translate(_LATEX)}}}",
            r"\begin{tabular}{l" + "c" * len(self.display.columns) + "}",
            r"\hline",
            rf"metric & {columns} \\",
            r"\hline",
        ]
        for metric, cells in self._cells():
            lines.append(
                f"{metric.translate(_LATEX)} & " + " & ".join(cell(*c) for c in cells) + r" \\"
            )
        lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """The display cells as CSV after ``#`` caption lines (read: ``comment="#"``)."""
        header = "".join(f"# {line}\n" for line in self.caption)
        return header + self.display.to_csv(lineterminator="\n")


def _table(stats: pd.DataFrame, number: str, lower_is_better: bool, convention: str | None,
           caption: tuple[str, ...], best_rule: str) -> ResultsTable:  # fmt: skip
    """Pivot ``stats`` (one row per dataset × metric) into display / marks / best tables."""
    datasets = _ordered(stats["dataset"].unique(), DATASETS)
    metrics = _ordered(stats["metric"].unique(), METRICS)
    display = pd.DataFrame(MISSING, index=pd.Index(metrics, name="metric"), columns=datasets)
    marks = pd.DataFrame("", index=display.index, columns=datasets)
    best = pd.DataFrame(False, index=display.index, columns=datasets)
    for dataset in datasets:
        rows = stats[stats["dataset"] == dataset]
        top = rows["mean"].min() if lower_is_better else rows["mean"].max()
        for _, r in rows.iterrows():
            mark = r["mark"] if isinstance(r.get("mark"), str) else ""
            display.at[r["metric"], dataset] = (
                f"{number.format(r['mean'])} ± {number.format(r['sd'])}{mark}"
            )
            marks.at[r["metric"], dataset] = mark
            best.at[r["metric"], dataset] = bool(r["mean"] == top)
    return ResultsTable(stats, display, marks, best, convention, caption, best_rule)


def results_table(
    results_dir: str | Path, convention: str = "foreground", reference: str = "deepsim",
    min_gain: float | None = None,
) -> ResultsTable:  # fmt: skip
    """The paper's Table 1 from a results root (``<dataset>/<metric>/test_results.csv``).

    Cells: mean ± sd of the test Dice (``convention`` "foreground" → column ``dice``, "paper" →
    ``dice_paper_convention``), with the mark of how much ``reference`` beats that row; bold:
    the best mean per dataset. Rows: the metrics with at least one run (``config.METRICS``
    order); columns: the datasets present (``config.DATASETS`` order); "–" where a dataset
    lacks a metric's run. ``min_gain`` (e.g. ``MIN_GAIN``): the best mean is bold only where
    that run's mean gain over the unregistered Dice (``dice_gain``, foreground convention, as
    the paper convention has no unregistered Dice) exceeds it. Raises FileNotFoundError when the
    folder holds no results and a ValueError naming a results file that cannot be read
    (``runs.load_results``); runs with a checkpoint but no results are left out
    (``runs.unevaluated_note`` names them).
    """
    if convention not in DICE_COLUMNS:
        raise ValueError(
            f"unknown Dice convention {convention!r}; valid: {', '.join(DICE_COLUMNS)}"
        )
    if min_gain is not None and not math.isfinite(min_gain):
        raise ValueError(f"min_gain must be a finite number, got {min_gain!r}")
    results = load_results(results_dir)
    stats = compare_metrics(results, reference, DICE_COLUMNS[convention])
    caption = (
        f"Test Dice, mean ± sd over the test pairs (Dice convention: "
        f"{_CONVENTION_TEXT[convention]}).",
        f"Marks: one-sided paired Wilcoxon signed-rank test that {reference}'s Dice is greater "
        f"than the row's: * p < 0.05, ** p < 0.01, *** p < 0.001, {DAGGER} p < 0.001 and "
        "Cohen's d > 0.8.",
        f"{MISSING}: no run.",
    )
    if min_gain is None:
        return _table(stats, "{:.3f}", False, convention, caption, "the best mean per dataset.")
    rule = (f"the best mean per dataset, only where that run gained more than {min_gain:g} "
            "Dice over the unregistered pairs (foreground convention); a column without bold: "
            "no run gained that much.")
    table = _table(stats, "{:.3f}", False, convention, caption, rule)
    gains = dice_gain(results).pivot(index="metric", columns="dataset", values="gain")
    gained = gains.reindex_like(table.best).gt(min_gain)  # NaN (no run) → False
    return replace(table, best=table.best & gained)


def folding_table(results_dir: str | Path) -> ResultsTable:
    """Folding per metric × dataset: mean ± sd over the test pairs of the percentage of voxels
    with det ∇Φ < 0 (``folding_fraction`` × 100, forward differences); bold: the least folding
    per dataset."""
    results = load_results(results_dir)
    rows = []
    for (dataset, metric), group in results.groupby(["dataset", "metric"], sort=False):
        percent = 100 * _vector(group["folding_fraction"], f"{dataset}, {metric}: folding_fraction")
        _check_count(len(percent), f"test pairs in {dataset}, {metric}")
        rows.append({"dataset": dataset, "metric": metric, "n": len(percent),
                     "mean": percent.mean(), "sd": _sd(percent)})  # fmt: skip
    stats = pd.DataFrame(rows, columns=["dataset", "metric", "n", "mean", "sd"])
    caption = (
        "Folding: % of voxels with det ∇Φ < 0 (Φ = id + u, forward differences), mean ± sd "
        "over the test pairs.",
        f"{MISSING}: no run.",
    )
    return _table(stats, "{:.2f}", True, None, caption, "the least folding per dataset.")
