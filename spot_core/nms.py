"""Batched 1-D Gaussian Soft-NMS (DESIGN.md section 4 step 6 and section 6).

One independent problem per batch row (a window or a video). For each row:

1. among the candidates still alive (``valid`` and not yet picked), pick the one with the highest
   current score; equal scores go to the lowest index;
2. emit it with its current (decayed) score;
3. multiply the score of every other candidate by ``exp(-iou^2 / sigma)``, where ``iou`` is the
   1-D IoU of the two ``[start, end)`` intervals (with ``class_aware`` only candidates that have the
   picked candidate's label decay);
4. repeat until ``max_detections`` are emitted or no candidate is alive.

There is no score threshold: a candidate whose score decayed to 0 can still be emitted. Emitted
scores never increase, so the output is sorted by score, descending; rows that ran out of
candidates are padded at the end with ``valid=False``, score 0, segment ``[0, 0]``, label 0 and
index -1.

Deviations from the original SPOT code (``utils/postprocess_utils.py``), which implemented the
paper's intent incorrectly:

* the original multiplied scores by ``exp(-10 iou^2) / nms_thresh`` (``/0.6``, which can *raise*
  scores) and only when ``iou > 0``; we use the Gaussian decay ``exp(-iou^2 / sigma)`` of Soft-NMS
  (Bodla et al., 2017) with ``sigma = DecodeConfig.nms_sigma``;
* its ``IOU`` used ``min(e1, e2) - min(s1, s2)`` as the intersection (wrong for nested or shifted
  intervals); we use intersection / union of ``[start, end)`` intervals;
* it stopped while one candidate was left (the last one was never emitted) and when the best score
  reached 0; we stop only at ``max_detections`` or when no candidate is left;
* it was class-agnostic only; ``class_aware=True`` decays only same-label candidates.

:func:`soft_nms` is the batched, vectorised PyTorch implementation (fixed-size outputs, a Python
loop only over the ``min(max_detections, N)`` picks, vectorised over the batch, stopping early on
the CPU once no row has a candidate left) and the reference
for the Triton kernel; :func:`soft_nms_reference` is the readable one-problem-at-a-time spec in plain
Python used by the tests.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_inputs", "iou_1d", "soft_nms", "soft_nms_reference", "tracing"]

# soft_nms precomputes the [B, N, N] decay table up to this many entries (4 MiB of float32; above
# it the table costs more than the per-pick IoU it saves, measured on CPU)
_PRECOMPUTE_LIMIT = 1 << 20


def tracing() -> bool:
    """True under torch.compile / torch.export / jit tracing, where data-dependent host reads are skipped."""
    if torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is None:
        return False
    is_exporting = getattr(compiler, "is_exporting", None)
    return bool(compiler.is_compiling() or (is_exporting is not None and is_exporting()))


def iou_1d(a: Tensor, b: Tensor) -> Tensor:
    """IoU of 1-D ``[start, end)`` intervals, broadcasting ``a [..., 2]`` against ``b [..., 2]``.

    Lengths are ``max(end - start, 0)``; the IoU is 0 where the union is 0 (two empty intervals).
    """
    a_s, a_e = a[..., 0], a[..., 1]
    b_s, b_e = b[..., 0], b[..., 1]
    inter = (torch.minimum(a_e, b_e) - torch.maximum(a_s, b_s)).clamp(min=0)
    union = (a_e - a_s).clamp(min=0) + (b_e - b_s).clamp(min=0) - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, torch.ones_like(union)), 0.0)


def check_inputs(
    segments: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, sigma: float, D: int
) -> None:
    """Shapes, dtypes, devices and settings of a Soft-NMS call (shared with :mod:`kernels.soft_nms`)."""
    if segments.dim() != 3 or segments.shape[-1] != 2:
        raise ValueError(f"soft_nms: segments must be [B, N, 2], got {tuple(segments.shape)}")
    B, N = segments.shape[:2]
    for name, x in (("scores", scores), ("labels", labels), ("valid", valid)):
        if tuple(x.shape) != (B, N):
            raise ValueError(f"soft_nms: {name} must be [B, N] = {(B, N)}, got {tuple(x.shape)}")
        if x.device != segments.device:
            raise ValueError(f"soft_nms: {name} is on {x.device} but segments are on {segments.device}")
    if not segments.is_floating_point() or not scores.is_floating_point():
        raise ValueError(
            f"soft_nms: segments and scores must be floating point, got {segments.dtype}, {scores.dtype}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"soft_nms: labels must be an integer tensor, got {labels.dtype}")
    if not (sigma > 0):
        raise ValueError(f"soft_nms: sigma must be > 0, got {sigma}")
    if D < 0:
        raise ValueError(f"soft_nms: max_detections must be >= 0, got {D}")


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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gaussian Soft-NMS, one independent problem per batch row.

    Args:
        segments: ``[B, N, 2]`` ``[start, end)`` intervals (any float dtype).
        scores: ``[B, N]`` candidate scores.
        labels: ``[B, N]`` integer class ids (used when ``class_aware``).
        valid: ``[B, N]`` bool, candidates that take part.
        sigma: Gaussian decay ``exp(-iou^2 / sigma)``, ``sigma > 0``.
        max_detections: D, the number of output rows per batch row.
        class_aware: decay only candidates with the picked candidate's label.

    Returns:
        ``(segments [B, D, 2], scores [B, D], labels [B, D], valid [B, D], index [B, D])``: the
        picks in order (scores descending), ``index`` into N (-1 for padding rows). Segments keep
        the input dtype when it is float64 and are float32 otherwise; scores are float32.
    """
    check_inputs(segments, scores, labels, valid, sigma, max_detections)
    B, N = segments.shape[:2]
    dev = segments.device
    D = max_detections
    seg_dtype = torch.promote_types(segments.dtype, torch.float32)
    seg = segments.to(seg_dtype)  # seg: [B, N, 2]
    labels = labels.long()
    alive = valid.bool()  # alive: [B, N]
    sc = torch.where(alive, scores.float(), 0.0)  # sc: [B, N]
    neg_inf = torch.tensor(float("-inf"), device=dev)
    inv_sigma = 1.0 / float(sigma)

    def decay_of(iou: Tensor, same_label: Tensor) -> Tensor:
        d = torch.exp(-(iou * iou) * inv_sigma)
        return torch.where(same_label, d, 1.0) if class_aware else d

    # The decay every candidate gets from every possible pick: precomputed as [B, N, N] when small
    # (then a pick costs one gather), else computed for the pick's row in each step.
    precompute = isinstance(B, int) and B * N * N <= _PRECOMPUTE_LIMIT  # symbolic B (export): no table
    if precompute:
        decay_all = decay_of(
            iou_1d(seg[:, :, None, :], seg[:, None, :, :]).float(), labels[:, :, None] == labels[:, None, :]
        )  # decay_all: [B, N, N], row i = decay caused by picking i

    steps = min(D, N)
    if not tracing() and dev.type == "cpu" and B > 0:
        # Stop once every row has run out of candidates: the picks after that are the padding rows
        # written below anyway. One host read, free on the CPU (kept off accelerators: no sync there,
        # so the loop stays capturable in a CUDA graph).
        steps = min(steps, int(alive.sum(dim=1).max()))
    picks, pick_scores = [], []
    for _ in range(steps):
        cand = torch.where(alive, sc, neg_inf)  # cand: [B, N]
        best = cand.argmax(dim=1, keepdim=True)  # best: [B, 1], first maximum = lowest index
        picks.append(best)
        pick_scores.append(cand.gather(1, best))  # -inf when nothing was left
        alive = alive.scatter(1, best, False)
        if precompute:
            decay = decay_all.gather(1, best[:, :, None].expand(B, 1, N)).squeeze(1)  # decay: [B, N]
        else:
            seg_b = seg.gather(1, best[:, :, None].expand(B, 1, 2))  # seg_b: [B, 1, 2]
            decay = decay_of(iou_1d(seg_b, seg).float(), labels == labels.gather(1, best))
        sc = sc * decay

    n = len(picks)
    if n:
        index = torch.cat(picks, dim=1)  # index: [B, n]
        res_score = torch.cat(pick_scores, dim=1)  # res_score: [B, n]
    else:
        index = torch.zeros(B, 0, dtype=torch.long, device=dev)
        res_score = torch.zeros(B, 0, dtype=torch.float32, device=dev)
    res_valid = res_score > neg_inf  # res_valid: [B, n]
    res_score = torch.where(res_valid, res_score, 0.0)
    res_seg = torch.where(res_valid[..., None], seg.gather(1, index[..., None].expand(B, n, 2)), 0.0)
    res_label = torch.where(res_valid, labels.gather(1, index), 0)
    res_index = torch.where(res_valid, index, -1)
    if n < D:  # fewer candidates than detections: pad with invalid rows
        pad = D - n
        res_seg = torch.cat([res_seg, torch.zeros(B, pad, 2, dtype=seg_dtype, device=dev)], dim=1)
        res_score = torch.cat([res_score, torch.zeros(B, pad, dtype=torch.float32, device=dev)], dim=1)
        res_label = torch.cat([res_label, torch.zeros(B, pad, dtype=torch.long, device=dev)], dim=1)
        res_valid = torch.cat([res_valid, torch.zeros(B, pad, dtype=torch.bool, device=dev)], dim=1)
        res_index = torch.cat([res_index, torch.full((B, pad), -1, dtype=torch.long, device=dev)], dim=1)
    return res_seg, res_score, res_label, res_valid, res_index


def _iou_py(s1: float, e1: float, s2: float, e2: float) -> float:
    """Plain-Python 1-D IoU of ``[s1, e1)`` and ``[s2, e2)`` (0 when the union is 0)."""
    inter = max(0.0, min(e1, e2) - max(s1, s2))
    union = max(0.0, e1 - s1) + max(0.0, e2 - s2) - inter
    return inter / union if union > 0 else 0.0


def _soft_nms_one(
    segs: list[tuple[float, float]],
    scores: list[float],
    labels: list[int],
    valid: list[bool],
    sigma: float,
    max_detections: int,
    class_aware: bool,
) -> list[tuple[int, float]]:
    """One problem, plain Python: the emitted ``(index, score)`` pairs in order."""
    alive = [i for i in range(len(scores)) if valid[i]]
    cur = [float(s) for s in scores]
    out: list[tuple[int, float]] = []
    while alive and len(out) < max_detections:
        best = alive[0]
        for i in alive:  # strict '>' keeps the lowest index among equal scores
            if cur[i] > cur[best]:
                best = i
        out.append((best, cur[best]))
        alive.remove(best)
        s0, e0 = segs[best]
        for i in alive:
            if class_aware and labels[i] != labels[best]:
                continue
            iou = _iou_py(s0, e0, segs[i][0], segs[i][1])
            cur[i] *= math.exp(-iou * iou / sigma)
    return out


@torch.no_grad()
def soft_nms_reference(
    segments: Tensor,
    scores: Tensor,
    labels: Tensor,
    valid: Tensor,
    *,
    sigma: float,
    max_detections: int,
    class_aware: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Readable reference of :func:`soft_nms`: plain Python floats (float64), one row at a time.

    Same arguments and outputs as :func:`soft_nms`; used by the tests, not in the runtime.
    """
    B, N = scores.shape
    D = max_detections
    seg_dtype = torch.promote_types(segments.dtype, torch.float32)
    out_seg = torch.zeros(B, D, 2, dtype=seg_dtype)
    out_score = torch.zeros(B, D, dtype=torch.float32)
    out_label = torch.zeros(B, D, dtype=torch.long)
    out_valid = torch.zeros(B, D, dtype=torch.bool)
    out_index = torch.full((B, D), -1, dtype=torch.long)
    seg_l = segments.detach().cpu().double().tolist()
    sc_l = scores.detach().cpu().float().double().tolist()
    lab_l = labels.detach().cpu().long().tolist()
    val_l = valid.detach().cpu().bool().tolist()
    for b in range(B):
        picks = _soft_nms_one(
            [(s, e) for s, e in seg_l[b]], sc_l[b], lab_l[b], val_l[b], sigma, D, class_aware
        )
        for j, (i, s) in enumerate(picks):
            out_seg[b, j] = segments[b, i].to(seg_dtype).cpu()
            out_score[b, j] = s
            out_label[b, j] = lab_l[b][i]
            out_valid[b, j] = True
            out_index[b, j] = i
    dev = segments.device
    return (out_seg.to(dev), out_score.to(dev), out_label.to(dev), out_valid.to(dev), out_index.to(dev))
