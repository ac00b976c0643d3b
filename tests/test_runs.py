"""runs.py: the results-folder layout, which runs exist and are finished, and the readers,
against a small results folder written by hand."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from deepsim_edu import runs
from deepsim_edu.runs import save_checkpoint, write_csv, write_json
from deepsim_edu.unet import registration_unet

CHANNELS = (4, 8, 8)


def registration_checkpoint(run: Path, finished: bool, seed: int = 0) -> torch.nn.Module:
    """A registration run's checkpoint.pt (a random 2D net) that says ``finished``."""
    torch.manual_seed(seed)
    net = registration_unet(2, CHANNELS)
    for p in net.parameters():  # the output layer starts at zero: make the net do something
        torch.nn.init.normal_(p, std=0.1)
    config = {"kind": "registration", "dataset": "platelet-em", "metric": run.name, "ndim": 2,
              "encoder_channels": list(CHANNELS), "dropout": 0.0}  # fmt: skip
    save_checkpoint(run / "checkpoint.pt", {"model": net.state_dict(), "config": config,
                                            "finished": finished, "epoch": 1})  # fmt: skip
    return net


def log(run: Path, val_dice: list[float]) -> None:
    write_csv(run / "log.csv", [{"epoch": i + 1, "step": 10 * (i + 1), "val_dice": v}
                                for i, v in enumerate(val_dice)])  # fmt: skip


def results_csv(run: Path, dice: list[float], split: str = "test") -> None:
    dataset, metric = run.parent.name, run.name
    write_csv(run / f"{split}_results.csv", [
        {"dataset": dataset, "metric": metric, "moving": f"m{i}", "fixed": f"f{i}", "dice": d}
        for i, d in enumerate(dice)
    ])  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """platelet-em: mse (finished, tested), ncc (unfinished, tested), deepsim (log only),
    its extractor and a λ sweep of mse; brain-mri: vgg (finished, not tested); plus folders
    that are no runs (an unknown metric, a notes folder)."""
    root = tmp_path_factory.mktemp("results")
    pe, brain = root / "platelet-em", root / "brain-mri"
    registration_checkpoint(pe / "mse", finished=True)
    log(pe / "mse", [0.5, 0.6])
    results_csv(pe / "mse", [0.7, 0.8])
    registration_checkpoint(pe / "ncc", finished=False)
    log(pe / "ncc", [0.4])
    results_csv(pe / "ncc", [0.6])
    log(pe / "deepsim", [0.3])
    save_checkpoint(pe / "segmentation" / "checkpoint.pt",
                    {"config": {"kind": "segmentation"}, "epoch": 1})  # fmt: skip
    results_csv(pe / "mse" / "sweep" / "lam_0.5", [0.1])  # one level deeper: not a result
    registration_checkpoint(brain / "vgg", finished=True)
    results_csv(brain / "vgg", [0.9], split="val")
    registration_checkpoint(pe / "ssim", finished=True)  # not a metric of config.METRICS
    (root / "notes").mkdir()
    return root


def test_layout_paths():
    assert runs.results_root("quick") == Path("results") / "quick"
    assert runs.results_root("quick", "elsewhere") == Path("elsewhere")
    r = Path("r")
    assert runs.run_folder(r, "platelet-em", "ncc") == Path("r/platelet-em/ncc")
    assert runs.segmentation_folder(r, "brain-mri") == Path("r/brain-mri/segmentation")
    assert runs.sweep_folder(r, "phc-u373", "mse") == Path("r/phc-u373/mse/sweep")
    sweep = Path("r/phc-u373/mse/sweep")
    assert runs.sweep_run_folder(r, "phc-u373", "mse", 0.01) == sweep / "lam_0.01"
    assert runs.sweep_run_folder(r, "phc-u373", "mse", 2.0) == sweep / "lam_2"
    assert runs.sweep_csv(r, "phc-u373", "mse") == Path("r/phc-u373/mse/sweep.csv")
    assert runs.checkpoint_path(r / "x") == Path("r/x/checkpoint.pt")
    assert runs.results_file(r / "x", "val") == Path("r/x/val_results.csv")


def test_which_runs_exist(root):
    found = runs.available_runs(root)
    assert found == {"brain-mri": ["vgg"], "platelet-em": ["mse", "ncc"]}
    assert list(found) == ["brain-mri", "platelet-em"]  # data.layout.DATASET_NAMES order
    assert runs.available_runs(root, "log.csv") == {"platelet-em": ["mse", "ncc", "deepsim"]}
    assert runs.available_runs(root, "val_results.csv") == {"brain-mri": ["vgg"]}
    assert runs.has_checkpoint(root / "platelet-em" / "ncc")
    assert not runs.has_checkpoint(root / "platelet-em" / "deepsim")
    assert not runs.has_checkpoint(None)
    with pytest.raises(FileNotFoundError, match="nowhere: no results folder"):
        runs.available_runs(root / "nowhere")


def test_which_runs_are_finished(root):
    pe = root / "platelet-em"
    assert runs.training_finished(pe / "mse") and not runs.training_finished(pe / "ncc")
    assert not runs.training_finished(pe / "deepsim")  # no checkpoint at all
    assert not runs.training_finished(pe / "segmentation")  # its checkpoint has no flag
    assert runs.run_finished(pe / "mse")
    assert not runs.run_finished(pe / "ncc")  # tested, but its training did not finish
    assert not runs.run_finished(root / "brain-mri" / "vgg")  # finished, no test_results.csv
    assert runs.run_finished(root / "brain-mri" / "vgg", split="val")
    assert runs.finished_runs(root) == {"platelet-em": ["mse"]}
    assert runs.finished_runs(root, "val") == {"brain-mri": ["vgg"]}


def test_trained_runs_of_a_dataset(root):
    pe = root / "platelet-em"
    assert runs.trained_runs(root, "platelet-em") == {"mse": pe / "mse", "ncc": pe / "ncc"}
    assert runs.trained_runs(root, "platelet-em", "ncc") == {"ncc": pe / "ncc"}
    assert list(runs.trained_runs(root, "platelet-em", needs="log.csv")) == ["mse", "ncc",
                                                                             "deepsim"]  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"platelet-em/deepsim/checkpoint\.pt: missing"):
        runs.trained_runs(root, "platelet-em", ["mse", "deepsim"])
    with pytest.raises(FileNotFoundError, match="phc-u373: no registration run with a chec"):
        runs.trained_runs(root, "phc-u373")
    with pytest.raises(ValueError, match="unknown metric 'ssim'"):
        runs.trained_runs(root, "platelet-em", ["ssim"])
    with pytest.raises(ValueError, match="unknown dataset 'lung'"):
        runs.trained_runs(root, "lung")


def test_load_results_concatenates_the_runs_in_path_order(root):
    table = runs.load_results(root)
    assert list(zip(table["dataset"], table["metric"], table["dice"])) == [
        ("platelet-em", "mse", 0.7), ("platelet-em", "mse", 0.8), ("platelet-em", "ncc", 0.6),
    ]  # fmt: skip  (the sweep's file one level deeper is left out)
    assert runs.results_files(root) == [root / "platelet-em" / m / "test_results.csv"
                                        for m in ("mse", "ncc")]  # fmt: skip
    val = runs.load_results(root, "val")
    assert val[["dataset", "metric", "dice"]].values.tolist() == [["brain-mri", "vgg", 0.9]]


def test_load_results_without_results_names_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(FileNotFoundError, match=f"no test_results.csv under {folder}/"):
            runs.load_results(folder)


def test_load_log_and_read_config(root, tmp_path):
    table = runs.load_log(root / "platelet-em" / "mse")
    assert table["val_dice"].tolist() == [0.5, 0.6] and table["step"].tolist() == [10, 20]
    with pytest.raises(FileNotFoundError, match=r"ncc-sup/log\.csv: no training log"):
        runs.load_log(root / "platelet-em" / "ncc-sup")
    write_json(tmp_path / "config.json", {"lam": 0.25, "metric": "mse"})
    assert runs.read_config(tmp_path) == {"lam": 0.25, "metric": "mse"}
    with pytest.raises(FileNotFoundError, match=r"nope/config\.json: no run config"):
        runs.read_config(tmp_path / "nope")


def test_load_registration_net_gives_back_the_saved_net(tmp_path):
    saved = registration_checkpoint(tmp_path / "platelet-em" / "mse", finished=True, seed=3)
    net, config = runs.load_registration_net(tmp_path / "platelet-em" / "mse")
    assert not net.training and config["metric"] == "mse" and config["ndim"] == 2
    x = torch.rand(1, 2, 16, 16)
    saved.eval()
    with torch.no_grad():
        assert net(x).abs().max() > 0
        torch.testing.assert_close(net(x), saved(x), rtol=0, atol=0)
    save_checkpoint(tmp_path / "seg" / "checkpoint.pt", {"config": {"kind": "segmentation"}})
    with pytest.raises(ValueError, match="not a registration run"):
        runs.load_registration_net(tmp_path / "seg")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        runs.load_registration_net(tmp_path / "none")


def test_sweep_table_merges_run_folders_and_sweep_csv(tmp_path):
    folder = tmp_path / "platelet-em" / "mse"
    for lam, val_dice in ((0.1, [0.2, 0.5, 0.4]), (1.0, [0.6])):
        run = runs.sweep_run_folder(tmp_path, "platelet-em", "mse", lam)
        log(run, val_dice)
        write_json(run / "config.json", {"lam": lam})
    pd.DataFrame({"lam": [0.1, 10.0], "best_val_dice": [0.5, 0.4], "selected": [False, False]}
                 ).to_csv(folder / "sweep.csv", index=False)  # fmt: skip
    table = runs.sweep_table(folder)
    assert table["lam"].tolist() == [0.1, 1.0, 10.0]
    assert table["best_val_dice"].tolist() == [0.5, 0.6, 0.4]  # the max of each log
    assert table["selected"].tolist() == [False, True, False]  # none marked: the best Dice
    assert table["run"].tolist() == [folder / "sweep" / "lam_0.1", folder / "sweep" / "lam_1",
                                     None]  # fmt: skip
    # the sweep.csv's choice wins, also when the sweep/ folder itself is given
    pd.DataFrame({"lam": [0.1], "best_val_dice": [0.5], "selected": [True]}).to_csv(
        folder / "sweep.csv", index=False
    )
    assert runs.sweep_table(folder / "sweep")["selected"].tolist() == [True, False]
    with pytest.raises(FileNotFoundError, match="no λ-sweep runs"):
        runs.sweep_table(tmp_path)


def test_one_trainer_makes_a_second_trainer_wait_also_through_a_link(tmp_path):
    """Two holders of one run folder, the second through a symbolic link (a chapter sharing
    another's extractor): the second gets in only after the first has let go."""
    import threading
    import time

    from deepsim_edu.runs import one_trainer

    run, link = tmp_path / "a" / "platelet-em" / "segmentation", tmp_path / "b" / "segmentation"
    events = []
    with one_trainer(run):
        link.parent.mkdir()
        link.symlink_to(run)

        def second():
            with one_trainer(link):
                events.append(("second in", time.monotonic()))

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        assert events == []  # still waiting
        (run / "checkpoint.pt").write_bytes(b"finished")
        events.append(("first out", time.monotonic()))
    thread.join(10)
    assert [e for e, _ in events] == ["first out", "second in"]
    assert (link / "checkpoint.pt").read_bytes() == b"finished"  # what the first one left


def test_one_trainer_removes_only_an_empty_folder_it_made(tmp_path):
    from deepsim_edu.runs import one_trainer

    with pytest.raises(RuntimeError, match="failed before writing"):
        with one_trainer(tmp_path / "new" / "run"):
            raise RuntimeError("failed before writing")
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "old").mkdir()
    with one_trainer(tmp_path / "old"):
        pass
    assert (tmp_path / "old").is_dir()  # there before: kept, even empty
    with one_trainer(tmp_path / "kept") as run:
        (run / "config.json").write_text("{}")
    assert (tmp_path / "kept" / "config.json").is_file()
