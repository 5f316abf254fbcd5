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


# ------------------------------------------------------------------------ tiny models and files
@pytest.fixture(scope="session")
def make_model():
    """``make_model(cfg, seed=0, sharpen=None)``: a random-weight SPOT of ``cfg`` in eval mode, built
    right after ``torch.manual_seed(seed)``; ``sharpen`` multiplies the classifier's weight and bias
    (sharper class scores: a full set of detections from every window) and, for the ``offset`` mask
    head, adds 0.5 to its extents' bias (random extents are half negative, i.e. empty boxes; +0.5 is
    8 snippets on each side)."""
    import torch

    from spot_core.model import SPOT

    def make(cfg, seed: int = 0, sharpen: float | None = None):
        torch.manual_seed(seed)
        model = SPOT(cfg.model).eval()
        if sharpen is not None:
            with torch.no_grad():
                model.classifier.weight.mul_(sharpen)
                model.classifier.bias.mul_(sharpen)
                if cfg.model.mask_head == "offset":
                    model.mask_box.bias.add_(0.5)
        return model

    return make


@pytest.fixture(scope="session")
def make_features():
    """``make_features(cfg, b, seed=1)``: random features ``[b, C, T]`` from their own generator."""
    import torch

    def make(cfg, b: int, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(b, cfg.model.feat_dim, cfg.model.num_snippets, generator=g)

    return make


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory, make_model):
    """The toy preset's random-weight model (seed 0), its checkpoint and heads ONNX, the heads ONNX
    of other weights (seed 1) and a tiny synthetic dataset (3 training, 2 validation videos):
    ``{"cfg", "model", "ckpt", "onnx", "other", "data", "dir"}``, built once per test module."""
    from export.onnx import export_onnx
    from spot_core.checkpoint import save_model
    from spot_core.config import SpotConfig
    from spot_core.data.synthetic import generate_dataset

    d = tmp_path_factory.mktemp("toy_files")
    cfg = SpotConfig.preset("toy")
    model = make_model(cfg, 0)
    ckpt = save_model(d / "model.safetensors", model, cfg)
    onnx = export_onnx(model, cfg, d / "model.onnx")
    other = export_onnx(make_model(cfg, 1), cfg, d / "other.onnx")
    data = generate_dataset(d / "data", cfg, num_train=3, num_val=2, seed=0)
    return {"cfg": cfg, "model": model, "ckpt": ckpt, "onnx": onnx, "other": other, "data": data, "dir": d}
