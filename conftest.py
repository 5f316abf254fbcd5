"""Fixtures shared by ``tests/`` and ``benchmarks/`` (each folder's own conftest adds its own)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module (request with ``pytest.mark.usefixtures``): the tiny
    models are as fast on one, far faster when the 2 CPUs are shared, and benchmarks stay comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
