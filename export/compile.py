"""The compile parity helper :func:`max_abs_diffs` (torch.compile of the inference graph itself
lives in :mod:`runtime.compiled`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

__all__ = ["max_abs_diffs"]


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
