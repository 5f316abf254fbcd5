"""Videos -> fixed-length windows of T snippets, with SPOT's training targets.

Two ways to cut a video (``cfg.data.mode``, DESIGN.md section 5):

- ``"rescale"`` (:func:`rescale_video`, ActivityNet as in BMN/SPOT): the whole video is linearly
  interpolated to T snippets; one window per video, ``snippet_sec = feature_duration / T``.
- ``"window"`` (:func:`slide_video`, THUMOS / long streams): native snippet rate, windows of T
  snippets starting at 0, S, 2S, ... (S = ``cfg.data.stride``) until the last snippet is covered;
  the last window (and the only window of a video shorter than T) is zero-padded.

Targets (DESIGN.md section 4), built by :func:`build_targets` from instance spans in snippets:

- seconds -> snippets, relative to the window's ``t_start``: ``s = round(start / snippet_sec)``,
  ``e = round(end / snippet_sec)`` (round half up), clamped to ``[0, valid]``; a non-zero-length
  instance gets at least one snippet (``e >= s + 1``). The span is ``[s, e)``.
- ``trim`` (original SPOT, ``cfg.data.trim_targets``): ``[s + 1, e - 1)`` when ``e - s > 2``.
- ``cls_target[t]``: the class of the instance covering t, background ``K`` elsewhere (padding
  included). Overlapping instances: the later one in source order overwrites the class.
- ``mask_target[s:e, s:e] = 1`` for every instance (a union of blocks), so its diagonal equals
  ``cls_target != K`` always, and row t is the union of the instances containing t.

Instances are first cleaned with :func:`~spot_core.data.annotations.clean_instances` (clipped to
the video, zero-length and duplicated ones dropped).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..config import SpotConfig
from .annotations import AnnotationSet, Instance, Video, clean_instances
from .features import FeatureError, FeatureStore

logger = logging.getLogger(__name__)

Features = FeatureStore | Mapping[str, np.ndarray]


@dataclass(eq=False)  # numpy fields: compare windows field by field
class Window:
    """T snippets of one video and their targets (numpy; :class:`WindowDataset` makes tensors)."""

    video_id: str
    features: np.ndarray  # [T, C] float32, snippet-major; rows >= valid are zero padding
    valid: int  # snippets 0..valid-1 are real, the rest padding
    t_start: float  # seconds of snippet 0's start in the video
    snippet_sec: float  # seconds per snippet; snippet t covers t_start + [t, t + 1) * snippet_sec
    cls_target: np.ndarray  # [T] int64 class per snippet, K = background (padding is background)
    mask_target: np.ndarray  # [T, T] float32, 1 on [s:e, s:e] for every instance span [s, e)
    labeled: bool  # the video's labels may be used (False: semi-supervised unlabeled or no labels)
    has_targets: bool  # targets built from ground truth (False: all background, never train on them)
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))  # [n, 3] (s, e, class)
    window_index: int = 0  # position of this window among its video's windows
    num_windows: int = 1  # how many windows the video has

    @property
    def num_snippets(self) -> int:
        return int(self.features.shape[0])

    def features_tc(self) -> np.ndarray:
        """Features ``[T, C]`` (the stored layout, no copy)."""
        return self.features

    def features_ct(self) -> np.ndarray:
        """Features ``[C, T]`` contiguous (the model's layout; a copy)."""
        return np.ascontiguousarray(self.features.T)

    @property
    def valid_mask(self) -> np.ndarray:
        """``[T]`` bool, True for real snippets."""
        m = np.zeros(self.num_snippets, dtype=bool)
        m[: self.valid] = True
        return m

    def to_seconds(self, idx: float | np.ndarray) -> float | np.ndarray:
        """Snippet boundary index (0..T) -> absolute seconds in the video."""
        return self.t_start + np.asarray(idx, dtype=np.float64) * self.snippet_sec


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Per-channel standardisation ``(x - mean) / std`` (``cfg.data.normalize``)."""

    mean: np.ndarray  # [C] float32
    std: np.ndarray  # [C] float32, >= eps

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    @staticmethod
    def fit(arrays: Iterable[np.ndarray], eps: float = 1e-6) -> FeatureStats:
        """Mean/std over all snippets of ``arrays`` (each ``[N, C]``), accumulated in float64."""
        n, s1, s2 = 0, None, None
        for a in arrays:
            a = np.asarray(a, dtype=np.float64)
            s1 = a.sum(0) if s1 is None else s1 + a.sum(0)
            s2 = (a * a).sum(0) if s2 is None else s2 + (a * a).sum(0)
            n += a.shape[0]
        if n == 0:
            raise ValueError("FeatureStats.fit: no snippets")
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
        return FeatureStats(mean.astype(np.float32), np.maximum(std, eps).astype(np.float32))


# ------------------------------------------------------------------------------------ primitives
def interpolate_linear(x: np.ndarray, size: int) -> np.ndarray:
    """``[N, C]`` -> ``[size, C]``, exactly ``F.interpolate(x.T[None], size, mode="linear",
    align_corners=False)`` (what BMN/SPOT use): output t samples input position
    ``p = (t + 0.5) * N / size - 0.5`` clamped to ``>= 0``, linearly between ``floor(p)`` and the
    next snippet (the last snippet repeats at the right edge). Snippet centres stay aligned in time.
    """
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    if n < 1 or size < 1:
        raise ValueError(f"interpolate_linear: need N >= 1 and size >= 1, got N={n}, size={size}")
    scale = np.float32(n / size)
    pos = np.maximum((np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    i0 = np.minimum(pos.astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (pos - i0.astype(np.float32))[:, None]
    return (x[i0] * (np.float32(1) - w) + x[i1] * w).astype(np.float32)


def window_starts(num_snippets: int, window: int, stride: int) -> list[int]:
    """Start indices 0, S, 2S, ... of the windows covering ``num_snippets`` snippets.

    Count: 1 when ``N <= T``, else ``ceil((N - T) / S) + 1``; needs ``S <= T`` (no gaps).
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got T={window}, S={stride}")
    if stride > window:
        raise ValueError(f"stride {stride} > window length {window} would leave snippets uncovered")
    if num_snippets <= window:
        return [0]
    n = math.ceil((num_snippets - window) / stride) + 1
    return [i * stride for i in range(n)]


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def snippet_span(
    start: float, end: float, t_start: float, snippet_sec: float, valid: int
) -> tuple[int, int] | None:
    """``[start, end]`` seconds -> snippet span ``[s, e)`` of a window, or None if it has none.

    ``s = round((start - t_start) / snippet_sec)``, same for ``e``, clamped to ``[0, valid]``; a
    non-zero-length instance that overlaps the valid part of the window gets at least one snippet;
    zero-length instances and instances outside ``[t_start, t_start + valid * snippet_sec]`` get none.
    """
    if valid < 1 or end <= start:
        return None
    lo, hi = t_start, t_start + valid * snippet_sec
    if min(end, hi) <= max(start, lo):  # no overlap with the valid span (or only an edge)
        return None
    s = min(max(_round_half_up((start - t_start) / snippet_sec), 0), valid)
    e = min(max(_round_half_up((end - t_start) / snippet_sec), 0), valid)
    if e <= s:
        e = s + 1
        if e > valid:
            s, e = valid - 1, valid
    return s, e


def build_targets(
    spans: Sequence[tuple[int, int, int]], num_snippets: int, num_classes: int, *, trim: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets from instance spans ``(s, e, class)`` (``[s, e)`` in snippets).

    Returns ``cls_target [T] int64`` (background = ``num_classes``), ``mask_target [T, T] float32``
    and the spans actually used ``[n, 3] int64`` (after trimming). With ``trim`` an instance longer
    than 2 snippets loses one snippet at each end (original SPOT). Later spans overwrite the class
    of earlier ones where they overlap; the mask is the union of the blocks.
    """
    t = num_snippets
    cls = np.full(t, num_classes, dtype=np.int64)
    mask = np.zeros((t, t), dtype=np.float32)
    used = []
    for s, e, c in spans:
        if not (0 <= s < e <= t):
            raise ValueError(f"span [{s}, {e}) outside the window of {t} snippets")
        if not 0 <= c < num_classes:
            raise ValueError(f"class {c} outside [0, {num_classes})")
        if trim and e - s > 2:
            s, e = s + 1, e - 1
        cls[s:e] = c
        mask[s:e, s:e] = 1.0
        used.append((s, e, c))
    seg = np.asarray(used, dtype=np.int64).reshape(-1, 3)
    return cls, mask, seg


def _class_id(inst: Instance, class_index: Mapping[str, int], video_id: str) -> int:
    try:
        return class_index[inst.label]
    except KeyError:
        raise ValueError(f"video {video_id!r}: label {inst.label!r} is not in the class list") from None


def _check_feats(feats: np.ndarray, cfg: SpotConfig, video_id: str) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] < 1:
        raise ValueError(f"video {video_id!r}: features must be [N >= 1, C], got shape {feats.shape}")
    if feats.shape[1] != cfg.model.feat_dim:
        raise ValueError(
            f"video {video_id!r}: features have {feats.shape[1]} channels, config model.feat_dim is "
            f"{cfg.model.feat_dim}"
        )
    return feats


# -------------------------------------------------------------------------------------- windowing
def rescale_video(
    video: Video,
    feats: np.ndarray,
    cfg: SpotConfig,
    class_index: Mapping[str, int],
    *,
    targets: bool = True,
) -> Window:
    """The whole video as one window: ``feats [N, C]`` interpolated to T snippets.

    Interpolation: :func:`interpolate_linear` (PyTorch linear, ``align_corners=False``). Time:
    the features span :attr:`Video.feature_duration` (SPOT's ``feature_frame / duration_frame *
    duration_second``), so ``snippet_sec = feature_duration / T`` and ``t_start = 0``; instances are
    clipped to that span. Targets are built when ``targets`` and ``video.labeled``.
    """
    feats = _check_feats(feats, cfg, video.video_id)
    t, k = cfg.model.num_snippets, cfg.model.num_classes
    duration = video.feature_duration
    snippet_sec = duration / t
    has_targets = bool(targets and video.labeled)
    spans = []
    if has_targets:
        for inst in clean_instances(video, duration):
            span = snippet_span(inst.start, inst.end, 0.0, snippet_sec, t)
            if span is not None:
                spans.append((*span, _class_id(inst, class_index, video.video_id)))
    cls, mask, seg = build_targets(spans, t, k, trim=cfg.data.trim_targets)
    return Window(
        video_id=video.video_id,
        features=interpolate_linear(feats, t),
        valid=t,
        t_start=0.0,
        snippet_sec=snippet_sec,
        cls_target=cls,
        mask_target=mask,
        labeled=video.labeled,
        has_targets=has_targets,
        segments=seg,
    )


def slide_video(
    video: Video,
    feats: np.ndarray,
    cfg: SpotConfig,
    class_index: Mapping[str, int],
    snippet_rate: float,
    *,
    targets: bool = True,
) -> list[Window]:
    """Windows of T snippets at the native rate, starting at 0, S, 2S, ... (:func:`window_starts`).

    Snippet n of the video covers ``[n, n + 1) / snippet_rate`` seconds. Each window keeps an
    instance (clipped to the window's valid span) when the inside part is at least
    ``cfg.data.min_inside`` of the instance, or (for instances longer than the window) at least
    ``min_inside`` of the window's valid span. A dropped instance's inside part stays background.
    """
    feats = _check_feats(feats, cfg, video.video_id)
    if snippet_rate <= 0:
        raise ValueError(f"video {video.video_id!r}: snippet_rate must be > 0, got {snippet_rate}")
    t, k, stride = cfg.model.num_snippets, cfg.model.num_classes, cfg.data.stride
    n = feats.shape[0]
    sec = 1.0 / snippet_rate
    has_targets = bool(targets and video.labeled)
    instances = clean_instances(video) if has_targets else []
    ids = [_class_id(i, class_index, video.video_id) for i in instances]
    starts = window_starts(n, t, stride)
    min_inside = cfg.data.min_inside
    out = []
    for wi, a in enumerate(starts):
        valid = min(t, n - a)
        x = np.zeros((t, feats.shape[1]), dtype=np.float32)
        x[:valid] = feats[a : a + valid]
        lo = a * sec
        hi = (a + valid) * sec
        spans = []
        for inst, c in zip(instances, ids, strict=True):
            inside = min(inst.end, hi) - max(inst.start, lo)
            if inside <= 0:
                continue
            length = inst.end - inst.start
            if inside < min_inside * length - 1e-9 and inside < min_inside * (hi - lo) - 1e-9:
                continue
            span = snippet_span(max(inst.start, lo), min(inst.end, hi), lo, sec, valid)
            if span is not None:
                spans.append((*span, c))
        cls, mask, seg = build_targets(spans, t, k, trim=cfg.data.trim_targets)
        out.append(
            Window(
                video_id=video.video_id,
                features=x,
                valid=valid,
                t_start=lo,
                snippet_sec=sec,
                cls_target=cls,
                mask_target=mask,
                labeled=video.labeled,
                has_targets=has_targets,
                segments=seg,
                window_index=wi,
                num_windows=len(starts),
            )
        )
    return out


def _get_features(features: Features, video: Video) -> np.ndarray | None:
    if isinstance(features, FeatureStore):
        return features.for_video(video) if features.has_video(video) else None
    return features.get(video.video_id)


def make_windows(
    aset: AnnotationSet,
    features: Features,
    cfg: SpotConfig,
    *,
    mode: str | None = None,
    snippet_rate: float | None = None,
    targets: bool = True,
    missing: str = "error",
    stats: FeatureStats | None = None,
    progress: bool | None = None,
) -> list[Window]:
    """All windows of ``aset``'s videos, in video order.

    ``features``: a :class:`FeatureStore` or any mapping video id -> ``[N, C]``. ``mode`` defaults to
    ``cfg.data.mode``. Window mode's snippet rate: ``snippet_rate``, else ``cfg.data.snippet_rate``,
    else per video ``N / video.feature_duration``. ``missing``: ``"error"`` (default) or ``"skip"``
    (log a warning) for videos without features. ``stats`` standardises features first. The class
    list must have ``cfg.model.num_classes`` entries (class K is background).
    """
    mode = mode or cfg.data.mode
    if mode not in ("rescale", "window"):
        raise ValueError(f"mode must be 'rescale' or 'window', got {mode!r}")
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    if len(aset.classes) != cfg.model.num_classes:
        raise ValueError(
            f"the annotations have {len(aset.classes)} classes, model.num_classes is {cfg.model.num_classes}"
        )
    class_index = aset.class_index()
    rate = snippet_rate if snippet_rate is not None else cfg.data.snippet_rate
    out: list[Window] = []
    skipped = []
    disable = None if progress is None else not progress
    for video in tqdm(list(aset.videos.values()), desc=f"windows ({mode})", unit="video", disable=disable):
        feats = _get_features(features, video)
        if feats is None:
            if missing == "error":
                where = features.path(video.video_id) if isinstance(features, FeatureStore) else "mapping"
                raise FeatureError(f"{where}: no features for video {video.video_id!r}")
            skipped.append(video.video_id)
            continue
        if stats is not None:
            feats = stats.apply(_check_feats(feats, cfg, video.video_id))
        if mode == "rescale":
            out.append(rescale_video(video, feats, cfg, class_index, targets=targets))
        else:
            r = rate if rate is not None else len(feats) / video.feature_duration
            out.extend(slide_video(video, feats, cfg, class_index, r, targets=targets))
    if skipped:
        logger.warning("skipped %d videos without features (e.g. %s)", len(skipped), skipped[:3])
    return out
