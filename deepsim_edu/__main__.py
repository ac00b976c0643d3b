"""Command line: ``python -m deepsim_edu COMMAND --help``. Thin wrappers over the library.

python -m deepsim_edu demo [--out results/demo]
python -m deepsim_edu data --dataset platelet-em [--source embedded|PATH] [--data data]
python -m deepsim_edu experiment --preset quick
python -m deepsim_edu table --results results/quick [--format md|latex|csv]
python -m deepsim_edu figures --results results/quick --out figures/
python -m deepsim_edu book --preset quick --device cpu
python -m deepsim_edu release --runs results/default --out models/default
python -m deepsim_edu register --model platelet-em/deepsim --fixed F --moving M --out DIR

Exit status: 0 done; 2 refused — a bad argument (argparse names it, before anything is
written), a bad dataset or input, or a file or folder that cannot be read or written (one line
"error: ..." on stderr, naming the file); 130 interrupted by Ctrl-C (training resumes from its
last finished epoch when the same command is run again). Anything else is a bug in this
package and shows its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .config import MAX_SEED, METRICS, PRESETS, check_lambda, check_positive, check_seed
from .data.layout import DATASET_NAMES, DatasetError

METHODS = ("network", "optimise", "network+optimise")  # = apply.METHODS (torch: import late)
INTENSITY_RULES = ("auto", "none")  # = apply.INTENSITY_RULES

# commands whose work resumes when they are run again (finished runs are kept, not redone)
RESUMABLE = ("train-seg", "train", "sweep-lambda", "experiment", "book")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    Path(args.out).mkdir(parents=True, exist_ok=True)  # an impossible --out fails before training
    run_demo(args.out, metric=args.metric, lam=args.lam, steps=args.steps, seed=args.seed)


def _data(args: argparse.Namespace) -> None:
    from .data.embedded import ensure_embedded, summarize
    from .data.layout import load_info

    if args.source == "embedded":
        params = {} if args.noise is None else {"noise": args.noise}
        root = ensure_embedded(args.dataset, args.data, seed=args.seed, **params)
    else:
        root = Path(args.source)
        if args.noise is not None:
            raise DatasetError("--noise only applies to --source embedded")
        if (name := load_info(root).name) != args.dataset:
            raise DatasetError(f"{root} holds dataset {name!r}, not --dataset {args.dataset!r}")
    for line in summarize(root):  # the full check: one error naming every file at fault
        print(line)
    print(f"dataset folder: {root}")


def _train_seg(args: argparse.Namespace) -> None:
    from .config import segmentation_config
    from .data.embedded import resolve_dataset
    from .distributed import current
    from .runs import results_root, segmentation_folder
    from .train import train_segmentation

    _check_device(args.device)
    config = segmentation_config(args.dataset, args.preset, seed=args.seed)
    root = resolve_dataset(args.dataset, args.data)
    out = segmentation_folder(results_root(args.preset, args.out), args.dataset)
    last = train_segmentation(root, out, config, device=args.device)
    if not current().main:  # under torchrun: rank 0 reports
        return
    print(f"segmentation {args.dataset} ({args.preset}): epoch {last['epoch']}, "
          f"validation foreground Dice {last['val_dice']:.3f}")  # fmt: skip
    print(f"run folder: {out}")


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} given but CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"--device must be cpu or cuda[:N], got {device!r}")


def _train(args: argparse.Namespace) -> None:
    from .experiment import run_one

    _check_device(args.device)
    run = run_one(args.dataset, args.metric, args.preset, args.data, args.out, args.device,
                  lam=args.lam, vgg=args.vgg, seed=args.seed)  # fmt: skip
    _print_run(run)


def _print_run(run: Path) -> None:
    from .distributed import current
    from .runs import load_run_results

    if not current().main:  # under torchrun: rank 0 reports
        return
    results = load_run_results(run)
    print(
        f"{run}: test Dice {results['dice'].mean():.3f} ± {results['dice'].std():.3f} "
        f"(before {results['dice_before'].mean():.3f}), folding "
        f"{100 * results['folding_fraction'].mean():.3f} % over {len(results)} pairs"
    )


def _evaluate(args: argparse.Namespace) -> None:
    from .data.embedded import resolve_dataset
    from .data.layout import check_dataset_name
    from .evaluate import evaluate_run
    from .runs import read_config, results_root, run_folder

    _check_device(args.device)
    dataset = args.dataset
    if args.run:  # --dataset and --metric default to the run's, and must match it if given
        run = Path(args.run)
        config = read_config(run)
        for flag, given in (("--dataset", args.dataset), ("--metric", args.metric)):
            recorded = config.get(flag[2:])
            if given is not None and given != recorded:
                raise ValueError(f"{flag} {given} given, but {run} is a run of {recorded}")
        dataset = dataset or config.get("dataset")
        check_dataset_name(dataset)
    elif args.dataset is None or args.metric is None:
        raise ValueError("evaluate needs --run FOLDER, or --dataset and --metric")
    else:
        run = run_folder(results_root(args.preset, args.out), args.dataset, args.metric)
    path = evaluate_run(run, resolve_dataset(dataset, args.data), args.split, args.device)
    if args.split == "test":
        _print_run(run)
    print(f"results: {path}")


def _sweep(args: argparse.Namespace) -> None:
    from .experiment import sweep_lambda

    _check_device(args.device)
    table = sweep_lambda(args.dataset, args.metric, args.preset, args.grid, args.data, args.out,
                         args.device, vgg=args.vgg, seed=args.seed)  # fmt: skip
    print(table.drop(columns="run").to_string(index=False))
    print(f"selected λ = {table.loc[table.selected, 'lam'].iloc[0]:g}")


def _experiment(args: argparse.Namespace) -> None:
    from .experiment import run_experiment

    _check_device(args.device)
    root = run_experiment(args.preset, tuple(args.datasets), tuple(args.metrics), args.data,
                          args.out, args.device, vgg=args.vgg, seed=args.seed,
                          jobs=args.jobs)  # fmt: skip
    print(f"results: {root}")


def _note_unevaluated(results: str) -> None:
    """On stderr: the runs with a checkpoint but no test results, which the tables leave out."""
    from .runs import unevaluated_note

    for line in unevaluated_note(results):
        print(line, file=sys.stderr)


def _table(args: argparse.Namespace) -> None:
    from .stats import folding_table, results_table

    render = {"md": "to_markdown", "latex": "to_latex", "csv": "to_csv"}[args.format]
    _note_unevaluated(args.results)
    table = results_table(args.results, convention=args.convention)
    print(getattr(table, render)())
    if args.folding:
        print()
        print(getattr(folding_table(args.results), render)())


def _figures(args: argparse.Namespace) -> None:
    from .figures import save_figures

    _note_unevaluated(args.results)
    for path in save_figures(args.results, args.out, data_dir=args.data):
        print(path)


def _claims(args: argparse.Namespace) -> None:
    from .claims import claim_summary, run_claims

    _check_device(args.device)
    _note_unevaluated(args.results)
    tables = run_claims(args.results, args.data, args.device, args.sweep_dataset)
    print(claim_summary(tables["claims"]).to_string(index=False))
    print(f"written: claims.csv, noise_regions.csv, noise_sweep.csv in {args.results}")


def _book(args: argparse.Namespace) -> None:
    from .book import build_book

    _check_device(args.device)
    index = build_book(preset=args.preset, device=args.device, data_dir=args.data,
                       results_dir=args.results, build_dir=args.build, jobs=args.jobs)  # fmt: skip
    print(f"book: {Path(index).resolve()}")


def _release(args: argparse.Namespace) -> None:
    from .pretrained import build_release, folder_bytes

    _check_device(args.device)
    manifest = build_release(args.runs, args.out, args.data, device=args.device,
                             commit=args.commit, max_mb=args.max_mb)  # fmt: skip
    kinds = [entry["kind"] for entry in manifest["models"].values()]
    dtypes = sorted({entry["dtype"] for entry in manifest["models"].values()})
    print(f"release: {args.out}: {kinds.count('registration')} registration nets, "
          f"{kinds.count('segmentation')} feature extractors ({', '.join(dtypes)}), "
          f"{folder_bytes(args.out) / 1e6:.2f} MB; {len(manifest['missing'])} missing")  # fmt: skip


def _register(args: argparse.Namespace) -> None:
    from .apply import register_files, resolve_model

    _check_device(args.device)
    if args.method == "network" and (args.metric, args.iterations) != (None, None):
        flag = "--metric" if args.metric is not None else "--iterations"
        raise ValueError(f"{flag} belongs to --method optimise or network+optimise; "
                         "--method network uses the model as trained")  # fmt: skip
    model = resolve_model(args.model, args.release, args.device)
    metrics = register_files(
        args.fixed, args.moving, args.out, model, moving_labels=args.moving_labels,
        fixed_labels=args.fixed_labels, method=args.method, metric=args.metric,
        device=args.device, intensity=args.intensity, resample_to=args.resample, seed=args.seed,
        iterations=args.iterations, progress=True,
    )  # fmt: skip
    dice = ""
    if metrics["dice_after"] is not None:
        dice = f"Dice {metrics['dice_before']:.3f} → {metrics['dice_after']:.3f}, "
    print(f"registered {args.moving} to {args.fixed} with {model.name} ({args.method}): {dice}"
          f"folding {metrics['folding_percent']:.3f} %, {metrics['seconds']:.1f} s")  # fmt: skip
    for note in metrics["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"outputs: {Path(args.out)}")


REGISTER_HELP = """\
Register one pair of images with a trained model and write the result.

Inputs: NIfTI (.nii, .nii.gz; 2D or 3D), or PNG/TIFF for 2D. Both images on one grid (the same
shape): the moving image is taken voxel by voxel on the fixed image's grid. Label maps: whole
numbers >= 0, of their image's shape.
Outputs in --out: warped.nii.gz (the moving image's own intensities), displacement.nii.gz (u in
voxels, a NIfTI vector field; the moving image is read at x + u(x)), jacobian_determinant.nii.gz,
warped_labels.nii.gz (with --moving-labels), overview.png and metrics.json (Dice before/after
with both label maps, folding %, seconds). Every NIfTI output carries the fixed image's affine.

What the released models were trained on: the embedded datasets this package generates, at
the default preset's grid - Platelet-EM-like EM sections of 256x256 and PhC-U373-like
phase-contrast frames of 192x256 pixels (2D; nets trained on 128x128 crops), Brain-MRI-like T1
volumes of 80x96x80 voxels at 2 mm, RAS (nets trained on 48x56x48 crops), intensities in [0, 1].
Generated images, not real scans or micrographs; the release's manifest.json says it per model.
A network carries only as far as your images resemble those: the same modality and contrast,
voxel size and orientation, deformations of the same size. It registers in one pass but cannot
adapt. For images unlike its training data (another modality or microscope, another voxel size,
larger deformations) or when the overview shows a poor fit, --method optimise (the metric
optimised for this pair from the identity: no training data assumed, slower) or
network+optimise (the network's prediction refined for this pair) is the safer choice.

Intensities, as in training: the nets saw images in [0, 1]. --intensity auto leaves an image
in [0, 1] as it is, divides 8-bit images (0..255) by 256 and maps any other image to [0, 1] by
its minimum and its 99.9th percentile (clipped); none uses the stored values.
Size: any; each side is padded (edge values) to a multiple of 8 and the result cropped back, no
resampling. The voxel size is not adapted unless --resample MM (2 for the brain nets): both
images are resampled to that spacing and the displacement is mapped back to their grid.
"""


# ----------------------------------------------------------------------------- argument types


def _argument_type(parse: Callable, check: Callable, rule: str) -> Callable:
    """An argparse type: ``check(parse(text))``; if either raises a ValueError, argparse exits
    with "argument --NAME: must be <rule>, got '<text>'" (exit 2), before any handler runs."""

    def convert(text: str):
        try:
            return check(parse(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None

    return convert


def _check_noise(noise: float) -> float:
    from .data.series import check_noise  # the embedded generators' rule (numpy: import late)

    return check_noise(noise)


_positive_int = _argument_type(int, check_positive, "a whole number >= 1")
_seed = _argument_type(int, check_seed, f"a whole number from 0 to {MAX_SEED}")
_lam = _argument_type(float, check_lambda, "a finite number >= 0 (λ of Eq. 1)")
_noise = _argument_type(float, _check_noise, "a finite number >= 0 (0 = clean)")


def _check_positive_float(value: float) -> float:
    if not (value > 0 and value < float("inf")):
        raise ValueError(value)
    return value


_positive_float = _argument_type(float, _check_positive_float, "a finite number > 0")


class _DistinctLambdas(argparse.Action):
    """``--grid``: λ values that differ as run folder names (``lam_<λ:g>``, one run each)."""

    def __call__(self, parser, namespace, values, option_string=None):
        names = [f"{lam:g}" for lam in values]
        twice = sorted({name for name in names if names.count(name) > 1}, key=names.index)
        if twice:
            raise argparse.ArgumentError(
                self, f"λ given twice (one run folder lam_<λ> each): {', '.join(twice)}"
            )
        setattr(namespace, self.dest, values)


def _add_run_arguments(parser: argparse.ArgumentParser, dataset: bool = True) -> None:
    if dataset:
        parser.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    parser.add_argument("--preset", default="quick", choices=PRESETS)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--data", default=None,
                        help="dataset folder (or a folder holding <dataset>/); default: the "
                        "embedded dataset, generated in data/")  # fmt: skip
    parser.add_argument("--out", default=None, help="results root (default results/<preset>)")
    parser.add_argument("--seed", type=_seed, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deepsim_edu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="register a generated 2D pair; print Dice, save a picture"
    )
    demo.add_argument("--out", default="results/demo", help="folder for registration.png")
    demo.add_argument("--metric", default="ncc", choices=["mse", "ncc"])
    demo.add_argument("--lam", type=_lam, default=1.0, help="weight λ of the diffusion regulariser")
    demo.add_argument("--steps", type=_positive_int, default=300)
    demo.add_argument("--seed", type=_seed, default=0)
    demo.set_defaults(handler=_demo)

    data = commands.add_parser(
        "data", help="make (embedded) or check (PATH) a dataset; one line per split"
    )
    data.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    data.add_argument(
        "--source",
        default="embedded",
        help="'embedded' (generate offline) or the PATH of a dataset folder to check",
    )
    data.add_argument("--data", default="data", help="folder that holds the embedded datasets")
    data.add_argument("--seed", type=_seed, default=0)
    data.add_argument(
        "--noise",
        type=_noise,
        default=None,
        help="noise level of the embedded generator (0 = the easy, clean case)",
    )
    data.set_defaults(handler=_data)

    seg = commands.add_parser("train-seg", help="train the segmentation net (DeepSim's extractor)")
    _add_run_arguments(seg)
    seg.set_defaults(handler=_train_seg)

    train = commands.add_parser("train", help="train + test one registration run")
    _add_run_arguments(train)
    train.add_argument("--metric", required=True, choices=METRICS)
    train.add_argument("--lam", type=_lam, default=None, help="λ of Eq. 1 (default: the preset's)")
    train.add_argument("--vgg", default=None, help="VGG16 weights file (default: "
                       "features.vgg_weights_path(), data/vgg16_conv.pt)")  # fmt: skip
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a trained run, one CSV row per pair")
    _add_run_arguments(evaluate, dataset=False)
    evaluate.add_argument("--dataset", default=None, choices=DATASET_NAMES,
                          help="needed without --run (default: the run's)")  # fmt: skip
    evaluate.add_argument("--metric", default=None, choices=METRICS,
                          help="needed without --run (default: the run's)")  # fmt: skip
    evaluate.add_argument("--split", default="test", choices=["val", "test"])
    evaluate.add_argument("--run", default=None,
                          help="run folder (default <out>/<dataset>/<metric>)")  # fmt: skip
    evaluate.set_defaults(handler=_evaluate)

    sweep = commands.add_parser("sweep-lambda", help="pick λ on the validation set (log2 grid)")
    _add_run_arguments(sweep)
    sweep.add_argument("--metric", required=True, choices=METRICS)
    sweep.add_argument("--grid", type=_lam, nargs="+", default=None, action=_DistinctLambdas,
                       help="λ values (default: the paper's λ × 2^k, k = -2..2)")  # fmt: skip
    sweep.add_argument("--vgg", default=None)
    sweep.set_defaults(handler=_sweep)

    experiment = commands.add_parser("experiment", help="the whole grid: datasets × metrics")
    _add_run_arguments(experiment, dataset=False)
    experiment.add_argument(
        "--datasets", nargs="+", default=list(DATASET_NAMES), choices=DATASET_NAMES
    )
    experiment.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    experiment.add_argument("--vgg", default=None)
    experiment.add_argument("--jobs", type=_positive_int, default=1,
                            help="runs trained side by side (processes of 1 thread)")  # fmt: skip
    experiment.set_defaults(handler=_experiment)

    table = commands.add_parser("table", help="the paper's Table 1 (test Dice, marks) from results")
    table.add_argument("--results", required=True, help="results root, e.g. results/quick")
    table.add_argument("--format", default="md", choices=["md", "latex", "csv"])
    table.add_argument(
        "--convention",
        default="foreground",
        choices=["foreground", "paper"],
        help="Dice over the foreground classes (ours) or all classes (the paper's code)",
    )
    table.add_argument("--no-folding", dest="folding", action="store_false",
                       help="leave out the second table (folding fraction per metric)")  # fmt: skip
    table.set_defaults(handler=_table)

    figures = commands.add_parser("figures", help="the paper's figures from results, as PNGs")
    figures.add_argument("--results", required=True, help="results root, e.g. results/quick")
    figures.add_argument("--out", required=True, help="folder for the PNG files")
    figures.add_argument("--data", default="data", help="folder holding <dataset>/")
    figures.set_defaults(handler=_figures)

    claims = commands.add_parser(
        "claims", help="test the paper's four claims on a results root (+ the noise sweep)"
    )
    claims.add_argument("--results", required=True, help="results root, e.g. results/default")
    claims.add_argument("--data", default=None, help="folder holding <dataset>/ (default data/)")
    claims.add_argument("--device", default="cpu", help="cpu | cuda")
    claims.add_argument("--sweep-dataset", default="platelet-em", choices=DATASET_NAMES,
                        help="dataset of the added-noise sweep (σ 0 … 0.5)")  # fmt: skip
    claims.set_defaults(handler=_claims)

    book = commands.add_parser(
        "book", help="run the experiment if needed, execute every chapter, build the HTML"
    )
    book.add_argument("--preset", default="quick", choices=PRESETS)
    book.add_argument("--device", default="cpu", help="cpu | cuda")
    book.add_argument("--data", default="data", help="folder holding <dataset>/")
    book.add_argument("--results", default=None, help="results root (default results/<preset>)")
    book.add_argument("--build", default="_build", help="build folder")
    book.add_argument("--jobs", type=_positive_int, default=1,
                      help="experiment runs and chapters executed side by side")  # fmt: skip
    book.set_defaults(handler=_book)

    release = commands.add_parser(
        "release", help="pack a results root's trained nets into a release folder (manifest)"
    )
    release.add_argument("--runs", required=True, help="results root, e.g. results/default")
    release.add_argument("--out", required=True, help="release folder, e.g. models/default "
                         "(replaced whole once the new one is complete)")  # fmt: skip
    release.add_argument("--data", default=None, help="folder holding the runs' <dataset>/ "
                         "(default: the embedded datasets in data/)")  # fmt: skip
    release.add_argument("--device", default="cpu", help="cpu | cuda (re-evaluation)")
    release.add_argument("--commit", default=None, help="commit the runs were trained at "
                         "(default: the results root's provenance.json)")  # fmt: skip
    release.add_argument("--max-mb", type=_positive_float, default=15.0,
                         help="refuse a release folder larger than this (MB)")  # fmt: skip
    release.set_defaults(handler=_release)

    reg = commands.add_parser(
        "register", help="register your own pair of images (NIfTI, PNG, TIFF) with a model",
        description=REGISTER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    reg.add_argument("--fixed", required=True, help="fixed image J")
    reg.add_argument("--moving", required=True, help="moving image I")
    reg.add_argument("--out", required=True, help="folder for the outputs")
    reg.add_argument("--model", required=True, help="DATASET/METRIC of the release (e.g. "
                     "platelet-em/deepsim), or a run folder holding checkpoint.pt")  # fmt: skip
    reg.add_argument("--release", default="default",
                     help="release name under models/, or its folder")  # fmt: skip
    reg.add_argument("--moving-labels", default=None, help="label map of the moving image")
    reg.add_argument("--fixed-labels", default=None, help="label map of the fixed image")
    reg.add_argument("--method", default="network", choices=METHODS)
    reg.add_argument("--metric", default=None, choices=METRICS,
                     help="similarity of the optimise methods (default: the model's)")  # fmt: skip
    reg.add_argument("--intensity", default="auto", choices=INTENSITY_RULES)
    reg.add_argument("--resample", type=_positive_float, nargs="+", default=None, metavar="MM",
                     help="resample to this voxel size first (1 value or 1 per axis)")  # fmt: skip
    reg.add_argument("--device", default="cpu", help="cpu | cuda")
    reg.add_argument("--iterations", type=_positive_int, default=None,
                     help="optimisation steps per pyramid level (default 100)")  # fmt: skip
    reg.add_argument("--seed", type=_seed, default=0, help="seed of the optimisation")
    reg.set_defaults(handler=_register)
    return parser


# ----------------------------------------------------------------------------- main

# errors of making or writing a file (or a folder): a full disk or quota, a read-only file
# system, a file too large, a file where a folder should be, a name that exists
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.ENOTDIR,
                 errno.EEXIST}  # fmt: skip


def _os_error_line(exc: OSError) -> str:
    """One line for an OSError: ``error: cannot write <path>: <reason>`` when it failed to make
    or write ``path`` (a write errno, or a path that does not exist yet: it was being made),
    else ``error: <path>: <reason>``; this package's own FileNotFoundErrors (a message, no
    path) as they are."""
    if exc.filename is None:
        return f"error: {exc.strerror or exc}"
    path = os.fsdecode(exc.filename)
    reason = exc.strerror or str(exc)
    if exc.errno in _WRITE_ERRNOS or (exc.errno in (errno.EACCES, errno.EPERM)
                                      and not os.path.isfile(path)):  # fmt: skip
        return f"error: cannot write {path}: {reason}"
    return f"error: {path}: {reason}"


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status of the module docstring (0, 2, 130)."""
    args = build_parser().parse_args(argv)  # a bad argument: SystemExit(2), nothing written
    try:
        args.handler(args)
    except KeyboardInterrupt:
        pass  # reported below, once the stopped frames (and a progress bar) are closed
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment: an impossible --out, a full disk, no permission
        print(_os_error_line(exc), file=sys.stderr)
        return 2
    else:
        return 0
    then = ("the run resumes from its last finished epoch with the same command"
            if args.command in RESUMABLE else "no file was left half-written")  # fmt: skip
    print(f"interrupted: {then}", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
