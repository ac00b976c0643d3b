"""Claim 3, "DeepSim converges faster, especially early", as statistics fixed in advance.

A registration run logs the validation Dice of every validation pair at step 0 (the untrained
net, whose displacement is ~1e-5 voxel: the unregistered Dice) and after every epoch
(``val_pairs.csv``, ``runs.load_val_pairs``). With g(t) = Dice(t) − Dice_before, the gain over
not registering at optimiser step t (linear between validation steps), and T the run's last
step:

* ``early_area``  A = (4 / T) ∫₀^{T/4} g(t) dt — the mean gain over the first quarter of
  training (trapezoid rule); higher is faster early learning;
* ``steps_to_50`` / ``steps_to_90`` — the first step t at which g(t) ≥ 0.5·G (0.9·G), with
  G = g(T) the metric's own final gain; NaN where G ≤ 0 (nothing was gained to reach).

``curve_statistics`` computes them for every validation pair of a run and for the run's mean
curve; ``compare_convergence`` tests DeepSim against each baseline across the validation pairs
(paired, one-sided Wilcoxon: DeepSim's area is greater, its steps fewer).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .runs import VAL_PAIRS, available_runs, load_val_pairs, run_folder
from .stats import paired_wilcoxon

STATISTICS = ("early_area", "steps_to_50", "steps_to_90")
HIGHER_IS_FASTER = {"early_area": True, "steps_to_50": False, "steps_to_90": False}


def _interpolate_gain(steps: np.ndarray, gain: np.ndarray, t: float) -> float:
    return float(np.interp(t, steps, gain))


def early_area(steps: np.ndarray, gain: np.ndarray, total: float) -> float:
    """A = (4 / T) ∫₀^{T/4} g(t) dt by the trapezoid rule on the validation steps (and T/4)."""
    quarter = total / 4
    inside = steps[steps < quarter]
    knots = np.append(inside, quarter)
    values = np.array([_interpolate_gain(steps, gain, t) for t in knots])
    return float(np.trapezoid(values, knots) / quarter) if quarter > 0 else math.nan


def steps_to_fraction(steps: np.ndarray, gain: np.ndarray, fraction: float) -> float:
    """The first step where g(t) ≥ fraction·g(T) (linear between validations); NaN if g(T) ≤ 0."""
    final = gain[-1]
    if not final > 0:
        return math.nan
    target = fraction * final
    for k in range(len(steps)):
        if gain[k] >= target:
            if k == 0:
                return float(steps[0])
            t0, t1, g0, g1 = steps[k - 1], steps[k], gain[k - 1], gain[k]
            return float(t0 + (target - g0) / (g1 - g0) * (t1 - t0))
    return math.nan  # unreachable: gain[-1] >= target


def _statistics(steps: np.ndarray, gain: np.ndarray) -> dict:
    order = np.argsort(steps)
    steps, gain = steps[order].astype(float), gain[order].astype(float)
    if steps[0] != 0:
        raise ValueError("a learning curve must start at step 0 (the untrained net)")
    return {
        "early_area": early_area(steps, gain, steps[-1]),
        "steps_to_50": steps_to_fraction(steps, gain, 0.5),
        "steps_to_90": steps_to_fraction(steps, gain, 0.9),
        "final_gain": float(gain[-1]),
    }


def curve_statistics(val_pairs: pd.DataFrame) -> pd.DataFrame:
    """Claim-3 statistics of one run: one row per validation pair, plus ``pair="mean"`` for the
    mean curve. ``val_pairs``: columns step, moving, fixed, dice, dice_before."""
    missing = {"step", "moving", "fixed", "dice", "dice_before"} - set(val_pairs.columns)
    if missing:
        raise ValueError(f"val_pairs lacks columns {sorted(missing)}")
    rows = []
    for (moving, fixed), curve in val_pairs.groupby(["moving", "fixed"], sort=True):
        gain = curve["dice"].to_numpy() - curve["dice_before"].to_numpy()
        rows.append({"pair": f"{moving}→{fixed}",
                     **_statistics(curve["step"].to_numpy(), gain)})  # fmt: skip
    mean = val_pairs.assign(gain=val_pairs["dice"] - val_pairs["dice_before"])
    mean = mean.groupby("step")["gain"].mean()
    rows.append({"pair": "mean", **_statistics(mean.index.to_numpy(), mean.to_numpy())})
    return pd.DataFrame(rows)


def compare_convergence(curves: dict[str, pd.DataFrame], reference: str = "deepsim") -> list[dict]:
    """DeepSim against each baseline on the per-pair statistics of ``curve_statistics``.

    ``curves``: metric → its ``curve_statistics`` table (the same validation pairs). Per
    baseline and statistic: the mean-curve values of both, and the one-sided paired Wilcoxon p
    across the pairs where both are defined (H1: DeepSim is faster — a greater area, fewer
    steps), with the number of pairs.
    """
    if reference not in curves:
        raise ValueError(f"no learning curves of {reference!r}; have {sorted(curves)}")
    ours = curves[reference].set_index("pair")
    rows = []
    for metric in sorted(m for m in curves if m != reference):
        theirs = curves[metric].set_index("pair")
        pairs = sorted(set(ours.index) & set(theirs.index) - {"mean"})
        for statistic in STATISTICS:
            a = ours.loc[pairs, statistic].to_numpy(float)
            b = theirs.loc[pairs, statistic].to_numpy(float)
            both = ~(np.isnan(a) | np.isnan(b))
            faster = "greater" if HIGHER_IS_FASTER[statistic] else "less"
            p = paired_wilcoxon(a[both], b[both], faster).pvalue if both.sum() >= 2 else math.nan
            rows.append({"versus": metric, "statistic": statistic,
                         "deepsim": ours.loc["mean", statistic],
                         "baseline": theirs.loc["mean", statistic],
                         "pvalue": p, "pairs": int(both.sum())})  # fmt: skip
    return rows


def convergence_claims(root: str | Path, reference: str = "deepsim") -> pd.DataFrame:
    """Claim 3 on one results root: per dataset with DeepSim's ``val_pairs.csv``, DeepSim against
    every baseline that has one (``convergence.compare_convergence``), plus ``dataset``."""
    rows = []
    logged = available_runs(root, VAL_PAIRS)
    for dataset in sorted(logged):
        if reference not in logged[dataset]:
            continue
        curves = {m: curve_statistics(load_val_pairs(run_folder(root, dataset, m)))
                  for m in logged[dataset]}  # fmt: skip
        rows += [{"dataset": dataset, **r} for r in compare_convergence(curves, reference)]
    return pd.DataFrame(rows)
