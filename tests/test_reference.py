"""Reference results: small files copied, checkpoints left out, provenance written and found."""

import json

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
