"""A reproduction over several seeds: the claims per seed, and claims 3 and 4 as decided in advance.

A multi-seed run keeps one results root per seed, ``<runs>/seed_<s>/`` (each the layout of
``runs.py``). This module reads them:

* ``seed_table`` — mean test Dice per dataset × metric × seed, with the spread over the test
  pairs and the final validation Dice of that seed's feature extractor (DeepSim stands on
  it); ``seed_spread`` — per dataset × metric the mean over seeds, the sd across seeds and
  the mean sd across pairs, side by side (which varies more: seeds or pairs?);
* ``claims_by_seed`` — claims 1 and 2 (``claims.best_mean_dice``, ``claims.significance``) on
  every seed; ``seed_verdicts`` — their verdict per dataset, a column per seed;
* ``patch_sweep_verdicts`` — claim 4 on the patch-strength sweep
  (``robustness.summarize_patch_sweep``): at each strength, is DeepSim both smoother inside
  the patches (less or equal folding and a smaller mean |∇u|) and at least as accurate there
  (endpoint error ‖u − u*‖ no larger) than each baseline?
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .claims import REFERENCE, best_mean_dice, claim_summary, significance
from .runs import load_log, load_results, segmentation_folder

SEED_FOLDER = re.compile(r"seed_(\d+)")


def seed_roots(runs: str | Path) -> dict[int, Path]:
    """``{seed: <runs>/seed_<seed>}`` for every such folder, in seed order."""
    runs = Path(runs)
    if not runs.is_dir():
        raise FileNotFoundError(f"{runs}: no such folder (expected seed_<s>/ results roots)")
    found = {int(m.group(1)): p for p in runs.iterdir()
             if p.is_dir() and (m := SEED_FOLDER.fullmatch(p.name))}  # fmt: skip
    if not found:
        raise FileNotFoundError(f"{runs}: no seed_<s>/ results root in it")
    return dict(sorted(found.items()))


def extractor_val_dice(root: Path, dataset: str) -> float:
    """The last validation Dice in the log of ``root``'s extractor of ``dataset`` (the net that
    DeepSim then uses); NaN when that seed has no extractor log."""
    folder = segmentation_folder(root, dataset)
    if not (folder / "log.csv").is_file():
        return float("nan")
    return float(load_log(folder)["val_dice"].iloc[-1])


def seed_table(roots: dict[int, Path]) -> pd.DataFrame:
    """One row per seed × dataset × metric: mean and sd over the test pairs, their count, and
    ``extractor_val_dice`` (``extractor_val_dice`` of that seed and dataset)."""
    tables = []
    for seed, root in roots.items():
        results = load_results(root)
        stats = results.groupby(["dataset", "metric"])["dice"].agg(["mean", "std", "count"])
        stats = stats.reset_index().assign(seed=seed)
        stats["extractor_val_dice"] = stats["dataset"].map(
            {d: extractor_val_dice(root, d) for d in stats["dataset"].unique()})
        tables.append(stats)
    table = pd.concat(tables, ignore_index=True)
    return table.rename(columns={"mean": "dice", "std": "sd_pairs", "count": "pairs"})


def seed_spread(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × metric: mean Dice over seeds, sd across seeds, mean sd across pairs."""
    grouped = table.groupby(["dataset", "metric"])
    return pd.DataFrame({"seeds": grouped["seed"].nunique(), "dice": grouped["dice"].mean(),
                         "sd_seeds": grouped["dice"].std(),
                         "sd_pairs": grouped["sd_pairs"].mean()}).reset_index()  # fmt: skip


def claims_by_seed(roots: dict[int, Path]) -> pd.DataFrame:
    """Claims 1 and 2 on every seed's results root (the rows of ``claims``, plus ``seed``)."""
    rows = []
    for seed, root in roots.items():
        results = load_results(root)
        rows += [{**r, "seed": seed} for r in best_mean_dice(results) + significance(results)]
    return pd.DataFrame(rows)


def seed_verdicts(by_seed: pd.DataFrame) -> pd.DataFrame:
    """Claims 1 and 2 per dataset, one column per seed, from ``claims_by_seed``: each seed's
    verdict as ``claims.claim_summary`` gives it for one run ("holds", "does not hold",
    "partly (k/n)": of DeepSim's comparisons with the baselines), and ``seeds holding`` (of
    how many seeds the claim holds against every baseline)."""
    verdicts = pd.concat([claim_summary(rows).assign(seed=seed)
                          for seed, rows in by_seed.groupby("seed")])  # fmt: skip
    table = verdicts.pivot(index=["claim", "dataset"], columns="seed", values="verdict")
    table.columns = [f"seed {s}" for s in table.columns]
    held = verdicts.groupby(["claim", "dataset"])["verdict"]
    table["seeds holding"] = [f"{(v == 'holds').sum()}/{len(v)}" for _, v in held]
    return table.fillna("–")


def patch_sweep_verdicts(summary: pd.DataFrame) -> pd.DataFrame:
    """Claim 4 per dataset × patch strength × baseline, from ``summarize_patch_sweep``.

    ``smoother``: DeepSim's folding inside ≤ the baseline's and its mean |∇u| inside < the
    baseline's; ``as_accurate``: DeepSim's endpoint error inside ≤ the baseline's; ``holds``:
    both.
    """
    rows = []
    for (dataset, strength), block in summary.groupby(["dataset", "patch_strength"]):
        by = block.set_index("metric")
        if REFERENCE not in by.index:
            continue
        ours = by.loc[REFERENCE]
        for metric, theirs in by.drop(index=REFERENCE).iterrows():
            smoother = bool(ours["folding_inside"] <= theirs["folding_inside"]
                            and ours["gradient_inside"] < theirs["gradient_inside"])  # fmt: skip
            accurate = bool(ours["endpoint_error_inside"] <= theirs["endpoint_error_inside"])
            rows.append({"dataset": dataset, "patch_strength": strength, "versus": metric,
                         "smoother": smoother, "as_accurate": accurate,
                         "holds": smoother and accurate})  # fmt: skip
    return pd.DataFrame(rows)

