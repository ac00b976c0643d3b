"""Shared pytest set-up: deterministic seeds and few threads (CI runs on 2 cores)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


# the longest files, longest first (measured: ``--durations``); the rest keep their order
LONGEST_FILES = ("test_book_full.py", "test_experiment_cli.py", "test_pretrained.py",
                 "test_cli_errors.py", "test_book.py", "test_distributed.py",
                 "test_widgets_html.py", "test_experiment.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    """The longest files first, the whole-book build (``test_book_full.py``) at the head.
    pytest-xdist's ``--dist loadfile --no-loadscope-reorder`` hands out files in collection
    order (without ``--no-loadscope-reorder`` it sorts them by their number of tests, and the
    book, of few tests, started minutes late): the book starts at once in one worker while the
    other takes the next long files, and the short files fill both workers at the end (longest
    first: neither ends long after the other)."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep
