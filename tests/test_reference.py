"""Reference results: small files copied, checkpoints left out, provenance written and found."""

import json
from pathlib import Path

import pytest

from deepsim_edu.reference import export_reference, find_reference


def test_export_copies_small_files_only_and_records_provenance(tmp_path):
    src = tmp_path / "results"
    (src / "platelet-em" / "mse").mkdir(parents=True)
    (src / "platelet-em" / "mse" / "test_results.csv").write_text("dice\n0.5\n")
    (src / "platelet-em" / "mse" / "config.json").write_text("{}")
    (src / "platelet-em" / "mse" / "checkpoint.pt").write_bytes(b"\0" * 100)
    out = export_reference(src, tmp_path / "ref" / "default", preset="default", device="cpu",
                           command="python -m deepsim_edu experiment --preset default",
                           wall_time_s=12.5, commit="abc123", date="2026-11-25")  # fmt: skip
    copied = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert copied == ["platelet-em/mse/config.json", "platelet-em/mse/test_results.csv",
                      "provenance.json"]  # fmt: skip
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["commit"] == "abc123" and provenance["wall_time_s"] == 12.5
    assert provenance["preset"] == "default" and provenance["date"] == "2026-11-25"
    folder, found = find_reference("default", tmp_path / "ref")
    assert folder == out and found == provenance
    assert find_reference("paper", tmp_path / "ref") is None


def test_export_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_reference(tmp_path / "nope", tmp_path / "out", preset="q", device="cpu", command="")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no CSV/JSON"):
        export_reference(tmp_path / "empty", tmp_path / "out", preset="q", device="cpu", command="")


def write_vgg_pair(folder, convention: str):
    """A weights file (random VGG16 conv1-3) and its sidecar, as data_scripts writes them."""
    import torch

    from deepsim_edu.features import VGG16Features

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vgg16_conv.pt"
    torch.save(VGG16Features().state_dict(), path)
    sidecar = {"convention": convention, "source": "SOURCE", "source_sha256": "abc"}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def results(tmp_path):
    src = tmp_path / "results" / "phc-u373" / "vgg"
    src.mkdir(parents=True)
    (src / "test_results.csv").write_text("dice\n0.9\n")
    return tmp_path / "results"


def test_provenance_records_the_vgg_file_and_its_input(tmp_path):
    import hashlib

    src = results(tmp_path)
    out = export_reference(src, tmp_path / "ref", preset="q", device="cpu", command="")
    assert json.loads((out / "provenance.json").read_text())["vgg"] is None
    path = write_vgg_pair(tmp_path / "tv", "rgb_imagenet_normalised")
    out = export_reference(src, tmp_path / "ref2", preset="paper", device="cuda", command="",
                           vgg=path, vgg_input="paper_unnormalised_01")  # fmt: skip
    vgg = json.loads((out / "provenance.json").read_text())["vgg"]
    assert vgg == {
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "weights_convention": "rgb_imagenet_normalised",
        "source": "SOURCE",
        "source_sha256": "abc",
        "vgg_input": "paper_unnormalised_01",
        "input_convention": "paper_unnormalised_01",
    }
    caffe = write_vgg_pair(tmp_path / "keras", "caffe_bgr")
    out = export_reference(src, tmp_path / "ref3", preset="default", device="cpu", command="",
                           vgg=caffe)  # fmt: skip
    vgg = json.loads((out / "provenance.json").read_text())["vgg"]
    assert (vgg["vgg_input"], vgg["input_convention"]) == ("weights", "caffe_bgr")


def test_provenance_vgg_errors_leave_nothing_behind(tmp_path):
    src = results(tmp_path)
    with pytest.raises(FileNotFoundError, match="vgg16_conv.pt not found"):
        export_reference(src, tmp_path / "out", preset="q", device="cpu", command="",
                         vgg=tmp_path / "none" / "vgg16_conv.pt")  # fmt: skip
    caffe = write_vgg_pair(tmp_path / "keras", "caffe_bgr")
    with pytest.raises(ValueError, match="does not fit weights trained with 'caffe_bgr'"):
        export_reference(src, tmp_path / "out", preset="q", device="cpu", command="",
                         vgg=caffe, vgg_input="rgb_imagenet_normalised")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_the_committed_reference_is_found_from_any_directory(tmp_path, monkeypatch):
    """A chapter opened in book/ (or papermill run elsewhere) finds the repository's files."""
    committed = Path(__file__).resolve().parent.parent / "reference_results" / "default"
    monkeypatch.chdir(tmp_path)
    found = find_reference("default")
    if not (committed / "provenance.json").is_file():
        assert found is None
        return
    folder, provenance = found
    assert folder == committed
    assert provenance == json.loads((committed / "provenance.json").read_text())
