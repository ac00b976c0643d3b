"""stats: Wilcoxon p-values against exact enumeration and scipy's documented example, Cohen's d
against hand-computed values, marks and labels at their boundaries, every error, and the tables
of a small hand-made results root whose means and sds can be read off."""

import io
import itertools
import math
import warnings
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from deepsim_edu.stats import (
    WilcoxonResult,
    cohens_d,
    cohens_dz,
    compare_metrics,
    dice_gain,
    effect_size_label,
    folding_table,
    paired_wilcoxon,
    results_table,
    significance_mark,
)


def exact_p_greater(diff) -> Fraction:
    """P(W+ >= observed W+) over all 2^n sign assignments; |diff| distinct and non-zero."""
    ranks = np.argsort(np.argsort(np.abs(diff))) + 1
    observed = ranks[np.asarray(diff) > 0].sum()
    hits = sum(
        ranks[list(signs)].sum() >= observed
        for signs in itertools.product([False, True], repeat=len(diff))
    )
    return Fraction(int(hits), 2 ** len(diff))


# ----------------------------------------------------------------------------- Wilcoxon


@pytest.mark.parametrize("n", [5, 6])
def test_wilcoxon_all_positive_is_one_over_2_to_the_n(n):
    reference = np.arange(1, n + 1) / 10 + 0.5
    result = paired_wilcoxon(reference, np.full(n, 0.5))
    # only the all-plus sign assignment reaches W+ = 1 + ... + n
    assert result.statistic == n * (n + 1) / 2
    assert result.pvalue == pytest.approx(1 / 2**n, abs=1e-12)
    assert (result.n, result.alternative, result.n_nonzero) == (n, "greater", n)


def test_wilcoxon_one_negative_rank_by_hand_and_enumeration():
    diff = [1, 2, -3, 4, 5, 6]  # ranks 1..6, rank 3 negative: W+ = 21 - 3 = 18
    # W+ >= 18 <=> the negative ranks sum to <= 3: {}, {1}, {2}, {3}, {1, 2} -> 5 of 64
    assert exact_p_greater(diff) == Fraction(5, 64)
    result = paired_wilcoxon(np.array(diff) + 10.0, np.full(6, 10.0))
    assert result.statistic == 18
    assert result.pvalue == pytest.approx(5 / 64, abs=1e-12)
    # the other direction: P(W+ <= 18) = 1 - P(W+ >= 19) = 1 - 3/64 ({}, {1}, {2})
    less = paired_wilcoxon(np.array(diff) + 10.0, np.full(6, 10.0), alternative="less")
    assert less.pvalue == pytest.approx(61 / 64, abs=1e-12)


def test_wilcoxon_scipy_documented_example():
    # scipy.stats.wilcoxon docs (corn plants, Wilcoxon 1945): two-sided (24.0, 0.041259765625),
    # alternative="greater" (96.0, 0.0206298828125)
    d = np.array([6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75], dtype=float)
    zeros = np.zeros_like(d)
    two = paired_wilcoxon(d, zeros, alternative="two-sided")
    assert (two.statistic, two.pvalue) == (24.0, pytest.approx(0.041259765625, abs=1e-15))
    greater = paired_wilcoxon(d, zeros)
    assert (greater.statistic, greater.pvalue) == (96.0, pytest.approx(0.0206298828125, abs=1e-15))
    assert exact_p_greater(d) == Fraction(676, 2**15)  # 0.0206298828125 = 676 / 32768
    assert 2 * 676 / 2**15 == pytest.approx(two.pvalue)


def test_wilcoxon_zero_differences_are_dropped():
    # zero_method "wilcox": [0, 0, 1, 2, 3, 4] tests like [1, 2, 3, 4] -> 1 / 2^4
    result = paired_wilcoxon([5.0, 5.0, 6.0, 7.0, 8.0, 9.0], [5.0] * 6)
    assert (result.n, result.n_nonzero) == (6, 4)
    assert result.pvalue == pytest.approx(1 / 16, abs=1e-12)


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_wilcoxon_all_differences_zero_gives_p_one_without_warning(alternative):
    dice = [0.7, 0.8, 0.75, 0.9]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = paired_wilcoxon(dice, list(dice), alternative=alternative)
    assert result == WilcoxonResult(0.0, 1.0, 4, alternative, 0)
    assert significance_mark(result.pvalue, cohens_d(dice, dice)) == ""


def test_wilcoxon_matches_series_by_pair_id():
    ids = ["a", "b", "c", "d", "e", "f"]
    baseline = pd.Series(10.0, index=ids)
    reference = pd.Series([16.0, 15.0, 14.0, 7.0, 12.0, 11.0], index=ids[::-1])  # other order
    # matched by id: differences [1, 2, -3, 4, 5, 6] as in the hand-worked example
    assert paired_wilcoxon(reference, baseline).pvalue == pytest.approx(5 / 64, abs=1e-12)


# ----------------------------------------------------------------------------- Cohen's d


def test_cohens_d_by_hand():
    # a: mean 5, var 4; b: mean 2, var 1 -> d = 3 / sqrt((4 + 1) / 2)
    assert cohens_d([3, 5, 7], [1, 2, 3]) == pytest.approx(3 / math.sqrt(2.5))
    assert cohens_d([1, 2, 3], [3, 5, 7]) == pytest.approx(-3 / math.sqrt(2.5))
    # unequal sizes, the paper's pooled form: a var 1 (n 3), b = [0, 2, 4, 6] mean 3, var 20/3
    # s_p^2 = (2 * 1 + 3 * 20/3) / 5 = 4.4
    assert cohens_d([1, 2, 3], [0, 2, 4, 6]) == pytest.approx(-1 / math.sqrt(4.4))


def test_cohens_dz_by_hand():
    # differences [2, 3, 4]: mean 3, sd 1
    assert cohens_dz([3, 5, 7], [1, 2, 3]) == pytest.approx(3.0)
    by_id = cohens_dz(pd.Series([3, 5, 7], list("xyz")), pd.Series([3, 1, 2], list("zxy")))
    assert by_id == pytest.approx(3.0)


def test_effect_sizes_without_spread():
    assert cohens_d([0.8, 0.8], [0.8, 0.8]) == 0.0
    assert cohens_d([0.9, 0.9], [0.8, 0.8]) == math.inf
    assert cohens_dz([0.7, 0.9], [0.7, 0.9]) == 0.0
    assert cohens_dz([1.0, 2.0], [2.0, 3.0]) == -math.inf


@pytest.mark.parametrize(
    "d, label",
    [(0.0, "negligible"), (0.2, "negligible"), (0.21, "small"), (0.5, "small"),
     (0.51, "medium"), (0.8, "medium"), (0.81, "large"), (1.2, "large"),
     (1.21, "very large"), (2.0, "very large"), (2.01, "huge"), (math.inf, "huge"),
     (-0.9, "large")],
)  # fmt: skip
def test_effect_size_labels_at_boundaries(d, label):
    assert effect_size_label(d) == label


@pytest.mark.parametrize(
    "p, d, mark",
    [(1.0, 5.0, ""), (0.05, 5.0, ""), (0.0499, 0.0, "*"), (0.01, 0.0, "*"), (0.0099, 0.0, "**"),
     (0.001, 5.0, "**"), (0.00099, 0.8, "***"), (0.00099, 0.81, "‡"), (0.0, -1.0, "***")],
)  # fmt: skip
def test_significance_marks_at_boundaries(p, d, mark):
    assert significance_mark(p, d) == mark


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: paired_wilcoxon([1, 2, 3], [1, 2]), "same length"),
        (lambda: cohens_dz([1, 2, 3], [1, 2]), "same length"),
        (lambda: paired_wilcoxon([1.0], [0.0]), "at least 2 pairs"),
        (lambda: paired_wilcoxon([], []), "at least 2 pairs"),
        (lambda: cohens_d([1.0], [1.0, 2.0]), "at least 2 values in a"),
        (lambda: paired_wilcoxon([1, np.nan, 3], [1, 2, 3]), r"reference holds NaN .* \[1\]"),
        (lambda: cohens_d([1, 2, 3], [1, 2, np.nan]), "b holds NaN"),
        (lambda: cohens_dz([1, 2, 3], [np.inf, 2, 3]), "baseline holds NaN or infinite"),
        (lambda: paired_wilcoxon([[1, 2], [3, 4]], [[1, 2], [3, 4]]), "1-D"),
        (lambda: paired_wilcoxon(["a", "b"], [1, 2]), "must hold numbers"),
        (lambda: paired_wilcoxon([1, 2, 3], [0, 0, 0], alternative="bigger"), "alternative"),
        (lambda: effect_size_label(math.nan), "NaN"),
        (lambda: significance_mark(math.nan, 1.0), "p-value"),
        (lambda: significance_mark(1.5, 1.0), "p-value"),
        (lambda: significance_mark(0.01, math.nan), "NaN"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_different_or_repeated_pair_ids_are_errors():
    a = pd.Series([0.8, 0.9, 0.7], index=["p1", "p2", "p3"])
    with pytest.raises(ValueError, match=r"pair ids.*only in reference: \['p3'\].*\['p4'\]"):
        paired_wilcoxon(a, pd.Series([0.7, 0.8, 0.6], index=["p1", "p2", "p4"]))
    with pytest.raises(ValueError, match="baseline has repeated pair ids"):
        cohens_dz(a, pd.Series([0.7, 0.8, 0.6], index=["p1", "p2", "p2"]))


# ----------------------------------------------------------------------------- results tables

# Hand-made results. Deviations with mean 0 and an sd read off by hand (× 0.01):
DEV10 = [-4, -2, -1, -1, 0, 1, 1, 2, 2, 2]  # sum 0, squares 36 -> sd sqrt(36 / 9) = 2
DEV6 = [-4, 0, 1, 1, 1, 1]  # sum 0, squares 20 -> sd sqrt(20 / 5) = 2
# platelet-em, 10 pairs: deepsim 0.80 ± 0.02; mse = deepsim − 0.10 on every pair (p = 1/1024,
# d = 0.10 / 0.02 = 5 -> ‡); ncc = 0.78 + a permutation of DEV10 with differences
# [0, 0.04, 0.02 × 8] (zero dropped: p = 1/512 -> **; d = 0.02 / 0.02 = 1).
# brain-mri, 6 pairs: deepsim 0.60 ± 0.02, mse = deepsim + 0.05 (better: p = 1, bold); no ncc.
PLATELET = {
    "deepsim": [0.80 + 0.01 * k for k in DEV10],
    "mse": [0.70 + 0.01 * k for k in DEV10],
    "ncc": [0.78 + 0.01 * k for k in [-2, -4, -1, -1, 0, 1, 1, 2, 2, 2]],
}
BRAIN = {"deepsim": [0.60 + 0.01 * k for k in DEV6], "mse": [0.65 + 0.01 * k for k in DEV6]}
# folding fractions: deepsim 0.1 %, mse 2 % ± 0.2 %, ncc 5 %
PLATELET_FOLDING = {
    "deepsim": [0.001] * 10,
    "mse": [0.02 + 0.001 * k for k in DEV10],
    "ncc": [0.05] * 10,
}
BRAIN_FOLDING = {"deepsim": [0.001] * 6, "mse": [0.02 + 0.001 * k for k in DEV6]}


def write_results(root, dataset, values, pairs, folding):
    """``<root>/<dataset>/<metric>/test_results.csv`` with the columns of evaluate_pairs."""
    for metric, dice in values.items():
        folder = root / dataset / metric
        folder.mkdir(parents=True)
        pd.DataFrame(
            {"dataset": dataset, "metric": metric, "moving": [m for m, _ in pairs],
             "fixed": [f for _, f in pairs], "dice": dice, "dice_before": 0.5,
             "dice_paper_convention": [round(x + 0.1, 10) for x in dice],
             "folding_fraction": folding[metric], "jacobian_min": 0.5}
        ).to_csv(folder / "test_results.csv", index=False)  # fmt: skip


@pytest.fixture
def results_root(tmp_path):
    platelet_pairs = [(f"vt_{i:02d}", f"vt_{i + 1:02d}") for i in range(10)]
    brain_pairs = [(f"sub-{i}", "atlas") for i in range(6)]
    write_results(tmp_path, "platelet-em", PLATELET, platelet_pairs, PLATELET_FOLDING)
    write_results(tmp_path, "brain-mri", BRAIN, brain_pairs, BRAIN_FOLDING)
    return tmp_path


def test_compare_metrics_numbers(results_root):
    from deepsim_edu.runs import load_results

    table = compare_metrics(load_results(results_root)).set_index(["dataset", "metric"])
    assert list(table.index) == [
        ("brain-mri", "mse"), ("brain-mri", "deepsim"),
        ("platelet-em", "mse"), ("platelet-em", "ncc"), ("platelet-em", "deepsim"),
    ]  # fmt: skip
    mse = table.loc[("platelet-em", "mse")]
    assert (mse.n, mse["mean"], mse.sd) == (10, pytest.approx(0.70), pytest.approx(0.02))
    assert (mse.pvalue, mse.d) == (pytest.approx(1 / 1024), pytest.approx(5.0))
    assert (mse.effect, mse.mark) == ("huge", "‡")
    ncc = table.loc[("platelet-em", "ncc")]
    assert (ncc.pvalue, ncc.d, ncc.mark) == (pytest.approx(1 / 512), pytest.approx(1.0), "**")
    # differences [0, 0.04, 0.02 x 8]: mean 0.02, sd sqrt((0.02² x 2) / 9)
    assert ncc.d_z == pytest.approx(0.02 / math.sqrt(0.0008 / 9))
    brain = table.loc[("brain-mri", "mse")]
    assert (brain.pvalue, brain.d, brain.mark) == (pytest.approx(1.0), pytest.approx(-2.5), "")
    ref = table.loc[("platelet-em", "deepsim")]
    assert math.isnan(ref.pvalue) and ref.mark == "" and ref["mean"] == pytest.approx(0.80)


EXPECTED_MARKDOWN = """\
| metric | brain-mri | platelet-em |
|---|---|---|
| mse | **0.650 ± 0.020** | 0.700 ± 0.020‡ |
| ncc | – | 0.780 ± 0.020\\*\\* |
| deepsim | 0.600 ± 0.020 | **0.800 ± 0.020** |"""


def test_results_table_markdown(results_root):
    table = results_table(results_root)
    assert table.convention == "foreground"
    body, caption = table.to_markdown().split("\n\n")
    assert body == EXPECTED_MARKDOWN
    assert "Dice convention: foreground" in caption
    assert r"\*\* p < 0.01" in caption and "‡ p < 0.001 and Cohen's d > 0.8" in caption
    assert "–: no run." in caption
    assert caption.endswith("Bold: the best mean per dataset.\n")


def test_results_table_paper_convention(results_root):
    table = results_table(results_root, convention="paper")  # the fixture's paper Dice: + 0.1
    assert table.convention == "paper"
    body, caption = table.to_markdown().split("\n\n")
    assert body == (
        "| metric | brain-mri | platelet-em |\n"
        "|---|---|---|\n"
        "| mse | **0.750 ± 0.020** | 0.800 ± 0.020‡ |\n"
        "| ncc | – | 0.880 ± 0.020\\*\\* |\n"
        "| deepsim | 0.700 ± 0.020 | **0.900 ± 0.020** |"
    )
    assert "Dice convention: paper" in caption and "including background" in caption
    with pytest.raises(ValueError, match="convention"):
        results_table(results_root, convention="all")


def test_dice_gain_by_hand():
    # gains [0.1, -0.05, 0]: mean 0.05 / 3; deviations 1/12, -1/15, -1/60 (exact fractions of
    # 0.1, -0.05, 0 minus 1/60): squares sum 7/600 -> sd sqrt(7/1200); one pair of three improved
    results = pd.DataFrame({
        "dataset": "platelet-em", "metric": ["mse"] * 3 + ["deepsim"] * 2,
        "dice": [0.6, 0.5, 0.7, 0.9, 0.8], "dice_before": [0.5, 0.55, 0.7, 0.5, 0.5],
    })  # fmt: skip
    gain = dice_gain(results).set_index("metric")
    assert list(gain.index) == ["mse", "deepsim"]  # config.METRICS order
    mse = gain.loc["mse"]
    assert (mse.n, mse.dice, mse.dice_before) == (3, pytest.approx(0.6), pytest.approx(1.75 / 3))
    assert mse.gain == pytest.approx(0.05 / 3)
    assert mse.gain_sd == pytest.approx(math.sqrt(7 / 1200))
    assert mse.improved == pytest.approx(1 / 3)
    assert (gain.loc["deepsim", "gain"], gain.loc["deepsim", "improved"]) == (
        pytest.approx(0.35), 1.0)
    with pytest.raises(ValueError, match="dice_before"):
        dice_gain(results.drop(columns="dice_before"))


def test_results_table_bolds_only_a_best_that_gained(results_root):
    # every dice_before is 0.5: platelet deepsim gains 0.30, brain mse (best there) only 0.15
    table = results_table(results_root, min_gain=0.2)
    body, caption = table.to_markdown().split("\n\n")
    assert body.splitlines()[2:] == [
        "| mse | 0.650 ± 0.020 | 0.700 ± 0.020‡ |",
        "| ncc | – | 0.780 ± 0.020\\*\\* |",
        "| deepsim | 0.600 ± 0.020 | **0.800 ± 0.020** |",
    ]
    assert "gained more than 0.2 Dice over the unregistered pairs" in caption
    none = results_table(results_root, min_gain=0.35)  # no run gained that much: no bold
    assert not none.best.to_numpy().any() and "**" not in none.to_markdown().split("\n\n")[0]
    assert results_table(results_root, min_gain=0.1).best.equals(results_table(results_root).best)
    with pytest.raises(ValueError, match="min_gain"):
        results_table(results_root, min_gain=float("nan"))


def test_results_table_latex_and_csv(results_root):
    table = results_table(results_root)
    latex = table.to_latex()
    assert r"\begin{tabular}{lcc}" in latex
    assert r"mse & \textbf{0.650 $\pm$ 0.020} & 0.700 $\pm$ 0.020$^{\ddagger}$ \\" in latex
    assert r"ncc & -- & 0.780 $\pm$ 0.020$^{**}$ \\" in latex
    assert r"\caption{Test Dice" in latex and "Dice convention: foreground" in latex
    csv = table.to_csv()
    assert csv.startswith("# Test Dice, mean ± sd") and "# Marks:" in csv
    back = pd.read_csv(io.StringIO(csv), comment="#", index_col="metric")
    assert back.loc["ncc", "platelet-em"] == "0.780 ± 0.020**"
    assert back.loc["ncc", "brain-mri"] == "–"


def test_folding_table(results_root):
    table = folding_table(results_root)
    body, caption = table.to_markdown().split("\n\n")
    assert body == (
        "| metric | brain-mri | platelet-em |\n"
        "|---|---|---|\n"
        "| mse | 2.00 ± 0.20 | 2.00 ± 0.20 |\n"
        "| ncc | – | 5.00 ± 0.00 |\n"
        "| deepsim | **0.10 ± 0.00** | **0.10 ± 0.00** |"
    )
    assert table.convention is None
    assert "det ∇Φ < 0" in caption and "forward differences" in caption
    assert "least folding" in caption


def test_missing_results_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        results_table(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        folding_table(tmp_path / "nowhere")


def test_compare_metrics_errors(results_root):
    from deepsim_edu.runs import load_results

    results = load_results(results_root)
    fewer = results.drop(results.index[(results.metric == "mse") & (results.moving == "sub-0")])
    with pytest.raises(ValueError, match=r"brain-mri: deepsim vs mse: .*pair ids"):
        compare_metrics(fewer)
    nan = results.copy()
    nan.loc[(nan.metric == "ncc") & (nan.moving == "vt_03"), "dice"] = np.nan
    with pytest.raises(ValueError, match=r"platelet-em, ncc: dice holds NaN .*vt_03"):
        compare_metrics(nan)
    with pytest.raises(ValueError, match="reference metric 'deepsym'"):
        compare_metrics(results, reference="deepsym")
    with pytest.raises(ValueError, match="lack the columns"):
        compare_metrics(results.drop(columns="fixed"))
    one = results[(results.dataset == "brain-mri") & (results.moving == "sub-0")]
    with pytest.raises(ValueError, match="at least 2 test pairs in brain-mri"):
        compare_metrics(one)
