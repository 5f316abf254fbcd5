"""torch.compile of the SPOT inference graph (heads, optionally + decode), fullgraph.

Options that matter:

- ``mode``: ``"default"`` (Inductor, no CUDA graphs), ``"max-autotune-no-cudagraphs"``,
  ``"reduce-overhead"`` or ``"max-autotune"`` (both capture CUDA graphs: CUDA only, static shapes);
- ``dynamic``: ``False`` compiles for the exact input shapes (one compile per batch size, what CUDA
  graphs need); ``True`` marks the batch dimension dynamic so one compile serves every batch size
  (C and T are fixed by the weights anyway);
- ``fullgraph=True`` always: a graph break is an error, not a silent fallback to eager.

An unsupported combination (CUDA graphs on a CPU model, CUDA graphs with dynamic shapes, an
unknown mode) raises :class:`CompileError`; nothing is silently downgraded.

The compiled callable returns the same tuple as the graph it wraps
(:func:`spot_core.graph.inference_graph`); call it under ``torch.no_grad()`` or
``torch.inference_mode()``. :func:`export.compile.max_abs_diffs` compares it with eager.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from spot_core.config import SpotConfig
from spot_core.errors import SpotError
from spot_core.graph import inference_graph
from spot_core.model import SPOT

__all__ = ["CUDAGRAPH_MODES", "MODES", "CompileError", "check_options", "compile_inference"]

MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
CUDAGRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})


class CompileError(SpotError, ValueError):
    """An unsupported torch.compile setting for this model or device."""


def check_options(mode: str, dynamic: bool, device: torch.device) -> None:
    """Raise :class:`CompileError` for a mode / shape / device combination we do not support."""
    if mode not in MODES:
        raise CompileError(f"unknown compile mode {mode!r}; choose one of {list(MODES)}")
    if mode in CUDAGRAPH_MODES:
        if device.type != "cuda":
            raise CompileError(
                f"mode {mode!r} captures CUDA graphs and needs a CUDA model, got device {device}; "
                "use 'default' or 'max-autotune-no-cudagraphs'"
            )
        if dynamic:
            raise CompileError(f"mode {mode!r} captures CUDA graphs: they need static shapes (dynamic=False)")


def compile_inference(
    model: SPOT,
    cfg: SpotConfig,
    *,
    with_decode: bool = False,
    mode: str = "default",
    dynamic: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Callable[[Tensor], tuple[Tensor, ...]]:
    """Compile the inference graph of ``model`` (a copy in eval mode) with ``fullgraph=True``.

    Returns a callable ``features [B, C, T] -> (logits, mask)`` or, with ``with_decode``,
    ``-> (segments [B, M, 2], scores [B, M], labels [B, M], valid [B, M])``. Compilation happens on
    the first call. With ``dynamic=True`` the batch dimension of the input is marked dynamic on
    every call, so one compile serves all batch sizes >= 2 (and one more for B = 1, which torch
    specialises).
    """
    device = next(model.parameters()).device
    check_options(mode, dynamic, device)
    graph = inference_graph(model, cfg, with_decode=with_decode, dtype=dtype)
    compiled = torch.compile(graph, fullgraph=True, dynamic=False if not dynamic else None, mode=mode)

    def run(x: Tensor) -> tuple[Tensor, ...]:
        if dynamic:
            torch._dynamo.maybe_mark_dynamic(x, 0)
        return compiled(x)

    run.graph = graph  # type: ignore[attr-defined]  # the eager module, for parity checks
    return run
