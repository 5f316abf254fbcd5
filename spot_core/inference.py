"""Batched inference over windows: model forward, decode, Soft-NMS, merge per video, result JSON."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from .config import SpotConfig
from .data.windows import Window
from .decode import detect, merge_windows, results_json, to_seconds
from .model import SPOT


@torch.no_grad()
def predict_windows(
    model: SPOT,
    windows: Sequence[Window],
    cfg: SpotConfig,
    *,
    batch_size: int = 64,
    video_labels: dict[str, tuple[str, float]] | None = None,
    durations: dict[str, float] | None = None,
    progress: bool = False,
) -> dict:
    """Detect actions in every window and merge them per video.

    ``video_labels`` maps a video id to an external (class name, score) pair used as the window
    class in ``decode.class_mode="window"`` (ActivityNet practice). Returns the ActivityNet result
    JSON dict ``{"version", "results": {video: [{"label", "score", "segment"}]}, "external_data"}``.
    """
    model.eval()
    device = next(model.parameters()).device
    index = {c: i for i, c in enumerate(cfg.class_names)} if cfg.class_names else None
    segs, scores, labels, valid, vids = [], [], [], [], []
    steps = range(0, len(windows), batch_size)
    for i in tqdm(steps, desc="detect", unit="batch", disable=not progress, leave=False):
        chunk = windows[i : i + batch_size]
        x = torch.from_numpy(np.stack([w.features_ct() for w in chunk])).to(device)  # [B, C, T]
        logits, mask = model(x)
        vcls = vscore = None
        if video_labels is not None and cfg.decode.class_mode == "window":
            if index is None:
                raise ValueError("video-level labels need cfg.class_names to map names to class ids")
            vcls = torch.tensor([index[video_labels[w.video_id][0]] for w in chunk], device=device)
            vscore = torch.tensor([video_labels[w.video_id][1] for w in chunk], device=device)
        valid_len = torch.tensor([w.valid for w in chunk], device=device)
        det = detect(logits, mask, cfg.decode, video_class=vcls, video_score=vscore, valid_len=valid_len)
        t0 = torch.tensor([w.t_start for w in chunk], dtype=torch.float64, device=device)
        dt = torch.tensor([w.snippet_sec for w in chunk], dtype=torch.float64, device=device)
        segs.append(to_seconds(det.segments, t0, dt))
        scores.append(det.scores)
        labels.append(det.labels)
        valid.append(det.valid)
        vids.extend(w.video_id for w in chunk)
    if not vids:
        return results_json([], None, cfg.names())
    merged = merge_windows(
        vids, torch.cat(segs), torch.cat(scores), torch.cat(labels), torch.cat(valid), cfg.decode
    )
    return results_json(list(merged), merged, cfg.names(), durations)
