"""Shared pytest set-up: deterministic seeds and few threads (CI runs on 2 cores)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """The whole-book build (``test_book_full.py``, the longest file) first. pytest-xdist's
    ``--dist loadfile`` hands out files in collection order, so it starts at once in one worker
    while the other runs the remaining files; collected in name order it waited behind them."""
    items.sort(key=lambda item: item.path.name != "test_book_full.py")  # stable: the rest keep
