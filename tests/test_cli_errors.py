"""The CLI on bad input and faults of the environment: one line on stderr that names the
argument or the file, exit 2 (130 for Ctrl-C), no traceback, and nothing written.

Most cases call ``main([...])`` in this process (argparse's SystemExit(2) included), where an
exception that escapes ``main`` fails the test; Ctrl-C is a real SIGINT to a subprocess.
"""

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import pandas as pd
import pytest

from deepsim_edu.__main__ import main
from deepsim_edu.data import layout
from deepsim_edu.runs import load_checkpoint, save_checkpoint, write_csv, write_json
from tests.disc_series import write_disc_series

LAM = "must be a finite number >= 0 (λ of Eq. 1), got"
SEED = "must be a whole number from 0 to 4294967295, got"
COUNT = "must be a whole number >= 1, got"
NOISE = "must be a finite number >= 0 (0 = clean), got"
RESUMES = "interrupted: the run resumes from its last finished epoch with the same command"


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """<data>/phc-u373: 128x128 frames (the quick crop) of a disc drifting 2 voxels per frame;
    4 training, 2 validation and 2 test frames (one validation and one test pair)."""
    return write_disc_series(tmp_path_factory.mktemp("data"), 4, 2, 2)


def state(folder):
    """Every file and folder under ``folder`` with its size and mtime."""
    return {p: (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@contextmanager
def nothing_written(folder, files_only=False):
    """Asserts that the block leaves ``folder`` as it was (with ``files_only``: no new or
    changed file; a folder made on the way may stay)."""
    before = state(folder)
    yield
    after = state(folder)
    if files_only:
        before = {p: s for p, s in before.items() if not s[0]}
        after = {p: s for p, s in after.items() if not s[0]}
    assert after == before


def run_main(capsys, *argv):
    """``main(argv)`` → (exit status, stdout, stderr); argparse's SystemExit counts too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- numeric arguments

TRAIN = ["train", "--dataset", "phc-u373", "--metric", "mse"]
SWEEP = ["sweep-lambda", "--dataset", "phc-u373", "--metric", "mse"]

BAD_NUMBERS = [
    (TRAIN + ["--lam", "inf"], f"argument --lam: {LAM} 'inf'"),
    (TRAIN + ["--lam=-inf"], f"argument --lam: {LAM} '-inf'"),
    (TRAIN + ["--lam", "1e400"], f"argument --lam: {LAM} '1e400'"),  # overflows to inf
    (TRAIN + ["--lam", "-0.5"], f"argument --lam: {LAM} '-0.5'"),
    (TRAIN + ["--lam", "a lot"], f"argument --lam: {LAM} 'a lot'"),
    (["demo", "--lam", "nan"], f"argument --lam: {LAM} 'nan'"),
    (SWEEP + ["--grid", "0.5", "inf"], f"argument --grid: {LAM} 'inf'"),
    (SWEEP + ["--grid", "0.5", "1", "0.50"],
     "argument --grid: λ given twice (one run folder lam_<λ> each): 0.5"),
    (["demo", "--steps", "0"], f"argument --steps: {COUNT} '0'"),
    (["demo", "--steps", "2.5"], f"argument --steps: {COUNT} '2.5'"),
    (["demo", "--seed", "-1"], f"argument --seed: {SEED} '-1'"),
    (TRAIN + ["--seed", "4294967296"], f"argument --seed: {SEED} '4294967296'"),
    (["train-seg", "--dataset", "phc-u373", "--seed", "1.5"], f"argument --seed: {SEED} '1.5'"),
    (["evaluate", "--seed", "seven"], f"argument --seed: {SEED} 'seven'"),
    (["experiment", "--seed=-2"], f"argument --seed: {SEED} '-2'"),
    (SWEEP + ["--seed", "1e3"], f"argument --seed: {SEED} '1e3'"),
    (["data", "--dataset", "phc-u373", "--noise", "inf"], f"argument --noise: {NOISE} 'inf'"),
    (["data", "--dataset", "phc-u373", "--noise", "nan"], f"argument --noise: {NOISE} 'nan'"),
    (["data", "--dataset", "phc-u373", "--noise=-0.1"], f"argument --noise: {NOISE} '-0.1'"),
    (["data", "--dataset", "phc-u373", "--seed", "-5"], f"argument --seed: {SEED} '-5'"),
    (["experiment", "--jobs=-1"], f"argument --jobs: {COUNT} '-1'"),
    (["book", "--jobs", "1.5"], f"argument --jobs: {COUNT} '1.5'"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), BAD_NUMBERS,
                         ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_bad_numbers_are_refused_where_parsed(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default results/, data/ and _build/ would land here
    out_args = [] if argv[0] == "data" else ["--out", tmp_path / "out"]
    if argv[0] in ("data", "book"):
        out_args = ["--data", tmp_path / "data"]
    with nothing_written(tmp_path):
        code, _, err = run_main(capsys, *argv, *out_args)
    assert code == 2
    assert last_line(err).endswith(f"error: {message}"), err
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the environment


def test_out_under_a_file(series, tmp_path, capsys):
    """``--out`` (or ``--data``) below a file: one line naming the folder that cannot be made."""
    afile = tmp_path / "a-file"
    afile.write_text("not a folder\n")
    with nothing_written(tmp_path):
        code, _, err = run_main(capsys, *TRAIN, "--preset", "ci", "--data", series,
                                "--out", afile / "results")  # fmt: skip
        assert code == 2
        target = afile / "results" / "phc-u373" / "mse"
        assert last_line(err) == f"error: cannot write {target}: Not a directory"
        code, _, err = run_main(capsys, "data", "--dataset", "phc-u373", "--data", afile / "d")
        assert code == 2
        assert last_line(err) == f"error: cannot write {afile / 'd'}: Not a directory"
        code, _, err = run_main(capsys, "demo", "--out", afile / "demo")  # before any training
        assert code == 2
        assert last_line(err) == f"error: cannot write {afile / 'demo'}: Not a directory"


def test_figures_out_under_a_file(tmp_path, capsys):
    results, afile = tmp_path / "results", tmp_path / "a-file"
    write_csv(results / "platelet-em" / "mse" / "log.csv",
              [{"epoch": 1, "step": 10, "val_dice": 0.5}, {"epoch": 2, "step": 20,
                                                           "val_dice": 0.6}])  # fmt: skip
    afile.write_text("not a folder\n")
    with nothing_written(tmp_path):
        code, _, err = run_main(capsys, "figures", "--results", results, "--out", afile / "png")
    assert code == 2
    assert last_line(err) == f"error: cannot write {afile / 'png'}: Not a directory"


class _FullDisk:
    """The ``os`` module as ``data.layout`` sees it on a full disk: writing into a file
    raises OSError ENOSPC, which names no file (as the kernel's write(2) does)."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def fdopen(fd, *args, **kwargs):
        real = os.fdopen(fd, *args, **kwargs)

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                real.close()

            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return Full()


class _NoPermission:
    """``tempfile`` as ``data.layout`` sees it in a folder it may not write: mkstemp raises
    PermissionError naming the temporary file it tried to make."""

    def __getattr__(self, name):
        return getattr(tempfile, name)

    @staticmethod
    def mkstemp(suffix="", prefix="", dir=None, **kwargs):
        name = os.path.join(dir, f"{prefix}x1y2z3{suffix}")
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)


@pytest.mark.parametrize(("patch", "reason"), [("os", _FullDisk), ("tempfile", _NoPermission)])
def test_write_faults_name_the_file(series, tmp_path, capsys, monkeypatch, patch, reason):
    """A full disk or a folder without write permission, on the first file a run writes."""
    monkeypatch.setattr(layout, patch, reason())
    out = tmp_path / "out"
    with nothing_written(tmp_path, files_only=True):  # the run folder itself may stay
        code, _, err = run_main(capsys, *TRAIN, "--preset", "ci", "--data", series, "--out", out)
    assert code == 2
    why = "No space left on device" if patch == "os" else "Permission denied"
    assert last_line(err) == f"error: cannot write {out / 'phc-u373/mse/config.json'}: {why}"


def test_full_disk_while_generating_a_dataset_names_the_file(tmp_path, capsys, monkeypatch):
    """`data` writes through the same atomic writer: its full-disk error names the file too,
    and the staging folder leaves no file behind (the empty --data folder may stay)."""
    monkeypatch.setattr(layout, "os", _FullDisk())
    with nothing_written(tmp_path, files_only=True):
        code, _, err = run_main(capsys, "data", "--dataset", "phc-u373", "--data", tmp_path / "d")
    assert code == 2
    line = last_line(err)
    assert line.startswith("error: cannot write ") and line.endswith(": No space left on device")
    assert ".nii.gz" in line or "dataset.json" in line  # a file of the dataset, not a temp name


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_out(series, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        with nothing_written(tmp_path):
            code, _, err = run_main(capsys, *TRAIN, "--preset", "ci", "--data", series,
                                    "--out", out)  # fmt: skip
    finally:
        out.chmod(0o700)
    assert code == 2
    assert last_line(err) == f"error: cannot write {out / 'phc-u373'}: Permission denied"


def test_ctrl_c_outside_training(tmp_path, capsys, monkeypatch):
    import deepsim_edu.stats

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(deepsim_edu.stats, "results_table", interrupted)
    code, _, err = run_main(capsys, "table", "--results", tmp_path)
    assert code == 130
    assert last_line(err) == "interrupted: no file was left half-written"


def cli(*args, out=None):
    """The CLI in a subprocess with one thread (the same float rounding every time)."""
    return subprocess.run(
        [sys.executable, "-m", "deepsim_edu", *map(str, args)], capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def without_seconds(path):
    return pd.read_csv(path).drop(columns="seconds")


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_run_resumes(series, tmp_path, capsys):
    """SIGINT after the first epoch's checkpoint: exit 130 and one line; the same command
    then finishes the run, with the log and test results of a run never interrupted. Without
    its test results, ``table`` names the run and ``evaluate --run`` alone writes them again."""
    args = [*TRAIN, "--preset", "ci", "--data", series]  # ci: 2 epochs of 10 steps
    stopped = tmp_path / "stopped"
    run = stopped / "phc-u373" / "mse"
    child = subprocess.Popen(
        [sys.executable, "-m", "deepsim_edu", *map(str, args), "--out", str(stopped)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (run / "checkpoint.pt").exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert last_line(err) == RESUMES  # after the progress bar, closed first
    assert not load_checkpoint(run / "checkpoint.pt")["finished"]  # stopped in the middle
    assert not (run / "test_results.csv").exists()

    again = cli(*args, "--out", stopped)
    assert again.returncode == 0, again.stderr[-2000:]
    straight = cli(*args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    other = tmp_path / "straight" / "phc-u373" / "mse"
    assert len(pd.read_csv(run / "log.csv")) == 2
    pd.testing.assert_frame_equal(without_seconds(run / "log.csv"),
                                  without_seconds(other / "log.csv"))  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_csv(run / "test_results.csv"),
                                  pd.read_csv(other / "test_results.csv"))  # fmt: skip

    # a damaged log.csv of the finished run: its command rewrites it from the checkpoint
    # (as after a Ctrl-C between the last checkpoint and its log.csv)
    log_bytes = (run / "log.csv").read_bytes()
    (run / "log.csv").write_bytes(log_bytes[: len(log_bytes) // 2])
    code, _, err = run_main(capsys, *args, "--out", stopped)
    assert code == 0, err[-2000:]
    assert (run / "log.csv").read_bytes() == log_bytes

    # the results gone: table names the run and its command, which writes them again
    expected = pd.read_csv(run / "test_results.csv")
    (run / "test_results.csv").unlink()
    code, _, err = run_main(capsys, "table", "--results", stopped)
    assert code == 2
    assert err.splitlines()[0] == (
        f"trained but not evaluated (run `python -m deepsim_edu evaluate --run {stopped}/"
        "<dataset>/<metric> [--data DIR]`): phc-u373/mse"
    )
    assert last_line(err) == (
        f"error: no test_results.csv under {stopped}/<dataset>/<metric>/ — run "
        "`python -m deepsim_edu experiment` (or `evaluate`) first"
    )
    evaluated = cli("evaluate", "--run", run, "--data", series)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    pd.testing.assert_frame_equal(pd.read_csv(run / "test_results.csv"), expected)


# ----------------------------------------------------------------------------- reading results


def result_rows(dataset, metric, dice):
    return [{"dataset": dataset, "metric": metric, "moving": f"t{i}", "fixed": f"t{i + 1}",
             "dice": d, "dice_before": 0.5, "dice_paper_convention": d, "folding_fraction": 0.0}
            for i, d in enumerate(dice)]  # fmt: skip


@pytest.fixture
def results(tmp_path):
    """platelet-em: deepsim and mse with 4 test pairs and a 2-epoch log each."""
    root = tmp_path / "results"
    for metric, shift in (("deepsim", 0.1), ("mse", 0.0)):
        run = root / "platelet-em" / metric
        write_csv(run / "test_results.csv",
                  result_rows("platelet-em", metric, [0.6 + shift + 0.01 * i for i in range(4)]))
        write_csv(run / "log.csv", [{"epoch": k + 1, "step": 10 * (k + 1),
                                     "val_dice": 0.5 + shift + 0.1 * k} for k in range(2)])
    return root  # fmt: skip


def evaluate_again(run):
    return f"evaluate the run again with `python -m deepsim_edu evaluate --run {run} [--data DIR]`"


BAD_RESULTS = {  # name: (content of platelet-em/mse/test_results.csv, problem)
    "empty": (b"", "empty file (no header, no rows)"),
    "truncated": (b"dataset,metric,moving,fixed,dice\nplatelet-em,mse,t0,t1,0.6\nplatelet-em,ms",
                  "truncated (its last line is cut short)"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\n", "not a CSV table ('utf-8' codec can't decode byte "
               "0x89 in position 0: invalid start byte)"),
    "ragged": (b"dataset,metric,moving,fixed,dice\nplatelet-em,mse,t0,t1,0.6\n"
               b"platelet-em,mse,t1,t2,0.6,0.7,0.8\n",
               "not a CSV table (Error tokenizing data. C error: Expected 5 fields in line 3, "
               "saw 7)"),
    "no dice": (b"dataset,metric,moving,fixed\nplatelet-em,mse,t0,t1\n",
                "no column dice (columns: dataset, metric, moving, fixed)"),
    "text dice": (b"dataset,metric,moving,fixed,dice\nplatelet-em,mse,t0,t1,high\n",
                  "text where numbers belong, in column dice"),
    "header only": (b"dataset,metric,moving,fixed,dice\n", "a header but no rows"),
    "another run": (b"dataset,metric,moving,fixed,dice\nplatelet-em,ncc,t0,t1,0.6\n",
                    "rows of platelet-em/ncc in the folder of platelet-em/mse"),
}  # fmt: skip


@pytest.mark.parametrize("name", BAD_RESULTS)
@pytest.mark.parametrize("command", ["table", "claims", "figures"])
def test_unreadable_results_file_is_named(results, tmp_path, capsys, name, command):
    content, problem = BAD_RESULTS[name]
    run = results / "platelet-em" / "mse"
    (run / "test_results.csv").write_bytes(content)
    extra = ["--out", tmp_path / "figs"] if command == "figures" else []
    with nothing_written(tmp_path):
        code, _, err = run_main(capsys, command, "--results", results, *extra)
    assert code == 2
    path = run / "test_results.csv"
    assert last_line(err) == f"error: {path}: {problem}; {evaluate_again(run)}"


@pytest.mark.parametrize(("content", "problem"), [
    (b"", "empty file (no header, no rows)"),
    (b"epoch,step,val_dice\n1,10,0.5\n2,2", "truncated (its last line is cut short)"),
    (b"epoch,val_dice\n1,0.5\n", "no column step (columns: epoch, val_dice)"),
])  # fmt: skip
@pytest.mark.parametrize("command", ["claims", "figures"])
def test_unreadable_log_is_named(results, tmp_path, capsys, content, problem, command):
    log = results / "platelet-em" / "mse" / "log.csv"
    log.write_bytes(content)
    extra = ["--out", tmp_path / "figs"] if command == "figures" else []
    with nothing_written(tmp_path):
        code, _, err = run_main(capsys, command, "--results", results, *extra)
    assert code == 2
    redo = "run its training command again: it rewrites log.csv from checkpoint.pt"
    assert last_line(err) == f"error: {log}: {problem}; {redo}"


def test_table_names_the_runs_it_leaves_out(results, tmp_path, capsys):
    """Runs with a checkpoint but no test results: one line per kind on stderr, then the
    table of the others on stdout (exit 0)."""
    pe = results / "platelet-em"
    save_checkpoint(pe / "ncc" / "checkpoint.pt", {"finished": True, "epoch": 3})
    save_checkpoint(pe / "ncc-sup" / "checkpoint.pt", {"finished": False, "epoch": 1})
    (pe / "vgg").mkdir()
    (pe / "vgg" / "checkpoint.pt").write_bytes(b"cut short")
    code, out, err = run_main(capsys, "table", "--results", results)
    assert code == 0
    assert err.splitlines() == [
        f"trained but not evaluated (run `python -m deepsim_edu evaluate --run {results}/"
        "<dataset>/<metric> [--data DIR]`): platelet-em/ncc",
        "training not finished, no test results (run its `train` or `experiment` command "
        "again: it resumes, then evaluates): platelet-em/ncc-sup",
        "checkpoint.pt unreadable, no test results (delete the run folder and train again): "
        "platelet-em/vgg",
    ]
    metrics = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    assert metrics == ["metric", "mse", "deepsim", "metric", "mse", "deepsim"]  # both tables


def test_missing_or_bad_run_files(results, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where evaluate's default results/ would be
    missing = tmp_path / "nowhere"
    for command in ("table", "figures", "claims"):
        extra = ["--out", tmp_path / "figs"] if command == "figures" else []
        with nothing_written(tmp_path):
            code, _, err = run_main(capsys, command, "--results", missing, *extra)
        assert code == 2
        assert last_line(err) == (
            f"error: {missing}: no results folder; run `python -m deepsim_edu experiment` first"
        )
    run = results / "platelet-em" / "mse"
    (run / "config.json").write_text('{"dataset": "platelet-em", "metric": "mse"')  # cut short
    with nothing_written(tmp_path):
        code, _, err = run_main(capsys, "evaluate", "--run", run)
    assert code == 2
    assert last_line(err) == (
        f"error: {run / 'config.json'}: not a JSON run config (Expecting ',' delimiter: "
        "line 1 column 43 (char 42))"
    )
    write_json(run / "config.json", {"dataset": "platelet-em", "metric": "mse"})
    with nothing_written(tmp_path):
        code, _, err = run_main(capsys, "evaluate", "--run", run, "--metric", "ncc")
        assert code == 2
        assert last_line(err) == f"error: --metric ncc given, but {run} is a run of mse"
        code, _, err = run_main(capsys, "evaluate", "--metric", "ncc")
        assert code == 2
        assert last_line(err) == "error: evaluate needs --run FOLDER, or --dataset and --metric"
