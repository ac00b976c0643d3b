"""Releases: built from tiny trained runs, loaded with their checksums verified, reproducing the
runs' per-pair test Dice; a committed release (models/default) reproduces its manifest."""

import gzip
import io
import json
import shutil

import pytest
import torch

from deepsim_edu import pretrained
from deepsim_edu.__main__ import main
from deepsim_edu.data.pairs import PairDataset
from deepsim_edu.evaluate import evaluate_pairs
from deepsim_edu.features import load_segmentation_extractor
from deepsim_edu.runs import (
    checkpoint_path,
    load_checkpoint,
    load_registration_net,
    load_results,
    load_run_results,
    results_file,
    run_folder,
    segmentation_folder,
)
from tests.tiny_runs import train_tiny_runs, write_discs

DATASET = "phc-u373"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(data folder, results root): the disc series and its extractor, MSE and DeepSim runs."""
    data = tmp_path_factory.mktemp("data")
    write_discs(data)
    root = train_tiny_runs(data, tmp_path_factory.mktemp("runs"))
    return data, root


@pytest.fixture(scope="module")
def release(runs, tmp_path_factory):
    data, root = runs
    out = tmp_path_factory.mktemp("models") / "tiny"
    lines = []
    manifest = pretrained.build_release(root, out, data, commit="abc123", log=lines.append)
    return out, manifest, lines


def test_release_holds_what_exists_and_names_what_is_missing(release):
    out, manifest, lines = release
    assert set(manifest["models"]) == {f"{DATASET}/mse", f"{DATASET}/deepsim",
                                       f"{DATASET}/segmentation"}  # fmt: skip
    # 3 datasets × (extractor + 5 metrics) = 18 nets, 3 of them here: 15 missing, each named
    assert len(manifest["missing"]) == 15
    assert any(line.startswith("missing: brain-mri/deepsim: no ") for line in lines)
    assert any(line.startswith(f"missing: {DATASET}/ncc: ") for line in lines)
    assert manifest["preset"] == "quick" and manifest["commit"] == "abc123"
    about = manifest["datasets"][DATASET]
    assert about["grid"] == [32, 32] and about["spacing"] == [1.0, 1.0]
    assert "trained on whole images of the training split" in about["trained_on"]
    assert "Images (32, 32) voxels at spacing (1.0, 1.0)" in about["trained_on"]
    assert "optimise" in manifest["trained_on"]
    on_disk = json.loads((out / pretrained.MANIFEST).read_text())
    assert on_disk == manifest
    readme = (out / pretrained.README).read_text()
    assert all(f"| {key} | {entry['dtype']} |" in readme
               for key, entry in manifest["models"].items())  # fmt: skip
    # state_dict only, in the manifest's dtype; its sha256 as recorded
    for key, entry in manifest["models"].items():
        with gzip.open(out / entry["weights"]) as file:
            state = torch.load(io.BytesIO(file.read()), weights_only=True)
        assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
        dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
        assert dtypes == {getattr(torch, entry["dtype"])}, key
        assert pretrained.sha256((out / entry["weights"]).read_bytes()) == \
            entry["sha256"][entry["weights"]]  # fmt: skip


def test_released_nets_reproduce_the_runs_per_pair_test_dice(runs, release):
    data, root = runs
    out, manifest, _ = release
    pairs = PairDataset(data / DATASET, "test")
    for metric in ("mse", "deepsim"):
        net, config = pretrained.load(DATASET, metric, release=out)
        assert config["metric"] == metric and not net.training
        rows = evaluate_pairs(net, pairs)
        recorded = load_run_results(run_folder(root, DATASET, metric))  # the run's own CSV
        assert [r["moving"] for r in rows] == list(recorded["moving"])
        for row, dice in zip(rows, recorded["dice"]):
            assert row["dice"] == pytest.approx(dice, abs=1e-3)
        entry = manifest["models"][f"{DATASET}/{metric}"]
        for row, listed in zip(rows, entry["test_pairs"], strict=True):
            assert (row["moving"], row["fixed"]) == (listed["moving"], listed["fixed"])
            assert row["dice"] == pytest.approx(listed["dice"], abs=1e-3)
        assert entry["test_dice_mean"] == pytest.approx(recorded["dice"].mean())


def test_released_extractor_is_the_trained_one(runs, release):
    data, root = runs
    out, manifest, _ = release
    released = pretrained.load_extractor(DATASET, release=out)
    original = load_segmentation_extractor(checkpoint_path(segmentation_folder(root, DATASET)))
    assert not any(p.requires_grad for p in released.parameters()) and not released.training
    image = PairDataset(data / DATASET, "test")[0]["moving"][None]
    with torch.no_grad():
        for a, b in zip(released.encode(image), original.encode(image), strict=True):
            tolerance = 2e-2 if manifest["models"][f"{DATASET}/segmentation"]["dtype"] == \
                "float16" else 1e-6  # fmt: skip
            assert torch.allclose(a, b, atol=tolerance * b.abs().max().item())
    rows = pretrained.evaluate_released(DATASET, "segmentation", out, data)
    listed = manifest["models"][f"{DATASET}/segmentation"]["test_cases"]
    assert [r["case"] for r in rows] == ["test_0", "test_1", "test_2"]
    for row, entry in zip(rows, listed, strict=True):
        assert row["dice"] == pytest.approx(entry["dice"], abs=1e-3)


def test_a_release_reads_as_a_results_root_tested_afresh(runs, release, tmp_path):
    """The release laid out as run folders: the library's tables read it, and its fresh
    test_results.csv are the trained runs' own (to the release tolerance)."""
    data, root = runs
    out, manifest, _ = release
    as_root = pretrained.released_results_root(tmp_path / "released", out, data)
    fresh = load_results(as_root)
    assert set(fresh["metric"]) == {"mse", "deepsim"}
    for metric in ("mse", "deepsim"):
        recorded = load_run_results(run_folder(root, DATASET, metric))
        ours = fresh[fresh["metric"] == metric].reset_index(drop=True)
        assert list(ours["moving"]) == list(recorded["moving"])
        assert ours["dice"].to_numpy() == pytest.approx(recorded["dice"].to_numpy(), abs=1e-3)
        net, config = load_registration_net(run_folder(as_root, DATASET, metric))
        assert config == pretrained.load(DATASET, metric, release=out)[1]
    extractor = checkpoint_path(segmentation_folder(as_root, DATASET))
    assert load_segmentation_extractor(extractor, DATASET, 2) is not None
    # data that are not the release's test split are refused before anything is written
    other = tmp_path / "other"
    write_discs(other, n=(4, 3, 4))  # one test frame more
    with pytest.raises(ValueError, match="test_fingerprint differs"):
        pretrained.released_results_root(tmp_path / "refused", out, other)
    assert not (tmp_path / "refused").exists()


def test_half_precision_only_when_the_dice_holds():
    state = {"w": torch.tensor([1.0001, 2.0]), "n": torch.tensor(3)}

    def score(drift):  # Dice of a fake net: off by ``drift`` with float16 weights
        def rows(weights):
            rounded = weights["w"].dtype == torch.float16
            return [{"dice": 0.5 + (drift if rounded else 0.0)}, {"dice": 0.7}]

        return rows

    stored, dtype, change, rows = pretrained.choose_precision(state, score(5e-4), 1e-3)
    assert dtype == "float16" and stored["w"].dtype == torch.float16
    assert stored["n"].dtype == torch.int64 and change == pytest.approx(5e-4)
    assert rows[0]["dice"] == pytest.approx(0.5005)
    stored, dtype, change, rows = pretrained.choose_precision(state, score(2e-3), 1e-3)
    assert dtype == "float32" and stored["w"].dtype == torch.float32
    assert change == pytest.approx(2e-3) and rows[0]["dice"] == 0.5


@pytest.mark.parametrize("name", ["weights", "config"])
def test_a_corrupt_file_is_named(release, tmp_path, name):
    out, manifest, _ = release
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    path = copy / manifest["models"][f"{DATASET}/mse"][name]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path}: sha256 differs"):
        pretrained.load(DATASET, "mse", release=copy)
    with pytest.raises(ValueError, match="sha256 differs"):
        pretrained.verify_release(copy)
    pretrained.load(DATASET, "deepsim", release=copy)  # the other nets still load


def test_missing_model_and_release_are_explained(release, tmp_path):
    out, _, _ = release
    with pytest.raises(FileNotFoundError, match="holds no phc-u373/ncc .*no .*checkpoint.pt"):
        pretrained.load(DATASET, "ncc", release=out)
    with pytest.raises(FileNotFoundError, match="no release"):
        pretrained.load(DATASET, "mse", release=tmp_path / "nothing")


def test_data_that_do_not_reproduce_the_csv_are_refused(runs, tmp_path):
    data, root = runs
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    csv = results_file(run_folder(copy, DATASET, "mse"))
    table = load_run_results(run_folder(copy, DATASET, "mse"))
    table["dice"] += 0.01
    table.to_csv(csv, index=False)
    with pytest.raises(ValueError, match=f"{csv}: a fresh evaluation .* differs"):
        pretrained.build_release(copy, tmp_path / "out", data, log=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_release_replaces_whole_and_refuses_oversize(runs, tmp_path, capsys):
    data, root = runs
    out = tmp_path / "release"
    out.mkdir()
    (out / "stale.pt").write_bytes(b"old")
    code = main(["release", "--runs", str(root), "--out", str(out), "--data", str(data)])
    assert code == 0
    printed = capsys.readouterr()
    assert "missing: brain-mri/mse" in printed.out
    assert "2 registration nets, 1 feature extractors" in printed.out
    assert not (out / "stale.pt").exists() and (out / pretrained.MANIFEST).is_file()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code = main(["release", "--runs", str(root), "--out", str(out), "--data", str(data),
                 "--max-mb", "0.01"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "over the limit of 0.01 MB" in err[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_an_unfinished_run_is_missing_not_released(runs, tmp_path):
    data, root = runs
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    path = checkpoint_path(run_folder(copy, DATASET, "deepsim"))
    checkpoint = load_checkpoint(path)
    checkpoint["finished"] = False
    torch.save(checkpoint, path)
    manifest = pretrained.build_release(copy, tmp_path / "out", data, log=lambda line: None)
    assert f"{DATASET}/deepsim" not in manifest["models"]
    assert any(line.startswith(f"{DATASET}/deepsim: training not finished")
               for line in manifest["missing"])  # fmt: skip


COMMITTED = pretrained.RELEASES / pretrained.DEFAULT_RELEASE


@pytest.mark.slow
@pytest.mark.skipif(not (COMMITTED / pretrained.MANIFEST).is_file(),
                    reason=f"no release committed yet ({COMMITTED} does not exist: the reference "
                    "run that produces it is still training)")  # fmt: skip
def test_committed_release_reproduces_its_manifest():
    """Checksums, size and the extractors' per-case test Dice; the fifteen registration nets'
    per-pair test Dice are checked on chapter 8's fresh evaluation of this release
    (``tests/test_book_full.py``), which the book build computes anyway."""
    manifest = pretrained.read_manifest(COMMITTED)
    assert pretrained.verify_release(COMMITTED)
    assert pretrained.folder_bytes(COMMITTED) <= pretrained.MAX_MB * 1e6
    extractors = [key for key in manifest["models"] if key.endswith(f"/{pretrained.SEGMENTATION}")]
    assert len(extractors) == 3, extractors
    for key in extractors:
        entry = manifest["models"][key]
        rows = pretrained.evaluate_released(key.split("/")[0], pretrained.SEGMENTATION, COMMITTED)
        listed = entry["test_cases"]
        assert len(rows) == len(listed), key
        for row, expected in zip(rows, listed, strict=True):
            assert row["dice"] == pytest.approx(expected["dice"], abs=1e-3), (key, row)
