"""Released models: the trained nets of a results root packed into one small folder, loaded back
with their checksums verified.

A release folder (``models/<name>``; ``build_release``, or ``python -m deepsim_edu release``)::

    manifest.json                what is in it, below
    README.md                    the same for a reader: what the nets are and saw, how to load
    <dataset>/<metric>.pt.gz     a registration U-Net: its state_dict only (float16 or float32),
                                 a ``torch.save`` file, gzipped (about 10 % smaller)
    <dataset>/<metric>.json      the run's config (the one its checkpoint recorded)
    <dataset>/segmentation.pt.gz DeepSim's feature extractor of the dataset (the segmentation
    <dataset>/segmentation.json  U-Net of ``train_segmentation``) and its config

``manifest.json``::

    {"format": 1, "preset", "commit", "created", "torch", "tolerance", "files_bytes",
     "trained_on": one paragraph: what every net saw, and what that means for other images,
     "datasets": {dataset: {"trained_on", "source", "generator", "grid", "spacing", "classes",
                            "crops", "test_fingerprint"}},
     "models": {"<dataset>/<metric>" or "<dataset>/segmentation": {
         "kind", "dataset", "metric", "weights", "config", "sha256": {file: hex digest},
         "dtype": "float16" | "float32", "max_dice_change_float16", "released_test_dice_mean",
         "lam", "preset", "test_dice_mean" (the run's test_results.csv)  (registration)
         "test_pairs": [{"moving", "fixed", "dice", "folding_fraction"}, ...]  (registration)
         "test_cases": [{"case", "dice"}, ...]                                   (segmentation)}},
     "missing": ["<dataset>/<metric>: why", ...]}

Precision: a net is stored in float16 (half the bytes) when re-evaluating it with its weights
rounded to float16 changes no per-pair (per-case) test Dice by more than ``tolerance`` (1e-3),
else in float32; ``dtype`` and ``max_dice_change_float16`` say which and why. ``test_pairs``
holds the per-pair test Dice of the stored weights on the dataset the release was built from
(``test_fingerprint``: a sha256 of its test images and labels), which ``evaluate_released``
reproduces. Before that, a fresh float32 evaluation must reproduce the run's own
``test_results.csv`` to ``tolerance``: otherwise the data are not those the run was tested on,
and the release is refused.

Loading (``load``, ``load_extractor``) verifies the sha256 of every file it reads; a changed or
corrupt file is a ValueError naming it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .config import METRICS, check_metric
from .data.embedded import resolve_dataset
from .data.layout import DATASET_NAMES, atomic_write_bytes, check_dataset_name, staging_folder
from .data.pairs import CaseStore, PairDataset
from .evaluate import dice_per_class, evaluate_pairs, evaluate_run, mean_dice
from .runs import (
    CONFIG,
    checkpoint_path,
    load_checkpoint,
    load_run_results,
    results_file,
    results_folder,
    run_folder,
    save_checkpoint,
    segmentation_folder,
    write_json,
)
from .unet import UNet, registration_unet, segmentation_unet

FORMAT = 1
MANIFEST = "manifest.json"
README = "README.md"
RELEASES = Path(__file__).resolve().parent.parent / "models"  # the repository's models/
DEFAULT_RELEASE = "default"
TOLERANCE = 1e-3  # the largest change of a per-pair test Dice that float16 weights may cause
MAX_MB = 15.0  # the size limit of a release folder (MB = 10^6 bytes)
SEGMENTATION = "segmentation"

# ----------------------------------------------------------------------------- files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as the bytes of a ``torch.save`` file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """The bytes of a release's weights file: ``state_bytes`` gzipped (the same state always
    gives the same bytes: no time stamp). Read back with ``read_weights``."""
    return gzip.compress(state_bytes(state), compresslevel=9, mtime=0)


def read_weights(data: bytes, where: Path) -> dict[str, torch.Tensor]:
    """The state dict of a weights file's bytes (``weights_bytes``); ValueError naming
    ``where`` when they are not one."""
    try:
        state = torch.load(io.BytesIO(gzip.decompress(data)), map_location="cpu",
                           weights_only=True)  # fmt: skip
    except Exception as exc:  # gzip or torch: several types for a broken file
        raise ValueError(f"{where}: not a readable gzipped state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{where}: not a state dict but {type(state).__name__}")
    return state


def to_float16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every floating-point tensor rounded to float16 (BatchNorm's integer counter kept)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def to_float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every floating-point tensor as float32: how a stored state is loaded into a net."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def build_net(config: dict, state: dict[str, torch.Tensor], device: str = "cpu") -> UNet:
    """The U-Net of a run config (``kind`` registration or segmentation) with ``state`` loaded
    as float32, in eval mode; a segmentation net (a feature extractor) is frozen."""
    if config.get("kind") == "registration":
        net = registration_unet(config["ndim"], config["encoder_channels"],
                                dropout=config["dropout"])  # fmt: skip
    elif config.get("kind") == SEGMENTATION:
        net = segmentation_unet(config["ndim"], len(config["classes"]),
                                config["encoder_channels"], dropout=config["dropout"])  # fmt: skip
    else:
        raise ValueError(f"unknown kind of net {config.get('kind')!r} in a run config")
    net.load_state_dict(to_float32(state))
    net.to(device).eval()
    if config["kind"] == SEGMENTATION:
        net.requires_grad_(False)
    return net


# ----------------------------------------------------------------------------- evaluation


def registration_scores(net: UNet, pairs: PairDataset, device: str = "cpu") -> list[dict]:
    """Per test pair: ``moving``, ``fixed``, foreground ``dice`` and ``folding_fraction`` of a
    registration net (``evaluate.evaluate_pairs``)."""
    keep = ("moving", "fixed", "dice", "folding_fraction")
    return [{k: row[k] for k in keep} for row in evaluate_pairs(net, pairs, device)]


@torch.no_grad()
def segmentation_scores(net: UNet, store: CaseStore, device: str = "cpu") -> list[dict]:
    """Per test case: ``case`` and the foreground-mean ``dice`` of the segmentation net's
    prediction (arg max of the logits) against the case's labels."""
    rows = []
    for case in store.info.splits["test"]:
        image, labels = store[case]  # (1, *spatial) each
        predicted = net(image[None].to(device)).argmax(1).cpu()  # (1, *spatial)
        per_class = dice_per_class(predicted, labels, store.info.num_classes)
        rows.append({"case": case, "dice": mean_dice(per_class).item()})
    return rows


def max_change(a: list[dict], b: list[dict]) -> float:
    """The largest |Dice_a − Dice_b| over rows of the same pairs (or cases), in order."""
    return max(abs(x["dice"] - y["dice"]) for x, y in zip(a, b, strict=True))


def choose_precision(
    state: dict[str, torch.Tensor], score: Callable[[dict], list[dict]], tolerance: float,
    full: list[dict] | None = None,
) -> tuple[dict[str, torch.Tensor], str, float, list[dict]]:  # fmt: skip
    """float16 weights if they change no test Dice by more than ``tolerance``, else float32.

    ``score(state)`` evaluates a net with these weights (loaded as float32) and returns rows
    with a ``dice``. Returns (the state to store, its dtype name, the largest change float16
    made, the rows of the stored state). ``full``: the rows of the float32 state, if known.
    """
    full = score(to_float32(state)) if full is None else full
    half = to_float16(state)
    rows = score(half)
    change = max_change(full, rows)
    if change <= tolerance:
        return half, "float16", change, rows
    return to_float32(state), "float32", change, full


def test_fingerprint(store: CaseStore) -> str:
    """sha256 of the test split as the nets see it: every test case id (and the atlas), its
    image (float32) and labels (int64), in split order."""
    digest = hashlib.sha256()
    cases = list(store.info.splits["test"]) + ([store.info.atlas] if store.info.atlas else [])
    for case in cases:
        image, labels = store[case]
        digest.update(case.encode() + b"\0")
        digest.update(image.numpy().astype(np.float32).tobytes())
        digest.update(labels.numpy().astype(np.int64).tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- building


def _run_problem(run: Path) -> str | None:
    """Why a registration run cannot be released (None: it can)."""
    if not checkpoint_path(run).is_file():
        return f"no {checkpoint_path(run)}"
    if not load_checkpoint(checkpoint_path(run)).get("finished", False):
        return f"training not finished ({checkpoint_path(run)}); run its train command again"
    if not results_file(run).is_file():
        return f"not evaluated (no {results_file(run)}); run `python -m deepsim_edu evaluate " \
               f"--run {run}`"  # fmt: skip
    return None


def find_models(runs: str | Path) -> tuple[dict[str, Path], list[str]]:
    """``({"<dataset>/<metric>" or "<dataset>/segmentation": folder}, missing)`` of a results
    root: the 3 feature extractors and 15 registration nets that can be released (a finished,
    evaluated run; a finished extractor), and one line per missing one saying why."""
    root = results_folder(runs)
    found, missing = {}, []
    for dataset in DATASET_NAMES:
        seg = segmentation_folder(root, dataset)
        if checkpoint_path(seg).is_file() and load_checkpoint(checkpoint_path(seg)).get("finished"):
            found[f"{dataset}/{SEGMENTATION}"] = seg
        else:
            missing.append(f"{dataset}/{SEGMENTATION}: no finished {checkpoint_path(seg)}")
        for metric in METRICS:
            run = run_folder(root, dataset, metric)
            problem = _run_problem(run)
            if problem is None:
                found[f"{dataset}/{metric}"] = run
            else:
                missing.append(f"{dataset}/{metric}: {problem}")
    if not any(key.split("/")[1] != SEGMENTATION for key in found):
        raise FileNotFoundError(f"{root}: no finished, evaluated registration run to release; "
                                "run `python -m deepsim_edu experiment` first")  # fmt: skip
    return found, missing


def _csv_scores(run: Path) -> list[dict]:
    table = load_run_results(run)
    columns = zip(table["moving"], table["fixed"], table["dice"], strict=True)
    return [{"moving": str(m), "fixed": str(f), "dice": float(d)} for m, f, d in columns]


def _check_reproduces(run: Path, fresh: list[dict], tolerance: float) -> None:
    """A fresh float32 evaluation must give the run's test_results.csv, pair for pair."""
    recorded = _csv_scores(run)
    pairs = [(r["moving"], r["fixed"]) for r in recorded]
    if pairs != [(r["moving"], r["fixed"]) for r in fresh]:
        raise ValueError(f"{results_file(run)}: its test pairs are not those of the data given; "
                         "release with the data the run was tested on (--data)")  # fmt: skip
    change = max_change(recorded, fresh)
    if change > tolerance:
        raise ValueError(
            f"{results_file(run)}: a fresh evaluation on the data given differs from it by up to "
            f"{change:.4f} Dice (> {tolerance:g}); the data are not those the run was tested on "
            "(release with the run's data, --data), or evaluate the run again"
        )


def _dataset_entry(dataset: str, store: CaseStore, data_root: Path, crops: list) -> dict:
    info = store.info
    grid = list(store[info.splits["test"][0]][0].shape[1:])
    spacing = [float(s) for s in info.spacing]
    generator = data_root / "generator.json"
    source = info.source or f"the dataset folder {data_root.name}"
    crop_text = " or ".join(f"random {tuple(c)} crops" if c else "whole images" for c in crops)
    return {
        "trained_on": (
            f"{source}. Images {tuple(grid)} voxels at spacing {tuple(spacing)}, "
            "intensities as stored (the embedded data lie in [0, 1]); the registration nets "
            f"were trained on {crop_text} of the training split and tested on the whole test "
            "images."
        ),
        "source": info.source,
        "generator": json.loads(generator.read_text()) if generator.is_file() else None,
        "grid": grid,
        "spacing": spacing,
        "classes": list(info.classes),
        "crops": crops,
        "test_fingerprint": test_fingerprint(store),
    }


TRAINED_ON = (
    "Every net of this release was trained on one dataset of the results root it was built "
    "from (see datasets.<name>.trained_on: for the embedded data, images generated by this "
    "package at the preset's grid, never real scans or micrographs). A registration network "
    "carries only as far as an image resembles its training data: the same modality and "
    "contrast, the same voxel size, orientation and field of view, deformations of the same "
    "size. For other images per-pair optimisation (`register --method optimise`, or "
    "`network+optimise` starting from the network's prediction) is the safer choice: it assumes "
    "no training data, only the metric."
)


def _release_one(
    key: str, folder: Path, stores: dict, staging: Path, tolerance: float, device: str
) -> dict:
    """Write one net's weights and config into ``staging``; its manifest entry."""
    dataset, name = key.split("/")
    checkpoint = load_checkpoint(checkpoint_path(folder))
    config, state = checkpoint["config"], checkpoint["model"]
    store = stores[dataset]
    if config.get("dataset") != dataset:
        raise ValueError(f"{checkpoint_path(folder)}: a net of {config.get('dataset')!r} in the "
                         f"folder of {dataset!r}")  # fmt: skip
    pairs = None if name == SEGMENTATION else PairDataset(store, "test")

    def score(weights: dict) -> list[dict]:  # per-case (extractor) or per-pair test Dice
        net = build_net(config, weights, device)
        if pairs is None:
            return segmentation_scores(net, store, device)
        return registration_scores(net, pairs, device)

    full = score(to_float32(state))
    if pairs is not None:
        _check_reproduces(folder, full, tolerance)
    stored, dtype, change, rows = choose_precision(state, score, tolerance, full)
    weights, config_bytes = weights_bytes(stored), (json.dumps(config, indent=2) + "\n").encode()
    files = {f"{key}.pt.gz": weights, f"{key}.json": config_bytes}
    for rel, data in files.items():
        atomic_write_bytes(staging / rel, data)
    entry = {
        "kind": config["kind"],
        "dataset": dataset,
        "metric": None if name == SEGMENTATION else name,
        "weights": f"{key}.pt.gz",
        "config": f"{key}.json",
        "sha256": {rel: sha256(data) for rel, data in files.items()},
        "dtype": dtype,
        "max_dice_change_float16": change,
        "released_test_dice_mean": float(np.mean([r["dice"] for r in rows])),
    }
    if name == SEGMENTATION:
        return {**entry, "test_cases": rows}
    recorded = _csv_scores(folder)
    return {**entry, "lam": config.get("lam"), "preset": config.get("preset"),
            "test_dice_mean": float(np.mean([r["dice"] for r in recorded])),
            "test_pairs": rows}  # fmt: skip


def _run_commit(root: Path) -> str:
    """The commit a results root was trained at: its provenance.json's, else 'unknown'."""
    provenance = root / "provenance.json"
    if provenance.is_file():
        commit = json.loads(provenance.read_text()).get("commit")
        if commit:
            return str(commit)
    return "unknown"


def folder_bytes(folder: str | Path) -> int:
    """The total size of the files under ``folder``, in bytes."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def build_release(
    runs: str | Path, out: str | Path, data: str | Path | None = None, *, device: str = "cpu",
    commit: str | None = None, tolerance: float = TOLERANCE, max_mb: float = MAX_MB,
    log: Callable[[str], None] = print,
) -> dict:  # fmt: skip
    """Pack the nets of a results root into the release folder ``out``; returns the manifest.

    ``data``: the folder of the datasets the runs were trained and tested on (None: the
    embedded datasets in data/, generated if missing). Every net is re-evaluated on its test
    split (see the module docstring: float16 or float32, the check against
    ``test_results.csv``). ``commit``: the commit the runs were trained at (default: the
    results root's provenance.json, else "unknown"). The folder is written aside and swapped
    in only once complete and within ``max_mb`` MB, so a failed release leaves ``out`` as it
    was and a new one replaces an old one whole. ``log`` gets one line per net and per
    missing one.
    """
    if not (isinstance(tolerance, int | float) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    root, out = results_folder(runs), Path(out)
    found, missing = find_models(root)
    for line in missing:
        log(f"missing: {line}")
    stores, datasets = {}, {}
    for dataset in dict.fromkeys(key.split("/")[0] for key in found):
        data_root = resolve_dataset(dataset, data)
        stores[dataset] = CaseStore(data_root)
        stores[dataset].check(keep=("test",))
        runs_of = [f for k, f in found.items() if k.startswith(f"{dataset}/")
                   and not k.endswith(SEGMENTATION)]  # fmt: skip
        crops = {json.dumps(load_checkpoint(checkpoint_path(f))["config"].get("crop"))
                 for f in runs_of}  # fmt: skip
        datasets[dataset] = _dataset_entry(dataset, stores[dataset], data_root,
                                           [json.loads(c) for c in sorted(crops)])  # fmt: skip
    presets = {load_checkpoint(checkpoint_path(f))["config"].get("preset") for f in found.values()}
    manifest = {
        "format": FORMAT,
        "preset": presets.pop() if len(presets) == 1 else sorted(map(str, presets)),
        "commit": commit or _run_commit(root),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "tolerance": tolerance,
        "trained_on": TRAINED_ON,
        "datasets": datasets,
        "models": {},
        "missing": missing,
    }
    with staging_folder(out) as staging:
        for key, folder in found.items():
            entry = _release_one(key, folder, stores, staging, tolerance, device)
            manifest["models"][key] = entry
            log(f"{key}: {entry['dtype']} (float16 changes a test Dice by up to "
                f"{entry['max_dice_change_float16']:.1e}), test Dice "
                f"{entry['released_test_dice_mean']:.4f}")  # fmt: skip
        manifest["files_bytes"] = folder_bytes(staging)  # the weights and configs
        atomic_write_bytes(staging / MANIFEST, _manifest_bytes(manifest))
        atomic_write_bytes(staging / README, release_readme(manifest).encode())
        total = folder_bytes(staging)
        if total > max_mb * 1e6:
            raise ValueError(f"the release would be {total / 1e6:.2f} MB, over the limit of "
                             f"{max_mb:g} MB; {out} left as it was")  # fmt: skip
    return manifest


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1) + "\n").encode()


def release_readme(manifest: dict) -> str:
    """A release folder's README.md, from its manifest: what the nets are, what they were
    trained on, how to load and use them."""
    lines = [
        f"# Released models (preset {manifest['preset']}, commit {manifest['commit']})", "",
        manifest["trained_on"], "",
        *[f"* **{name}**: {about['trained_on']}" for name, about in manifest["datasets"].items()],
        "", "| model | dtype | float16 changes a test Dice by | test Dice (run) | test Dice "
        "(released weights) |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for key, entry in manifest["models"].items():
        run = entry.get("test_dice_mean")
        lines.append(f"| {key} | {entry['dtype']} | {entry['max_dice_change_float16']:.1e} | "
                     f"{'' if run is None else f'{run:.4f}'} | "
                     f"{entry['released_test_dice_mean']:.4f} |")  # fmt: skip
    lines += [
        "", f"float16 where it changes no per-pair (per-case) test Dice by more than "
        f"{manifest['tolerance']:g}, else float32. Extractors (`<dataset>/segmentation`): the "
        "test Dice of their segmentation.",
        *([f"Missing: {', '.join(m.split(':')[0] for m in manifest['missing'])}."]
          if manifest["missing"] else []),
        "", "```python", "from deepsim_edu import pretrained",
        'net, config = pretrained.load("platelet-em", "deepsim", release="<this folder>")',
        'extractor = pretrained.load_extractor("platelet-em", release="<this folder>")', "```",
        "", "`python -m deepsim_edu register --model DATASET/METRIC --fixed F --moving M --out DIR`"
        " registers your own pair (`--help` says when `--method optimise` is the safer choice).",
        "Every file's sha256 is in manifest.json; loading checks it.", "",
    ]  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------- loading


def release_folder(release: str | Path = DEFAULT_RELEASE) -> Path:
    """The folder of a release: ``release`` itself when it is a folder, else
    ``<repository>/models/<release>``; FileNotFoundError when neither holds a manifest."""
    for folder in (Path(release), RELEASES / str(release)):
        if (folder / MANIFEST).is_file():
            return folder
    raise FileNotFoundError(
        f"no release {str(release)!r}: neither {Path(release) / MANIFEST} nor "
        f"{RELEASES / str(release) / MANIFEST} exists; build one with `python -m deepsim_edu "
        "release --runs RESULTS --out models/NAME`"
    )


def read_manifest(release: str | Path = DEFAULT_RELEASE) -> dict:
    """The ``manifest.json`` of a release; errors name the file."""
    path = release_folder(release) / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON release manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a release manifest of format {FORMAT}")
    return manifest


def model_entry(manifest: dict, dataset: str, metric: str, release: str | Path = "") -> dict:
    """The manifest entry of ``<dataset>/<metric>`` (``metric`` may be "segmentation")."""
    check_dataset_name(dataset)
    if metric != SEGMENTATION:
        check_metric(metric)
    key = f"{dataset}/{metric}"
    if key not in manifest["models"]:
        why = next((line for line in manifest.get("missing", []) if line.startswith(key)), None)
        raise FileNotFoundError(
            f"release {str(release)!r} holds no {key}"
            + (f" (at release time: {why.split(': ', 1)[1]})" if why else "")
            + f"; it holds {', '.join(manifest['models'])}"
        )
    return manifest["models"][key]


def verified_bytes(folder: Path, entry: dict, name: str) -> bytes:
    """The bytes of the file ``entry[name]`` of a release, its sha256 checked against the
    manifest's; ValueError naming the file when it differs (corrupt or changed)."""
    rel = entry[name]
    path = folder / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the release (its manifest lists it)")
    data = path.read_bytes()
    if sha256(data) != entry["sha256"][rel]:
        raise ValueError(
            f"{path}: sha256 differs from the one in {folder / MANIFEST}: the file is corrupt or "
            "was changed; restore it (git checkout) or build the release again"
        )
    return data


def _load_verified(folder: Path, entry: dict, device: str) -> tuple[UNet, dict]:
    config = json.loads(verified_bytes(folder, entry, "config"))
    state = read_weights(verified_bytes(folder, entry, "weights"), folder / entry["weights"])
    return build_net(config, state, device), config


def load(
    dataset: str, metric: str, release: str | Path = DEFAULT_RELEASE, device: str = "cpu"
) -> tuple[UNet, dict]:
    """A released registration net of ``dataset`` × ``metric``, in eval mode, and its run
    config (as ``runs.load_registration_net`` returns them); checksums verified.

    ``deepsim_edu.pretrained.load("platelet-em", "deepsim")`` loads it from ``models/default``.
    """
    if metric == SEGMENTATION:
        raise ValueError("the feature extractor is load_extractor(dataset), not load(..., "
                         "'segmentation')")  # fmt: skip
    folder = release_folder(release)
    entry = model_entry(read_manifest(folder), dataset, metric, release)
    return _load_verified(folder, entry, device)


def load_extractor(
    dataset: str, release: str | Path = DEFAULT_RELEASE, device: str = "cpu"
) -> UNet:
    """The released feature extractor (segmentation U-Net) of ``dataset``, frozen, in eval mode
    (as ``features.load_segmentation_extractor`` returns it); checksums verified."""
    folder = release_folder(release)
    entry = model_entry(read_manifest(folder), dataset, SEGMENTATION, release)
    return _load_verified(folder, entry, device)[0]


def verify_release(release: str | Path = DEFAULT_RELEASE) -> list[str]:
    """Check the sha256 of every file of a release; the keys of its models (ValueError naming
    the first file at fault)."""
    folder = release_folder(release)
    manifest = read_manifest(folder)
    for entry in manifest["models"].values():
        for name in ("weights", "config"):
            verified_bytes(folder, entry, name)
    return list(manifest["models"])


def evaluate_released(
    dataset: str, metric: str, release: str | Path = DEFAULT_RELEASE,
    data: str | Path | None = None, device: str = "cpu",
) -> list[dict]:  # fmt: skip
    """Re-evaluate a released net on the test split of ``data`` (None: the embedded dataset):
    rows as the manifest's ``test_pairs`` (``test_cases`` for ``metric="segmentation"``).
    ValueError when the test data are not those of the release (its ``test_fingerprint``)."""
    folder = release_folder(release)
    manifest = read_manifest(folder)
    entry = model_entry(manifest, dataset, metric, release)
    store = _release_test_data(manifest, dataset, data, release)
    net, _ = _load_verified(folder, entry, device)
    if metric == SEGMENTATION:
        return segmentation_scores(net, store, device)
    return registration_scores(net, PairDataset(store, "test"), device)


def _release_test_data(
    manifest: dict, dataset: str, data: str | Path | None, release: str | Path
) -> CaseStore:
    """The dataset of ``data`` (None: the embedded one); ValueError when its test split is not
    the one the release was built on (``test_fingerprint``)."""
    store = CaseStore(resolve_dataset(dataset, data))
    if test_fingerprint(store) != manifest["datasets"][dataset]["test_fingerprint"]:
        raise ValueError(
            f"the test split of {store.root} is not the one release {str(release)!r} was built "
            "on (test_fingerprint differs): the data generator changed since; build the release "
            "again from a run on the current data"
        )
    return store


def released_results_root(
    out: str | Path, release: str | Path = DEFAULT_RELEASE, data: str | Path | None = None,
    device: str = "cpu",
) -> Path:  # fmt: skip
    """A release laid out as a results root, its registration nets tested afresh; ``out``.

    Every released net becomes a run folder of ``out`` (``<dataset>/<metric>/`` and
    ``<dataset>/segmentation/``: ``config.json`` and a finished ``checkpoint.pt`` with float32
    weights, checksums verified on reading), and every registration net is evaluated on the
    test split of ``data`` (None: the embedded datasets) into ``test_results.csv``
    (``evaluate.evaluate_run``). The library's tables and figures then read the release as they
    read a trained run. A release has no training logs: convergence curves are not available.
    ValueError when a dataset's test split is not the release's.
    """
    folder, out = release_folder(release), Path(out)
    manifest = read_manifest(folder)
    datasets = dict.fromkeys(entry["dataset"] for entry in manifest["models"].values())
    stores = {d: _release_test_data(manifest, d, data, release) for d in datasets}
    for key, entry in manifest["models"].items():
        dataset, name = key.split("/")
        config = json.loads(verified_bytes(folder, entry, "config"))
        state = to_float32(read_weights(verified_bytes(folder, entry, "weights"),
                                        folder / entry["weights"]))  # fmt: skip
        run = segmentation_folder(out, dataset) if name == SEGMENTATION else \
            run_folder(out, dataset, name)  # fmt: skip
        write_json(run / CONFIG, config)
        save_checkpoint(checkpoint_path(run), {"config": config, "model": state, "finished": True})
        if name != SEGMENTATION:
            evaluate_run(run, stores[dataset].root, "test", device)
    return out


def released(release: str | Path = DEFAULT_RELEASE) -> dict[str, dict]:
    """``{"<dataset>/<metric>": manifest entry}`` of a release's registration nets."""
    models = read_manifest(release)["models"]
    return {key: entry for key, entry in models.items() if entry["kind"] == "registration"}


__all__ = [
    "DEFAULT_RELEASE", "MANIFEST", "build_release", "evaluate_released", "load",
    "load_extractor", "read_manifest", "release_folder", "released", "released_results_root",
    "verify_release",
]  # fmt: skip
