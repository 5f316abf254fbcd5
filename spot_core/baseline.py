"""A simple baseline: a per-snippet linear classifier plus thresholding.

It answers "is the embedded data trivially separable?": the classifier sees one snippet at a time
(no temporal context). Its segments are the runs of snippets whose arg-max class is c (optionally
pooled with the runs where the probability of c exceeds given thresholds), each scored by its mean
probability of c, then Soft-NMS'd per window and merged per video like SPOT's proposals.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .config import SpotConfig
from .data.windows import Window
from .decode import merge_windows, results_json
from .nms import soft_nms

log = logging.getLogger(__name__)

# Extra per-class probability thresholds whose runs are pooled with the arg-max runs. Off by default:
# on the embedded data the arg-max runs alone scored best (average mAP 27.3, vs 25.7 with (0.5,) and
# 19.1 with (0.2, 0.35, 0.5, 0.65, 0.8); validation set of `python -m spot_core.demo`, seed 0).
THRESHOLDS: tuple[float, ...] = ()


def fit_linear(
    windows: Sequence[Window],
    num_classes: int,
    *,
    epochs: int = 200,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> nn.Linear:
    """Multinomial logistic regression on the valid snippets of labelled windows (full-batch Adam)."""
    x = np.concatenate([w.features_tc()[: w.valid] for w in windows if w.labeled and w.has_targets])
    y = np.concatenate([w.cls_target[: w.valid] for w in windows if w.labeled and w.has_targets])
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    lin = nn.Linear(xt.shape[1], num_classes + 1)
    opt = torch.optim.Adam(lin.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(lin(xt), yt)
        loss.backward()
        opt.step()
    log.info("linear baseline: %d snippets, final train CE %.4f", len(yt), loss.item())
    return lin


def _runs(on: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a 1-D bool array."""
    d = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=False))


@torch.no_grad()
def predict_linear(
    lin: nn.Linear,
    windows: Sequence[Window],
    cfg: SpotConfig,
    durations: dict[str, float] | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict:
    """Threshold per-snippet class probabilities into scored segments; ActivityNet result JSON."""
    k = cfg.model.num_classes
    props = []
    for w in windows:
        p = torch.softmax(lin(torch.from_numpy(w.features_tc()[: w.valid])), dim=1).numpy()  # [T, K+1]
        cand = {}
        arg = p.argmax(axis=1)
        for c in range(k):
            for s, e in _runs(arg == c):  # runs of the arg-max class
                cand[(s, e, c)] = float(p[s:e, c].mean())
            for th in thresholds:
                for s, e in _runs(p[:, c] > th):
                    score = float(p[s:e, c].mean())
                    key = (s, e, c)
                    cand[key] = max(cand.get(key, 0.0), score)
        props.append(cand)
    m = max([len(c) for c in props] + [1])
    n = len(windows)
    seg = torch.zeros(n, m, 2, dtype=torch.float64)
    sc = torch.zeros(n, m)
    lab = torch.zeros(n, m, dtype=torch.long)
    val = torch.zeros(n, m, dtype=torch.bool)
    for i, (w, cand) in enumerate(zip(windows, props, strict=False)):
        for j, ((s, e, c), score) in enumerate(cand.items()):
            seg[i, j, 0] = w.t_start + s * w.snippet_sec
            seg[i, j, 1] = w.t_start + e * w.snippet_sec
            sc[i, j], lab[i, j], val[i, j] = score, c, True
    d = cfg.decode
    seg, sc, lab, val, _ = soft_nms(
        seg, sc, lab, val, sigma=d.nms_sigma, max_detections=d.max_detections, class_aware=d.nms_class_aware
    )  # per window, as SPOT's detect() does
    merged = merge_windows([w.video_id for w in windows], seg, sc, lab, val, d)
    return results_json(list(merged), merged, cfg.names(), durations)
