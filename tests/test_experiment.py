"""experiment._side_by_side: runs in worker processes come back in order; failures surface."""

import operator

import pytest

from deepsim_edu.experiment import _side_by_side, run_experiment


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
