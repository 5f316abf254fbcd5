"""The runtime's offline path and stream drivers: a whole feature sequence through a session
(:func:`offline_detect`, what a stream's final output equals exactly), every sequence of a set
streamed concurrently (:func:`stream_all`), and streamed vs offline mAP
(:func:`streamed_vs_offline_map`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from spot_core.cli import positive_finite
from spot_core.config import SpotConfig
from spot_core.inference import detect_windows

from .detector import StreamDetector, StreamError
from .session import Session

log = logging.getLogger(__name__)

__all__ = ["offline_detect", "offline_windows", "stream_all", "streamed_vs_offline_map"]


def offline_windows(
    cfg: SpotConfig, features: np.ndarray, *, stride: int, snippet_rate: float, video_id: str
) -> list:
    """The offline windows of a whole feature sequence: :func:`spot_core.data.windows.slide_video`."""
    from spot_core.data.annotations import Video
    from spot_core.data.windows import slide_video

    n = int(np.asarray(features).shape[0])
    video = Video(video_id=video_id, duration=n / snippet_rate, subset="test", labeled=False)
    wcfg = cfg.replace(data=dataclasses.replace(cfg.data, mode="window", stride=stride))
    return slide_video(
        video, features, wcfg, {c: i for i, c in enumerate(cfg.names())}, snippet_rate, targets=False
    )


@torch.no_grad()
def offline_detect(
    session: Session,
    features: np.ndarray,
    *,
    stride: int | None = None,
    snippet_rate: float | None = None,
    video_id: str = "stream",
    duration: float | None = None,
) -> dict[str, Any]:
    """The package's offline path on one whole feature sequence ``[N, C]``, with any session.

    :func:`spot_core.inference.detect_windows` (the path of ``predict_windows``) with the session
    as the window detector, on the sliding windows of :func:`offline_windows`.
    Returns the ActivityNet result JSON dict.
    """
    cfg = session.cfg
    S = cfg.data.stride if stride is None else stride
    rate = snippet_rate if snippet_rate is not None else (cfg.data.snippet_rate or 1.0)
    positive_finite(rate, "snippet_rate")
    if duration is not None:
        positive_finite(duration, "duration")
    windows = offline_windows(cfg, features, stride=S, snippet_rate=rate, video_id=video_id)
    dur = None if duration is None else {video_id: duration}
    return detect_windows(
        session.window_detector(), windows, cfg, batch_size=session.batch_size, durations=dur
    )


def stream_all(
    detector: StreamDetector,
    streams: Mapping[str, np.ndarray],
    chunk: int | Sequence[int],
    *,
    durations: Mapping[str, float] | None = None,
    progress: bool = False,
    errors: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Stream every ``[N, C]`` sequence of ``streams`` through ``detector`` concurrently (round robin).

    ``chunk``: snippets per push (an int, or a cycle of sizes). Returns the ActivityNet result JSON
    of the final outputs. With ``errors`` (a dict), a stream that raises :class:`StreamError` is
    aborted, its message stored under its id (logged at info level only: reporting it is the
    caller's job), and the other streams go on; without it the error propagates. Used by the CLI
    and by :func:`streamed_vs_offline_map`.
    """
    from tqdm.auto import tqdm

    sizes = [chunk] if isinstance(chunk, int) else list(chunk)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"chunk sizes must be >= 1, got {chunk}")
    pos = dict.fromkeys(streams, 0)
    k = dict.fromkeys(streams, 0)
    for sid in streams:
        detector.open(sid)
    streams = {sid: np.asarray(f) if not hasattr(f, "shape") else f for sid, f in streams.items()}
    results: dict[str, list[dict]] = {}
    total = sum(int(np.asarray(f).shape[0]) for f in streams.values())
    with tqdm(total=total, desc="stream", unit="snippet", disable=not progress, leave=False) as bar:
        live = list(streams)
        while live:
            nxt = []
            for sid in live:
                f = streams[sid]
                n = sizes[k[sid] % len(sizes)]
                k[sid] += 1
                part = f[pos[sid] : pos[sid] + n]
                try:
                    detector.push(sid, part)
                    pos[sid] += part.shape[0]
                    bar.update(part.shape[0])
                    if pos[sid] >= f.shape[0]:
                        dur = None if durations is None else durations.get(sid)
                        results[sid] = detector.close_json(sid, duration=dur)[0]
                    else:
                        nxt.append(sid)
                except StreamError as e:
                    if errors is None:
                        raise
                    errors[sid] = str(e)
                    log.info("%s (stream aborted, the others go on)", e)  # the caller reports errors
                    detector.abort(sid)
                    bar.update(f.shape[0] - pos[sid])
            live = nxt
    return {"version": "VERSION 1.3", "results": results, "external_data": {}}


def streamed_vs_offline_map(
    session: Session,
    features: Mapping[str, np.ndarray],
    ground_truth: Any,
    *,
    chunks: Iterable[int] = (1, 7, 64),
    stride: int | None = None,
    snippet_rate: float | None = None,
    tious: Sequence[float] | None = None,
    subset: str | None = None,
) -> dict[str, Any]:
    """mAP of the streamed output (one run per chunk size) against the offline output's mAP.

    ``features``: video id -> ``[N, C]``; ``ground_truth``: an :class:`AnnotationSet` holding those
    videos. Durations for clipping come from the ground truth, as in the demo. Returns
    ``{"offline": {"average_mAP", "mAP"}, "streamed": {chunk: {...}}, "equal": bool,
    "identical_detections": bool}``, ``equal`` meaning every streamed mAP equals the offline one exactly.
    """
    from spot_core.evaluation import PROTOCOLS, evaluate_detection

    cfg = session.cfg
    thr = tuple(tious) if tious is not None else PROTOCOLS[cfg.data.protocol]
    durations = {v: ground_truth.videos[v].duration for v in features}
    offline = {}
    for vid, f in features.items():
        offline.update(
            offline_detect(
                session, f, stride=stride, snippet_rate=snippet_rate, video_id=vid, duration=durations[vid]
            )["results"]
        )
    off = evaluate_detection(ground_truth, offline, thr, subset=subset)
    out: dict[str, Any] = {"offline": _map_dict(off), "streamed": {}, "identical_detections": True}
    for c in chunks:
        det = StreamDetector(
            session, stride=stride, snippet_rate=snippet_rate, max_delay_s=math.inf, preview=False
        )
        res = stream_all(det, features, c, durations=durations)["results"]
        out["streamed"][int(c)] = _map_dict(evaluate_detection(ground_truth, res, thr, subset=subset))
        out["identical_detections"] &= res == offline
    out["equal"] = all(v == out["offline"] for v in out["streamed"].values())
    return out


def _map_dict(r: Any) -> dict[str, Any]:
    d = r.to_dict()
    return {"average_mAP": d["average_mAP"], "mAP": d["mAP"]}
