"""Fixtures of the pytest-benchmark suites (``pytest benchmarks/ --benchmark-only``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module: the machines are shared, so every benchmark runs on
    one intra-op thread (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
