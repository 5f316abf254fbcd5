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


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Runs of ``python -m benchmarks.track`` record what was measured: the subset, the machine's
    history folder and the checkpoint (if any); the commit is pytest-benchmark's ``commit_info``."""
    import os

    if os.environ.get("SPOT_TRACK_SUBSET"):
        output_json["spot_track"] = {
            "subset": os.environ["SPOT_TRACK_SUBSET"],
            "machine": os.environ.get("SPOT_TRACK_MACHINE", ""),
            "checkpoint": os.environ.get("SPOT_TRACK_CHECKPOINT", ""),
        }
