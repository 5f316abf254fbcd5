"""Batched Gaussian Soft-NMS as one Triton kernel (DESIGN.md section 6), one program per batch row.

The semantics are those of :func:`spot_core.nms.soft_nms` (the PyTorch reference, vectorised over
the batch with a Python loop over the picks): for each row, pick the alive candidate with the
highest current score (equal scores: lowest index), emit it, decay every other candidate by
``exp(-iou^2 / sigma)`` (same label only with ``class_aware``), repeat ``max_detections`` times.
Rows that run out of candidates are padded with ``valid=False``, score 0, segment ``[0, 0]``,
label 0, index -1.

The kernel keeps a row's N candidates in registers (``BLOCK_N = next_pow2(N)``, at most
:data:`MAX_N`) and runs the D picks in one loop, so a whole row costs one launch instead of
D rounds of small PyTorch ops; nothing goes back to the host.

One file holds (house style, as :mod:`kernels.mask_decode`):

* ``_soft_nms_kernel``: the Triton kernel (built lazily on first launch, so importing this module
  never imports triton; ``TRITON_INTERPRET=1`` runs it on CPU tensors);
* :func:`soft_nms`: the checked launcher that picks a backend;
* :func:`soft_nms_op`: the same as the custom op ``torch.ops.spot.soft_nms`` (lazily registered,
  CPU / no-triton implementation = the PyTorch reference, with a fake implementation for
  torch.compile / torch.export).

Numerics: segments and scores are read in their dtype and computed in float32 (IoU, decay and
products in the reference's order). ``tl.exp`` may differ from ``torch.exp`` by an ulp, so decayed
scores agree to float32 tolerance (~1e-6 relative) and the kept set and order agree unless two
candidates' scores lie within that tolerance of each other. NaN scores are not checked (no host
sync); :func:`spot_core.decode.decode_windows` never produces them. float64 segments: the
reference keeps float64, so ``backend="auto"`` uses the reference for them and ``"triton"``
refuses them.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

import torch
from torch import Tensor

from spot_core import nms as reference

from ._triton import Backend, interpret_mode, next_pow2, triton_available, use_triton

__all__ = ["MAX_N", "soft_nms", "soft_nms_op", "triton_available"]

log = logging.getLogger(__name__)


# Candidates per row the kernel holds in registers (the next power of two of N). ANet windows have
# N = 140; per-video merges of long videos can exceed this: those use the reference ("auto") or
# are refused ("triton").
MAX_N = 8192


# ``triton.language`` once :func:`_kernel` has run: Triton resolves the names a kernel uses in its
# module's globals (the interpreter patches ``tl`` there), so it must be a module global.
tl: Any = None


@cache
def _kernel(interpret: bool) -> Any:
    """Build (once per interpreter mode) the Triton kernel; as in :mod:`kernels.mask_decode`."""
    del interpret  # only the cache key: triton reads the environment itself
    global tl
    import triton
    import triton.language

    tl = triton.language

    @triton.jit
    def _soft_nms_kernel(
        seg_ptr, score_ptr, lab_ptr, valid_ptr,
        oseg_ptr, oscore_ptr, olab_ptr, ovalid_ptr, oidx_ptr,
        N, inv_sigma,
        s_gb, s_gn, s_g2,
        s_cb, s_cn,
        s_lb, s_ln,
        s_vb, s_vn,
        D: tl.constexpr, BLOCK_N: tl.constexpr, CLASS_AWARE: tl.constexpr,
    ):  # fmt: skip
        """One program per batch row b; candidates n < N in registers.

        For i in [0, D):
            cand[n] = score[n] if alive[n] else -inf
            m = max cand;  best = min{n: cand[n] = m}          (first maximum)
            emit (best, m) if m > -inf else an invalid row
            alive[best] = False
            iou[n] = |[s_b, e_b) & [s_n, e_n)| / |[s_b, e_b) | [s_n, e_n)|   (0 if the union is 0)
            score[n] *= exp(-iou[n]^2 * inv_sigma)   (only where label[n] = label[best] if CLASS_AWARE)
        """
        b = tl.program_id(0).to(tl.int64)
        pos = tl.arange(0, BLOCK_N)
        in_n = pos < N
        g = seg_ptr + b * s_gb + pos * s_gn
        st = tl.load(g, mask=in_n, other=0.0).to(tl.float32)
        en = tl.load(g + s_g2, mask=in_n, other=0.0).to(tl.float32)
        alive = (tl.load(valid_ptr + b * s_vb + pos * s_vn, mask=in_n, other=0) != 0) & in_n
        sc = tl.load(score_ptr + b * s_cb + pos * s_cn, mask=in_n, other=0.0).to(tl.float32)
        sc = tl.where(alive, sc, 0.0)
        lab = tl.load(lab_ptr + b * s_lb + pos * s_ln, mask=in_n, other=0).to(tl.int64)
        ln = tl.maximum(en - st, 0.0)
        for i in range(D):  # compile-time bound (D is constexpr): a loop, not unrolled
            cand = tl.where(alive, sc, float("-inf"))
            m = tl.max(cand, axis=0)
            best = tl.min(tl.where(cand == m, pos, BLOCK_N), axis=0)
            ok = m > float("-inf")
            is_best = pos == best
            bs = tl.sum(tl.where(is_best, st, 0.0), axis=0)
            be = tl.sum(tl.where(is_best, en, 0.0), axis=0)
            bl = tl.sum(tl.where(is_best, lab, 0), axis=0)
            o = b * D + i
            tl.store(oscore_ptr + o, tl.where(ok, m, 0.0))
            tl.store(oseg_ptr + 2 * o, tl.where(ok, bs, 0.0))
            tl.store(oseg_ptr + 2 * o + 1, tl.where(ok, be, 0.0))
            tl.store(olab_ptr + o, tl.where(ok, bl, 0))
            tl.store(ovalid_ptr + o, ok.to(tl.int8))
            tl.store(oidx_ptr + o, tl.where(ok, best.to(tl.int64), -1))
            alive = alive & ~is_best
            inter = tl.maximum(tl.minimum(be, en) - tl.maximum(bs, st), 0.0)
            union = tl.maximum(be - bs, 0.0) + ln - inter
            iou = tl.where(union > 0, inter / tl.where(union > 0, union, 1.0), 0.0)
            decay = tl.exp(-(iou * iou) * inv_sigma)
            if CLASS_AWARE:
                decay = tl.where(lab == bl, decay, 1.0)
            sc = sc * decay

    return _soft_nms_kernel


def _soft_nms_triton(
    segments: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, sigma: float, D: int, class_aware: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    B, N = scores.shape
    dev = scores.device
    oseg = torch.empty(B, D, 2, dtype=torch.float32, device=dev)
    oscore = torch.empty(B, D, dtype=torch.float32, device=dev)
    olab = torch.empty(B, D, dtype=torch.int64, device=dev)
    ovalid = torch.empty(B, D, dtype=torch.int8, device=dev)
    oidx = torch.empty(B, D, dtype=torch.int64, device=dev)
    if B == 0 or D == 0:
        return oseg, oscore, olab, ovalid.bool(), oidx
    if N == 0:  # nothing to pick: all padding
        return oseg.zero_(), oscore.zero_(), olab.zero_(), ovalid.zero_().bool(), oidx.fill_(-1)
    block_n = max(16, next_pow2(N))
    valid_i8 = valid.view(torch.int8) if valid.dtype == torch.bool else valid
    _kernel(interpret_mode())[(B,)](
        segments, scores, labels, valid_i8,
        oseg, oscore, olab, ovalid, oidx,
        N, 1.0 / float(sigma),
        *segments.stride(), *scores.stride(), *labels.stride(), *valid_i8.stride(),
        D=D, BLOCK_N=block_n, CLASS_AWARE=bool(class_aware),
        num_warps=max(1, min(8, block_n // 256)),
    )  # fmt: skip
    return oseg, oscore, olab, ovalid.bool(), oidx


@torch.no_grad()
def soft_nms(
    segments: Tensor,
    scores: Tensor,
    labels: Tensor,
    valid: Tensor,
    *,
    sigma: float,
    max_detections: int,
    class_aware: bool = False,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gaussian Soft-NMS over padded proposals; arguments and outputs as :func:`spot_core.nms.soft_nms`.

    Args:
        backend: ``"auto"`` (the kernel for CUDA tensors when triton imports, float32/16 segments
            and ``N <= MAX_N``; else the reference), ``"triton"`` (the kernel or an error: CUDA
            tensors, or CPU tensors under ``TRITON_INTERPRET=1``) or ``"reference"``.

    Returns:
        ``(segments [B, D, 2] float32, scores [B, D], labels [B, D] int64, valid [B, D], index [B, D])``.
    """
    reference.check_inputs(segments, scores, labels, valid, sigma, max_detections)
    N = segments.shape[1]
    fits = N <= MAX_N and segments.dtype != torch.float64
    choice = use_triton("soft_nms", backend, segments.device, fits=fits)
    if choice is None:
        log.warning("soft_nms: triton is not importable; using the PyTorch reference on CUDA")
    elif choice and backend == "triton" and not fits:
        raise RuntimeError(
            f"soft_nms: backend='triton' takes at most MAX_N = {MAX_N} candidates per row and "
            f"float32/16 segments, got N = {N}, {segments.dtype}; use backend='auto' or 'reference'"
        )
    if choice:
        return _soft_nms_triton(segments, scores, labels, valid, sigma, max_detections, class_aware)
    return reference.soft_nms(
        segments, scores, labels, valid, sigma=sigma, max_detections=max_detections, class_aware=class_aware
    )


@cache
def soft_nms_op() -> Any:
    """Register (on first call) and return the custom op ``torch.ops.spot.soft_nms``.

    ``op(segments, scores, labels, valid, sigma, max_detections, class_aware)`` -> the five outputs
    of :func:`soft_nms`. The Triton kernel for CUDA tensors (when triton imports and the row fits),
    the PyTorch reference otherwise; a fake implementation gives torch.compile / torch.export one
    opaque node.
    """

    @torch.library.custom_op("spot::soft_nms", mutates_args=())
    def op(
        segments: Tensor,
        scores: Tensor,
        labels: Tensor,
        valid: Tensor,
        sigma: float,
        max_detections: int,
        class_aware: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        seg, sc, lab, val, idx = soft_nms(
            segments, scores, labels, valid,
            sigma=sigma, max_detections=max_detections, class_aware=class_aware,
        )  # fmt: skip
        return seg.float(), sc, lab.long(), val, idx

    @op.register_fake
    def _(segments, scores, labels, valid, sigma, max_detections, class_aware):
        B, D = segments.shape[0], max_detections
        return (
            segments.new_empty(B, D, 2, dtype=torch.float32),
            segments.new_empty(B, D, dtype=torch.float32),
            segments.new_empty(B, D, dtype=torch.int64),
            segments.new_empty(B, D, dtype=torch.bool),
            segments.new_empty(B, D, dtype=torch.int64),
        )

    return op
