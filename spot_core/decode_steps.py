"""The steps of decode as public functions (DESIGN.md section 4; definitions in :mod:`spot_core.decode`).

One home for each step, shared by the PyTorch decode (:func:`spot_core.decode.decode_windows`),
the kernels' references (:mod:`kernels.mask_decode`) and the fused GPU path
(:mod:`kernels.pipeline`):

* :func:`valid_snippets` -- the ``[B, T]`` mask of real (unpadded) snippets;
* :func:`snippet_scores` -- step 1, ``p``, ``s_t``, ``c_t``;
* :func:`window_class` -- step 2 without an external label;
* :func:`stable_top_indices` -- step 3, stable top-k;
* :func:`decode_inputs` -- steps 1-3 together (:class:`DecodeInputs`), :func:`row_labels`;
* :func:`first_last`, :func:`longest_run`, :func:`run_at` -- the run finders of steps 4 and 5;
* :func:`mask_proposals` -- step 4 on the k top mask rows;
* :func:`class_proposals` -- step 5;
* :func:`combine_proposals` -- step 6 and the ``[B, M]`` layout (:class:`Proposals`);
* :func:`dedup` -- duplicate ``(start, end, label)`` removal before Soft-NMS;
* :func:`tracing` -- whether torch.compile / export / jit is tracing (host checks are skipped then);
* :func:`device_constant` -- a cached small constant on an accelerator (no copy in CUDA graphs).

Every function is a fixed-size tensor expression over the batch (no loop over snippets or
proposals, no host sync), so the same code runs eagerly, under torch.compile and in ONNX exports.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from spot_core.config import DecodeConfig
from spot_core.nms import tracing

__all__ = [
    "DecodeInputs",
    "Proposals",
    "class_proposals",
    "combine_proposals",
    "decode_inputs",
    "dedup",
    "device_constant",
    "first_last",
    "longest_run",
    "mask_proposals",
    "row_labels",
    "run_at",
    "snippet_scores",
    "stable_top_indices",
    "tracing",
    "valid_snippets",
    "window_class",
]


class Proposals(NamedTuple):
    """Fixed-size proposals per window (snippet units, ``[start, end)``)."""

    segments: Tensor  # [B, M, 2] float32
    scores: Tensor  # [B, M] float32, 0 where invalid
    labels: Tensor  # [B, M] int64
    valid: Tensor  # [B, M] bool


class DecodeInputs(NamedTuple):
    """Steps 1-3 of decode for a batch of windows (:func:`decode_inputs`)."""

    p: Tensor  # [B, K+1, T] float32 softmax over classes
    s: Tensor  # [B, T] best foreground score per snippet
    c: Tensor  # [B, T] its class (ties: the lowest)
    valid_t: Tensor  # [B, T] bool, real snippets
    wc: Tensor | None  # [B] window class (None in snippet mode)
    ws: Tensor | None  # [B] window score (None in snippet mode)
    top: Tensor  # [B, k] stable top-k snippets by s among the valid ones
    top_ok: Tensor  # [B, k] whether each top snippet is valid


# ---------------------------------------------------------------------------------------- helpers
def valid_snippets(B: int, T: int, valid_len: Tensor | None, device: torch.device) -> Tensor:
    """``[B, T]`` bool: snippet t of window b is real (``t < valid_len[b]``; all True without it)."""
    if valid_len is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    pos = torch.arange(T, device=device)
    return pos[None, :] < valid_len.to(device).long()[:, None]


@torch.no_grad()
def device_constant(values: tuple[float, ...], device: torch.device) -> Tensor:
    """``torch.tensor(values, float32)`` ``[len(values)]`` on ``device``, cached per (values, device)
    on accelerators outside tracing, so a warmed-up call makes no host-to-device copy (CUDA graph capture)."""
    if device.type == "cpu" or tracing():
        return torch.tensor(values, dtype=torch.float32, device=device)
    return _device_constant(tuple(values), device)


@functools.cache
def _device_constant(values: tuple[float, ...], device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


# ---------------------------------------------------------------------------------------- runs
def first_last(on: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(any, first, last)`` on index over the last dim of ``on [..., T]``, each ``[...]``
    (``first = T``, ``last = -1`` where nothing is on)."""
    T = on.shape[-1]
    pos = torch.arange(T, device=on.device)
    first = torch.where(on, pos, T).amin(dim=-1)
    last = torch.where(on, pos, -1).amax(dim=-1)
    return on.any(dim=-1), first, last


def longest_run(on: Tensor) -> tuple[Tensor, Tensor]:
    """Earliest longest run of True over the last dim of ``on [..., T]``: ``(a, length)``, each ``[...]``.

    The run is ``[a, a + length - 1]``; ``length`` is 0 (and ``a`` is T) where nothing is on. No
    loop, ``cummax`` or scatter (the ONNX exporter and TensorRT's parser lack them): see
    :mod:`spot_core.decode`.
    """
    T = on.shape[-1]
    pos = torch.arange(T, device=on.device)
    prev = torch.cat([torch.zeros_like(on[..., :1]), on[..., :-1]], dim=-1)  # prev: [..., T], on at t-1
    starts = on & ~prev
    run_id = torch.where(on, torch.cumsum(starts, dim=-1), 0)  # run_id: [..., T], runs 1, 2, ...; 0 = off
    # Start of the run each snippet belongs to: the run starts sorted in time are the first entries of
    # sort(where(start, pos, T)), and run r (1-based) starts at entry r - 1. No scatter: TensorRT's
    # parser rejects ScatterElements with reduction="add".
    sorted_starts = torch.sort(torch.where(starts, pos, T), dim=-1).values  # [..., T]
    run_start = sorted_starts.gather(-1, (run_id - 1).clamp(min=0))  # run_start: [..., T]
    so_far = torch.where(on, pos - run_start + 1, 0)  # so_far: [..., T], length of the run up to t
    length = so_far.amax(dim=-1)
    end = so_far.argmax(dim=-1)  # first maximum: the end of the earliest longest run
    a = torch.where(length > 0, end - length + 1, T)
    return a, length


def run_at(on: Tensor, at: Tensor) -> tuple[Tensor, Tensor]:
    """The run of True over the last dim of ``on [..., T]`` that contains index ``at [...]``: ``(a, length)``.

    ``length`` is 0 (and ``a`` is T) where ``on[..., at]`` is False.
    """
    T = on.shape[-1]
    pos = torch.arange(T, device=on.device)
    prev = torch.cat([torch.zeros_like(on[..., :1]), on[..., :-1]], dim=-1)
    run_id = torch.where(on, torch.cumsum(on & ~prev, dim=-1), 0)  # run_id: [..., T], 0 = off
    mine = run_id.gather(-1, at[..., None])  # mine: [..., 1], 0 when the anchor is off
    in_mine = (run_id == mine) & (mine > 0)
    return torch.where(in_mine, pos, T).amin(dim=-1), in_mine.sum(dim=-1)


# ---------------------------------------------------------------------------------------- steps 1-3
def snippet_scores(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Step 1: logits ``[B, K+1, T]`` -> ``(p [B, K+1, T] float32 softmax, s [B, T], c [B, T])``,
    ``s``/``c`` the max / argmax over the K foreground classes (ties: the lowest class)."""
    K = logits.shape[1] - 1
    p = torch.softmax(logits.float(), dim=1)  # p: [B, K+1, T]
    s, c = p[:, :K].max(dim=1)  # s, c: [B, T]
    return p, s, c


def window_class(logits: Tensor, valid_t: Tensor | None, K: int) -> tuple[Tensor, Tensor]:
    """Step 2: argmax / max ``[B]`` of softmax of the time-averaged foreground logits of
    ``logits [B, K+1, T]`` (over the valid snippets ``valid_t [B, T]`` when given)."""
    fg = logits[:, :K].float()  # fg: [B, K, T]
    if valid_t is None:
        mean = fg.mean(dim=-1)  # mean: [B, K]
    else:  # a plain masked sum, not a matmul: no TF32 rounding on GPUs
        w = valid_t[:, None, :]
        mean = torch.where(w, fg, 0.0).sum(dim=-1) / valid_t.sum(dim=-1, keepdim=True).clamp(min=1)
    pw = torch.softmax(mean, dim=-1)  # pw: [B, K]
    return pw.argmax(dim=-1), pw.amax(dim=-1)


def stable_top_indices(x: Tensor, k: int) -> Tensor:
    """Step 3: indices ``[B, k]`` of the ``k`` largest entries of each row of ``x [B, T]``,
    descending, ties: lower index first.

    Equal to ``torch.sort(x, dim=1, descending=True, stable=True).indices[:, :k]`` (no NaN), but
    written as a rank count, ``rank_t = #{u: x_u > x_t} + #{u < t: x_u == x_t}`` over a [B, T, T]
    comparison and a scatter, because the ONNX exporter has no stable sort and ``TopK`` tie order
    is not guaranteed by every backend (torch.compile included). Eager calls (nothing traced) use
    the stable sort itself: same result, O(T log T) instead of O(T^2) per row.
    """
    if not tracing():
        return torch.sort(x, dim=1, descending=True, stable=True).indices[:, :k]
    T = x.shape[-1]
    pos = torch.arange(T, device=x.device)
    xt, xu = x[:, :, None], x[:, None, :]  # x_t: [B, T, 1], x_u: [B, 1, T]
    before = (xu > xt) | ((xu == xt) & (pos[None, :] < pos[:, None]))  # before: [B, T(t), T(u)]
    rank = before.sum(dim=-1)  # rank: [B, T], a permutation of 0..T-1 per row
    order = torch.zeros_like(rank).scatter(1, rank, pos.expand_as(rank))  # order: [B, T]
    return order[:, :k]


def decode_inputs(
    logits: Tensor,
    cfg: DecodeConfig,
    *,
    video_class: Tensor | None = None,
    video_score: Tensor | None = None,
    valid_len: Tensor | None = None,
) -> DecodeInputs:
    """Steps 1-3 for logits ``[B, K+1, T]``: :class:`DecodeInputs` (``k = min(top_k, T)``).

    The window class and score (step 2) come from ``video_class`` / ``video_score`` ``[B]`` when
    both are given, else from :func:`window_class`; in ``class_mode="snippet"`` they are None.
    ``valid_len [B]``: only the first ``valid_len[b]`` snippets rank in step 3.
    """
    B, K1, T = logits.shape
    K = K1 - 1
    dev = logits.device
    k = min(cfg.top_k, T)
    valid_t = valid_snippets(B, T, valid_len, dev)
    p, s, c = snippet_scores(logits)
    wc = ws = None
    if cfg.class_mode == "window":
        if video_class is not None and video_score is not None:
            wc, ws = video_class.to(dev).long(), video_score.to(dev).float()  # [B], [B]
        else:
            wc, ws = window_class(logits, None if valid_len is None else valid_t, K)
    s_rank = torch.where(valid_t, s, float("-inf"))
    top = stable_top_indices(s_rank, k)  # top: [B, k]
    top_ok = valid_t.gather(1, top)  # top_ok: [B, k]
    return DecodeInputs(p, s, c, valid_t, wc, ws, top, top_ok)


def row_labels(d: DecodeInputs) -> Tensor:
    """``[B, k]`` the label each top row's proposals carry: the window class (window mode) or the
    top snippet's own class (snippet mode)."""
    if d.wc is not None:
        return d.wc[:, None].expand(*d.top.shape)
    return d.c.gather(1, d.top)


# ---------------------------------------------------------------------------------------- steps 4-6
def mask_proposals(
    rows: Tensor,
    top: Tensor,
    top_ok: Tensor,
    valid_t: Tensor,
    probs: Tensor,
    labels: Tensor,
    scale: Tensor | None,
    cfg: DecodeConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Step 4 (mask proposals, with the window score of step 6 when ``scale`` is given), ``[B, k, nm]``.

    Args: ``rows`` ``[B, k, T]`` float32, the top rows of the mask; ``top``/``top_ok`` ``[B, k]``
    the top snippets and whether they are valid; ``valid_t`` ``[B, T]``; ``probs`` ``[B, C, T]``
    class probabilities; ``labels`` ``[B, k]`` the label each top row carries (window class, or the
    snippet's class); ``scale`` optional ``[B]`` factor on every score.

    Returns ``(segments [B, k, nm, 2] float32, scores, labels, valid)`` with invalid entries zeroed
    (segment ``[0, 0]``, score 0, label 0).
    """
    B, k, T = rows.shape
    nm = len(cfg.mask_thresholds)
    dev = rows.device
    pos = torch.arange(T, device=dev)
    mthr = torch.tensor(cfg.mask_thresholds, dtype=torch.float32, device=dev)  # mthr: [nm]
    on = (rows[:, :, None, :] > mthr[:, None]) & valid_t[:, None, None, :]  # on: [B, k, nm, T]
    has, first, last = first_last(on)  # [B, k, nm] each
    anchored = cfg.mask_segment == "anchored"
    if anchored:  # the run that contains the row's own snippet t (none when t is off)
        a, run_len = run_at(on, top[:, :, None].expand(B, k, nm))  # [B, k, nm]
        has = run_len > 0
    else:
        a, run_len = longest_run(on)  # [B, k, nm]
    b = a + run_len - 1
    # b - a > min_len_frac * T for integers b - a, decided in float64 once: b - a >= floor(...) + 1
    min_span = math.floor(cfg.min_len_frac * T) + 1
    ok = has & (b - a >= min_span) & top_ok[:, :, None]  # ok: [B, k, nm]
    lab = labels.to(dev).long()  # lab: [B, k]
    p_lab = probs.float().gather(1, lab[:, :, None].expand(B, k, T))  # p_lab: [B, k, T]
    in_run = (pos >= a[..., None]) & (pos <= b[..., None])  # in_run: [B, k, nm, T]
    p_max = torch.where(in_run, p_lab[:, :, None, :], float("-inf")).amax(dim=-1)  # [B, k, nm]
    m_mean = torch.where(in_run, rows[:, :, None, :], 0.0).sum(dim=-1) / run_len.clamp(min=1)
    score = torch.where(ok, p_max * m_mean, 0.0)
    if scale is not None:
        score = score * scale.to(dev).float()[:, None, None]
    seg = torch.stack([a, b + 1] if anchored else [first, last + 1], dim=-1).float()
    seg = torch.where(ok[..., None], seg, 0.0)  # seg: [B, k, nm, 2]
    out_lab = torch.where(ok, lab[:, :, None].expand(B, k, nm), 0)
    return seg, torch.where(ok, score, 0.0), out_lab, ok


def class_proposals(
    s: Tensor,
    c: Tensor,
    rows: Tensor,
    top: Tensor,
    top_ok: Tensor,
    valid_t: Tensor,
    wc: Tensor | None,
    cfg: DecodeConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Step 5 (class-activation proposals, before the window score of step 6), ``[B, k, nc]``.

    Args: ``s``/``c`` ``[B, T]`` per-snippet foreground score and class, ``rows`` ``[B, k, T]`` the
    top rows of the mask (float32), ``top``/``top_ok`` ``[B, k]`` the top snippets and whether they
    are valid, ``valid_t`` ``[B, T]``, ``wc`` ``[B]`` the window class (unused in snippet mode).

    Returns ``(segments [B, k, nc, 2], scores, labels, valid)``; invalid entries are not zeroed.
    """
    B, k, T = rows.shape
    nc = len(cfg.class_thresholds)
    dev = s.device
    pos = torch.arange(T, device=dev)
    neg_inf = float("-inf")
    cthr = device_constant(cfg.class_thresholds, dev)  # cthr: [nc]
    con = (s[:, None, :] > cthr[:, None]) & valid_t[:, None, :]  # con: [B, nc, T]
    if cfg.mask_segment == "anchored":  # per top row: the run of ``con`` that contains t -> [B, k, nc]
        ca, clen = run_at(con[:, None].expand(B, k, nc, T), top[:, :, None].expand(B, k, nc))
        cfirst, clast = ca, ca + clen - 1
        c_ok = (clen > 0) & (clast - cfirst > 1)  # [B, k, nc]
        in_span = (pos >= cfirst[..., None]) & (pos <= clast[..., None])  # in_span: [B, k, nc, T]
        s_span = torch.where(in_span, s[:, None, None, :], neg_inf)  # s_span: [B, k, nc, T]
        row_max = torch.where(in_span, rows[:, :, None, :], neg_inf).amax(dim=-1)  # [B, k, nc]
    else:  # one span per threshold, shared by every top row
        chas, cfirst, clast = first_last(con)  # [B, nc] each
        c_ok = (chas & (clast - cfirst > 1))[:, None, :].expand(B, k, nc)
        in_span = (pos >= cfirst[..., None]) & (pos <= clast[..., None])  # in_span: [B, nc, T]
        s_span = torch.where(in_span, s[:, None, :], neg_inf)[:, None]  # s_span: [B, 1, nc, T]
        row_max = torch.where(in_span[:, None], rows[:, :, None, :], neg_inf).amax(dim=-1)  # [B, k, nc]
        cfirst, clast = cfirst[:, None].expand(B, k, nc), clast[:, None].expand(B, k, nc)
    span_score = s_span.amax(dim=-1).expand(B, k, nc)  # [B, k, nc]
    cc_ok = c_ok & top_ok[:, :, None]  # [B, k, nc]
    cc_score = torch.where(cc_ok, span_score * row_max, 0.0)
    if cfg.class_mode == "window":
        assert wc is not None, "class_proposals: window mode needs the window class wc"
        c_label = wc[:, None, None].expand(B, k, nc)
    else:
        best = s_span.argmax(dim=-1).expand(B, k, nc)  # [B, k, nc]: the span's best snippet
        c_label = c.gather(1, best.reshape(B, k * nc)).reshape(B, k, nc)
    c_seg = torch.stack([cfirst, clast + 1], dim=-1).float()  # c_seg: [B, k, nc, 2]
    return c_seg, cc_score, c_label, cc_ok


def combine_proposals(
    mask_props: tuple[Tensor, Tensor, Tensor, Tensor],
    class_props: tuple[Tensor, Tensor, Tensor, Tensor],
    ws: Tensor | None,
) -> Proposals:
    """Concatenate step-4 (``[B, k, nm]``, scores already scaled) and step-5 (``[B, k, nc]``)
    proposals into the ``[B, M]`` layout (:class:`Proposals`), scaling the class proposals by
    ``ws [B]`` (step 6, window mode) and zeroing invalid slots."""
    m_seg, m_score, m_label, m_ok = mask_props
    c_seg, cc_score, c_label, cc_ok = class_props
    if ws is not None:
        cc_score = cc_score * ws[:, None, None]
    B, k, nm = m_ok.shape
    nc = cc_ok.shape[2]
    valid = torch.cat([m_ok.reshape(B, k * nm), cc_ok.reshape(B, k * nc)], dim=1)  # valid: [B, M]
    segments = torch.cat([m_seg.reshape(B, k * nm, 2), c_seg.reshape(B, k * nc, 2)], dim=1)
    segments = torch.where(valid[..., None], segments, 0.0)  # segments: [B, M, 2]
    scores = torch.cat([m_score.reshape(B, k * nm), cc_score.reshape(B, k * nc)], dim=1)
    labels = torch.cat([m_label.reshape(B, k * nm), c_label.reshape(B, k * nc)], dim=1)
    labels = torch.where(valid, labels, 0)
    return Proposals(segments, torch.where(valid, scores, 0.0), labels, valid)


def dedup(props: Proposals, T: int, K: int) -> Tensor:
    """``valid [B, M]`` minus proposals that repeat a better ``(start, end, label)`` of the same window.

    The best score is kept; among equal scores the lowest proposal index. Segments are integer
    snippet indices in ``[0, T]`` and labels are in ``[0, K)``, so ``(start, end, label)`` packs
    into one int64 key; two stable sorts (score descending, then key) put each key's keeper first
    in its group. O(M log M) per window instead of an [M, M] comparison.
    """
    seg, sc, lab, val = props
    M = sc.shape[1]
    idx = torch.arange(M, device=sc.device)
    key = (seg[..., 0].long() * (T + 1) + seg[..., 1].long()) * K + lab
    key = torch.where(val, key, -1 - idx)  # key: [B, M], invalid proposals never collide
    by_score = torch.sort(sc, dim=1, descending=True, stable=True).indices  # ties: lower index first
    key_s = key.gather(1, by_score)
    by_key = torch.sort(key_s, dim=1, stable=True).indices
    order = by_score.gather(1, by_key)  # order: [B, M], grouped by key, best first in each group
    key_o = key.gather(1, order)
    first = torch.ones_like(val[:, :1])
    repeat = ~torch.cat([first, key_o[:, 1:] != key_o[:, :-1]], dim=1)  # not the first of its group
    dominated = torch.zeros_like(val).scatter(1, order, repeat)  # back to proposal order
    return val & ~dominated
