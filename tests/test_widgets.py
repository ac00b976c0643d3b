"""The book's widgets through their Python API: redraws, metric values, λ sweep, browser, state."""

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from ipywidgets import Widget
from ipywidgets.embed import dependency_state, embed_data

from deepsim_edu import runs, widgets
from deepsim_edu.data.demo_pair import make_demo_pair
from deepsim_edu.data.layout import (
    DatasetError,
    DatasetInfo,
    save_nifti,
    write_case,
    write_dataset_json,
)
from deepsim_edu.features import VGG16Features
from deepsim_edu.train import train_registration
from deepsim_edu.unet import segmentation_unet

from .test_experiment_cli import data  # noqa: F401  (fixture: <data>/phc-u373, 4 frames a split)
from .test_train_registration import moving_squares, tiny  # noqa: F401  (24x24 series, config)


def is_webp(picture: bytes) -> bool:
    """The RIFF/WEBP signature (the explorers store their pictures as WebP)."""
    return picture[:4] == b"RIFF" and picture[8:12] == b"WEBP"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one thread is faster, and much faster when other jobs share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def redraws(explorer, name, value) -> bool:
    """Set a control: the picture must change, and come back byte for byte when set back."""
    before, old = bytes(explorer.image.value), explorer.controls[name].value
    explorer.controls[name].value = value
    changed = bytes(explorer.image.value)
    explorer.controls[name].value = old
    return is_webp(changed) and changed != before and bytes(explorer.image.value) == before


# ----------------------------------------------------------------------------- warp


def test_warp_explorer_redraws_and_marks_folding():
    explorer = widgets.warp_explorer(make_demo_pair(size=48)["moving"], seed=3)
    assert is_webp(bytes(explorer.image.value)) and explorer.controls["seed"].value == 3
    for name, value in (("amplitude", 4.0), ("smoothness", 3.0), ("seed", 5)):
        assert redraws(explorer, name, value), name
    explorer.controls["amplitude"].value = 0.0  # u = 0: Φ = id, det ∇Φ = 1 everywhere
    assert explorer.summary["folding fraction"] == 0
    assert explorer.summary["min det ∇Φ"] == pytest.approx(1.0)
    with explorer.hold():  # a rough, large field folds
        explorer.controls["amplitude"].value = 8.0
        explorer.controls["smoothness"].value = 2.0
    explorer.render()
    assert explorer.summary["folding fraction"] > 0.05 and explorer.summary["min det ∇Φ"] < 0
    assert "folding fraction" in explorer.caption.value


def test_warp_explorer_rejects_a_volume():
    with pytest.raises(ValueError, match="one 2D image"):
        widgets.warp_explorer(torch.rand(1, 1, 8, 8, 8))


# ----------------------------------------------------------------------------- metrics


@pytest.fixture(scope="module")
def metric_widget():
    extractor = segmentation_unet(2, 3, (4, 8, 8)).eval()  # untrained: only the formula counts
    return widgets.metric_explorer(
        make_demo_pair(size=48, seed=1)["fixed"],
        extractor=extractor,
        vgg=VGG16Features(),
        max_shift=4,
        noise=0.0,
        contrast=1.0,
        shift=0,
    )


def test_metric_values_follow_the_loss_conventions(metric_widget):
    w, set_ = metric_widget, metric_widget.controls
    values = w.summary  # losses: 0 = perfect match
    assert set(values) == {"MSE", "NCC", "VGG", "DeepSim"}
    assert values["MSE"] < 1e-10 and values["NCC"] < 1e-3 and values["DeepSim"] < 1e-5
    assert "NCC" in w.caption.value
    set_["shift"].value = 3
    assert w.summary["MSE"] > 1e-3 and w.summary["NCC"] > 0.1 and w.summary["DeepSim"] > 1e-3
    with w.hold():
        set_["shift"].value, set_["contrast"].value = 0, 1.3
    w.render()  # NCC is blind to contrast, MSE is not
    assert w.summary["MSE"] > 1e-4 and w.summary["NCC"] < 1e-3
    with w.hold():
        set_["contrast"].value, set_["noise"].value = 1.0, 0.1
    w.render()  # independent noise of σ on both images: MSE ≈ 2σ²
    assert w.summary["MSE"] == pytest.approx(0.02, rel=0.2) and w.summary["NCC"] > 0.05
    set_["noise"].value = 0.0
    clean = w.landscape()
    for metric, group in clean.groupby("metric"):
        assert group.loc[group["value"].idxmin(), "shift"] == 0, metric
    assert sorted(clean["shift"].unique()) == [-4, 0, 4]  # VGG: every 4th shift only


def test_metric_explorer_redraws(metric_widget):
    for name, value in (("noise", 0.1), ("contrast", 0.7), ("shift", -2)):
        assert redraws(metric_widget, name, value), name


def test_metric_explorer_without_feature_metrics_uses_a_fine_landscape():
    w = widgets.metric_explorer(max_shift=3, crop=32)
    assert set(w.summary) == {"MSE", "NCC"} and w.fixed.shape == (1, 1, 32, 32)
    assert sorted(w.landscape()["shift"].unique()) == [-3, -2, -1, 0, 1, 2, 3]


# ----------------------------------------------------------------------------- λ sweep


@pytest.fixture(scope="module")
def sweep(moving_squares, tmp_path_factory):  # noqa: F811
    """<root>/phc-u373/mse with two tiny runs, sweep/lam_0.01 and sweep/lam_1."""
    folder = tmp_path_factory.mktemp("results") / "phc-u373" / "mse"
    for lam in (0.01, 1.0):
        run = folder / "sweep" / f"lam_{lam:g}"
        train_registration(moving_squares, run, tiny("mse", lam=lam), progress=False)
    return folder


def test_lambda_explorer_over_run_folders(sweep, moving_squares):  # noqa: F811
    w = widgets.lambda_explorer(sweep, data_dir=moving_squares)
    assert [value for _, value in w.controls["lam"].options] == [0.01, 1.0]
    table = runs.sweep_table(sweep)
    assert w.controls["lam"].value == table.loc[table["best_val_dice"].idxmax(), "lam"]
    assert w.summary["pair"] == "val_0 → val_1" and 0 <= w.summary["Dice after"] <= 1
    assert 0 <= w.summary["folding fraction"] <= 1
    assert redraws(w, "lam", 1.0 if w.controls["lam"].value == 0.01 else 0.01)
    assert redraws(w, "pair", 2)
    # the sweep/ folder itself works too
    assert widgets.lambda_explorer(sweep / "sweep", moving_squares).controls["lam"].options


def test_lambda_explorer_from_sweep_csv_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here: the curve only
    pd.DataFrame(
        {
            "lam": [0.1, 1.0, 10.0],
            "best_val_dice": [0.7, 0.8, 0.75],
            "last_val_dice": [0.7, 0.8, 0.7],
            "run": ["gone"] * 3,
            "selected": [False, True, False],
        }
    ).to_csv(tmp_path / "sweep.csv", index=False)
    w = widgets.lambda_explorer(tmp_path)
    assert set(w.controls) == {"lam"} and w.controls["lam"].value == 1.0
    assert w.summary == {"λ": "1", "best val Dice": 0.8}
    assert redraws(w, "lam", 10.0)


def test_lambda_explorer_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no λ-sweep runs"):
        widgets.lambda_explorer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        widgets.lambda_explorer(tmp_path / "missing")


# ----------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def data_dir(data):  # noqa: F811
    """The 2D phc-u373 folder (a noise mask for train_0) and a tiny 3D brain-mri beside it."""
    save_nifti(
        data / "phc-u373" / "noise_masks" / "train_0.nii.gz",
        (np.arange(128)[:, None] < 32).repeat(128, 1).astype(np.uint8),
        [1.0, 1.0],
    )
    splits = {"train": ["s0"], "val": ["s1"], "test": ["s2"]}
    rng = np.random.default_rng(0)
    for case in ("atlas", "s0", "s1", "s2"):
        label = np.zeros((12, 16, 20), dtype=np.uint8)
        label[3:9, 4:12, 5:15] = 1
        label[5:7, 6:10, 8:12] = 2
        write_case(
            data / "brain-mri", case, label * 0.3 + 0.05 * rng.random(label.shape), label, [2.0] * 3
        )
    info = DatasetInfo(
        name="brain-mri",
        ndim=3,
        spacing=[2.0] * 3,
        splits=splits,
        classes=["background", "a", "b"],
        pairing={"rule": "atlas", "atlas": "atlas"},
    )
    write_dataset_json(data / "brain-mri", info)
    return data


def test_dataset_browser_2d_and_3d(data_dir):
    w = widgets.dataset_browser(data_dir, "phc-u373")
    assert w.controls["dataset"].options == ("brain-mri", "phc-u373")
    assert w.controls["slice"].layout.display == "none"  # 2D: no slice slider
    assert w.summary["case"] == "train_0" and w.summary["noisy patches"] == "25 %"
    assert w.controls["case"].max == 3
    assert redraws(w, "case", 2) and redraws(w, "split", "val")
    assert widgets.dataset_browser(data_dir, "phc-u373", split="test", case=2).summary["case"] == (
        "test_2"
    )
    w.controls["dataset"].value = "brain-mri"
    assert w.controls["slice"].layout.display is None and w.controls["case"].max == 0
    assert (w.controls["slice"].max, w.controls["slice"].value) == (11, 6)
    assert w.summary["shape"] == "12×16×20" and "noisy patches" not in w.summary
    assert redraws(w, "slice", 4)
    w.controls["axis"].value = 2
    assert (w.controls["slice"].max, w.controls["slice"].value) == (19, 10)
    assert redraws(w, "slice", 5)


def test_dataset_browser_errors(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}: no such folder"):
        widgets.dataset_browser(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        widgets.dataset_browser(data_dir, "phc-u373", split="dev")
    with pytest.raises(DatasetError, match="unknown dataset 'lung'"):
        widgets.dataset_browser(data_dir, "lung")
    with pytest.raises(FileNotFoundError, match="no dataset 'platelet-em'.*present: brain-mri"):
        widgets.dataset_browser(data_dir, "platelet-em")


# ----------------------------------------------------------------------------- saved state


def test_the_picture_lives_in_the_widget_state():
    w = widgets.warp_explorer(make_demo_pair(size=32)["moving"])
    encoded = base64.b64encode(w.image.value).decode()
    embedded = json.loads(json.dumps(embed_data(views=[w], state=dependency_state(w))))
    image_state = embedded["manager_state"]["state"][w.image.model_id]
    assert image_state["model_name"] == "ImageModel"
    assert [b["data"] for b in image_state["buffers"]] == [encoded]
    assert w.caption.model_id in embedded["manager_state"]["state"]
    manager = Widget.get_manager_state(widgets=[w.image])["state"][w.image.model_id]
    assert manager["buffers"][0]["data"] == encoded


# ----------------------------------------------------------------------------- stored pictures


def caption_numbers(html: str) -> dict[str, str]:
    """Header → cell of a caption's one-row table."""
    heads = re.findall(r"<th[^>]*>(.*?)</th>", html)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", html)
    return dict(zip(heads, cells, strict=True))


def shown(explorer) -> list[bool]:
    """For each position of the main control: does the stack hold a picture there?"""
    return [isinstance(child, widgets.Frame) for child in explorer.frames.children]


def test_stored_pictures_are_the_live_pictures():
    w = widgets.warp_explorer(make_demo_pair(size=32)["moving"], seed=2)
    stored = w.stored_pictures()
    assert list(stored) == list(widgets.AMPLITUDES) and all(shown(w))
    assert w.frames.selected_index == 2 and bytes(w.image.value) == stored[2.0]
    for amplitude, picture in stored.items():  # the live computation of each position
        with w.hold():
            w.controls["amplitude"].value = amplitude
        assert widgets.figure_webp(w.draw()) == picture, amplitude
    w.controls["amplitude"].value = 2.0  # shown again from its stored picture
    assert bytes(w.image.value) == stored[2.0] and all(shown(w))
    # each stored caption is the summary of its own amplitude: u = 0 only at amplitude 0
    maxima = [caption_numbers(child.caption.value)["max |u| (voxels)"] for child in
              w.frames.children]  # fmt: skip
    assert maxima[0] == "0" and all(float(m) > 0 for m in maxima[1:])
    # a change of another control: only the shown position holds a picture of the new setting
    first = w.frames.children[0]
    w.controls["seed"].value = 3
    assert shown(w) == [position == 2 for position in range(len(widgets.AMPLITUDES))]
    assert bytes(first.image.value) == b""  # a stale picture's bytes are dropped too
    assert "No picture stored" in w.placeholder.value and "stores 2" in w.placeholder.value
    w.controls["seed"].value = 2
    for amplitude, picture in stored.items():  # now drawn by the observer, one by one
        w.controls["amplitude"].value = amplitude
        assert bytes(w.image.value) == picture and w.frames.selected_index == w.position
    assert all(shown(w))


def test_the_page_state_links_the_main_control_to_the_stored_pictures():
    w = widgets.metric_explorer(max_shift=2, crop=24, noise=0.0, shift=1)
    state = json.loads(json.dumps(Widget.get_manager_state()))["state"]  # all open widgets
    links = [s["state"] for s in state.values() if s["model_name"] == "DirectionalLinkModel"
             and s["state"]["target"] == [f"IPY_MODEL_{w.frames.model_id}", "selected_index"]]
    shift = w.controls["shift"]
    assert links == [{**links[0], "source": [f"IPY_MODEL_{shift.model_id}", "index"]}]
    stack = state[w.frames.model_id]["state"]
    assert stack["selected_index"] == state[shift.model_id]["state"]["index"] == 3  # shift 1
    assert state[shift.model_id]["state"]["_options_labels"] == ["-2", "-1", "0", "1", "2"]
    stored = w.stored_pictures()
    assert list(stored) == [-2, -1, 0, 1, 2]
    for position, (child, picture) in enumerate(zip(stack["children"], stored.values())):
        frame = state[child.removeprefix("IPY_MODEL_")]["state"]
        image_id, caption_id = (c.removeprefix("IPY_MODEL_") for c in frame["children"])
        encoded = state[image_id]["buffers"][0]["data"]
        assert base64.b64decode(encoded) == picture, position
        assert state[image_id]["state"]["format"] == "webp"
        mse = float(caption_numbers(state[caption_id]["state"]["value"])["MSE"])
        assert (mse < 1e-10) == (position == 2) and mse < 1, position  # no noise: 0 at shift 0
    with pytest.raises(ValueError, match="shift 5 is outside the slider's range ±2"):
        widgets.metric_explorer(max_shift=2, crop=24, shift=5)
    with pytest.raises(ValueError, match="amplitude 2.5 is not one of the amplitudes"):
        widgets.warp_explorer(amplitude=2.5)


def test_a_long_main_control_stores_spread_pictures_and_draws_the_rest_live(data_dir):
    w = widgets.dataset_browser(data_dir, "phc-u373", max_frames=2)  # 4 train cases
    assert w.stored_positions() == [0, 3] and shown(w) == [True, False, False, True]
    assert "stores 0, 3" in w.placeholder.value and "(2 of 4)" in w.hint.value
    stored = w.stored_pictures()
    w.controls["case"].value = 1  # not stored: drawn live
    assert shown(w) == [True, True, False, True] and w.summary["case"] == "train_1"
    assert bytes(w.image.value) == widgets.figure_webp(w.draw())
    w.controls["case"].value = 3
    assert bytes(w.image.value) == stored[3] and w.summary["case"] == "train_3"
    w.controls["dataset"].value = "brain-mri"  # one case: one position
    assert len(w.frames.children) == 1 and shown(w) == [True]
    w.controls["dataset"].value = "phc-u373"  # back, at case 0 (brain-mri's only one)
    assert len(w.frames.children) == 4 and shown(w) == [True, False, False, False]
    assert bytes(w.image.value) == stored[0] and w.summary["case"] == "train_0"


def test_lambda_explorer_stores_a_picture_for_each_lambda(sweep, moving_squares):  # noqa: F811
    w = widgets.lambda_explorer(sweep, data_dir=moving_squares)
    stored = w.stored_pictures()
    assert list(stored) == [0.01, 1.0] and all(shown(w))
    for lam, picture in stored.items():
        with w.hold():
            w.controls["lam"].value = lam
        assert widgets.figure_webp(w.draw()) == picture
        assert w.summary["λ"] == f"{lam:g}"
