"""Temporal action detection mAP, numerically identical to the official ActivityNet evaluation.

:func:`evaluate_detection` reproduces ``ANETdetection`` / ``compute_average_precision_detection`` of
activitynet/ActivityNet (``Evaluation/eval_detection.py`` and ``utils.py``) to floating-point rounding,
quirks included, but vectorised with numpy: a full ActivityNet validation set (4,728 videos x 100
predictions) takes about a second instead of minutes.

Semantics (as the official code):

* Ground truth is the selected ``subset`` of the :class:`AnnotationSet`; the classes are the labels that
  occur in it, indexed in order of first appearance (videos in set order, instances in list order).
  Duplicated instances are kept and each must be matched on its own.
* Per class, predictions are ranked by decreasing score. Each prediction, in turn, is compared with the
  ground truth of its class in its video; for every tIoU threshold it takes the first candidate, in
  decreasing tIoU order, that is not yet taken, and is a false positive as soon as the candidate tIoU is
  below the threshold (or when none is left). Predictions for videos that have no ground truth of the
  class (including videos absent from the subset) are false positives.
* tIoU is ``inter / union`` with ``inter = max(0, min(e1, e2) - max(s1, s2))`` and
  ``union = len_gt + len_pred - inter``, computed in the official order. Two zero-length segments give
  ``0 / 0 = NaN``; ``NaN < threshold`` is False, so a NaN candidate *matches*, and it is tried before any
  other candidate (``argsort`` puts NaN last, the reversal puts it first).
* AP is the VOC-2011 interpolated AP: precision made monotone from the right, summed over the points
  where recall changes (recall padded with 0 and 1, precision with 0 and 0). A class without predictions
  has AP 0. ``mAP[t]`` is the mean over the classes, ``average_mAP`` the mean of ``mAP``.

Tie-breaking: the official code orders predictions with ``score.argsort()[::-1]`` and candidates with
``tiou.argsort()[::-1]``; numpy's default sort is not stable in general, so the official result with
tied scores or tied tIoU values is not well defined. We define it as numpy did for the short arrays of
the original environment (insertion sort, i.e. the reverse of a *stable* ascending sort): among equal
values, **the item with the higher original index comes first**. The original index of a prediction is
its position among the predictions of its class in input order (videos in dict order, entries in list
order); that of a ground-truth instance is its position among the instances of its class in its video.

Deliberate differences from the official code (no effect on valid inputs):

* A prediction whose label is not a ground-truth class of the subset makes the official code raise
  ``KeyError``; we drop it and log one warning with the count.
* No list of "blocked" videos is fetched from the network (``check_status=False`` in the original).
* The prediction file only needs a ``results`` key (``version`` / ``external_data`` are optional).
* Bad input raises :class:`EvaluationError` (a ``ValueError``) naming the file and the problem; an empty
  subset is an error rather than a crash deep inside pandas.
* NaN or infinite numbers (a ground-truth segment, a predicted segment or score) and a key repeated
  in a JSON object (``json`` keeps the last one) are errors naming the video: the official code
  takes them silently and they change the mAP. (A NaN *tIoU* from two zero-length segments is not
  an input and keeps the official semantics above.)
* If no prediction video id is in the ground truth but some are after adding or removing a ``v_`` prefix
  (SPOT/BSN files use ``v_<id>``, the official ActivityNet JSON does not), we raise instead of silently
  scoring everything as false positives. Ids are never renamed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spot_core.data.annotations import (
    AnnotationError,
    AnnotationSet,
    load_annotations,
    parse_activitynet,
    parse_json,
    show,
)

from .errors import SpotError

log = logging.getLogger(__name__)

__all__ = [
    "PROTOCOLS",
    "EvalResult",
    "EvaluationError",
    "GroundTruthArrays",
    "evaluate_detection",
    "ground_truth_arrays",
    "interpolated_ap",
    "load_ground_truth",
    "load_predictions",
    "segment_iou",
]

#: tIoU thresholds of each protocol.
PROTOCOLS: dict[str, tuple[float, ...]] = {
    "activitynet": tuple(float(t) for t in np.linspace(0.5, 0.95, 10)),
    "thumos": (0.3, 0.4, 0.5, 0.6, 0.7),
}


class EvaluationError(SpotError, ValueError):
    """Ground truth or predictions that cannot be evaluated. The message names the file and the problem."""


@dataclass(frozen=True)
class EvalResult:
    """The outcome of :func:`evaluate_detection`.

    ``ap[t, k]`` is the AP of ``classes[k]`` at ``tiou_thresholds[t]``; ``mAP[t]`` its mean over classes.
    """

    tiou_thresholds: np.ndarray  # (T,)
    mAP: np.ndarray  # (T,)
    average_mAP: float
    ap: np.ndarray  # (T, K)
    classes: list[str]
    subset: str | None
    num_ground_truth: int  # instances in the evaluated subset
    num_predictions: int  # predictions evaluated (after dropping unknown labels)
    num_dropped: int  # predictions dropped because their label is not a ground-truth class

    def ap_per_class(self) -> dict[str, list[float]]:
        """``{class name: [AP at each threshold]}``."""
        return {c: self.ap[:, k].tolist() for k, c in enumerate(self.classes)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: ``average_mAP`` and ``mAP`` keyed by threshold (``"0.50"``...)."""
        return {
            "average_mAP": float(self.average_mAP),
            "mAP": {_thr_key(t): float(m) for t, m in zip(self.tiou_thresholds, self.mAP, strict=True)},
            "tiou_thresholds": [float(t) for t in self.tiou_thresholds],
            "subset": self.subset,
            "num_classes": len(self.classes),
            "num_ground_truth": self.num_ground_truth,
            "num_predictions": self.num_predictions,
            "num_dropped_predictions": self.num_dropped,
        }

    def format_table(self) -> str:
        """A readable table of mAP per threshold and the average."""
        lines = [
            f"subset {self.subset!s}: {len(self.classes)} classes, {self.num_ground_truth} ground-truth "
            f"instances, {self.num_predictions} predictions"
            + (f" ({self.num_dropped} dropped: unknown label)" if self.num_dropped else ""),
            f"{'tIoU':>6}  {'mAP':>8}",
        ]
        lines += [
            f"{_thr_key(t):>6}  {m * 100:7.2f}%" for t, m in zip(self.tiou_thresholds, self.mAP, strict=True)
        ]
        lines.append(f"{'avg':>6}  {self.average_mAP * 100:7.2f}%")
        return "\n".join(lines)


def _thr_key(t: float) -> str:
    """``"0.50"`` for the protocol thresholds; more digits when two decimals would not identify ``t``."""
    key = f"{float(t):.2f}"
    return key if abs(float(key) - float(t)) < 1e-9 else f"{float(t):.6g}"


# --------------------------------------------------------------------------------------------- primitives
def segment_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Element-wise tIoU of ``pred[i]`` and ``gt[i]`` (both ``(n, 2)``), exactly as the official formula.

    ``0 / 0`` (two zero-length segments, or lengths that cancel) gives NaN, as in the original.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    return _tiou(pred[:, 0], pred[:, 1], gt[:, 0], gt[:, 1])


def _tiou(ps: np.ndarray, pe: np.ndarray, gs: np.ndarray, ge: np.ndarray) -> np.ndarray:
    tt1 = np.maximum(ps, gs)
    tt2 = np.minimum(pe, ge)
    inter = (tt2 - tt1).clip(0)
    union = (ge - gs) + (pe - ps) - inter  # same operation order as the official code
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-2011 interpolated AP of one precision/recall curve (the official ``interpolated_prec_rec``)."""
    mprec = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


# --------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class GroundTruthArrays:
    """The ground truth of one subset as flat arrays (official DataFrame order)."""

    video_ids: list[str]  # videos of the subset, in set order (also those without instances)
    classes: list[str]  # labels in order of first appearance
    video: np.ndarray  # (M,) int64 index into video_ids
    label: np.ndarray  # (M,) int64 index into classes
    start: np.ndarray  # (M,) float64
    end: np.ndarray  # (M,) float64


def ground_truth_arrays(gt: AnnotationSet, subset: str | None = "validation") -> GroundTruthArrays:
    """Flatten the videos of ``subset`` (all videos when ``None``) of ``gt`` into arrays."""
    videos = [v for v in gt.videos.values() if subset is None or v.subset == subset]
    cidx: dict[str, int] = {}
    vid_l: list[int] = []
    lab_l: list[int] = []
    s_l: list[float] = []
    e_l: list[float] = []
    for i, v in enumerate(videos):
        for inst in v.instances:
            k = cidx.setdefault(inst.label, len(cidx))
            vid_l.append(i)
            lab_l.append(k)
            try:
                s_l.append(float(inst.start))
                e_l.append(float(inst.end))
            except (TypeError, ValueError):
                raise EvaluationError(
                    f"ground truth: video {v.video_id!r}: segment [{inst.start!r}, {inst.end!r}] "
                    "is not two numbers"
                ) from None
            if not (np.isfinite(s_l[-1]) and np.isfinite(e_l[-1])):
                raise EvaluationError(
                    f"ground truth: video {v.video_id!r}: segment [{s_l[-1]}, {e_l[-1]}] is not two "
                    "finite numbers"
                )
    return GroundTruthArrays(
        video_ids=[v.video_id for v in videos],
        classes=list(cidx),
        video=np.asarray(vid_l, dtype=np.int64),
        label=np.asarray(lab_l, dtype=np.int64),
        start=np.asarray(s_l, dtype=np.float64),
        end=np.asarray(e_l, dtype=np.float64),
    )


def load_ground_truth(
    path: str | Path, *, video_info: str | Path | None = None, subset: str | None = None
) -> AnnotationSet:
    """Ground truth for evaluation, from any supported file.

    * Official ActivityNet JSON (``{"database": ...}``): the ``"official"`` mode of
      :func:`spot_core.data.annotations.read_activitynet_json`, the official code's leniency (only
      ``subset`` per video and ``annotations`` / ``segment`` / ``label`` for the videos of ``subset``
      (all videos when None) are required; no ``duration``, ``taxonomy`` or ``version`` needed;
      reversed segments kept), so that any file the official code scores is scored the same.
    * SPOT/BSN ``anet_anno_action.json`` (+ ``video_info`` csv, default ``video_info_new.csv`` beside it)
      and THUMOS14 csv: :func:`spot_core.data.annotations.load_annotations`. A THUMOS csv's subset is
      ``validation`` for ``val*`` names, ``test`` for ``test*`` names, else ``subset``.
    """
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"{path}: ground-truth file not found")
    if path.is_dir():
        raise EvaluationError(f"{path}: is a directory, expected a ground-truth file")
    if video_info is not None and not Path(video_info).exists():
        raise EvaluationError(f"{video_info}: video-info file not found")
    if path.suffix.lower() != ".csv":
        data = _read_json(path, "ground-truth")
        if isinstance(data, dict) and "database" in data:
            try:
                return parse_activitynet(data, path, mode="official", subset=subset)
            except AnnotationError as e:
                raise EvaluationError(str(e)) from None
    if video_info is not None:
        return load_annotations(path, video_info=video_info)
    if (
        path.suffix.lower() == ".csv"
        and subset is not None
        and not path.name.lower().startswith(("val", "test"))
    ):
        # THUMOS csv: the subset comes from the file name (val*/test*); any other name holds `subset`.
        return load_annotations(path, subset=subset)
    return load_annotations(path)


def _read_json(path: Path, what: str) -> Any:
    """The JSON of ``path``, strictly (:func:`spot_core.data.annotations.parse_json`: a repeated key
    in an object is an error, not last-one-wins)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EvaluationError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise EvaluationError(f"{path}: is a directory, expected a {what} JSON file") from None
    except OSError as e:
        raise EvaluationError(f"{path}: cannot read the {what} file ({e.strerror or e})") from None
    return parse_json(data, path, EvaluationError)


def load_predictions(path: str | Path) -> dict[str, list[dict]]:
    """Read a prediction file ``{"results": {video_id: [{"segment": [s, e], "label", "score"}]}}``.

    Returns the ``results`` mapping. Entries are checked by :func:`evaluate_detection`.
    """
    path = Path(path)
    data = _read_json(path, "prediction")
    if not isinstance(data, dict):
        raise EvaluationError(
            f"{path}: expected a JSON object with a 'results' key, got {type(data).__name__}"
        )
    if "results" not in data:
        raise EvaluationError(f"{path}: no 'results' key (found keys: {sorted(data)[:10]})")
    results = data["results"]
    if not isinstance(results, dict):
        raise EvaluationError(f"{path}: 'results' must map video ids to lists, got {type(results).__name__}")
    return results


@dataclass(frozen=True)
class _Predictions:
    video_ids: list[str]  # one per video key of the input mapping
    count: np.ndarray  # (V,) predictions per video
    start: np.ndarray  # (N,)
    end: np.ndarray
    score: np.ndarray
    labels: list[Any]  # (N,) raw labels


def _flatten_predictions(predictions: Mapping[str, Sequence[Mapping]], source: str) -> _Predictions:
    if not isinstance(predictions, Mapping):
        raise EvaluationError(
            f"{source}: predictions must map video ids to lists, got {type(predictions).__name__}"
        )
    segs: list[Any] = []
    labels: list[Any] = []
    scores: list[Any] = []
    counts: list[int] = []
    for vid, items in predictions.items():
        if not isinstance(items, list | tuple):
            raise EvaluationError(
                f"{source}: video {vid!r}: expected a list of predictions, got {type(items).__name__}"
            )
        try:
            segs.extend([r["segment"] for r in items])
            labels.extend([r["label"] for r in items])
            scores.extend([r["score"] for r in items])
        except (KeyError, TypeError, IndexError):
            _diagnose(vid, items, source)
            raise  # pragma: no cover - _diagnose always raises here
        counts.append(len(items))
    n = len(scores)
    try:
        seg = np.array(segs) if n else np.zeros((0, 2))
        ok = seg.ndim == 2 and seg.shape[1] == 2 and seg.dtype.kind in "fiu"
    except (ValueError, TypeError):
        ok = False
    if not ok:
        _diagnose_all(predictions, source)
    try:
        score = np.array(scores) if n else np.zeros(0)
        ok = score.ndim == 1 and score.dtype.kind in "fiu"
    except (ValueError, TypeError):
        ok = False
    if not ok:
        _diagnose_all(predictions, source)
    seg = seg.astype(np.float64, copy=False)
    score = score.astype(np.float64, copy=False)
    bad = ~(np.isfinite(seg).all(axis=1) & np.isfinite(score))
    if bad.any():
        i = int(np.argmax(bad))
        v = int(np.searchsorted(np.cumsum(counts), i, side="right"))
        vid = list(predictions.keys())[v]
        j = i - (int(np.sum(counts[:v])) if v else 0)
        raise EvaluationError(
            f"{source}: video {vid!r}, prediction {j}: segment {show(seg[i].tolist())} and score "
            f"{show(float(score[i]))} must be finite numbers"
        )
    return _Predictions(
        video_ids=list(predictions.keys()),
        count=np.asarray(counts, dtype=np.int64),
        start=np.ascontiguousarray(seg[:, 0]),
        end=np.ascontiguousarray(seg[:, 1]),
        score=score,
        labels=labels,
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def _diagnose(vid: str, items: Sequence[Any], source: str) -> None:
    for i, r in enumerate(items):
        where = f"{source}: video {vid!r}, prediction {i}"
        if not isinstance(r, Mapping):
            raise EvaluationError(f"{where}: expected an object, got {type(r).__name__}")
        for key in ("segment", "label", "score"):
            if key not in r:
                raise EvaluationError(f"{where}: missing {key!r}")
        seg = r["segment"]
        if not (isinstance(seg, list | tuple) and len(seg) == 2 and all(_is_number(x) for x in seg)):
            raise EvaluationError(f"{where}: 'segment' must be two numbers [start, end], got {show(seg)}")
        if not _is_number(r["score"]):
            raise EvaluationError(f"{where}: 'score' must be a number, got {show(r['score'])}")
        try:
            hash(r["label"])
        except TypeError:
            raise EvaluationError(f"{where}: 'label' must be a string, got {r['label']!r}") from None


def _diagnose_all(predictions: Mapping[str, Sequence[Any]], source: str) -> None:
    for vid, items in predictions.items():
        _diagnose(vid, items, source)
    raise EvaluationError(f"{source}: predictions could not be read as segments and scores")


# --------------------------------------------------------------------------------------------- evaluation
def evaluate_detection(
    gt: AnnotationSet,
    predictions: Mapping[str, Sequence[Mapping]],
    tiou_thresholds: Sequence[float] | np.ndarray = PROTOCOLS["activitynet"],
    subset: str | None = "validation",
    *,
    pred_source: str = "predictions",
) -> EvalResult:
    """Mean average precision of ``predictions`` against the ``subset`` of ``gt`` (official semantics).

    ``predictions`` is ``{video_id: [{"segment": [start, end], "label": str, "score": float}, ...]}``
    (the ``results`` of a prediction file); ``subset=None`` evaluates all videos of ``gt``.
    ``pred_source`` names the predictions in error messages (the CLI passes the file path).
    """
    thr = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)
    if thr.size == 0:
        raise EvaluationError("no tIoU thresholds given")
    g = ground_truth_arrays(gt, subset)
    if not g.classes:
        available = sorted({v.subset for v in gt.videos.values()})
        raise EvaluationError(
            f"ground truth: no annotated instance in subset {subset!r} "
            f"({len(g.video_ids)} videos; subsets present: {available})"
        )
    p = _flatten_predictions(predictions, pred_source)
    vid_index = {v: i for i, v in enumerate(g.video_ids)}
    _check_video_ids(p.video_ids, vid_index, subset, pred_source)

    # Map each prediction to its ground-truth video (-1: not in the subset) and class (-1: unknown).
    p_vid = np.repeat(np.asarray([vid_index.get(v, -1) for v in p.video_ids], dtype=np.int64), p.count)
    cmap = {c: k for k, c in enumerate(g.classes)}
    try:
        p_cls = np.fromiter((cmap.get(lab, -1) for lab in p.labels), dtype=np.int64, count=len(p.labels))
    except TypeError:  # an unhashable label
        _diagnose_all(predictions, pred_source)
        raise
    known = p_cls >= 0
    num_dropped = int((~known).sum())
    if num_dropped:
        unknown = sorted({str(lab) for lab, k in zip(p.labels, known, strict=True) if not k})
        log.warning(
            "%s: dropped %d prediction(s) whose label is not a ground-truth class of subset %r "
            "(the official code raises KeyError): %s%s",
            pred_source,
            num_dropped,
            subset,
            ", ".join(repr(u) for u in unknown[:5]),
            " ..." if len(unknown) > 5 else "",
        )
    ps, pe, score = p.start[known], p.end[known], p.score[known]
    p_vid, p_cls = p_vid[known], p_cls[known]

    ap = _average_precision(g, p_vid, p_cls, ps, pe, score, thr)
    m_ap = ap.mean(axis=1)
    return EvalResult(
        tiou_thresholds=thr,
        mAP=m_ap,
        average_mAP=float(m_ap.mean()),
        ap=ap,
        classes=list(g.classes),
        subset=subset,
        num_ground_truth=int(g.video.size),
        num_predictions=int(score.size),
        num_dropped=num_dropped,
    )


def _check_video_ids(pred_ids: list[str], vid_index: dict[str, int], subset: str | None, source: str) -> None:
    if not pred_ids or any(v in vid_index for v in pred_ids):
        missing = sum(v not in vid_index for v in pred_ids)
        if missing:
            log.info(
                "%s: %d video(s) not in ground-truth subset %r: their predictions are false positives",
                source,
                missing,
                subset,
            )
        return
    toggled = [v[2:] if v.startswith("v_") else "v_" + v for v in pred_ids]
    hits = sum(t in vid_index for t in toggled)
    if hits:
        example = next(v for v, t in zip(pred_ids, toggled, strict=True) if t in vid_index)
        how = "removing" if example.startswith("v_") else "adding"
        raise EvaluationError(
            f"{source}: no prediction video id is in the ground truth (subset {subset!r}), but {hits} of "
            f"{len(pred_ids)} match after {how} a 'v_' prefix (e.g. {example!r}); the ground truth and the "
            "predictions use different id conventions: use the matching ground-truth file "
            "(anet_anno_action.json keys are 'v_<id>', the official ActivityNet JSON has no prefix)"
        )
    log.warning(
        "%s: none of the %d prediction video ids is in ground-truth subset %r: all predictions "
        "are false positives",
        source,
        len(pred_ids),
        subset,
    )


def _average_precision(
    g: GroundTruthArrays,
    p_vid: np.ndarray,
    p_cls: np.ndarray,
    ps: np.ndarray,
    pe: np.ndarray,
    score: np.ndarray,
    thr: np.ndarray,
) -> np.ndarray:
    """AP per (threshold, class): ``(T, K)``."""
    n_thr, n_cls = thr.size, len(g.classes)
    n = score.size
    # Processing order: classes descending, inside a class the reverse of a stable ascending sort by score
    # (= official argsort()[::-1] with "higher index first" on ties, NaN scores first).
    order = np.lexsort((score, p_cls))[::-1]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    tp = _match(g, p_vid, p_cls, ps, pe, rank, thr)  # (T, N) bool, input order

    counts = np.bincount(p_cls, minlength=n_cls)
    npos = np.bincount(g.label, minlength=n_cls).astype(np.float64)
    starts = n - np.cumsum(counts)  # class k occupies order[starts[k] : starts[k] + counts[k]]
    tp_sorted = tp[:, order]
    ap = np.zeros((n_thr, n_cls))
    for k in range(n_cls):
        if counts[k] == 0:
            continue  # official: a class without predictions has AP 0
        sl = tp_sorted[:, starts[k] : starts[k] + counts[k]]
        tp_cum = np.cumsum(sl, axis=1, dtype=np.float64)
        fp_cum = np.cumsum(~sl, axis=1, dtype=np.float64)
        rec = tp_cum / npos[k]
        prec = tp_cum / (tp_cum + fp_cum)
        for t in range(n_thr):
            ap[t, k] = interpolated_ap(prec[t], rec[t])
    return ap


def _match(
    g: GroundTruthArrays,
    p_vid: np.ndarray,
    p_cls: np.ndarray,
    ps: np.ndarray,
    pe: np.ndarray,
    rank: np.ndarray,
    thr: np.ndarray,
) -> np.ndarray:
    """True positives ``(T, N)`` of the official greedy matching, all groups and thresholds at once.

    The official loop is a greedy matching over (prediction, candidate) pairs taken in lexicographic
    order (prediction rank, candidate preference), accepting a pair when both ends are still free. A pair
    that is the first remaining pair of its prediction *and* of its ground truth is accepted by that
    sequential process whatever happens before it, so each round accepts all such pairs at once and
    removes the pairs they block; a round always accepts at least the first remaining pair, and the
    result is the sequential one. Rounds needed: about the number of ground truths competed for.
    """
    n, m, n_thr = rank.size, g.video.size, thr.size
    tp = np.zeros(n_thr * n, dtype=bool)
    if n == 0 or m == 0:
        return tp.reshape(n_thr, n)
    n_cls = len(g.classes)
    g_key = g.video * n_cls + g.label
    g_order = np.argsort(g_key, kind="stable")
    g_sorted = g_key[g_order]
    p_key = np.where(p_vid >= 0, p_vid * n_cls + p_cls, -1)
    lo = np.searchsorted(g_sorted, p_key, side="left")
    hi = np.searchsorted(g_sorted, p_key, side="right")
    cnt = np.where(p_vid >= 0, hi - lo, 0)
    n_edges = int(cnt.sum())
    if n_edges == 0:
        return tp.reshape(n_thr, n)
    e_pred = np.repeat(np.arange(n), cnt)
    within = np.arange(n_edges) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    e_gt = g_order[np.repeat(lo, cnt) + within]
    tiou = _tiou(ps[e_pred], pe[e_pred], g.start[e_gt], g.end[e_gt])
    nan = np.isnan(tiou)
    keep = nan | (tiou >= thr.min())
    e_pred, e_gt, tiou, nan = e_pred[keep], e_gt[keep], tiou[keep], nan[keep]
    # Candidate preference per prediction: tIoU descending with NaN first, ties: higher index first.
    tkey = np.where(nan, np.inf, tiou)
    srt = np.lexsort((-e_gt, -tkey, rank[e_pred]))
    e_pred, e_gt, tiou, nan = e_pred[srt], e_gt[srt], tiou[srt], nan[srt]

    pid_parts, gid_parts = [], []
    for t in range(n_thr):
        ok = nan | (tiou >= thr[t])  # NaN < thr is False in the official loop: NaN matches
        pid_parts.append(e_pred[ok] + t * n)
        gid_parts.append(e_gt[ok] + t * m)
    pid = np.concatenate(pid_parts)  # sorted by (threshold, rank, preference): a pid's pairs are contiguous
    gid = np.concatenate(gid_parts)
    locked = np.zeros(n_thr * m, dtype=bool)
    while pid.size:
        first_p = np.ones(pid.size, dtype=bool)
        first_p[1:] = pid[1:] != pid[:-1]
        go = np.argsort(gid, kind="stable")
        gs = gid[go]
        first_g_sorted = np.ones(gid.size, dtype=bool)
        first_g_sorted[1:] = gs[1:] != gs[:-1]
        first_g = np.empty_like(first_g_sorted)
        first_g[go] = first_g_sorted
        acc = first_p & first_g
        tp[pid[acc]] = True
        locked[gid[acc]] = True
        alive = ~(tp[pid] | locked[gid])
        pid, gid = pid[alive], gid[alive]
    return tp.reshape(n_thr, n)
