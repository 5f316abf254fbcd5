"""Fused mask decode (DESIGN.md section 6): step 4 of :func:`spot_core.decode.decode_windows`
straight from the mask head's hidden map, never writing the ``[B, T, T]`` mask to memory.

The mask head's last layer is a bias-free 1x1 conv, so row t of the mask of window b is
``mask[b, t, :] = sigmoid(W2[t] @ h[b])`` with ``h [B, H, T]`` the hidden map after the ReLU
(:meth:`spot_core.model.SPOT.mask_hidden`) and ``W2 [T, H]`` (:attr:`SPOT.mask_weight`). Decode
only needs the k top rows, so this module computes just those rows and, for each mask threshold,
the step-4 proposal (validity, segment, label, score) of that row.

One file holds the three pieces (house style, Liger-Kernel):

* :func:`mask_decode_reference`: plain PyTorch, the CPU implementation and the test oracle;
* ``_mask_decode_kernel``: the Triton kernel, one program per (window, top row);
* :func:`mask_decode`: the checked launcher that picks a backend;
* :func:`decode_inputs`: steps 1-3 of decode_windows (top rows, probabilities, labels, window
  score), so ``mask_decode(h, W2, *decode_inputs(logits))`` equals decode_windows' mask proposals;
* :func:`mask_decode_op`: the same as the custom op ``torch.ops.spot.mask_decode`` (lazily
  registered, with a fake implementation for torch.compile / torch.export).

Interpreter: on CPU the kernel runs only under ``TRITON_INTERPRET=1``, which must be set before
``import triton`` (triton's own ``tl`` functions are decorated at import). This module never
imports triton at import time; the kernel is built on first launch.

Numerics (both backends): h and W2 are read in their own dtype and upcast to float32; the row
logits are accumulated in float32 (the reference uses one fp32 ``einsum``; keep TF32 off, which
is PyTorch's default for matmuls); ``sigmoid`` and the thresholding run in float32. Run
boundaries are therefore exact except where a mask value lies within float32 rounding (~1e-6) of a
threshold; scores agree to float32 tolerance.

NaN: a NaN entry of h (or W2) makes the affected mask values NaN; NaN is never ``> threshold``,
so those snippets count as off (they end runs and never join a segment). This is documented
behaviour, not an error: no host sync is spent on a NaN scan. (:func:`decode_windows` instead
rejects a NaN mask.)
"""

from __future__ import annotations

import logging
import math
from functools import cache
from typing import Any, NamedTuple

import torch
from torch import Tensor

from spot_core import decode_steps as steps
from spot_core.config import DecodeConfig

from ._triton import Backend, interpret_mode, next_pow2, triton_available, use_triton

__all__ = [
    "MaskProposals",
    "decode_inputs",
    "mask_decode",
    "mask_decode_op",
    "mask_decode_reference",
    "triton_available",
]

log = logging.getLogger(__name__)


class MaskProposals(NamedTuple):
    """Step-4 mask proposals, ``[B, k, nm]`` (nm = ``len(cfg.mask_thresholds)``), top-row major.

    ``x.reshape(B, k * nm, ...)`` is the mask-proposal slice ``[:, :k * nm]`` of
    :class:`spot_core.decode.Proposals`. Invalid proposals: ``valid=False``, score 0, segment
    ``[0, 0]``, label 0.
    """

    segments: Tensor  # [B, k, nm, 2] float32, [start, end) in snippets
    scores: Tensor  # [B, k, nm] float32
    labels: Tensor  # [B, k, nm] int64
    valid: Tensor  # [B, k, nm] bool


# ------------------------------------------------------------------------------------ inputs
@torch.no_grad()
def decode_inputs(
    logits: Tensor,
    cfg: DecodeConfig,
    *,
    video_class: Tensor | None = None,
    video_score: Tensor | None = None,
    valid_len: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Steps 1-3 of :func:`spot_core.decode.decode_windows`: ``(top, probs, labels, scale)``.

    logits ``[B, K+1, T]`` -> top ``[B, k]`` (stable top-``min(top_k, T)`` valid snippets), probs
    ``[B, K+1, T]`` (float32 softmax), labels ``[B, k]`` (window class or the top snippets'
    classes, per ``cfg.class_mode``) and scale ``[B]`` (window score; None in snippet mode): the
    arguments :func:`mask_decode` needs to reproduce decode_windows' mask proposals.
    """
    d = steps.decode_inputs(
        logits, cfg, video_class=video_class, video_score=video_score, valid_len=valid_len
    )
    return d.top, d.p, steps.row_labels(d), d.ws


# ------------------------------------------------------------------------------------ reference
def mask_decode_reference(
    h: Tensor,
    w2: Tensor,
    top: Tensor,
    probs: Tensor,
    cfg: DecodeConfig,
    *,
    labels: Tensor,
    scale: Tensor | None = None,
    valid_len: Tensor | None = None,
    rows_out: Tensor | None = None,
) -> MaskProposals:
    """Plain-PyTorch fused mask decode; same arguments as :func:`mask_decode` (inputs not checked).

    Computes ``rows = sigmoid(einsum(W2[top], h))`` ``[B, k, T]`` in float32, then step 4 of
    :func:`spot_core.decode.decode_windows` with its own helpers.
    """
    B, _, T = h.shape
    top = top.long()
    valid_t = steps.valid_snippets(B, T, valid_len, h.device)  # valid_t: [B, T]
    top_ok = valid_t.gather(1, top)  # top_ok: [B, k]
    rows = torch.sigmoid(torch.einsum("bkh,bhu->bku", w2.float()[top], h.float()))  # rows: [B, k, T]
    if rows_out is not None:
        rows_out.copy_(rows)
    return MaskProposals(*steps.mask_proposals(rows, top, top_ok, valid_t, probs, labels, scale, cfg))


# ------------------------------------------------------------------------------------ triton
# Set by :func:`_kernel` (triton is imported lazily): ``triton.language`` and the scan's combine
# function. Triton resolves the names a kernel uses in its module's globals, not in closures, and
# the interpreter patches ``tl`` there, so both must be module globals.
tl: Any = None
_max_combine: Any = None


@cache
def _kernel(interpret: bool) -> Any:
    """Build (once per interpreter mode) the Triton kernel.

    Built lazily because ``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates: importing this
    module never imports triton, and a process may set the variable after import (tests do).
    """
    del interpret  # only the cache key: triton reads the environment itself
    global tl, _max_combine
    import triton
    import triton.language

    tl = triton.language

    @triton.jit
    def _max_combine(a, b):
        return tl.maximum(a, b)

    @triton.jit
    def _mask_decode_kernel(
        h_ptr, w2_ptr, top_ptr, probs_ptr, lab_ptr, scale_ptr, vlen_ptr, thr_ptr,
        seg_ptr, score_ptr, olab_ptr, valid_ptr, rows_ptr,
        k, min_span, C,
        s_hb, s_hh, s_ht,
        s_wt, s_wh,
        s_tb, s_tk,
        s_pb, s_pc, s_pt,
        s_lb, s_lk,
        H: tl.constexpr, T: tl.constexpr, NM: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr,
        ANCHORED: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_VLEN: tl.constexpr,
        STORE_ROWS: tl.constexpr,
    ):  # fmt: skip
        """One program per (window b, top row j); t = top[b, j], l = labels[b, j].

        Maths, with u in [0, T):
            z[u]   = sum_h W2[t, h] * h[b, h, u]            (float32 accumulation)
            r[u]   = sigmoid(z[u])                          (row t of the mask; never stored)
            ok_u   = u < valid_len[b]
        For each threshold th_i (i < NM):
            on[u]  = r[u] > th_i and ok_u                   (NaN r: off)
            first  = min{u: on[u]},  last = max{u: on[u]}
            runs:  lastoff[u] = max{v <= u: not on[v]} (-1 if none), len[u] = u - lastoff[u] if on
            filled:   L = max_u len[u]; e = min{u: len[u] = L} (earliest longest run); a = e - L + 1
                      segment [first, last + 1)
            anchored: on[t] required; a = max{v < t: not on[v]} + 1, e = min{v > t: not on[v]} - 1,
                      L = e - a + 1; segment [a, e + 1)
            valid  = L > 0 and (e - a) >= min_span and t < valid_len[b]
            score  = max_{u in [a, e]} probs[b, l, u] * mean_{u in [a, e]} r[u]  (* scale[b])
        Invalid: segment [0, 0], score 0, label 0.
        """
        pid = tl.program_id(0)
        b = (pid // k).to(tl.int64)  # int64 offsets: no overflow past 2**31 elements
        j = pid % k
        t = tl.load(top_ptr + b * s_tb + j * s_tk).to(tl.int32)
        lab = tl.load(lab_ptr + b * s_lb + j * s_lk)
        # device-side guard (the launcher's range checks can be skipped, e.g. inside the custom op):
        # a top index outside [0, T) or a label outside [0, C) gives invalid proposals, never an
        # out-of-bounds read
        idx_ok = (t >= 0) & (t < T) & (lab >= 0) & (lab < C)
        t = tl.where(idx_ok, t, 0)
        lab = tl.where(idx_ok, lab, 0)
        pos = tl.arange(0, BLOCK_T)
        in_t = pos < T

        # the mask row r[u] = sigmoid(W2[t] . h[b, :, u]), fp32 accumulation
        acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        offs_h = tl.arange(0, BLOCK_H)
        for h0 in range(0, H, BLOCK_H):  # compile-time bounds (H is constexpr)
            hh = h0 + offs_h
            in_h = hh < H
            w = tl.load(w2_ptr + t * s_wt + hh * s_wh, mask=in_h, other=0.0).to(tl.float32)
            hp = h_ptr + b * s_hb + hh[:, None] * s_hh + pos[None, :] * s_ht
            x = tl.load(hp, mask=in_h[:, None] & in_t[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(w[:, None] * x, axis=0)
        e_neg = tl.exp(-tl.abs(acc))  # stable sigmoid: no exp overflow for very negative z
        r = tl.where(acc >= 0, 1.0 / (1.0 + e_neg), e_neg / (1.0 + e_neg))
        if STORE_ROWS:  # the k top rows only ([B, k, T], contiguous): step 5 needs their maxima
            tl.store(rows_ptr + (b * k + j) * T + pos, r, mask=in_t)

        if HAS_VLEN:
            vlen = tl.minimum(tl.maximum(tl.load(vlen_ptr + b).to(tl.int32), 0), T)
        else:
            vlen = T
        ok_u = in_t & (pos < vlen)
        top_ok = (t < vlen) & idx_ok
        p = tl.load(probs_ptr + b * s_pb + lab * s_pc + pos * s_pt, mask=in_t, other=0.0).to(tl.float32)
        if HAS_SCALE:
            sc = tl.load(scale_ptr + b).to(tl.float32)
        else:
            sc = 1.0

        for i in tl.static_range(NM):
            th = tl.load(thr_ptr + i)
            on = (r > th) & ok_u
            first = tl.min(tl.where(on, pos, T), axis=0)
            last = tl.max(tl.where(on, pos, -1), axis=0)
            if ANCHORED:
                a = tl.max(tl.where((pos < t) & ~on, pos, -1), axis=0) + 1
                e = tl.min(tl.where((pos > t) & ~on, pos, BLOCK_T), axis=0) - 1
                t_on = tl.sum(tl.where((pos == t) & on, 1, 0), axis=0) > 0
                run_len = tl.where(t_on, e - a + 1, 0)
                seg_s = a
                seg_e = e + 1
            else:
                lastoff = tl.associative_scan(tl.where(on, -1, pos), 0, _max_combine)
                ln = tl.where(on, pos - lastoff, 0)
                run_len = tl.max(ln, axis=0)
                e = tl.min(tl.where((ln == run_len) & on, pos, BLOCK_T), axis=0)
                a = e - run_len + 1
                seg_s = first
                seg_e = last + 1
            valid = (run_len > 0) & (e - a >= min_span) & top_ok
            in_run = (pos >= a) & (pos <= e)
            p_max = tl.max(tl.where(in_run, p, float("-inf")), axis=0)
            p_max = tl.where(run_len > 0, p_max, 0.0)  # no -inf * 0 for empty runs
            m_sum = tl.sum(tl.where(in_run, r, 0.0), axis=0)
            score = p_max * (m_sum / tl.maximum(run_len, 1).to(tl.float32)) * sc
            o = (b * k + j) * NM + i
            tl.store(score_ptr + o, tl.where(valid, score, 0.0))
            tl.store(seg_ptr + 2 * o, tl.where(valid, seg_s, 0).to(tl.float32))
            tl.store(seg_ptr + 2 * o + 1, tl.where(valid, seg_e, 0).to(tl.float32))
            tl.store(olab_ptr + o, tl.where(valid, lab, 0).to(tl.int64))
            tl.store(valid_ptr + o, valid.to(tl.int8))

    return _mask_decode_kernel


def _mask_decode_triton(
    h: Tensor,
    w2: Tensor,
    top: Tensor,
    probs: Tensor,
    cfg: DecodeConfig,
    labels: Tensor,
    scale: Tensor | None,
    valid_len: Tensor | None,
    rows_out: Tensor | None = None,
) -> MaskProposals:
    B, H, T = h.shape
    k = top.shape[1]
    nm = len(cfg.mask_thresholds)
    dev = h.device
    seg = torch.empty(B, k, nm, 2, dtype=torch.float32, device=dev)
    score = torch.empty(B, k, nm, dtype=torch.float32, device=dev)
    olab = torch.empty(B, k, nm, dtype=torch.int64, device=dev)
    valid = torch.empty(B, k, nm, dtype=torch.int8, device=dev)
    if B * k == 0 or nm == 0:
        return MaskProposals(seg, score, olab, valid.bool())
    thr = steps.device_constant(cfg.mask_thresholds, dev)
    block_t = max(16, next_pow2(T))
    block_h = max(1, min(next_pow2(H), max(16, 4096 // block_t)))  # ~4K fp32 of h per step
    scale_arg = scale.float().contiguous() if scale is not None else score  # dummy, never read
    vlen_arg = valid_len.long().contiguous() if valid_len is not None else olab  # dummy, never read
    _kernel(interpret_mode())[(B * k,)](
        h, w2, top, probs, labels, scale_arg, vlen_arg, thr,
        seg, score, olab, valid, rows_out if rows_out is not None else score,
        k, math.floor(cfg.min_len_frac * T) + 1, probs.shape[1],
        *h.stride(), *w2.stride(), *top.stride(), *probs.stride(), *labels.stride(),
        H=H, T=T, NM=nm, BLOCK_H=block_h, BLOCK_T=block_t,
        ANCHORED=cfg.mask_segment == "anchored", HAS_SCALE=scale is not None,
        HAS_VLEN=valid_len is not None, STORE_ROWS=rows_out is not None,
    )  # fmt: skip
    return MaskProposals(seg, score, olab, valid.bool())


# ------------------------------------------------------------------------------------ launcher
def _check(
    h: Tensor,
    w2: Tensor,
    top: Tensor,
    probs: Tensor,
    cfg: DecodeConfig,
    labels: Tensor,
    scale: Tensor | None,
    valid_len: Tensor | None,
    rows_out: Tensor | None = None,
    ranges: bool = True,
) -> None:
    if h.dim() != 3:
        raise ValueError(f"mask_decode: h must be [B, H, T], got shape {tuple(h.shape)}")
    B, H, T = h.shape
    if T < 1 or H < 1:
        raise ValueError(f"mask_decode: h needs T >= 1 snippets and H >= 1 channels, got {tuple(h.shape)}")
    if w2.dim() != 2 or tuple(w2.shape) != (T, H):
        raise ValueError(
            f"mask_decode: w2 must be [T, H] = {(T, H)} to match h {tuple(h.shape)}, got {tuple(w2.shape)}"
        )
    if top.dim() != 2 or top.shape[0] != B:
        raise ValueError(f"mask_decode: top must be [B={B}, k], got shape {tuple(top.shape)}")
    k = top.shape[1]
    if k == 0:
        raise ValueError("mask_decode: top has k = 0 rows; need at least one top snippet per window")
    if tuple(labels.shape) != (B, k):
        raise ValueError(f"mask_decode: labels must be [B, k] = {(B, k)}, got {tuple(labels.shape)}")
    if probs.dim() != 3 or probs.shape[0] != B or probs.shape[2] != T or probs.shape[1] < 1:
        raise ValueError(f"mask_decode: probs must be [B={B}, C, T={T}], got shape {tuple(probs.shape)}")
    for name, x in (("scale", scale), ("valid_len", valid_len)):
        if x is not None and tuple(x.shape) != (B,):
            raise ValueError(f"mask_decode: {name} must have shape [B] = ({B},), got {tuple(x.shape)}")
    for name, x in (("h", h), ("w2", w2), ("probs", probs)):
        if not x.is_floating_point():
            raise ValueError(f"mask_decode: {name} must be floating point, got {x.dtype}")
    for name, x in (("top", top), ("labels", labels), ("valid_len", valid_len)):
        if x is not None and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
            raise ValueError(f"mask_decode: {name} must be an integer tensor, got {x.dtype}")
    if scale is not None and not scale.is_floating_point():
        raise ValueError(f"mask_decode: scale must be floating point, got {scale.dtype}")
    tensors = {"w2": w2, "top": top, "probs": probs, "labels": labels, "scale": scale, "valid_len": valid_len}
    for name, x in tensors.items():
        if x is not None and x.device != h.device:
            raise ValueError(f"mask_decode: {name} is on {x.device} but h is on {h.device}")
    if cfg.mask_segment not in ("filled", "anchored"):
        raise ValueError(f"mask_decode: unknown mask_segment {cfg.mask_segment!r}")
    if rows_out is not None and (
        tuple(rows_out.shape) != (B, k, T)
        or rows_out.dtype != torch.float32
        or not rows_out.is_contiguous()
        or rows_out.device != h.device
    ):
        raise ValueError(
            f"mask_decode: rows_out must be a contiguous float32 [B, k, T] = {(B, k, T)} tensor on "
            f"{h.device}, got {rows_out.dtype} {tuple(rows_out.shape)} on {rows_out.device}"
        )
    if not ranges or steps.tracing() or B == 0:
        return
    C = probs.shape[1]
    no = h.new_zeros((), dtype=torch.bool)
    bad_len = no if valid_len is None else ((valid_len < 0) | (valid_len > T)).any()
    bad = torch.stack([((top < 0) | (top >= T)).any(), ((labels < 0) | (labels >= C)).any(), bad_len])
    bad_top, bad_lab, bad_vlen = bad.tolist()
    if bad_top:
        raise ValueError(f"mask_decode: top indices must be in [0, T) = [0, {T})")
    if bad_lab:
        raise ValueError(f"mask_decode: labels must be in [0, C) = [0, {C}) (rows of probs)")
    if bad_vlen:
        raise ValueError(f"mask_decode: valid_len must be in [0, T] = [0, {T}]")


@torch.no_grad()
def mask_decode(
    h: Tensor,
    w2: Tensor,
    top: Tensor,
    probs: Tensor,
    cfg: DecodeConfig,
    *,
    labels: Tensor,
    scale: Tensor | None = None,
    valid_len: Tensor | None = None,
    rows_out: Tensor | None = None,
    backend: Backend = "auto",
    check_ranges: bool = True,
) -> MaskProposals:
    """Step-4 mask proposals of :func:`spot_core.decode.decode_windows` from the mask head's hidden map.

    Args:
        h: ``[B, H, T]`` hidden map after the ReLU (any float dtype; any strides).
        w2: ``[T, H]`` weight of the mask head's last 1x1 conv (any float dtype; any strides).
        top: ``[B, k]`` integer snippet indices in ``[0, T)``, ``k >= 1``; any k (``k > T`` and
            repeated indices allowed). ``decode_windows`` uses its stable top-``min(top_k, T)``.
        probs: ``[B, C, T]`` class probabilities (``softmax(logits, dim=1)``); row ``labels[b, j]``
            scores the proposals of top row j.
        cfg: decode settings (``mask_thresholds``, ``min_len_frac``, ``mask_segment``).
        labels: ``[B, k]`` integer label each top row carries, in ``[0, C)``: the window class
            (``class_mode="window"``) or the snippet class ``c[top]`` ("snippet").
        scale: optional ``[B]`` factor on every score (the window score ``ws``, window mode).
        valid_len: optional ``[B]`` real snippets per window; later snippets are off and top
            rows at or beyond it are invalid.
        rows_out: optional contiguous float32 ``[B, k, T]`` buffer that receives the k mask rows
            ``sigmoid(W2[top] @ h)`` (the fused GPU path needs their maxima for step 5).
        backend: ``"auto"`` (Triton for CUDA tensors when triton imports, else the reference),
            ``"triton"`` (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``, otherwise an
            error: never a silent fallback) or ``"reference"``.
        check_ranges: check index ranges on the host (one sync; skipped under tracing). With
            ``False`` (the fused GPU path and the custom op, whose inputs come from
            :func:`decode_inputs`) the kernel still guards on the device: a top index outside
            ``[0, T)`` or a label outside ``[0, C)`` makes that row's proposals invalid and
            ``valid_len`` is clamped to ``[0, T]``, never an out-of-bounds read. (The reference
            backend raises an indexing error for such inputs instead.)

    Returns:
        :class:`MaskProposals` ``[B, k, nm]``.

    Raises:
        ValueError: bad shapes, dtypes or devices, ``k = 0``, ``w2`` not ``[T, H]``, indices out of
            range (range checks cost one host sync and are skipped under tracing / compile).
        RuntimeError: ``backend="triton"`` that cannot run here.
    """
    _check(h, w2, top, probs, cfg, labels, scale, valid_len, rows_out, ranges=check_ranges)
    choice = use_triton("mask_decode", backend, h.device)
    if choice is None:
        log.warning("mask_decode: triton is not importable; using the PyTorch reference on CUDA")
    if choice:
        return _mask_decode_triton(h, w2, top, probs, cfg, labels, scale, valid_len, rows_out)
    return mask_decode_reference(
        h, w2, top, probs, cfg, labels=labels, scale=scale, valid_len=valid_len, rows_out=rows_out
    )


# ------------------------------------------------------------------------------------ custom op
@cache
def mask_decode_op() -> Any:
    """Register (on first call) and return the custom op ``torch.ops.spot.mask_decode``.

    ``op(h, w2, top, probs, labels, scale, valid_len, thresholds, min_len_frac, anchored)`` ->
    ``(segments, scores, labels, valid, rows)``: :class:`MaskProposals` plus the k mask rows
    ``[B, k, T]`` float32 (what ``rows_out`` receives); the config is flattened to
    ``thresholds: list[float]``, ``min_len_frac: float``, ``anchored: bool``. It runs the Triton
    kernel for CUDA tensors (when triton imports) and the reference otherwise, and has a fake
    (meta) implementation, so ``torch.compile`` / ``torch.export`` see one opaque node instead of
    tracing into the kernel. Registered lazily (no import-time side effects); the launcher checks
    run in eager mode only.
    """

    @torch.library.custom_op("spot::mask_decode", mutates_args=())
    def op(
        h: Tensor,
        w2: Tensor,
        top: Tensor,
        probs: Tensor,
        labels: Tensor,
        scale: Tensor | None,
        valid_len: Tensor | None,
        thresholds: list[float],
        min_len_frac: float,
        anchored: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        cfg = DecodeConfig(
            mask_thresholds=tuple(thresholds),
            min_len_frac=min_len_frac,
            mask_segment="anchored" if anchored else "filled",
        )
        backend: Backend = "triton" if h.is_cuda and triton_available() else "reference"
        rows = torch.empty(h.shape[0], top.shape[1], h.shape[2], dtype=torch.float32, device=h.device)
        out = mask_decode(
            h, w2, top, probs, cfg, labels=labels, scale=scale, valid_len=valid_len, rows_out=rows,
            backend=backend, check_ranges=not h.is_cuda,
        )  # fmt: skip
        return out.segments, out.scores, out.labels, out.valid, rows

    @op.register_fake
    def _(h, w2, top, probs, labels, scale, valid_len, thresholds, min_len_frac, anchored):
        B, k, nm = h.shape[0], top.shape[1], len(thresholds)
        return (
            h.new_empty(B, k, nm, 2, dtype=torch.float32),
            h.new_empty(B, k, nm, dtype=torch.float32),
            h.new_empty(B, k, nm, dtype=torch.int64),
            h.new_empty(B, k, nm, dtype=torch.bool),
            h.new_empty(B, k, h.shape[2], dtype=torch.float32),
        )

    return op
