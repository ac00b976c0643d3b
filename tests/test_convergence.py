"""Claim-3 statistics on learning curves with analytic answers."""

import math

import numpy as np
import pandas as pd
import pytest

from deepsim_edu.convergence import compare_convergence, curve_statistics, early_area


def curves(gain_of_step, pairs=6, steps=(0, 50, 100, 150, 200), before=0.5):
    """val_pairs rows: every pair has Dice = before + gain(step) (pair k adds k·0.001 to it)."""
    rows = []
    for k in range(pairs):
        for step in steps:
            rows.append({"step": step, "moving": f"m{k}", "fixed": f"f{k}",
                         "dice": before + gain_of_step(step) * (1 + 0.001 * k),
                         "dice_before": before})  # fmt: skip
    return pd.DataFrame(rows)


def test_linear_gain_has_analytic_statistics():
    # g(t) = G·t/T with T = 200: mean over [0, 50] is G·25/200; 50 % at t = 100, 90 % at 180
    stats = curve_statistics(curves(lambda t: 0.2 * t / 200)).set_index("pair")
    mean, factor = stats.loc["mean"], np.mean([1 + 0.001 * k for k in range(6)])
    assert mean["early_area"] == pytest.approx(0.2 * factor * 25 / 200)
    assert mean["steps_to_50"] == pytest.approx(100)
    assert mean["steps_to_90"] == pytest.approx(180)
    assert mean["final_gain"] == pytest.approx(0.2 * factor)
    assert len(stats) == 7  # six pairs and the mean curve


def test_quarter_between_validation_steps_is_interpolated():
    # steps 0, 30, 90, 120: T/4 = 30 is a step; with steps 0, 40, 80, 120 it falls between
    steps = np.array([0.0, 40.0, 80.0, 120.0])
    gain = np.array([0.0, 0.4, 0.8, 1.2])  # g = t/100
    assert early_area(steps, gain, 120.0) == pytest.approx(0.15)  # mean of t/100 on [0, 30]


def test_no_gain_gives_no_steps():
    stats = curve_statistics(curves(lambda t: 0.0)).set_index("pair")
    assert math.isnan(stats.loc["mean", "steps_to_50"])
    assert stats.loc["mean", "early_area"] == 0


def test_faster_metric_wins_on_every_pair():
    fast = curve_statistics(curves(lambda t: 0.2 * min(t, 50) / 50))  # done by step 50
    slow = curve_statistics(curves(lambda t: 0.2 * t / 200))
    rows = {r["statistic"]: r for r in compare_convergence({"deepsim": fast, "mse": slow})}
    assert rows["early_area"]["deepsim"] > rows["early_area"]["baseline"]
    assert rows["early_area"]["pvalue"] == pytest.approx(1 / 2**6)  # exact: all 6 pairs agree
    assert rows["steps_to_90"]["pvalue"] == pytest.approx(1 / 2**6)
    reverse = {r["statistic"]: r for r in compare_convergence({"deepsim": slow, "mse": fast})}
    assert reverse["early_area"]["pvalue"] == pytest.approx(1.0)


def test_bad_input():
    with pytest.raises(ValueError, match="lacks columns"):
        curve_statistics(pd.DataFrame({"step": [0]}))
    with pytest.raises(ValueError, match="start at step 0"):
        curve_statistics(curves(lambda t: 0.1, steps=(50, 100)))
    with pytest.raises(ValueError, match="no learning curves of 'deepsim'"):
        compare_convergence({"mse": curve_statistics(curves(lambda t: 0.1))})
