"""Self-training on unlabelled streams (``semi.self_train_rounds``; issue 14, docs/results.md).

A teacher is trained as configured (supervised on the labelled windows, or SPOT's semi-supervised
stages); it then detects actions in every unlabelled video, and the detections it is sure of become
that video's labels: detections with score >= ``semi.self_train_score``, taken greedily by score
and never overlapping an earlier one, are the video's instances, the rest of the video is
background. A student (fresh weights, the same recipe, no pretraining) trains on the labelled
windows plus the unlabelled windows with these pseudo-labels; with several rounds the student
becomes the next teacher. The final student is the run's model (``OUT/last.safetensors``); the
teacher and intermediate students are kept in ``OUT/round0`` ... (each a complete run folder).

Window mode only (streams: windows slide over each video at its native rate); the windows the
student trains on are rebuilt from each unlabelled video's features with the pseudo-instances, so
they are exactly the windows the video would give with those labels.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from .config import ConfigError, SpotConfig
from .data.annotations import Instance, Video
from .data.windows import Window, slide_video

log = logging.getLogger(__name__)

__all__ = ["pseudo_instances", "pseudo_label_windows", "video_features"]


def video_features(windows: list[Window]) -> dict[str, tuple[np.ndarray, float]]:
    """Each video's ``[N, C]`` features and seconds per snippet, put back together from its windows
    (window mode: a window starts at snippet ``t_start / snippet_sec`` of its video)."""
    by_video: dict[str, list[Window]] = defaultdict(list)
    for w in windows:
        by_video[w.video_id].append(w)
    out = {}
    for vid, ws in by_video.items():
        sec = ws[0].snippet_sec
        starts = [int(round(w.t_start / sec)) for w in ws]
        n = max(a + w.valid for a, w in zip(starts, ws, strict=True))
        feats = np.zeros((n, ws[0].features.shape[1]), dtype=np.float32)
        covered = np.zeros(n, dtype=bool)
        for a, w in zip(starts, ws, strict=True):
            feats[a : a + w.valid] = w.features[: w.valid]
            covered[a : a + w.valid] = True
        if not covered.all():
            raise ValueError(f"video {vid!r}: its windows leave snippets uncovered (not window mode?)")
        out[vid] = (feats, sec)
    return out


def pseudo_instances(detections: list[dict], score: float) -> list[Instance]:
    """Detections (``{"segment", "label", "score"}``) with score >= ``score``, taken by decreasing
    score, each kept only when it does not overlap one kept before; sorted by start."""
    kept: list[Instance] = []
    for d in sorted(detections, key=lambda d: -d["score"]):
        if d["score"] < score:
            break
        s, e = float(d["segment"][0]), float(d["segment"][1])
        if e <= s or any(min(e, k.end) > max(s, k.start) for k in kept):
            continue
        kept.append(Instance(s, e, d["label"]))
    return sorted(kept, key=lambda i: i.start)


def pseudo_label_windows(
    teacher, cfg: SpotConfig, windows: list[Window], *, train_stride: int | None = None
) -> tuple[list[Window], dict]:
    """The unlabelled ``windows``' videos, detected by ``teacher`` and re-windowed with their
    pseudo-instances (:func:`pseudo_instances`) as labelled windows. Returns the windows and a
    summary (videos, snippets, instances, share of snippets inside an instance)."""
    from .inference import predict_windows

    if cfg.data.mode != "window":
        raise ConfigError("semi.self_train_rounds needs data.mode: window (streams)")
    if not cfg.class_names:
        raise ValueError("self-training needs cfg.class_names")
    class_index = {c: i for i, c in enumerate(cfg.class_names)}
    feats = video_features(windows)
    infer: list[Window] = []
    durations = {}
    for vid, (x, sec) in feats.items():
        v = Video(vid, x.shape[0] * sec, "training_unlabel", labeled=False)
        infer += slide_video(v, x, cfg, class_index, 1.0 / sec, targets=False)
        durations[vid] = x.shape[0] * sec
    preds = predict_windows(teacher, infer, cfg, durations=durations)["results"]
    stride_cfg = cfg if train_stride is None else cfg.override([f"data.stride={train_stride}"])
    out: list[Window] = []
    n_inst = n_snip = n_fg = 0
    for vid, (x, sec) in feats.items():
        inst = pseudo_instances(preds.get(vid, []), cfg.semi.self_train_score)
        v = Video(vid, x.shape[0] * sec, "training", inst, labeled=True)
        out += slide_video(v, x, stride_cfg, class_index, 1.0 / sec)
        n_inst += len(inst)
        n_snip += x.shape[0]
        fg = np.zeros(x.shape[0], dtype=bool)
        for i in inst:
            fg[int(round(i.start / sec)) : int(round(i.end / sec))] = True
        n_fg += int(fg.sum())
    summary = {
        "videos": len(feats),
        "snippets": n_snip,
        "instances": n_inst,
        "foreground": round(n_fg / max(n_snip, 1), 4),
    }
    log.info(
        "self-training: %d pseudo-instances in %d unlabelled videos (%d snippets, %.0f %% foreground)",
        n_inst, len(feats), n_snip, 100 * summary["foreground"],
    )  # fmt: skip
    return out, summary


def student_config(cfg: SpotConfig) -> SpotConfig:
    """A student's recipe: the run's, supervised on labelled + pseudo-labelled windows (no
    pretraining, no unlabelled stage)."""
    return cfg.override(["semi.pretrain_epochs=0", "semi.use_unlabeled=false"])


def round_dir(out: Path, r: int) -> Path:
    return out / f"round{r}"


def infer_train_stride(windows: list[Window]) -> int | None:
    """The stride the caller's training windows were cut at (the smallest start step within a video)."""
    steps = []
    by_video: dict[str, list[int]] = defaultdict(list)
    for w in windows:
        by_video[w.video_id].append(int(round(w.t_start / w.snippet_sec)))
    for starts in by_video.values():
        s = sorted(set(starts))
        steps += [b - a for a, b in zip(s, s[1:], strict=False)]
    return min(steps) if steps else None
