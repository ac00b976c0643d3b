"""Pair samplers: the paper's pairing rules."""

import numpy as np
import pytest

from deepsim_edu.data.layout import DatasetError, DatasetInfo, write_case, write_dataset_json
from deepsim_edu.data.pairs import (
    CaseDataset,
    CaseStore,
    PairDataset,
    evaluation_pairs,
    spread_subset,
    training_pairs,
)


def series_info(n=10):
    splits = {s: [f"{s}_{i:02d}" for i in range(n)] for s in ("train", "val", "test")}
    return DatasetInfo(
        name="phc-u373", ndim=2, spacing=[1, 1], classes=["background", "cell"], splits=splits
    )


def atlas_info():
    splits = {"train": ["s0", "s1", "s2"], "val": ["s3"], "test": ["s4", "s5"]}
    return DatasetInfo(
        name="brain-mri",
        ndim=3,
        spacing=[2, 2, 2],
        classes=["bg", "CSF", "GM", "WM"],
        splits=splits,
        pairing={"rule": "atlas", "atlas": "atlas"},
    )


def test_atlas_pairs_register_every_subject_to_the_atlas():
    info = atlas_info()
    assert evaluation_pairs(info, "test") == [("s4", "atlas"), ("s5", "atlas")]
    assert training_pairs(info, "train", epoch=3) == [
        ("s0", "atlas"),
        ("s1", "atlas"),
        ("s2", "atlas"),
    ]


def test_neighbour_pairs():
    info = series_info()
    assert evaluation_pairs(info, "val") == [(f"val_{i:02d}", f"val_{i + 1:02d}") for i in range(9)]
    index = {c: i for i, c in enumerate(info.splits["train"])}
    draws = [training_pairs(info, "train", epoch, seed=1) for epoch in range(30)]
    offsets = {index[f] - index[m] for pairs in draws for m, f in pairs}
    assert offsets == {-2, -1, 1, 2}  # every offset within ±2 occurs, never 0 or beyond
    for pairs in draws:
        assert [m for m, _ in pairs] == info.splits["train"]
        assert all(0 <= index[f] < 10 for _, f in pairs)
    assert draws[0] != draws[1]  # redrawn every epoch
    assert training_pairs(info, "train", 5, seed=1) == draws[5]  # reproducible (resume)
    assert training_pairs(info, "train", 5, seed=2) != draws[5]
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        evaluation_pairs(info, "dev")


def test_spread_subset_takes_evenly_spaced_pairs():
    pairs = list(range(24))  # PhC-U373's 24 validation pairs
    assert spread_subset(pairs, 3) == [0, 12, 23]  # round(i · 23 / 2)
    assert spread_subset(list(range(5)), 3) == [0, 2, 4]  # the brain's 5
    assert spread_subset(list(range(11)), 4) == [0, 3, 7, 10]  # round(10/3)=3, round(20/3)=7
    assert spread_subset(pairs, 1) == [0]
    assert spread_subset(pairs, None) == pairs and spread_subset(pairs, 30) == pairs
    for bad in (0, -1, 2.5, 30.5, True):  # refused also where it exceeds the pairs
        with pytest.raises(ValueError, match="limit must be a whole number"):
            spread_subset(pairs, bad)


def test_pair_dataset_reads_tensors(tmp_path):
    info = series_info(3)
    rng = np.random.default_rng(0)
    for cases in info.splits.values():
        for case in cases:
            write_case(tmp_path, case, rng.random((8, 8)), rng.integers(0, 2, (8, 8)), [1, 1])
    write_dataset_json(tmp_path, info)
    pairs = PairDataset(tmp_path, "test")
    item = pairs[1]
    assert len(pairs) == 2 and (item["moving_id"], item["fixed_id"]) == ("test_01", "test_02")
    assert (
        item["moving"].shape == (1, 8, 8) and item["fixed_labels"].dtype.is_floating_point is False
    )
    assert PairDataset(pairs.store, "test", limit=1).pairs == [("test_00", "test_01")]
    with pytest.raises(ValueError, match="not to training pairs"):
        PairDataset(pairs.store, "train", training=True, limit=2)
    training = PairDataset(pairs.store, "train", training=True)
    training.set_epoch(4)
    assert training.pairs == training_pairs(info, "train", 4)
    cases = CaseDataset(pairs.store, "val")
    assert len(cases) == 3 and cases[0]["image"].shape == (1, 8, 8)


def test_case_store_check_keeps_the_cases_it_read(tmp_path, monkeypatch):
    from deepsim_edu.data import pairs as pairs_module

    info = series_info(3)
    rng = np.random.default_rng(0)
    written = {}
    for cases in info.splits.values():
        for case in cases:
            written[case] = rng.random((8, 8)).astype(np.float32)
            write_case(tmp_path, case, written[case], rng.integers(0, 2, (8, 8)), [1, 1])
    write_dataset_json(tmp_path, info)
    store = CaseStore(tmp_path)
    report = store.check(keep=("train",))
    assert sorted(report.cases) == sorted(info.cases())

    def no_read(*args):
        raise AssertionError("read again")

    monkeypatch.setattr(pairs_module, "read_case", no_read)
    for case in info.splits["train"]:  # from memory, as written
        np.testing.assert_array_equal(store[case][0][0].numpy(), written[case])
    with pytest.raises(AssertionError, match="read again"):
        store["val_00"]  # not kept: read when asked for
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        store.check(keep=("dev",))


def test_a_dataset_with_a_path_as_case_id_cannot_be_opened(tmp_path):
    info = series_info(3)
    write_dataset_json(tmp_path, info)
    raw = (tmp_path / "dataset.json").read_text().replace('"test_01"', '"../../etc/passwd"')
    (tmp_path / "dataset.json").write_text(raw)
    with pytest.raises(DatasetError, match=r"case id '../../etc/passwd' in split 'test' contains"):
        PairDataset(tmp_path, "test")


def test_a_dataset_that_passed_is_not_read_again_until_a_file_changes(tmp_path, monkeypatch):
    """``CaseStore.check`` of a dataset that passed in this process reads no file while none
    changed; a file rewritten (or removed) after the pass is checked again and named."""
    from deepsim_edu.data import layout

    info = series_info(2)
    rng = np.random.default_rng(1)
    for case in info.cases():
        write_case(tmp_path, case, rng.random((8, 8)).astype(np.float32),
                   rng.integers(0, 2, (8, 8)), [1, 1])  # fmt: skip
    write_dataset_json(tmp_path, info)
    first = CaseStore(tmp_path).check(keep=("test",))
    reads = []
    monkeypatch.setattr(layout, "_read_image", lambda *a: reads.append(a) or np.zeros((8, 8)))
    store = CaseStore(tmp_path)
    assert store.check(keep=("test",)) is first and reads == []
    assert store["test_00"][0].shape == (1, 8, 8)  # read when used, from the file
    monkeypatch.undo()
    (tmp_path / "images" / "val_01.nii.gz").write_bytes(b"not a NIfTI file")
    with pytest.raises(DatasetError, match="images/val_01.nii.gz"):
        CaseStore(tmp_path).check(keep=("test",))
    (tmp_path / "labels" / "val_01.nii.gz").unlink()
    with pytest.raises(DatasetError, match="labels/val_01.nii.gz: file is missing"):
        CaseStore(tmp_path).check(keep=("test",))
