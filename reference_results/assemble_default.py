"""How ``reference_results/default/`` is assembled from the third reference run.

The run (``reference_results/reproduce_default.sh``) keeps one results root per seed under
RUNS (``seed_0``: all three datasets and the PhC-U373 λ sweeps of DeepSim and NCC-sup;
``seed_1``, ``seed_2``: the 2D datasets, Brain-MRI when the budget allowed). This script measures
on them and copies the small files (CSV/JSON; no checkpoints: those are the released models) to
``reference_results/default/``:

* seed 0 at the top level, as every reader of a results root expects, with ``claims.csv``
  (claims 1-4), ``noise_regions.csv``, ``noise_sweep.csv``, ``table.md``;
* ``convergence.csv`` — claim 3 from the per-pair learning curves (``convergence``);
* ``patch_sweep.csv``, ``patch_summary.csv``, ``patch_verdicts.csv`` — claim 4 over the
  patch strengths ``robustness.PATCH_STRENGTHS`` (Platelet-EM, PhC-U373);
* ``seeds/seed_<s>/`` the other seeds' files, ``seeds.csv`` (Dice per seed),
  ``seed_spread.csv`` (across seeds beside across pairs), ``seed_claims.csv`` (claims 1-2 per
  seed);
* ``provenance.json`` (preset, device, date, commit, command, wall time, threads, VGG file).

    RUNS=... DATA=... bash reference_results/reproduce_default.sh
    python reference_results/assemble_default.py --runs RUNS --data DATA --wall-time-s S

``--seeds-only``: seed 0's measurements stay as committed in ``--out`` (claims 1-4, convergence,
the patch sweep: they need seed 0's registration checkpoints, which are the released models and
not kept in RUNS); what is made again is what the other seeds add — ``seeds/seed_<s>/``,
``seeds.csv``, ``seed_spread.csv``, ``seed_claims.csv`` — plus seed 0's small files that the
committed folder does not have yet (the PhC-U373 λ sweeps), and the provenance's notes, wall
time and the run's ``progress.txt`` (which commit trained which part).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from deepsim_edu import claims, convergence, features, reference, reproduction, robustness, stats
from deepsim_edu.runs import training_finished, write_csv, write_json

HERE = Path(__file__).resolve().parent
COMMAND = (
    "RUNS=RUNS DATA=DATA bash reference_results/reproduce_default.sh; "
    "python reference_results/assemble_default.py --runs RUNS --data DATA --wall-time-s S"
)
DEVICE = "cpu: 2-core x86 VM, torch 2.13.0 CPU, OMP_NUM_THREADS=1, 2 runs side by side"


def _records(table: pd.DataFrame) -> list[dict]:
    return table.to_dict("records")


def measure(root: Path, data: str, sweep_data: Path) -> dict[str, pd.DataFrame]:
    """Everything measured on seed 0's results root, written next to its runs."""
    measured = claims.run_claims(root, data)  # claims 1-4, noise_regions, noise_sweep
    learning = convergence.convergence_claims(root)
    write_csv(root / "convergence.csv", _records(learning))
    sweep = pd.concat([robustness.patch_strength_sweep(root, sweep_data, d)
                       for d in robustness.PATCH_DATASETS], ignore_index=True)  # fmt: skip
    summary = robustness.summarize_patch_sweep(sweep)
    verdicts = reproduction.patch_sweep_verdicts(summary)
    for name, table in (("patch_sweep", sweep), ("patch_summary", summary),
                        ("patch_verdicts", verdicts)):  # fmt: skip
        write_csv(root / f"{name}.csv", _records(table))
    tables = (stats.results_table(root), stats.folding_table(root))
    (root / "table.md").write_text("\n\n".join(t.to_markdown() for t in tables))
    return {**measured, "convergence": learning, "verdicts": verdicts}


def seed_files(roots: dict[int, Path], root: Path) -> None:
    """``root/seeds/seed_<s>/`` (the small files of every finished run of every seed but 0,
    made anew; a run still training is left out) and the seed tables: ``seeds.csv``,
    ``seed_spread.csv``, ``seed_claims.csv``."""
    shutil.rmtree(root / "seeds", ignore_errors=True)
    for seed, other in roots.items():
        if seed == 0:
            continue
        for run in sorted(other.glob("*/*/")):
            if training_finished(run):
                _copy_small(run, root / "seeds" / f"seed_{seed}" / run.relative_to(other))
    table = reproduction.seed_table(roots)
    write_csv(root / "seeds.csv", _records(table))
    write_csv(root / "seed_spread.csv", _records(reproduction.seed_spread(table)))
    write_csv(root / "seed_claims.csv", _records(reproduction.claims_by_seed(roots)))


def _copy_small(src: Path, out: Path, overwrite: bool = True) -> list[Path]:
    """The CSV/JSON files of ``src`` into ``out`` at the same relative paths; those copied."""
    copied = []
    for path in sorted(src.rglob("*")):
        target = out / path.relative_to(src)
        if path.is_file() and path.suffix in reference.SMALL_SUFFIXES and (
                overwrite or not target.exists()):  # fmt: skip
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            copied.append(target)
    return copied


def seeds_only(runs: Path, out: Path, wall_time_s: float, notes: str) -> None:
    """``--seeds-only``: the committed ``out`` with the other seeds added (module docstring)."""
    roots = reproduction.seed_roots(runs)
    provenance = json.loads((out / "provenance.json").read_text())
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        shutil.copytree(out, staged)
        added = _copy_small(roots[0], staged, overwrite=False)  # seed 0's measured files stay
        seed_files(roots, staged)
        progress = runs / "progress.txt"
        provenance["progress"] = progress.read_text().splitlines() if progress.is_file() else []
        provenance["seeds"] = sorted(roots)
        provenance["wall_time_s"] = round((provenance.get("wall_time_s") or 0) + wall_time_s)
        provenance["notes"] = (f"{notes} Seeds {sorted(roots)} (seed 0's measurements as "
                               f"committed before; the seeds added by --seeds-only).").strip()
        write_json(staged / "provenance.json", provenance)
        old = Path(tmp) / "old"
        out.rename(old)
        staged.rename(out)
    print(f"added {len(added)} files of seed 0; seeds {sorted(roots)}; wrote {out}")
    print(reproduction.seed_spread(reproduction.seed_table(roots)).round(4).to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="the run's folder of seed_<s>/ roots")
    parser.add_argument("--data", required=True, help="folder holding the embedded datasets")
    parser.add_argument("--out", default=str(HERE / "default"))
    parser.add_argument("--wall-time-s", type=float, required=True,
                        help="wall time of the training, first start to last end")  # fmt: skip
    parser.add_argument("--notes", default="")
    parser.add_argument("--commit", default=None,
                        help="commit the runs were trained at (default: the checked-out one)")
    parser.add_argument("--seeds-only", action="store_true",
                        help="keep seed 0's committed measurements in --out; add the seeds")
    args = parser.parse_args()
    if args.seeds_only:
        seeds_only(Path(args.runs), Path(args.out), args.wall_time_s, args.notes)
        return
    roots = reproduction.seed_roots(args.runs)
    vgg = features.vgg_weights_path(args.data)
    vgg_configs = sorted(roots[0].glob("*/vgg/config.json"))
    vgg_input = (json.loads(vgg_configs[0].read_text()).get("vgg_input", "weights")
                 if vgg_configs else "weights")  # fmt: skip
    out, started = Path(args.out), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "default"
        # seed 0 with its checkpoints (hard links: claims and the patch sweep run its nets; the
        # export below copies only the small files)
        shutil.copytree(roots[0], root, copy_function=os.link)
        measured = measure(root, args.data, Path(tmp) / "patch_data")
        seed_files(roots, root)
        seconds = sum(pd.read_csv(log)["seconds"].sum() for r in roots.values()
                      for log in r.rglob("log.csv"))  # fmt: skip
        staged = Path(tmp) / "export"
        reference.export_reference(
            root, staged, preset="default", device=DEVICE, command=COMMAND,
            wall_time_s=round(args.wall_time_s + time.perf_counter() - started),
            commit=args.commit,
            notes=f"{args.notes} Seeds: {sorted(roots)}. Sum of per-epoch training+validation "
                  f"seconds over every run and seed: {seconds:.0f} s.",
            vgg=vgg if vgg_configs else None, vgg_input=vgg_input,
        )  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(staged, out)
    print(claims.claim_summary(measured["claims"]).to_string(index=False))
    print(measured["convergence"].to_string(index=False))
    print(measured["verdicts"].to_string(index=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
