"""ensure_embedded: generate once, reuse while seed/params agree, swap atomically otherwise."""

import sys
import types

import pytest
import torch

from deepsim_edu.data import embedded
from tests.test_layout import make_tiny_dataset


@pytest.fixture
def fake_generator(monkeypatch):
    calls = []

    def make_fake(out, seed=0, noise=1.0):
        calls.append((seed, noise))
        if noise < 0:
            raise ValueError("noise must be >= 0")
        make_tiny_dataset(out, name="phc-u373")
        return out

    module = types.ModuleType("fake_generators")
    module.make_fake = make_fake
    monkeypatch.setitem(sys.modules, "fake_generators", module)
    monkeypatch.setitem(embedded.GENERATORS, "phc-u373", ("fake_generators", "make_fake"))
    return calls


def test_generates_once_and_reuses(tmp_path, fake_generator):
    first = embedded.ensure_embedded("phc-u373", tmp_path, seed=3)
    again = embedded.ensure_embedded("phc-u373", tmp_path, seed=3)
    assert first == again == tmp_path / "phc-u373" and fake_generator == [(3, 1.0)]
    embedded.ensure_embedded("phc-u373", tmp_path, seed=3, noise=0.0)  # other params: remake
    assert fake_generator == [(3, 1.0), (3, 0.0)]
    assert [p.name for p in tmp_path.iterdir()] == ["phc-u373"]  # no staging folders left
    assert any("classes present 3/3" in line for line in embedded.summarize(first))


def test_failed_generation_keeps_the_old_dataset(tmp_path, fake_generator):
    embedded.ensure_embedded("phc-u373", tmp_path, seed=0)
    with pytest.raises(ValueError, match="noise"):
        embedded.ensure_embedded("phc-u373", tmp_path, seed=0, noise=-1.0)
    assert (tmp_path / "phc-u373" / "dataset.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["phc-u373"]


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'lung'.*brain-mri"):
        embedded.ensure_embedded("lung", tmp_path)


def test_resolve_dataset_generate_makes_a_missing_dataset_and_keeps_an_existing_one(tmp_path):
    from deepsim_edu.data.embedded import resolve_dataset
    from deepsim_edu.data.layout import DatasetError

    with pytest.raises(DatasetError, match="not in the dataset layout"):
        resolve_dataset("platelet-em", tmp_path)  # no silent generation by default
    (tmp_path / "platelet-em").mkdir()
    (tmp_path / "platelet-em" / "mine.txt").write_text("a real dataset being copied")
    with pytest.raises(DatasetError):  # an existing folder is never replaced
        resolve_dataset("platelet-em", tmp_path, generate=True)
    assert (tmp_path / "platelet-em" / "mine.txt").is_file()


def test_datasets_in_and_find_dataset(tmp_path):
    make_tiny_dataset(tmp_path / "platelet-em")
    make_tiny_dataset(tmp_path / "phc-u373", name="phc-u373")
    (tmp_path / "notes").mkdir()
    assert embedded.datasets_in(tmp_path) == {"platelet-em": tmp_path / "platelet-em",
                                              "phc-u373": tmp_path / "phc-u373"}  # fmt: skip
    # a dataset folder itself
    assert embedded.datasets_in(tmp_path / "phc-u373") == {"phc-u373": tmp_path / "phc-u373"}
    with pytest.raises(FileNotFoundError, match="nope: no such folder"):
        embedded.datasets_in(tmp_path / "nope")
    assert embedded.find_dataset("phc-u373", tmp_path) == tmp_path / "phc-u373"
    assert embedded.find_dataset("brain-mri", tmp_path) is None  # not there: None, not an error
    assert embedded.find_dataset("platelet-em", tmp_path / "phc-u373") is None  # another one


def test_demo_pair_is_the_fixed_image_warped_by_a_smooth_displacement():
    from deepsim_edu.data.demo_pair import make_demo_pair
    from deepsim_edu.evaluate import dice

    pair = make_demo_pair(size=32, seed=1)
    assert {k: tuple(v.shape) for k, v in pair.items()} == dict.fromkeys(pair, (1, 1, 32, 32))
    assert pair["fixed"].dtype == torch.float32 and pair["fixed_labels"].dtype == torch.int64
    assert set(pair["fixed_labels"].unique().tolist()) == {0, 1}
    # blobs (0.7) on background (0.3) with a faint texture; the moving image is deformed
    assert torch.allclose(pair["fixed"], 0.3 + 0.4 * pair["fixed_labels"], atol=0.2)
    assert 0.5 < dice(pair["moving_labels"][:, 0], pair["fixed_labels"][:, 0], 2).item() < 1.0
    again = make_demo_pair(size=32, seed=1)
    assert all(torch.equal(again[k], pair[k]) for k in pair)  # seeded
