"""The offline inference path: a video's windows in, its detections out, for every backend.

:func:`detect_windows` is the one function that turns windows into the ActivityNet result JSON:
per batch of windows a *window detector* (forward + decode + Soft-NMS, :data:`WindowDetector`),
then seconds, one :func:`spot_core.decode.merge_windows` per video and
:func:`spot_core.decode.results_json`. :func:`predict_windows` runs it with a PyTorch model
(training's validation, the demo, ``runtime.batch``, ``export.verify``'s mAP);
``runtime.offline.offline_detect`` runs it with a runtime session (any backend), which is what the
streaming detector's final output equals exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .config import SpotConfig
from .data.windows import Window
from .decode import Detections, detect, merge_windows, results_json, to_seconds
from .model import SPOT

__all__ = ["WindowDetector", "detect_windows", "model_detector", "predict_windows"]

#: ``(x [B, C, T] float32 CPU, valid_len [B] int64 CPU, video_class [B] | None, video_score [B] | None)``
#: -> per-window :class:`spot_core.decode.Detections` ``[B, D]`` (snippet units, any device)
WindowDetector = Callable[[Tensor, Tensor, Tensor | None, Tensor | None], Detections]


def model_detector(model: torch.nn.Module, cfg: SpotConfig) -> WindowDetector:
    """A :data:`WindowDetector` of a model ``x [B, C, T] -> (logits, mask)``, run on its device."""
    device = next(model.parameters()).device

    def run(x: Tensor, valid_len: Tensor, vcls: Tensor | None, vscore: Tensor | None) -> Detections:
        logits, mask = model(x.to(device))
        if vcls is not None and vscore is not None:
            vcls, vscore = vcls.to(device), vscore.to(device)
        return detect(
            logits, mask, cfg.decode, video_class=vcls, video_score=vscore, valid_len=valid_len.to(device)
        )

    return run


@torch.no_grad()
def detect_windows(
    detector: WindowDetector,
    windows: Sequence[Window],
    cfg: SpotConfig,
    *,
    batch_size: int = 64,
    video_labels: dict[str, tuple[str, float]] | None = None,
    durations: dict[str, float] | None = None,
    progress: bool = False,
) -> dict:
    """Detect actions in every window (``batch_size`` at a time) and merge them per video.

    ``video_labels`` maps a video id to an external (class name, score) pair used as the window
    class in ``decode.class_mode="window"`` (ActivityNet practice); ``durations`` (video id ->
    seconds) clips the segments. Returns the ActivityNet result JSON dict ``{"version", "results":
    {video: [{"label", "score", "segment"}]}, "external_data"}``.
    """
    index = {c: i for i, c in enumerate(cfg.class_names)} if cfg.class_names else None
    segs, scores, labels, valid, vids = [], [], [], [], []
    t0s, dts, lens = [], [], []
    steps = range(0, len(windows), batch_size)
    for i in tqdm(steps, desc="detect", unit="batch", disable=not progress, leave=False):
        chunk = windows[i : i + batch_size]
        x = torch.from_numpy(np.stack([w.features_ct() for w in chunk]))  # x: [B, C, T]
        vcls = vscore = None
        if video_labels is not None and cfg.decode.class_mode == "window":
            if index is None:
                raise ValueError("video-level labels need cfg.class_names to map names to class ids")
            vcls = torch.tensor([index[video_labels[w.video_id][0]] for w in chunk])
            vscore = torch.tensor([video_labels[w.video_id][1] for w in chunk])
        det = detector(x, torch.tensor([w.valid for w in chunk]), vcls, vscore)
        dev = det.segments.device
        t0 = torch.tensor([w.t_start for w in chunk], dtype=torch.float64, device=dev)
        dt = torch.tensor([w.snippet_sec for w in chunk], dtype=torch.float64, device=dev)
        segs.append(to_seconds(det.segments, t0, dt))
        scores.append(det.scores)
        labels.append(det.labels)
        valid.append(det.valid)
        vids.extend(w.video_id for w in chunk)
        t0s.append(t0.cpu())
        dts.append(dt.cpu())
        lens.extend(w.valid for w in chunk)
    if not vids:
        return results_json([], None, cfg.names())
    where = (torch.cat(t0s), torch.cat(dts), torch.tensor(lens, dtype=torch.float64))
    merged = merge_windows(
        vids,
        torch.cat(segs),
        torch.cat(scores),
        torch.cat(labels),
        torch.cat(valid),
        cfg.decode,
        windows=where,
    )
    return results_json(list(merged), merged, cfg.names(), durations)


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
    """:func:`detect_windows` with ``model`` (put in eval mode) on its device."""
    model.eval()
    return detect_windows(
        model_detector(model, cfg),
        windows,
        cfg,
        batch_size=batch_size,
        video_labels=video_labels,
        durations=durations,
        progress=progress,
    )
