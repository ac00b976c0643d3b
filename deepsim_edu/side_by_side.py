"""Independent jobs side by side: ``side_by_side(calls, jobs)`` runs ``f(*args)`` for each call
in ``jobs`` worker processes of one thread each (the training grid, the fresh evaluation of a
release), and returns the results in the order of the calls.

Workers are *spawned* (fresh interpreters, no fork: torch and threads do not mix) and each uses
one thread, so ``jobs`` processes share the cores fairly. The first failure is raised.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor


def one_thread() -> None:
    """Worker set-up: one thread per process, so ``jobs`` processes share the cores fairly."""
    import torch

    torch.set_num_threads(1)


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """A pool of ``jobs`` spawned worker processes of one thread each."""
    return ProcessPoolExecutor(jobs, multiprocessing.get_context("spawn"), initializer=one_thread)


def side_by_side(calls: list[tuple], jobs: int) -> list:
    """``[f(*args) for f, *args in calls]``, in ``jobs`` worker processes when ``jobs > 1``.

    Results come back in the order of ``calls``; the first failure is raised.
    """
    if jobs <= 1 or len(calls) <= 1:
        return [f(*args) for f, *args in calls]
    with worker_pool(min(jobs, len(calls))) as pool:
        futures = [pool.submit(f, *args) for f, *args in calls]
        return [future.result() for future in futures]


__all__ = ["one_thread", "side_by_side", "worker_pool"]
