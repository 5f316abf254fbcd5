"""How a stream's stored window detections become detections: the exact final merge and the local
Soft-NMS of previews (docs/runtime.md, "Stream detector").

The stream detector keeps each decoded window compactly as :data:`WindowDets`: segments
``int32 [n, 2]`` in snippets from the window's start, scores ``float32 [n]``, labels ``int32 [n]``
(16 bytes per detection).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from spot_core.config import DecodeConfig
from spot_core.decode import Detections, merge_top, pass_through, stitch_windows, to_seconds, vote_segments
from spot_core.nms import soft_nms

__all__ = ["WindowDets", "final_merge", "local_soft_nms"]

#: one window's stored detections: (segments int32 [n, 2], scores float32 [n], labels int32 [n])
WindowDets = tuple[np.ndarray, np.ndarray, np.ndarray]


def final_merge(
    dets: Sequence[WindowDets],
    stride: int,
    sec: float,
    cfg: DecodeConfig,
    *,
    window: int | None = None,
    num_snippets: int | None = None,
) -> Detections:
    """The offline merge of one stream's ``W >= 1`` windows (window ``w`` starts at snippet
    ``w * stride``, ``sec`` seconds per snippet) on the same tensors as the offline path:
    :func:`spot_core.decode.pass_through` for one window, :func:`spot_core.decode.merge_top` (equal
    to ``merge_windows``) for more, after :func:`spot_core.decode.stitch_windows` when
    ``cfg.stitch`` (which needs the window length ``window`` = T and the stream's ``num_snippets``
    to place the windows as the offline path does). Returns unbatched ``Detections [D]`` in seconds."""
    W, D = len(dets), cfg.max_detections
    seg = torch.zeros(W, D, 2, dtype=torch.float32)
    sc = torch.zeros(W, D, dtype=torch.float32)
    lab = torch.zeros(W, D, dtype=torch.long)
    val = torch.zeros(W, D, dtype=torch.bool)
    for w, (s, c, la) in enumerate(dets):
        n = s.shape[0]
        seg[w, :n] = torch.from_numpy(s.astype(np.float32))
        sc[w, :n] = torch.from_numpy(c)
        lab[w, :n] = torch.from_numpy(la.astype(np.int64))
        val[w, :n] = True
    # offline: Window.t_start = a * sec with a = i * stride; snippet_sec = sec (float64 tensors)
    t0 = torch.tensor([(w * stride) * sec for w in range(W)], dtype=torch.float64)
    dt = torch.tensor([sec] * W, dtype=torch.float64)
    seg_sec = to_seconds(seg, t0, dt)  # [W, D, 2] float64
    if cfg.stitch and W > 1:
        if window is None or num_snippets is None:
            raise ValueError("final_merge: decode.stitch needs window= and num_snippets=")
        lens = torch.tensor([min(window, num_snippets - w * stride) for w in range(W)], dtype=torch.float64)
        seg_sec, sc, lab, val = stitch_windows([""] * W, seg_sec, sc, lab, val, t0, dt, lens)
    if W == 1:
        one = pass_through(seg_sec[:1], sc[:1], lab[:1], val[:1], D)  # [1, D]
        merged = Detections(*(x[0] for x in one))
    else:
        merged = merge_top(seg_sec.reshape(-1, 2), sc.reshape(-1), lab.reshape(-1), val.reshape(-1), cfg)
    if cfg.vote_iou is not None:  # the offline merge's box voting, on the same candidates in order
        merged = vote_segments(
            merged, seg_sec.reshape(-1, 2), sc.reshape(-1), lab.reshape(-1), val.reshape(-1), cfg.vote_iou
        )
    return merged


def local_soft_nms(
    problems: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], D: int, cfg: DecodeConfig
) -> list[list[tuple[float, int]]]:
    """One batched Soft-NMS over independent candidate sets (the previews of several streams).

    ``problems[i]``: segments ``float64 [n_i, 2]``, scores ``float32 [n_i]``, labels ``[n_i]``.
    Returns, per problem, its picks in pick order as ``(decayed score, candidate index)``, at most
    ``min(D, max n_i)`` each.
    """
    N = max(p[0].shape[0] for p in problems)
    R = len(problems)
    seg_t = torch.zeros(R, N, 2, dtype=torch.float64)
    sc_t = torch.zeros(R, N)
    lab_t = torch.zeros(R, N, dtype=torch.long)
    val_t = torch.zeros(R, N, dtype=torch.bool)
    for i, (seg, sc, lab) in enumerate(problems):
        n = seg.shape[0]
        seg_t[i, :n] = torch.from_numpy(seg)
        sc_t[i, :n] = torch.from_numpy(sc)
        lab_t[i, :n] = torch.from_numpy(lab.astype(np.int64))
        val_t[i, :n] = True
    _, o_sc, _, o_val, o_idx = soft_nms(
        seg_t,
        sc_t,
        lab_t,
        val_t,
        sigma=cfg.nms_sigma,
        max_detections=min(D, N),
        class_aware=cfg.nms_class_aware,
    )
    return [
        [
            (score, idx)
            for score, ok, idx in zip(o_sc[i].tolist(), o_val[i].tolist(), o_idx[i].tolist(), strict=True)
            if ok
        ]
        for i in range(R)
    ]
