"""Shared fixtures.

Tests that read the real data in ``../shared/data`` use the ``shared_data`` fixture: they skip
when the folder is absent (a user's fresh clone) and fail instead when ``SPOT_REQUIRE_SHARED_DATA=1``
(set by ``.ci/run``), so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPOT_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        msg = f"real data not found at {path}"
        if os.environ.get("SPOT_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " (SPOT_REQUIRE_SHARED_DATA=1: this test must not skip)")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips (or fails under CI) when absent."""
    return _need(SHARED_DATA)
