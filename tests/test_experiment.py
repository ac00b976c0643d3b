"""experiment._side_by_side and _grid_side_by_side: runs in worker processes come back in
order; a DeepSim run waits for its extractor, the other runs do not; failures surface."""

import operator
import time
from pathlib import Path

import pytest

from deepsim_edu.experiment import _grid_side_by_side, _side_by_side, run_experiment


def _slow_extractor(folder: str) -> str:
    time.sleep(1.0)
    (Path(folder) / "extractor.done").write_text("x")
    return "extractor"


def _run(folder: str, name: str) -> tuple[str, bool]:
    """(name, whether the extractor had finished when the run started)."""
    return name, (Path(folder) / "extractor.done").is_file()


def test_side_by_side_keeps_the_order_of_the_calls():
    calls = [(operator.truediv, 1, 2), (operator.truediv, 3, 4), (pow, 2, 10)]
    assert _side_by_side(calls, jobs=2) == [0.5, 0.75, 1024] == _side_by_side(calls, jobs=1)


def test_side_by_side_raises_the_failure_of_a_worker():
    with pytest.raises(ZeroDivisionError):
        _side_by_side([(operator.truediv, 1, 1), (operator.truediv, 1, 0)], jobs=2)


@pytest.mark.parametrize("jobs", [0, -1, 1.5])
def test_run_experiment_refuses_a_bad_jobs_count(jobs):
    with pytest.raises(ValueError, match="jobs must be a whole number >= 1"):
        run_experiment("quick", datasets=(), jobs=jobs)


def test_grid_queues_a_deepsim_run_after_its_extractor_and_the_others_at_once(tmp_path):
    folder = str(tmp_path)
    grid = [("d", "mse"), ("d", "deepsim"), ("d", "ncc")]
    runs = {key: (_run, folder, key[1]) for key in grid}
    rows = _grid_side_by_side({"d": (_slow_extractor, folder)}, runs, grid, jobs=2)
    assert [name for name, _ in rows] == ["mse", "deepsim", "ncc"]  # the grid's order
    assert dict(rows) == {"mse": False, "ncc": False, "deepsim": True}
    with pytest.raises(ZeroDivisionError):
        _grid_side_by_side({}, {("d", "mse"): (operator.truediv, 1, 0)}, [("d", "mse")], jobs=2)
