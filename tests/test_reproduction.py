"""Multi-seed reproduction tables on hand-made results roots with hand-computed answers."""

import numpy as np
import pandas as pd
import pytest

from deepsim_edu.claims import learning_curve_claims
from deepsim_edu.convergence import convergence_claims
from deepsim_edu.reproduction import (
    claims_by_seed,
    patch_sweep_verdicts,
    seed_roots,
    seed_spread,
    seed_table,
    seed_verdicts,
)
from deepsim_edu.runs import save_checkpoint, write_csv


def results(root, dataset, metric, dices):
    rows = [{"dataset": dataset, "metric": metric, "moving": f"m{i}", "fixed": f"f{i}",
             "dice": d, "dice_before": 0.5} for i, d in enumerate(dices)]  # fmt: skip
    write_csv(root / dataset / metric / "test_results.csv", rows)


def test_seed_tables(tmp_path):
    for seed, shift in ((0, 0.0), (1, 0.02)):
        root = tmp_path / f"seed_{seed}"
        results(root, "platelet-em", "deepsim", [0.8 + shift, 0.9 + shift, 0.85 + shift])
        results(root, "platelet-em", "mse", [0.7, 0.8, 0.75])
    write_csv(tmp_path / "seed_1" / "platelet-em" / "segmentation" / "log.csv",
              [{"step": 10, "val_dice": 0.6}, {"step": 20, "val_dice": 0.4}])
    (tmp_path / "notes").mkdir()
    roots = seed_roots(tmp_path)
    assert list(roots) == [0, 1]
    table = seed_table(roots).set_index(["seed", "metric"])
    assert table.loc[(1, "deepsim"), "dice"] == pytest.approx(0.87)
    assert table.loc[(0, "mse"), "sd_pairs"] == pytest.approx(0.05)  # sd of 0.7, 0.8, 0.75
    # the last epoch's, not the best: the net DeepSim uses is the last one
    assert table.loc[(1, "deepsim"), "extractor_val_dice"] == pytest.approx(0.4)
    assert table.loc[(1, "mse"), "extractor_val_dice"] == pytest.approx(0.4)
    assert np.isnan(table.loc[(0, "deepsim"), "extractor_val_dice"])  # seed 0 has no log
    spread = seed_spread(seed_table(roots)).set_index("metric")
    assert spread.loc["deepsim", "sd_seeds"] == pytest.approx(np.std([0.85, 0.87], ddof=1))
    assert spread.loc["mse", "sd_seeds"] == pytest.approx(0.0)
    assert spread.loc["deepsim", "seeds"] == 2
    claims = claims_by_seed(roots)
    delta = claims[(claims.claim == 1) & (claims.seed == 1)]["value"].item()
    assert delta == pytest.approx(0.87 - 0.75) and claims[claims.claim == 1]["holds"].all()
    verdicts = seed_verdicts(claims).loc[(1, "platelet-em")]
    assert verdicts["seed 0"] == "holds" and verdicts["seeds holding"] == "2/2"
    with pytest.raises(FileNotFoundError, match="no seed_<s>"):
        seed_roots(tmp_path / "notes")


def test_convergence_claims_read_the_learning_curves(tmp_path):
    for metric, rate in (("deepsim", 0.004), ("ncc", 0.001)):
        rows = [{"epoch": s // 50, "step": s, "moving": f"m{k}", "fixed": f"f{k}",
                 "dice": 0.5 + min(rate * s, 0.2) * (1 + 0.01 * k), "dice_before": 0.5,
                 "folding_fraction": 0.0} for k in range(6) for s in (0, 50, 100, 150, 200)]
        write_csv(tmp_path / "phc-u373" / metric / "val_pairs.csv", rows)
    table = convergence_claims(tmp_path).set_index("statistic")
    assert set(table["versus"]) == {"ncc"} and set(table["dataset"]) == {"phc-u373"}
    # deepsim: gain 0.2·min(t/50, 1) → 50 % at step 25; ncc: 0.2·t/200 → at step 100
    assert table.loc["steps_to_50", "deepsim"] == pytest.approx(25)
    assert table.loc["steps_to_50", "baseline"] == pytest.approx(100)
    assert table.loc["early_area", "pvalue"] == pytest.approx(1 / 2**6)
    rows, covered = learning_curve_claims(tmp_path)  # the rows claims.csv gets
    assert covered == {"phc-u373"} and len(rows) == 3 and all(r["holds"] for r in rows)
    steps = next(r for r in rows if "50 %" in r["statistic"])
    assert steps["value"] == pytest.approx(100 - 25)  # baseline − DeepSim steps


def test_patch_sweep_verdicts():
    summary = pd.DataFrame([
        {"dataset": "phc-u373", "patch_strength": s, "metric": m, "folding_inside": f,
         "gradient_inside": g, "endpoint_error_inside": e}
        for s, m, f, g, e in [(0.0, "deepsim", 0.0, 0.1, 0.5), (0.0, "ncc", 0.0, 0.2, 0.4),
                              (1.0, "deepsim", 0.0, 0.1, 0.5), (1.0, "ncc", 0.01, 0.3, 0.6)]
    ])  # fmt: skip
    verdicts = patch_sweep_verdicts(summary).set_index("patch_strength")
    assert verdicts.loc[0.0, "smoother"] and not verdicts.loc[0.0, "as_accurate"]
    assert not verdicts.loc[0.0, "holds"] and verdicts.loc[1.0, "holds"]


def test_seeds_only_assembly_adds_seeds_and_keeps_seed_0s_measurements(tmp_path):
    """``assemble_default.py --seeds-only`` on hand-made seed roots and a committed folder:
    seed 0's measured files stay byte for byte, the seeds' tables are the hand-computed means,
    the other seeds' small files (no checkpoint) and seed 0's new ones (a sweep) are added."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parents[1] / "reference_results" / "assemble_default.py"
    spec = importlib.util.spec_from_file_location("assemble_default", path)
    assemble = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(assemble)
    runs = tmp_path / "runs"
    for seed, shift in ((0, 0.0), (1, 0.03), (2, -0.03)):
        root = runs / f"seed_{seed}"
        results(root, "phc-u373", "deepsim", [0.8 + shift, 0.9 + shift])
        results(root, "phc-u373", "ncc-sup", [0.85, 0.86])
        for metric in ("deepsim", "ncc-sup"):
            save_checkpoint(root / "phc-u373" / metric / "checkpoint.pt", {"finished": True})
    write_csv(runs / "seed_1" / "brain-mri" / "segmentation" / "log.csv", [{"step": 10}])
    save_checkpoint(runs / "seed_1" / "brain-mri" / "segmentation" / "checkpoint.pt",
                    {"finished": False})  # still training: left out
    write_csv(runs / "seed_0" / "phc-u373" / "deepsim" / "sweep.csv", [{"lam": 0.25}])
    (runs / "progress.txt").write_text("t0 start commit abc\nt1 2D seed 2 done\n")
    out = tmp_path / "reference" / "default"
    results(out, "phc-u373", "deepsim", [0.8, 0.9])
    (out / "claims.csv").write_text("claim,holds\n4,False\n")  # measured on seed 0's nets
    (out / "provenance.json").write_text(json.dumps({"preset": "default", "wall_time_s": 100}))
    before = (out / "claims.csv").read_bytes()
    assemble.seeds_only(runs, out, wall_time_s=50, notes="Third run.")
    assert (out / "claims.csv").read_bytes() == before
    assert (out / "phc-u373" / "deepsim" / "sweep.csv").is_file()  # seed 0's, added
    assert (out / "seeds" / "seed_2" / "phc-u373" / "deepsim" / "test_results.csv").is_file()
    assert not list(out.rglob("*.pt")) and not (out / "seeds" / "seed_0").exists()
    assert not (out / "seeds" / "seed_1" / "brain-mri").exists()
    spread = pd.read_csv(out / "seed_spread.csv").set_index("metric")
    assert spread.loc["deepsim", "dice"] == pytest.approx(0.85)  # mean of 0.85, 0.88, 0.82
    assert spread.loc["deepsim", "sd_seeds"] == pytest.approx(0.03)
    assert spread.loc["ncc-sup", "seeds"] == 3
    claims = pd.read_csv(out / "seed_claims.csv")
    wins = claims[claims.claim == 1].set_index("seed")["holds"]
    assert wins.to_dict() == {0: False, 1: True, 2: False}  # 0.85 vs 0.855; 0.88; 0.82
    verdicts = seed_verdicts(claims).loc[(1, "phc-u373")]
    assert verdicts["seed 1"] == "holds" and verdicts["seed 2"] == "does not hold"
    assert verdicts["seeds holding"] == "1/3"
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["seeds"] == [0, 1, 2] and provenance["wall_time_s"] == 150
    assert provenance["progress"][-1] == "t1 2D seed 2 done"
    assert not [p for p in out.parent.iterdir() if p.name != "default"]  # no staging left
