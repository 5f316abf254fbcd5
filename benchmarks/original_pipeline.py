"""The original SPOT inference pipeline's *shape*, re-implemented to measure against (benchmarks only).

Not a reference for numbers: :mod:`spot_core.decode` and :mod:`spot_core.nms` are. This module mirrors
how the original code (``spot_inference.py`` + ``utils/postprocess_utils.py``) spends its time, so
that the speed ratio of our batched pipeline to it is meaningful:

* one video at a time, a batch-1 forward of the model, outputs copied to numpy;
* softmax in numpy, a Python loop over the T snippets for each snippet's best score and class;
* class-activation spans: per threshold, a Python list of 0/1, 1-D hole filling (everything
  between the first and the last 1, which is what ``ndimage.binary_fill_holes`` does in 1-D),
  ``list.index`` for first / last, the mode of the snippet classes in the span;
* top-k snippets by ``argpartition`` + ``argsort``; per top row and mask threshold the same list
  work plus ``itertools.groupby`` for the longest run;
* proposals collected as Python lists, exact duplicates removed with a ``set`` of tuples, a pandas
  DataFrame of ``video_name, xmin, xmax, clr_score, reg_score, label``;
* per video: the DataFrame rows of that video selected by a boolean filter, ``score = reg * clr``,
  Soft-NMS as ``postprocess_utils.Soft_NMS`` over Python lists (``max`` / ``index`` / ``pop``),
  the best 100 written as ``{"label", "score", "segment"}`` dicts.

Changes to the original, so that outputs are meaningful (none changes the amount of work much):
the IoU is the true 1-D IoU and the decay is Gaussian ``exp(-iou^2 / sigma)`` (the original
computed a wrong IoU and multiplied by ``exp(-10 iou^2) / 0.6``); the loop stops at ``num_prop``
detections or when no candidate is left (the original left the last candidate out); run means
use the whole run (the original's ``seq[a+1:b-1]`` is NaN for runs of two snippets); no video-level
external labels (the window class is the argmax of the time-averaged softmax); no CSV round trip
and no joblib process pool (both would only add cost).
"""

from __future__ import annotations

import itertools
import math
import operator
from typing import Any

import numpy as np
import pandas as pd
import torch

from spot_core.config import SpotConfig
from spot_core.model import SPOT

__all__ = ["original_detect_video", "original_postprocess", "soft_nms_dataframe"]


def _softmax_np(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _fill_holes_1d(bits: list[int]) -> list[int]:
    """1-D ``binary_fill_holes``: every 0 between the first and the last 1 becomes 1 (Python lists)."""
    if 1 not in bits:
        return list(bits)
    first = bits.index(1)
    last = len(bits) - 1 - bits[::-1].index(1)
    return [1 if first <= i <= last else 0 for i in range(len(bits))]


def _iou(s1: float, e1: float, s2: float, e2: float) -> float:
    inter = max(0.0, min(e1, e2) - max(s1, s2))
    union = (e1 - s1) + (e2 - s2) - inter
    return inter / union if union > 0 else 0.0


def soft_nms_dataframe(df: pd.DataFrame, sigma: float, num_prop: int) -> pd.DataFrame:
    """``postprocess_utils.Soft_NMS``'s shape (sort, Python lists, max / index / pop) with the true IoU
    and Gaussian decay ``exp(-iou^2 / sigma)``."""
    df = df.sort_values(by="score", ascending=False)
    tstart = list(df.xmin.values[:])
    tend = list(df.xmax.values[:])
    tscore = list(df.score.values[:])
    tlabel = list(df.label.values[:])
    rstart, rend, rscore, rlabel = [], [], [], []
    while len(tscore) > 0 and len(rscore) < num_prop:
        max_index = tscore.index(max(tscore))
        for idx in range(len(tscore)):
            if idx != max_index:
                tmp_iou = _iou(tstart[max_index], tend[max_index], tstart[idx], tend[idx])
                if tmp_iou > 0:
                    tscore[idx] = tscore[idx] * math.exp(-(tmp_iou**2) / sigma)
        rstart.append(tstart.pop(max_index))
        rend.append(tend.pop(max_index))
        rscore.append(tscore.pop(max_index))
        rlabel.append(tlabel.pop(max_index))
    out = pd.DataFrame()
    out["score"] = rscore
    out["xmin"] = rstart
    out["xmax"] = rend
    out["label"] = rlabel
    return out


def original_postprocess(
    video_name: str, logits: np.ndarray, mask: np.ndarray, cfg: SpotConfig, duration: float = 1.0
) -> list[dict[str, Any]]:
    """One video's post-processing as the original did it.

    Args:
        logits: ``[K+1, T]`` class logits (numpy).
        mask: ``[T, T]`` global segmentation mask (numpy).
        duration: seconds of the video (segments are fractions of the window times this).
    Returns:
        the video's result list ``[{"label", "score", "segment"}]``, best first.
    """
    dec = cfg.decode
    num_class = logits.shape[0] - 1
    tscale = logits.shape[1]
    soft_cas_np = _softmax_np(logits, axis=0)[:num_class]  # [K, T]
    label_pred = _softmax_np(np.mean(logits[:num_class, :], axis=1), axis=0)
    vid_label_id = int(np.argmax(label_pred))

    # per-snippet best score and class, one snippet at a time
    seg_score = np.zeros([tscale])
    seg_cls = []
    for j in range(tscale):
        seg_score[j] = np.amax(soft_cas_np[:, j])
        seg_cls.append(int(np.argmax(soft_cas_np[:, j])))

    # class-activation spans
    cas_tuple = []
    for k in dec.class_thresholds:
        filt = list(map(int, seg_score > k))
        filled = _fill_holes_1d(filt)
        if 1 in filled:
            start_pt1 = filled.index(1)
            end_pt1 = len(filled) - 1 - filled[::-1].index(1)
            if end_pt1 - start_pt1 > 1:
                scores = float(np.amax(seg_score[start_pt1 : end_pt1 + 1]))
                span = seg_cls[start_pt1 : end_pt1 + 1]
                label = max(set(span), key=span.count)
                cas_tuple.append([start_pt1, end_pt1, scores, label])

    # top-k snippets
    k = min(dec.top_k, tscale)
    max_idx = np.argpartition(seg_score, -k)[-k:]
    top_k_idx = max_idx[np.argsort(seg_score[max_idx])][::-1].tolist()

    new_props = []
    for locs in top_k_idx:
        seq = mask[locs, :]
        for th in dec.mask_thresholds:
            filtered_seq_int = list(map(int, seq > th))
            filled = _fill_holes_1d(filtered_seq_int)
            if 1 in filtered_seq_int:
                start_pt1 = filled.index(1)
                end_pt1 = len(filled) - 1 - filled[::-1].index(1)
                r = max(
                    (
                        list(y)
                        for (x, y) in itertools.groupby(enumerate(filtered_seq_int), operator.itemgetter(1))
                        if x == 1
                    ),
                    key=len,
                )
                start_pt, end_pt = r[0][0], r[-1][0]
                if (end_pt - start_pt) / tscale > dec.min_len_frac:
                    cls_score = float(seg_score[locs])
                    reg_score = float(np.mean(seq[start_pt : end_pt + 1]))
                    score_shift = float(np.amax(soft_cas_np[vid_label_id, start_pt : end_pt + 1]))
                    new_props.append(
                        [
                            video_name,
                            start_pt1 / tscale,
                            (end_pt1 + 1) / tscale,
                            score_shift * reg_score,
                            score_shift * cls_score,
                            vid_label_id,
                        ]
                    )
                    for start_m, end_m, score_m, _ in cas_tuple:
                        reg_m = float(np.amax(seq[start_m : end_m + 1]))
                        new_props.append(
                            [video_name, start_m / tscale, (end_m + 1) / tscale, reg_m, score_m, vid_label_id]
                        )

    # exact duplicates out, then a DataFrame (the original wrote it to CSV and read it back)
    col_name = ["video_name", "xmin", "xmax", "clr_score", "reg_score", "label"]
    pred_prop = pd.DataFrame(list(map(list, set(map(tuple, new_props)))), columns=col_name)

    # postprocess_utils.multithread_detection
    old_df = pred_prop[pred_prop.video_name == video_name]
    df = pd.DataFrame()
    df["score"] = old_df.reg_score.values[:] * old_df.clr_score.values[:]
    df["label"] = old_df.label.values[:]
    df["xmin"] = old_df.xmin.values[:]
    df["xmax"] = old_df.xmax.values[:]
    if len(df) > 1:
        df = soft_nms_dataframe(df, dec.nms_sigma, dec.max_detections)
    df = df.sort_values(by="score", ascending=False)
    proposal_list = []
    for j in range(min(dec.max_detections, len(df))):
        proposal_list.append(
            {
                "label": cfg.class_name(int(df.label.values[j])),
                "score": float(df.score.values[j]),
                "segment": [
                    max(0.0, float(df.xmin.values[j])) * duration,
                    min(1.0, float(df.xmax.values[j])) * duration,
                ],
            }
        )
    return proposal_list


@torch.no_grad()
def original_detect_video(
    model: SPOT, video_name: str, features_ct: np.ndarray, cfg: SpotConfig, duration: float = 1.0
) -> list[dict[str, Any]]:
    """Batch-1 forward of one video's features ``[C, T]`` then :func:`original_postprocess`."""
    x = torch.from_numpy(features_ct[None])  # [1, C, T]
    logits, mask = model(x)
    return original_postprocess(
        video_name, logits[0].detach().cpu().numpy(), mask[0].detach().cpu().numpy(), cfg, duration
    )
