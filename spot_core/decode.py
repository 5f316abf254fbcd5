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

Each step is a public function of :mod:`spot_core.decode_steps` (shared with the kernels'
references and the fused GPU path); :func:`decode_windows` chains them.

:func:`detect` then removes duplicate ``(start, end, label)`` proposals of a window (keeping the
highest score; equal scores keep the lowest proposal index), runs Gaussian Soft-NMS
(:mod:`spot_core.nms`) and keeps ``max_detections`` per window. :func:`merge_windows` groups the
windows of a video (sliding windows) and runs Soft-NMS again per video; with ``decode.vote_iou`` it
then moves each kept detection's boundaries to the score-weighted mean of its overlapping
same-class candidates (:func:`vote_segments`, box voting).

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

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from spot_core.config import DecodeConfig
from spot_core.decode_steps import (
    Proposals,
    class_proposals,
    combine_proposals,
    decode_inputs,
    dedup,
    mask_proposals,
    row_labels,
    tracing,
)
from spot_core.nms import soft_nms

__all__ = [
    "Detections",
    "Proposals",
    "decode_windows",
    "detect",
    "merge_top",
    "merge_windows",
    "num_proposals",
    "pass_through",
    "results_json",
    "stack_detections",
    "to_seconds",
    "vote_segments",
]

RESULTS_VERSION = "VERSION 1.3"


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
    if tracing() or B == 0:
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
    B, _, T = logits.shape
    # 1-3. per-snippet scores and classes, window class, stable top-k snippets
    d = decode_inputs(logits, cfg, video_class=video_class, video_score=video_score, valid_len=valid_len)
    k = d.top.shape[1]
    rows = mask.gather(1, d.top[:, :, None].expand(B, k, T)).float()  # rows: [B, k, T]
    # 4. mask proposals (scaled by the window score in window mode), 5. class-activation proposals
    mprops = mask_proposals(rows, d.top, d.top_ok, d.valid_t, d.p, row_labels(d), d.ws, cfg)
    cprops = class_proposals(d.s, d.c, rows, d.top, d.top_ok, d.valid_t, d.wc, cfg)
    # 6. window score on the class proposals, [B, M] layout
    return combine_proposals(mprops, cprops, d.ws)


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
    keep = dedup(props, logits.shape[-1], logits.shape[1] - 1)
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
def pass_through(seg: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, D: int) -> Detections:
    """The merge of single-window videos (no Soft-NMS): ``[V, M]`` rows -> :class:`Detections` ``[V, D]``.

    Each row sorted by score (valid first; stable), cut or padded to D, invalid rows zeroed.
    :func:`merge_windows` uses it for its single-window videos, the stream detector for a stream
    of one window.
    """
    M = scores.shape[1]
    key = torch.where(valid.bool(), scores.float(), float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :D]  # [V, min(M, D)]
    t_seg = seg.gather(1, order[:, :, None].expand(-1, -1, 2))
    t_sc, t_lab, t_val = (x.gather(1, order) for x in (scores.float(), labels.long(), valid.bool()))
    if M < D:
        t_seg = F.pad(t_seg, (0, 0, 0, D - M))
        t_sc, t_lab, t_val = (F.pad(x, (0, D - M)) for x in (t_sc, t_lab, t_val.long()))
        t_val = t_val.bool()
    t_sc = torch.where(t_val, t_sc, 0.0)
    t_seg = torch.where(t_val[..., None], t_seg, 0.0)
    t_lab = torch.where(t_val, t_lab, 0)
    return Detections(t_seg, t_sc, t_lab, t_val)


#: stitching: two detections in overlapping windows are one action when their parts inside the
#: windows' overlap agree at least this much (1-D IoU)
STITCH_AGREEMENT = 0.5
#: stitching: a detection "reaches" its window's end when it ends within this many snippets of it
STITCH_EDGE = 1.0


def stitch_windows(
    video_ids: Sequence[str],
    segments_sec: Tensor,
    scores: Tensor,
    labels: Tensor,
    valid: Tensor,
    t0: Tensor,
    dt: Tensor,
    valid_len: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Join detections of an action longer than a window across the windows of each video.

    ``segments_sec [N, M, 2]`` (seconds), ``scores``, ``labels``, ``valid [N, M]``: one row per
    window, windows of a video in time order; ``t0``, ``dt [N]`` (float64: window start, seconds
    per snippet) and ``valid_len [N]`` place each window. Per video, in window order, a *chain*
    starts at a detection that reaches its window's end (within :data:`STITCH_EDGE` snippets; not
    the video's last window) and grows by the detection of a later overlapping window with the
    same label that extends past the chain's end and agrees with the chain's last detection inside
    the two windows' overlap (1-D IoU >= :data:`STITCH_AGREEMENT`; the best agreement, then the
    best score, wins); it stays open while its last detection reaches its window's end. A chain of
    two or more detections becomes one detection ``[first start, last end]`` with the mean of their
    scores, in the slot of its first detection; the others are dropped (``valid`` False). Returns
    new ``(segments, scores, labels, valid)``; every decision is a comparison of the same float64 /
    float32 values, so the streaming runtime (which stores the same values) stitches identically.
    """
    seg = segments_sec.detach().cpu().double().numpy().copy()
    sc = scores.detach().cpu().float().numpy().copy()
    lab = labels.detach().cpu().long().numpy()
    val = valid.detach().cpu().bool().numpy().copy()
    lo = t0.detach().cpu().double().numpy()
    step = dt.detach().cpu().double().numpy()
    hi = lo + valid_len.detach().cpu().double().numpy() * step
    groups: dict[str, list[int]] = {}
    for n, v in enumerate(video_ids):
        groups.setdefault(v, []).append(n)
    for rows in groups.values():
        if len(rows) > 1:
            _stitch_video(rows, seg, sc, lab, val, lo, hi, step)
    dev = segments_sec.device
    return (
        torch.from_numpy(seg).to(device=dev, dtype=segments_sec.dtype),
        torch.from_numpy(sc).to(device=dev, dtype=scores.dtype),
        labels,
        torch.from_numpy(val).to(dev),
    )


def _stitch_video(rows, seg, sc, lab, val, lo, hi, step) -> None:
    """:func:`stitch_windows` of one video's windows ``rows`` (in place)."""
    chains: list[list[tuple[int, int]]] = []  # members (window row, detection index)
    open_: list[int] = []  # indices into chains
    last = rows[-1]
    for n in rows:
        cand = np.flatnonzero(val[n])
        cand = cand[np.argsort(-sc[n, cand], kind="stable")]  # best score first
        free = np.ones(cand.size, dtype=bool)
        s_c, e_c = seg[n, cand, 0], seg[n, cand, 1]
        keep_open = []
        for ci in open_:
            pw, pj = chains[ci][-1]
            if hi[pw] <= lo[n]:  # no overlap with this window any more: the chain ends
                continue
            o_lo, o_hi = lo[n], hi[pw]
            ps, pe = seg[pw, pj]
            a_s, a_e = max(ps, o_lo), min(pe, o_hi)
            b_s, b_e = np.maximum(s_c, o_lo), np.minimum(e_c, o_hi)
            inter = np.clip(np.minimum(a_e, b_e) - np.maximum(a_s, b_s), 0.0, None)
            union = np.maximum(a_e, b_e) - np.minimum(a_s, b_s)
            agree = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
            ok = free & (lab[n, cand] == lab[pw, pj]) & (e_c > pe) & (s_c < pe) & (agree >= STITCH_AGREEMENT)
            if not ok.any():
                keep_open.append(ci)  # a later overlapping window may still continue it
                continue
            best = int(np.flatnonzero(ok & (agree == agree[ok].max()))[0])  # ties: best score
            free[best] = False
            chains[ci].append((n, int(cand[best])))
            if n != last and e_c[best] >= hi[n] - STITCH_EDGE * step[n]:
                keep_open.append(ci)
        if n != last:
            for i in np.flatnonzero(free & (e_c >= hi[n] - STITCH_EDGE * step[n])):
                chains.append([(n, int(cand[i]))])
                keep_open.append(len(chains) - 1)
        open_ = keep_open
    for members in chains:
        if len(members) < 2:
            continue
        (w0, j0), rest = members[0], members[1:]
        seg[w0, j0] = (min(seg[w, j, 0] for w, j in members), max(seg[w, j, 1] for w, j in members))
        sc[w0, j0] = np.float32(np.mean([float(sc[w, j]) for w, j in members]))
        for w, j in rest:
            val[w, j] = False


@torch.no_grad()
def merge_windows(
    video_ids: Sequence[str],
    segments_sec: Tensor,
    scores: Tensor,
    labels: Tensor,
    valid: Tensor,
    cfg: DecodeConfig,
    *,
    windows: tuple[Tensor, Tensor, Tensor] | None = None,
) -> dict[str, Detections]:
    """Group windows by video and Soft-NMS each video again; one unbatched ``Detections [D]`` per video.

    With ``cfg.stitch`` the detections of actions longer than a window are first joined across
    windows (:func:`stitch_windows`); ``windows = (t0, dt, valid_len)``, each ``[N]``, places the
    windows (required then).

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
    if cfg.stitch:
        if windows is None:
            raise ValueError("merge_windows: decode.stitch needs windows=(t0, dt, valid_len)")
        segments_sec, scores, labels, valid = stitch_windows(
            video_ids, segments_sec, scores, labels, valid, *windows
        )
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
    t_seg, t_sc, t_lab, t_val = pass_through(p_seg[:, :M], p_sc[:, :M], p_lab[:, :M], p_val[:, :M], D)
    single = (counts == 1)[:, None]  # [V, 1]
    seg = torch.where(single[..., None], t_seg, n_seg)
    sc = torch.where(single, t_sc, n_sc)
    lab = torch.where(single, t_lab, n_lab)
    val = torch.where(single, t_val, n_val)
    merged = {v: Detections(seg[i], sc[i], lab[i], val[i]) for i, v in enumerate(vids)}
    if cfg.vote_iou is not None:
        merged = {
            v: vote_segments(d, p_seg[i], p_sc[i], p_lab[i], p_val[i], cfg.vote_iou)
            for i, (v, d) in enumerate(merged.items())
        }
    return merged


#: box voting: candidates per step (bounds the ``[D, chunk]`` overlap matrix of a long stream)
VOTE_CHUNK = 2048


def vote_segments(
    det: Detections, seg: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, iou: float
) -> Detections:
    """Box voting on one video's merged detections (unbatched ``[D]``): each valid detection's
    segment becomes the score-weighted mean of the segments of every valid candidate with its label
    whose 1-D IoU with it is ``>= iou`` (the detection's own candidate among them). Scores, labels
    and order are kept; a detection with no such candidate (zero length) keeps its segment.

    ``seg [N, 2]``, ``scores``, ``labels``, ``valid [N]``: the candidates the merge picked from
    (every window's detections of the video, in window order). Only the valid candidates are read,
    in order, ``VOTE_CHUNK`` at a time, in float64: the same candidates give the same bits whatever
    padding surrounds them (the stream detector's final merge relies on it).
    """
    idx = torch.nonzero(valid.bool()).flatten()
    c_seg = seg[idx].double()  # [n, 2]
    c_sc = scores[idx].double()
    c_lab = labels[idx].long()
    d_seg = det.segments.double()  # [D, 2]
    d_s, d_e = d_seg[:, :1], d_seg[:, 1:]  # [D, 1]
    num = torch.zeros_like(d_seg)
    den = torch.zeros(d_seg.shape[0], dtype=torch.float64, device=d_seg.device)
    d_lab, d_ok = det.labels.long(), det.valid.bool()
    for a in range(0, idx.numel(), VOTE_CHUNK):
        cs, cw, cl = c_seg[a : a + VOTE_CHUNK], c_sc[a : a + VOTE_CHUNK], c_lab[a : a + VOTE_CHUNK]
        # only the detections that reach into this chunk's time span can overlap its candidates (the
        # candidates come in window order, so a chunk of a long stream spans a few minutes)
        rows = torch.nonzero(d_ok & (d_seg[:, 1] > cs[:, 0].min()) & (d_seg[:, 0] < cs[:, 1].max())).flatten()
        if rows.numel() == 0:
            continue
        s, e = cs[None, :, 0], cs[None, :, 1]  # [1, C]
        r_s, r_e = d_s[rows], d_e[rows]  # [R, 1]
        inter = (torch.minimum(r_e, e) - torch.maximum(r_s, s)).clamp_min(0.0)  # [R, C]
        union = (r_e - r_s) + (e - s) - inter
        same = d_lab[rows, None] == cl[None]
        w = torch.where(same & (union > 0) & (inter >= iou * union), cw[None], 0.0)  # [R, C]
        num[rows] += w @ cs
        den[rows] += w.sum(1)
    voted = torch.where((den > 0)[:, None], num / den.clamp_min(1e-300)[:, None], d_seg)
    return det._replace(segments=voted.to(det.segments.dtype))


@torch.no_grad()
def merge_top(seg: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, cfg: DecodeConfig) -> Detections:
    """:func:`merge_windows` of one multi-window video, exactly, on fewer candidates (stream finals).

    ``seg [N, 2]`` (seconds), ``scores``, ``labels``, ``valid [N]``: every window's detections in
    window order. merge_windows runs one Soft-NMS over all N and keeps the first D picks. Here the
    Soft-NMS runs on the K best candidates by original score (K = 4D, then x4 while needed), in
    their original order, and the result is accepted only with a certificate that it is the same:
    if the best excluded original score ``m`` is below the D-th emitted score ``e_D``, then at every
    one of the first D picks every excluded candidate's current score (<= its original <= m) is
    strictly below the picked one (>= e_D), so the full problem picks the same candidate (ties
    among the included ones go to the lowest index in both: the order is kept), the included
    candidates see the same decays in the same order, and the excluded ones decay no one before
    pick D. Each decay is the same elementwise expression of the same two segments, so the bits
    agree. Otherwise K grows, up to all N (then it is merge_windows' own computation).

    Why: a long stream has N = windows x D candidates; one Soft-NMS over all of them costs D passes
    over N, and its per-pick temporaries fragment the heap (measured: +48 MB of peak RSS for a
    4-hour toy stream). Returns unbatched :class:`Detections` ``[D]`` (segments float64).
    """
    D = cfg.max_detections
    idx = torch.nonzero(valid.bool()).flatten()  # valid candidates, in order
    n = idx.numel()
    key = scores.float()[idx]
    order = idx[torch.sort(key, descending=True, stable=True).indices]  # best original score first
    K = min(4 * D, n)
    while True:
        sel = torch.sort(order[:K]).values  # the K best, back in window order
        out = soft_nms(
            seg[sel][None],
            scores.float()[sel][None],
            labels.long()[sel][None],
            torch.ones(1, K, dtype=torch.bool),
            sigma=cfg.nms_sigma,
            max_detections=D,
            class_aware=cfg.nms_class_aware,
        )
        if K >= n:
            break
        e_D = float(out[1][0, D - 1]) if bool(out[3][0, D - 1]) else -math.inf
        m = float(scores.float()[order[K]])
        if m < e_D:
            break
        K = min(4 * K, n)
    o_seg, o_sc, o_lab, o_val, _ = out
    return Detections(o_seg[0], o_sc[0], o_lab[0], o_val[0])
