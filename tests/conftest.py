"""Shared pytest set-up: deterministic seeds and few threads (CI runs on 2 cores)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
