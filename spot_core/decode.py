"""Decode SPOT outputs into scored segments: batched, vectorised, fixed-size (DESIGN.md section 4).

Inputs per window: class logits ``[B, K+1, T]`` (class K is background) and the global
segmentation mask ``[B, T, T]`` in [0, 1] (row t: foreground mask over the window of the instance
that snippet t belongs to). Segments are in snippet units, ``[start, end)`` with ``end`` exclusive.

Definitions (ours; every step is one tensor expression over the batch, no loop over snippets or
proposals):

1. ``p = softmax(logits, dim=1)``; ``s_t, c_t`` = max / argmax of ``p[:K, t]`` (ties: lowest class).
2. Window class ``wc`` and score ``ws``: the external video-level label and score when given,
   else argmax / max of ``softmax(mean_t logits[:K, t])`` (the mean runs over the valid snippets).
3. Top ``k = min(top_k, T)`` snippets by ``s_t`` (stable order: equal scores keep the lower snippet
   index first). With ``valid_len`` only valid snippets rank; top rows beyond them are invalid.
4. Mask proposals, for each top snippet t and mask threshold th: ``on = mask[t, :] > th`` (valid
   snippets only); none on: invalid. ``first``/``last`` on index give the segment
   ``[first, last + 1)`` (holes filled). The longest run of consecutive on snippets ``[a, b]``
   (inclusive) must satisfy ``b - a > min_len_frac * T``; among runs of equal length the earliest
   wins. Label: ``wc`` ("window" mode) or ``c_t`` ("snippet" mode). Score:
   ``max(p[label, a..b]) * mean(mask[t, a..b])``.
5. Class-activation proposals, for each class threshold th: ``on = s > th`` (valid snippets only),
   ``first``/``last`` on index, valid iff ``last - first > 1``; span score ``max(s[first..last])``.
   Combined with every top row t: score ``span score * max(mask[t, first..last])``, segment
   ``[first, last + 1)``, label ``wc`` (window mode) or ``c`` at the argmax of ``s`` in the span
   (snippet mode; ties: earliest snippet).
6. Window mode multiplies every proposal score by ``ws``; snippet mode does not.

``mask_segment="anchored"`` (an option of ours, off by default) replaces step 4's segment and run
by the run of ``on`` that contains the row's own snippet t (invalid when t itself is off): every
row then yields its own instance even when a window holds several. Length test and score as in
step 4, on that run. Step 5 likewise takes, per top row t, the run of ``s > th`` that contains t.

Output layout: ``M = k * len(mask_thresholds) + k * len(class_thresholds)`` proposals per window,
mask proposals first (top-row major, then threshold), then class proposals (top-row major, then
threshold). Invalid proposals have ``valid=False``, score 0, segment ``[0, 0]``, label 0.

How the longest run is found without a loop or ``cummax`` (which the ONNX exporter lacks):
``start_t = on_t and not on_{t-1}``; ``run_id = cumsum(start)`` where on, 0 elsewhere, numbers
the runs 1, 2, ... in time order; sorting the start positions gives each run's start, hence the
length of its run up to every snippet, and ``argmax`` (first maximum) of that picks the end of the
earliest of the longest runs. The test
``b - a > min_len_frac * T`` is evaluated in float64 as ``b - a >= floor(min_len_frac * T) + 1``.

:func:`detect` then removes duplicate ``(start, end, label)`` proposals of a window (keeping the
highest score; equal scores keep the lowest proposal index), runs Gaussian Soft-NMS
(:mod:`spot_core.nms`) and keeps ``max_detections`` per window. :func:`merge_windows` groups the
windows of a video (sliding windows) and runs Soft-NMS again per video.

Deviations from the original code (``spot_inference.py``, ``utils/postprocess_utils.py``):

* segments are ``[first, last + 1)`` snippets; the original divided the inclusive ``last`` index by
  T, one snippet short;
* the mask proposal score takes ``max(p)`` and ``mean(mask)`` over the whole run ``a..b``; the
  original used ``p[a:b]`` (end excluded) and ``mask[a+1:b-1]`` (both ends excluded; NaN for runs of
  two snippets). Class proposals likewise use the inclusive span ``first..last``;
* ``max(p[label, ...])`` uses the label the proposal carries (the external video class when given);
  the original always used the internal window class there;
* class-activation proposals are combined with every valid top row; the original emitted them only
  under a row that had a valid mask proposal (once per such mask threshold, deduplicated later);
  their snippet-mode label is the class at the span's best snippet (the original's mode-of-classes
  expression counted over the whole window);
* the original's final scores differed by case: with an external class, mask proposals
  ``max(p[internal class]) * mean(mask) * video score`` and class proposals
  ``max(mask) * video score`` (no class evidence); without one, mask proposals
  ``max(p)^2 * mean(mask) * s_t`` and class proposals ``span score * max(mask)`` (no window
  score). We use steps 4-6 in every case;
* ties are resolved deterministically (stable top-k, earliest longest run, lowest index in NMS);
  the original's argpartition order was arbitrary;
* deduplication is on ``(start, end, label)`` keeping the best score (the original dropped only
  exact duplicate rows); Soft-NMS follows the paper (see :mod:`spot_core.nms`);
* ``valid_len`` (padded windows) and "snippet" class mode are additions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from spot_core.config import DecodeConfig
from spot_core.nms import soft_nms
from spot_core.nms import tracing as _tracing

__all__ = [
    "Detections",
    "Proposals",
    "decode_windows",
    "detect",
    "merge_windows",
    "num_proposals",
    "results_json",
    "stack_detections",
    "to_seconds",
]

RESULTS_VERSION = "VERSION 1.3"


class Proposals(NamedTuple):
    """Fixed-size proposals per window (snippet units, ``[start, end)``)."""

    segments: Tensor  # [B, M, 2] float32
    scores: Tensor  # [B, M] float32, 0 where invalid
    labels: Tensor  # [B, M] int64
    valid: Tensor  # [B, M] bool


class Detections(NamedTuple):
    """Detections after Soft-NMS, sorted by score descending, invalid rows padded at the end.

    Batched as ``[B, D, ...]``; :func:`merge_windows` returns one unbatched ``[D, ...]`` per video.
    """

    segments: Tensor  # [B, D, 2]
    scores: Tensor  # [B, D]
    labels: Tensor  # [B, D]
    valid: Tensor  # [B, D]


def num_proposals(cfg: DecodeConfig, T: int) -> int:
    """M, the number of proposal slots per window of T snippets."""
    k = min(cfg.top_k, T)
    return k * (len(cfg.mask_thresholds) + len(cfg.class_thresholds))


# ---------------------------------------------------------------------------------------- helpers
def _check_inputs(
    logits: Tensor,
    mask: Tensor,
    video_class: Tensor | None,
    video_score: Tensor | None,
    valid_len: Tensor | None,
) -> None:
    """Shape checks always; NaN / range checks (one host sync) only in eager mode."""
    if logits.dim() != 3:
        raise ValueError(f"decode: logits must be [B, K+1, T], got shape {tuple(logits.shape)}")
    B, K1, T = logits.shape
    if K1 < 2:
        raise ValueError(f"decode: logits need K+1 >= 2 classes (K foreground + background), got {K1}")
    if T < 1:
        raise ValueError("decode: a window needs at least one snippet (T >= 1), got T = 0")
    if tuple(mask.shape) != (B, T, T):
        raise ValueError(
            f"decode: mask must be [B, T, T] = {(B, T, T)} to match logits {tuple(logits.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    if not logits.is_floating_point() or not mask.is_floating_point():
        raise ValueError(f"decode: logits and mask must be floating point, got {logits.dtype}, {mask.dtype}")
    if (video_class is None) != (video_score is None):
        raise ValueError("decode: give both video_class and video_score, or neither")
    for name, x in (("video_class", video_class), ("video_score", video_score), ("valid_len", valid_len)):
        if x is not None and tuple(x.shape) != (B,):
            raise ValueError(f"decode: {name} must have shape [B] = ({B},), got {tuple(x.shape)}")
    if video_class is not None and video_class.is_floating_point():
        raise ValueError(f"decode: video_class must be an integer tensor, got {video_class.dtype}")
    if valid_len is not None and valid_len.is_floating_point():
        raise ValueError(f"decode: valid_len must be an integer tensor, got {valid_len.dtype}")
    if _tracing() or B == 0:
        return
    K = K1 - 1
    no = logits.new_zeros((), dtype=torch.bool)
    bad_class = no if video_class is None else ((video_class < 0) | (video_class >= K)).any()
    bad_len = no if valid_len is None else ((valid_len < 0) | (valid_len > T)).any()
    # A NaN makes the sum NaN (so does +inf with -inf: then the exact test decides); one pass each
    sums_nan = torch.stack([logits.sum().isnan(), mask.sum().isnan(), bad_class, bad_len]).tolist()
    bad = [sums_nan[0] and bool(torch.isnan(logits).any()), sums_nan[1] and bool(torch.isnan(mask).any())]
    bad += sums_nan[2:]
    if bad[0]:
        raise ValueError("decode: logits contain NaN")
    if bad[1]:
        raise ValueError("decode: mask contains NaN")
    if bad[2]:
        raise ValueError(f"decode: video_class must be in [0, K) = [0, {K})")
    if bad[3]:
        raise ValueError(f"decode: valid_len must be in [0, T] = [0, {T}]")


def _first_last(on: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(any, first, last)`` on index over the last dim of ``on [..., T]`` (first=T, last=-1 if none)."""
    T = on.shape[-1]
    pos = torch.arange(T, device=on.device)
    first = torch.where(on, pos, T).amin(dim=-1)
    last = torch.where(on, pos, -1).amax(dim=-1)
    return on.any(dim=-1), first, last


def _longest_run(on: Tensor) -> tuple[Tensor, Tensor]:
    """Earliest longest run of True over the last dim of ``on [..., T]``: ``(a, length)``.

    The run is ``[a, a + length - 1]``; ``length`` is 0 (and ``a`` is T) where nothing is on.
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


def _run_at(on: Tensor, at: Tensor) -> tuple[Tensor, Tensor]:
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


def _stable_top_indices(x: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest entries of each row of ``x [B, T]``, descending, ties: lower index first.

    Equal to ``torch.sort(x, dim=1, descending=True, stable=True).indices[:, :k]`` (no NaN), but
    written as a rank count, ``rank_t = #{u: x_u > x_t} + #{u < t: x_u == x_t}`` over a [B, T, T]
    comparison and a scatter, because the ONNX exporter has no stable sort and ``TopK`` tie order
    is not guaranteed by every backend (torch.compile included). Eager calls (nothing traced) use
    the stable sort itself: same result, O(T log T) instead of O(T^2) per row.
    """
    if not _tracing():
        return torch.sort(x, dim=1, descending=True, stable=True).indices[:, :k]
    T = x.shape[-1]
    pos = torch.arange(T, device=x.device)
    xt, xu = x[:, :, None], x[:, None, :]  # x_t: [B, T, 1], x_u: [B, 1, T]
    before = (xu > xt) | ((xu == xt) & (pos[None, :] < pos[:, None]))  # before: [B, T(t), T(u)]
    rank = before.sum(dim=-1)  # rank: [B, T], a permutation of 0..T-1 per row
    order = torch.zeros_like(rank).scatter(1, rank, pos.expand_as(rank))  # order: [B, T]
    return order[:, :k]


def _window_class(logits: Tensor, valid_t: Tensor | None, K: int) -> tuple[Tensor, Tensor]:
    """argmax / max of softmax of the time-averaged foreground logits (valid snippets only)."""
    fg = logits[:, :K].float()  # fg: [B, K, T]
    if valid_t is None:
        mean = fg.mean(dim=-1)  # mean: [B, K]
    else:  # a plain masked sum, not a matmul: no TF32 rounding on GPUs
        w = valid_t[:, None, :]
        mean = torch.where(w, fg, 0.0).sum(dim=-1) / valid_t.sum(dim=-1, keepdim=True).clamp(min=1)
    pw = torch.softmax(mean, dim=-1)  # pw: [B, K]
    return pw.argmax(dim=-1), pw.amax(dim=-1)


# ---------------------------------------------------------------------------------------- decode
@torch.no_grad()
def device_constant(values: tuple[float, ...], device: torch.device) -> Tensor:
    """``torch.tensor(values, float32)`` on ``device``, cached per (values, device) on accelerators
    outside tracing, so a warmed-up call makes no host-to-device copy (CUDA graph capture)."""
    if device.type == "cpu" or _tracing():
        return torch.tensor(values, dtype=torch.float32, device=device)
    return _device_constant(tuple(values), device)


@functools.cache
def _device_constant(values: tuple[float, ...], device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def class_proposals(
    s: Tensor,
    c: Tensor,
    rows: Tensor,
    top: Tensor,
    top_ok: Tensor,
    valid_t: Tensor,
    wc: Tensor,
    cfg: DecodeConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Step 5 (class-activation proposals, before the window score of step 6), ``[B, k, nc]``.

    Args: ``s``/``c`` ``[B, T]`` per-snippet foreground score and class, ``rows`` ``[B, k, T]`` the
    top rows of the mask (float32), ``top``/``top_ok`` ``[B, k]`` the top snippets and whether they
    are valid, ``valid_t`` ``[B, T]``, ``wc`` ``[B]`` the window class. Shared by
    :func:`decode_windows` and the fused GPU path (:mod:`kernels.pipeline`), which computes only the
    k top rows of the mask.

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
        ca, clen = _run_at(con[:, None].expand(B, k, nc, T), top[:, :, None].expand(B, k, nc))
        cfirst, clast = ca, ca + clen - 1
        c_ok = (clen > 0) & (clast - cfirst > 1)  # [B, k, nc]
        in_span = (pos >= cfirst[..., None]) & (pos <= clast[..., None])  # in_span: [B, k, nc, T]
        s_span = torch.where(in_span, s[:, None, None, :], neg_inf)  # s_span: [B, k, nc, T]
        row_max = torch.where(in_span, rows[:, :, None, :], neg_inf).amax(dim=-1)  # [B, k, nc]
    else:  # one span per threshold, shared by every top row
        chas, cfirst, clast = _first_last(con)  # [B, nc] each
        c_ok = (chas & (clast - cfirst > 1))[:, None, :].expand(B, k, nc)
        in_span = (pos >= cfirst[..., None]) & (pos <= clast[..., None])  # in_span: [B, nc, T]
        s_span = torch.where(in_span, s[:, None, :], neg_inf)[:, None]  # s_span: [B, 1, nc, T]
        row_max = torch.where(in_span[:, None], rows[:, :, None, :], neg_inf).amax(dim=-1)  # [B, k, nc]
        cfirst, clast = cfirst[:, None].expand(B, k, nc), clast[:, None].expand(B, k, nc)
    span_score = s_span.amax(dim=-1).expand(B, k, nc)  # [B, k, nc]
    cc_ok = c_ok & top_ok[:, :, None]  # [B, k, nc]
    cc_score = torch.where(cc_ok, span_score * row_max, 0.0)
    if cfg.class_mode == "window":
        c_label = wc[:, None, None].expand(B, k, nc)
    else:
        best = s_span.argmax(dim=-1).expand(B, k, nc)  # [B, k, nc]: the span's best snippet
        c_label = c.gather(1, best.reshape(B, k * nc)).reshape(B, k, nc)
    c_seg = torch.stack([cfirst, clast + 1], dim=-1).float()  # c_seg: [B, k, nc, 2]
    return c_seg, cc_score, c_label, cc_ok


def decode_windows(
    logits: Tensor,
    mask: Tensor,
    cfg: DecodeConfig,
    *,
    video_class: Tensor | None = None,
    video_score: Tensor | None = None,
    valid_len: Tensor | None = None,
) -> Proposals:
    """All candidate proposals of each window (module docstring, steps 1-6).

    Args:
        logits: ``[B, K+1, T]`` class logits, class K is background.
        mask: ``[B, T, T]`` global segmentation mask in [0, 1].
        cfg: decode settings.
        video_class: optional ``[B]`` external video-level class (with ``video_score``).
        video_score: optional ``[B]`` score of that class.
        valid_len: optional ``[B]`` number of real snippets per window (the rest is padding).

    Returns:
        :class:`Proposals` with ``M = num_proposals(cfg, T)`` slots per window.
    """
    _check_inputs(logits, mask, video_class, video_score, valid_len)
    B, K1, T = logits.shape
    K = K1 - 1
    dev = logits.device
    k = min(cfg.top_k, T)
    nm = len(cfg.mask_thresholds)
    window_mode = cfg.class_mode == "window"
    anchored = cfg.mask_segment == "anchored"
    pos = torch.arange(T, device=dev)
    neg_inf = torch.tensor(float("-inf"), device=dev)

    if valid_len is None:
        valid_t = torch.ones(B, T, dtype=torch.bool, device=dev)
    else:
        valid_t = pos[None, :] < valid_len.to(dev).long()[:, None]  # valid_t: [B, T]

    # 1. per-snippet foreground score and class
    p = torch.softmax(logits.float(), dim=1)  # p: [B, K+1, T]
    s, c = p[:, :K].max(dim=1)  # s, c: [B, T] (ties: the first maximum, the lowest class)

    # 2. window class
    if video_class is not None and video_score is not None:
        wc, ws = video_class.to(dev).long(), video_score.to(dev).float()  # [B], [B]
    else:
        wc, ws = _window_class(logits, None if valid_len is None else valid_t, K)

    # 3. top-k snippets, stable: ties keep the lower index
    s_rank = torch.where(valid_t, s, neg_inf)
    top = _stable_top_indices(s_rank, k)  # top: [B, k]
    top_ok = valid_t.gather(1, top)  # top_ok: [B, k]
    rows = mask.gather(1, top[:, :, None].expand(B, k, T)).float()  # rows: [B, k, T]
    c_top = c.gather(1, top)  # c_top: [B, k]

    # 4. mask proposals over [B, k, nm, T]
    mthr = torch.tensor(cfg.mask_thresholds, dtype=torch.float32, device=dev)  # mthr: [nm]
    on = (rows[:, :, None, :] > mthr[:, None]) & valid_t[:, None, None, :]  # on: [B, k, nm, T]
    has, first, last = _first_last(on)  # [B, k, nm] each
    if anchored:  # the run that contains the row's own snippet t (none when t is off)
        a, run_len = _run_at(on, top[:, :, None].expand(B, k, nm))  # [B, k, nm]
        has = run_len > 0
    else:
        a, run_len = _longest_run(on)  # [B, k, nm]
    b = a + run_len - 1
    # b - a > min_len_frac * T for integers b - a, decided in float64 once: b - a >= floor(...) + 1
    min_span = math.floor(cfg.min_len_frac * T) + 1
    m_ok = has & (b - a >= min_span) & top_ok[:, :, None]  # m_ok: [B, k, nm]
    if window_mode:
        m_label = wc[:, None, None].expand(B, k, nm)
        p_lab = p.gather(1, wc[:, None, None].expand(B, 1, T))  # p_lab: [B, 1, T]
    else:
        m_label = c_top[:, :, None].expand(B, k, nm)
        p_lab = p.gather(1, c_top[:, :, None].expand(B, k, T))  # p_lab: [B, k, T]
    in_run = (pos >= a[..., None]) & (pos <= b[..., None])  # in_run: [B, k, nm, T]
    p_max = torch.where(in_run, p_lab[:, :, None, :], neg_inf).amax(dim=-1)  # [B, k, nm]
    m_mean = torch.where(in_run, rows[:, :, None, :], 0.0).sum(dim=-1) / run_len.clamp(min=1)
    m_score = torch.where(m_ok, p_max * m_mean, 0.0)
    if anchored:
        m_seg = torch.stack([a, b + 1], dim=-1).float()  # m_seg: [B, k, nm, 2]
    else:
        m_seg = torch.stack([first, last + 1], dim=-1).float()  # m_seg: [B, k, nm, 2]

    # 5. class-activation proposals, combined with the k top rows
    c_seg, cc_score, c_label, cc_ok = class_proposals(s, c, rows, top, top_ok, valid_t, wc, cfg)

    # 6. window score
    if window_mode:
        m_score = m_score * ws[:, None, None]
    mask_props = Proposals(m_seg, m_score, m_label, m_ok)
    return combine_proposals(mask_props, (c_seg, cc_score, c_label, cc_ok), ws if window_mode else None)


def combine_proposals(
    mask_props: Proposals, class_props: tuple[Tensor, Tensor, Tensor, Tensor], ws: Tensor | None
) -> Proposals:
    """Concatenate step-4 (``[B, k, nm]``, scores already scaled) and step-5 (``[B, k, nc]``)
    proposals into the ``[B, M]`` layout, scaling the class proposals by ``ws`` (step 6, window
    mode) and zeroing invalid slots."""
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


def _dedup(props: Proposals, T: int, K: int) -> Tensor:
    """``valid`` minus proposals that repeat a better ``(start, end, label)`` of the same window.

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


@torch.no_grad()
def detect(
    logits: Tensor,
    mask: Tensor,
    cfg: DecodeConfig,
    *,
    video_class: Tensor | None = None,
    video_score: Tensor | None = None,
    valid_len: Tensor | None = None,
) -> Detections:
    """Decode, deduplicate and Soft-NMS each window: ``[B, D]`` detections, ``D = cfg.max_detections``."""
    props = decode_windows(
        logits, mask, cfg, video_class=video_class, video_score=video_score, valid_len=valid_len
    )
    keep = _dedup(props, logits.shape[-1], logits.shape[1] - 1)
    seg, sc, lab, val, _ = soft_nms(
        props.segments,
        props.scores,
        props.labels,
        keep,
        sigma=cfg.nms_sigma,
        max_detections=cfg.max_detections,
        class_aware=cfg.nms_class_aware,
    )
    return Detections(seg, sc, lab, val)


# ---------------------------------------------------------------------------------------- output
def to_seconds(segments: Tensor, t_start: Tensor, snippet_sec: Tensor) -> Tensor:
    """Snippet units to seconds: ``t_start[b] + segments[b] * snippet_sec[b]``.

    Args:
        segments: ``[B, M, 2]`` in snippets (window-relative).
        t_start: ``[B]`` time of the window's first snippet boundary, in seconds.
        snippet_sec: ``[B]`` seconds per snippet (rescale mode: duration / T).
    """
    t_start = torch.as_tensor(t_start, device=segments.device)
    snippet_sec = torch.as_tensor(snippet_sec, device=segments.device)
    dtype = torch.promote_types(torch.promote_types(segments.dtype, t_start.dtype), snippet_sec.dtype)
    dtype = torch.promote_types(dtype, torch.float32)
    t0 = t_start.to(dtype).reshape(-1, 1, 1)  # [B, 1, 1]
    dt = snippet_sec.to(dtype).reshape(-1, 1, 1)  # [B, 1, 1]
    return t0 + segments.to(dtype) * dt


def results_json(
    video_ids: Sequence[str],
    detections: Detections | Mapping[str, Detections] | None,
    class_names: Sequence[str],
    duration: Tensor | Sequence[float] | Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """ActivityNet results: ``{"version", "results": {video: [{label, score, segment}]}, "external_data"}``.

    ``detections`` (in seconds) is either batched :class:`Detections` ``[B, D]`` with one row per
    entry of ``video_ids``, or the per-video mapping that :func:`merge_windows` returns (then
    ``video_ids`` picks and orders the videos), or None for no videos. Only valid rows are written,
    in row order (score descending); a video id that appears in several rows gets the rows'
    detections concatenated. ``duration`` ([B] seconds, or a mapping video id -> seconds) clips
    segments to ``[0, duration]`` and drops detections that lie entirely outside the video.
    """
    if detections is None:
        if len(video_ids):
            raise ValueError(f"results_json: {len(video_ids)} video ids but no detections")
        return {"version": RESULTS_VERSION, "results": {}, "external_data": {}}
    if isinstance(detections, Mapping):
        missing = [v for v in video_ids if v not in detections]
        if missing:
            raise ValueError(f"results_json: no detections for videos {missing[:5]}")
        _, detections = stack_detections({v: detections[v] for v in video_ids})
    seg = detections.segments.detach().cpu().double()
    B = seg.shape[0]
    if len(video_ids) != B:
        raise ValueError(f"results_json: {len(video_ids)} video ids for {B} detection rows")
    sc = detections.scores.detach().cpu().double().tolist()
    lab = detections.labels.detach().cpu().long().tolist()
    val = detections.valid.detach().cpu().bool().tolist()
    seg_l = seg.tolist()
    if duration is None:
        dur = None
    elif isinstance(duration, Mapping):
        dur = [duration.get(v) for v in video_ids]  # None: no duration known for that video
    else:
        dur = torch.as_tensor(duration, dtype=torch.float64).reshape(-1).tolist()
        if len(dur) != B:
            raise ValueError(f"results_json: {len(dur)} durations for {B} detection rows")
    results: dict[str, list[dict[str, Any]]] = {}
    for b, vid in enumerate(video_ids):
        out = results.setdefault(str(vid), [])
        d_b = None if dur is None else dur[b]
        for j, ok in enumerate(val[b]):
            if not ok:
                continue
            s, e = seg_l[b][j]
            if d_b is not None:
                s, e = min(max(s, 0.0), float(d_b)), min(max(e, 0.0), float(d_b))
                if e <= s:
                    continue
            label = lab[b][j]
            if not 0 <= label < len(class_names):
                raise ValueError(f"results_json: label {label} outside the {len(class_names)} class names")
            out.append({"label": str(class_names[label]), "score": float(sc[b][j]), "segment": [s, e]})
    return {"version": RESULTS_VERSION, "results": results, "external_data": {}}


def stack_detections(per_video: Mapping[str, Detections]) -> tuple[list[str], Detections]:
    """``merge_windows`` output -> ``(video_ids, batched Detections [V, D])`` for :func:`results_json`."""
    ids = list(per_video)
    if not ids:
        z = torch.zeros(0, 0)
        return ids, Detections(z.reshape(0, 0, 2), z, z.long(), z.bool())
    dets = [per_video[v] for v in ids]
    D = max(d.scores.shape[0] for d in dets)

    def pad(x: Tensor) -> Tensor:  # pad the detection dim (dim 0) to D with zeros / False
        extra = D - x.shape[0]
        return x if extra == 0 else torch.cat([x, x.new_zeros((extra, *x.shape[1:]))])

    return ids, Detections(*(torch.stack([pad(d[i]) for d in dets]) for i in range(4)))


@torch.no_grad()
def merge_windows(
    video_ids: Sequence[str],
    segments_sec: Tensor,
    scores: Tensor,
    labels: Tensor,
    valid: Tensor,
    cfg: DecodeConfig,
) -> dict[str, Detections]:
    """Group windows by video and Soft-NMS each video again; one unbatched ``Detections [D]`` per video.

    ``segments_sec [N, M, 2]`` (absolute seconds), ``scores``, ``labels``, ``valid [N, M]``: one row
    per window, ``video_ids[n]`` its video. The windows of a video are padded into one row of
    ``[V, max_windows * M]`` and Soft-NMS'd together (``D = cfg.max_detections``). A video with a
    single window (rescale mode) is passed through unchanged: its rows sorted by score (valid
    first; stable), cut or padded to D. Videos come out in first-appearance order.
    """
    N = len(video_ids)
    if segments_sec.dim() != 3 or segments_sec.shape[0] != N or segments_sec.shape[-1] != 2:
        raise ValueError(f"merge_windows: segments must be [N={N}, M, 2], got {tuple(segments_sec.shape)}")
    M = segments_sec.shape[1]
    for name, x in (("scores", scores), ("labels", labels), ("valid", valid)):
        if tuple(x.shape) != (N, M):
            raise ValueError(f"merge_windows: {name} must be [N, M] = {(N, M)}, got {tuple(x.shape)}")
    if N == 0:
        return {}
    dev = segments_sec.device
    D = cfg.max_detections
    vids = list(dict.fromkeys(video_ids))
    V = len(vids)
    where_v = {v: i for i, v in enumerate(vids)}
    vidx = torch.tensor([where_v[v] for v in video_ids], dtype=torch.long, device=dev)  # [N]

    # rank of each window inside its video (stable: input order)
    sorted_v, perm = torch.sort(vidx, stable=True)
    counts = torch.bincount(vidx, minlength=V)  # [V]
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(vidx)
    rank[perm] = torch.arange(N, device=dev) - group_start[sorted_v]
    W = int(counts.max())

    seg_dtype = torch.promote_types(segments_sec.dtype, torch.float32)
    slot = rank[:, None] * M + torch.arange(M, device=dev)  # slot: [N, M]
    row = vidx[:, None].expand(N, M)
    p_seg = torch.zeros(V, W * M, 2, dtype=seg_dtype, device=dev)
    p_sc = torch.zeros(V, W * M, dtype=torch.float32, device=dev)
    p_lab = torch.zeros(V, W * M, dtype=torch.long, device=dev)
    p_val = torch.zeros(V, W * M, dtype=torch.bool, device=dev)
    p_seg[row, slot] = segments_sec.to(seg_dtype)
    p_sc[row, slot] = scores.float()
    p_lab[row, slot] = labels.long()
    p_val[row, slot] = valid.bool()

    # Soft-NMS only the videos with several windows (single-window ones pass through below)
    multi = (counts > 1).nonzero().squeeze(1)  # multi: [V_multi]
    n_seg = torch.zeros(V, D, 2, dtype=seg_dtype, device=dev)
    n_sc = torch.zeros(V, D, dtype=torch.float32, device=dev)
    n_lab = torch.zeros(V, D, dtype=torch.long, device=dev)
    n_val = torch.zeros(V, D, dtype=torch.bool, device=dev)
    if multi.numel():
        picked = soft_nms(
            p_seg[multi],
            p_sc[multi],
            p_lab[multi],
            p_val[multi],
            sigma=cfg.nms_sigma,
            max_detections=D,
            class_aware=cfg.nms_class_aware,
        )
        for out, res in zip((n_seg, n_sc, n_lab, n_val), picked[:4], strict=True):
            out[multi] = res

    # single-window videos: pass through (sorted, cut/padded to D)
    key = torch.where(p_val[:, :M], p_sc[:, :M], float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :D]  # [V, min(M, D)]
    t_seg = p_seg[:, :M].gather(1, order[:, :, None].expand(-1, -1, 2))
    t_sc, t_lab, t_val = (x[:, :M].gather(1, order) for x in (p_sc, p_lab, p_val))
    if order.shape[1] < D:
        pad = D - order.shape[1]
        t_seg = F.pad(t_seg, (0, 0, 0, pad))
        t_sc, t_lab, t_val = (F.pad(x, (0, pad)) for x in (t_sc, t_lab, t_val.long()))
        t_val = t_val.bool()
    t_sc = torch.where(t_val, t_sc, 0.0)
    t_seg = torch.where(t_val[..., None], t_seg, 0.0)
    t_lab = torch.where(t_val, t_lab, 0)
    single = (counts == 1)[:, None]  # [V, 1]
    seg = torch.where(single[..., None], t_seg, n_seg)
    sc = torch.where(single, t_sc, n_sc)
    lab = torch.where(single, t_lab, n_lab)
    val = torch.where(single, t_val, n_val)
    return {v: Detections(seg[i], sc[i], lab[i], val[i]) for i, v in enumerate(vids)}
