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


# ------------------------------------------------------------------------ Triton kernel tests
# Kernel tests (named ``test_kernel_*``) run on CUDA when a GPU is present, else on CPU in the
# Triton interpreter. The interpreter needs ``TRITON_INTERPRET=1`` before ``import triton``
# (triton's own ``tl`` functions are ``triton.jit``-decorated at import), which a test cannot
# guarantee in a shared pytest process: without a GPU each kernel test file reruns its
# ``test_kernel_*`` tests in a child pytest with the variable set (:func:`run_kernel_tests_in_interpreter`)
# and the in-process copies skip, or run directly when the variable was set before pytest started.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # set before this process started


@pytest.fixture
def kernel_device() -> str:
    """ "cuda" when a GPU is present, else "cpu" when the Triton interpreter is on; else skip."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if not INTERPRETED:
        pytest.skip(
            "no GPU: the kernel tests run in the interpreter subprocess (test_interpreter_subprocess)"
        )
    return "cpu"


def run_kernel_tests_in_interpreter(test_file: str) -> None:
    """Run ``test_file``'s ``test_kernel_*`` tests in a child pytest under ``TRITON_INTERPRET=1``;
    fail unless they all pass and none skips."""
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, "-k", "test_kernel_"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout, res.stdout[-2000:]


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    the tiny models are as fast on one, and far faster when the 2 CPUs are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
