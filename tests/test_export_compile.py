"""torch.compile (fullgraph) of the inference graph vs eager; unsupported options are errors."""

from __future__ import annotations

import pytest
import torch

from export.compile import max_abs_diffs
from runtime.compiled import CompileError, check_options, compile_inference
from spot_core.config import SpotConfig
from spot_core.model import SPOT

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unsupported_options_are_errors():
    cpu = torch.device("cpu")
    with pytest.raises(CompileError, match="unknown compile mode"):
        check_options("fast", False, cpu)
    with pytest.raises(CompileError, match="needs a CUDA model"):
        check_options("reduce-overhead", False, cpu)
    with pytest.raises(CompileError, match="static shapes"):
        check_options("reduce-overhead", True, torch.device("cuda"))
    check_options("default", True, cpu)


@pytest.mark.slow
def test_compiled_heads_and_decode_match_eager():
    """One compile (dynamic batch) of model + decode; the heads are checked through the decode's inputs."""
    cfg = SpotConfig.preset("toy")
    torch.manual_seed(0)
    model = SPOT(cfg.model).eval()
    run = compile_inference(model, cfg, with_decode=True, dynamic=True)
    for b in (2, 5):
        x = torch.randn(b, cfg.model.feat_dim, cfg.model.num_snippets)
        with torch.no_grad():
            got = run(x)
            want = run.graph(x)
        seg, sc, lab, val = got
        assert val.any()
        assert torch.equal(val, want[3]) and torch.equal(lab, want[2]) and torch.equal(seg, want[0])
        torch.testing.assert_close(sc, want[1], atol=1e-5, rtol=1e-4)
        diffs = max_abs_diffs(got, want, ["segments", "scores", "labels", "valid"])
        assert diffs["segments"] == 0.0 and diffs["scores"] <= 1e-5
