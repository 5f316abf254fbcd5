"""torch.compile of the SPOT inference graph: :mod:`runtime.compiled` (re-exported here) and the
parity helper :func:`max_abs_diffs`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from runtime.compiled import CUDAGRAPH_MODES, MODES, CompileError, check_options, compile_inference

__all__ = ["CUDAGRAPH_MODES", "MODES", "CompileError", "check_options", "compile_inference", "max_abs_diffs"]


def max_abs_diffs(
    got: Sequence[Tensor], want: Sequence[Tensor], names: Sequence[str] | None = None
) -> dict[str, float]:
    """``max |got - want|`` per output (in float64; booleans and integers as numbers)."""
    names = names or [str(i) for i in range(len(want))]
    out = {}
    for n, g, w in zip(names, got, want, strict=True):
        if g.shape != w.shape:
            raise ValueError(f"output {n}: shape {tuple(g.shape)} vs {tuple(w.shape)}")
        d = (g.detach().double().cpu() - w.detach().double().cpu()).abs()
        out[n] = float(d.max()) if d.numel() else 0.0
    return out
