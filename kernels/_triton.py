"""Triton plumbing shared by the kernels: availability, interpreter mode, launch helpers.

Triton is never imported at import time: :func:`triton_available` tries once (cached), and each
kernel module builds its kernel lazily on first launch, because ``triton.jit`` reads
``TRITON_INTERPRET`` when it decorates (a process may set it after import; tests do).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Literal

import torch

__all__ = ["Backend", "interpret_mode", "next_pow2", "triton_available", "use_triton"]


#: a kernel's backend: ``"auto"`` (Triton for CUDA tensors when it imports, else the reference),
#: ``"triton"`` (the kernel or an error) or ``"reference"`` (the PyTorch reference)
Backend = Literal["auto", "triton", "reference"]


@cache
def triton_available() -> bool:
    """Whether ``import triton`` works (cached)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpret_mode() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set: Triton kernels then run on CPU tensors in the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``): Triton block sizes."""
    return 1 << max(0, (n - 1).bit_length())


def use_triton(name: str, backend: str, device: torch.device, *, fits: bool = True) -> bool | None:
    """Resolve ``backend`` (``"auto"``, ``"triton"``, ``"reference"``) for op ``name`` on ``device``.

    ``"triton"`` that cannot run here raises :class:`RuntimeError` (never a silent fallback);
    ``"auto"`` picks the kernel for CUDA tensors when triton imports and the input ``fits``; an
    unknown name raises :class:`ValueError`. Returns None for ``"auto"`` on CUDA without triton
    (the caller logs that it falls back to the reference), else the choice.
    """
    if backend == "reference":
        return False
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(f"{name}: backend='triton' but triton is not importable")
        if device.type != "cuda" and not interpret_mode():
            raise RuntimeError(
                f"{name}: backend='triton' needs CUDA tensors (got {device}); set "
                "TRITON_INTERPRET=1 to run the kernel on CPU in the Triton interpreter"
            )
        return True
    if backend == "auto":
        if device.type == "cuda" and not triton_available():
            return None
        return device.type == "cuda" and fits
    raise ValueError(f"{name}: unknown backend {backend!r}; use 'auto', 'triton' or 'reference'")
