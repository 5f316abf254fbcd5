"""One in-memory structure for every annotation format we read, and the readers/writers.

Times are in seconds. ``Instance.end`` may equal ``Instance.start`` (zero-length ground truth exists
in ActivityNet validation) and may exceed ``Video.duration`` (real data is messy): readers keep such
instances as they are, duplicates included, because the evaluator must see the ground truth exactly
as the official code does. The target builder uses :func:`clean_instances`, which clips, drops
zero-length instances and de-duplicates.

Formats (see :func:`load_annotations` for auto-detection):

- official ActivityNet JSON (:func:`read_activitynet_json`, written by :func:`write_activitynet_json`),
  read strictly (training) or as leniently as the official evaluator (``mode="official"``);
- the SPOT/BSN layout: ``anet_anno_action.json`` + ``video_info_new*.csv`` (:func:`read_spot_bsn`);
- THUMOS14 csv (:func:`read_thumos_csv`);
- ActRecTut ``gesture.json``, ActivityNet-style with ``fps``/``num_frames`` (:func:`read_actrectut_json`).

Every malformed input raises :class:`AnnotationError` whose message names the file and the
video (or csv row) at fault.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from spot_core.errors import SpotError

logger = logging.getLogger(__name__)

#: subsets that count as training data (the semi-supervised split spells the unlabeled part
#: ``training_unlabel``, as in SPOT's ``video_info_new_0.9.csv``).
TRAINING_SUBSETS = ("training", "training_unlabel")
UNLABELED_SUFFIX = "_unlabel"

PathLike = str | Path
ClassNames = Sequence[str] | PathLike | None


class AnnotationError(SpotError, ValueError):
    """An annotation file is missing, malformed or inconsistent. The message names the file."""


@dataclass(frozen=True)
class Instance:
    """One labelled action instance: [start, end] in seconds and its class name."""

    start: float
    end: float
    label: str


@dataclass
class Video:
    """One video (or stream) and its ground truth.

    ``subset`` is the split name as the source file spells it (``training``, ``validation``,
    ``testing``, ``training_unlabel``, ``subject1``...). ``labeled`` is False for videos whose labels
    must not be used for training (semi-supervised splits) and for ActivityNet ``testing`` videos,
    which have no public labels. ``fps`` is the source frame rate when known; ``feature_frames`` the
    number of frames the features cover when it differs from the video (``num_frames``).
    ``ambiguous`` holds segments the source marks as ambiguous (THUMOS ``Ambiguous``); they are
    not instances and never become targets.
    """

    video_id: str
    duration: float
    subset: str
    instances: list[Instance] = field(default_factory=list)
    labeled: bool = True
    fps: float | None = None
    num_frames: int | None = None
    feature_frames: int | None = None
    feature_file: str | None = None
    ambiguous: list[Instance] = field(default_factory=list)

    @property
    def base_subset(self) -> str:
        """``subset`` without the ``_unlabel`` suffix: ``training_unlabel`` -> ``training``."""
        s = self.subset
        return s[: -len(UNLABELED_SUFFIX)] if s.endswith(UNLABELED_SUFFIX) else s

    @property
    def feature_duration(self) -> float:
        """Seconds covered by the features.

        SPOT/BSN: ``feature_frames / num_frames * duration`` when both frame counts are known
        (the features of ActivityNet cover whole 16-frame snippets, so slightly less or more than
        the video); otherwise ``duration``.
        """
        if self.feature_frames and self.num_frames:
            return float(self.feature_frames) / float(self.num_frames) * self.duration
        return self.duration


@dataclass
class AnnotationSet:
    """Videos keyed by id plus the ordered class list (index = class id)."""

    videos: dict[str, Video]
    classes: list[str]

    def subset(self, *names: str) -> AnnotationSet:
        """The videos whose ``subset`` is one of ``names`` (same class list)."""
        return AnnotationSet({k: v for k, v in self.videos.items() if v.subset in names}, list(self.classes))

    def training(self) -> AnnotationSet:
        """All training videos, labeled and unlabeled (``training`` and ``training_unlabel``)."""
        return AnnotationSet(
            {k: v for k, v in self.videos.items() if v.base_subset == "training"}, list(self.classes)
        )

    def select(self, subset: str) -> AnnotationSet:
        """Videos whose ``base_subset`` is ``subset`` (``"training"`` includes ``training_unlabel``)."""
        return AnnotationSet(
            {k: v for k, v in self.videos.items() if v.base_subset == subset}, list(self.classes)
        )

    def labeled(self) -> AnnotationSet:
        return AnnotationSet({k: v for k, v in self.videos.items() if v.labeled}, list(self.classes))

    def unlabeled(self) -> AnnotationSet:
        return AnnotationSet({k: v for k, v in self.videos.items() if not v.labeled}, list(self.classes))

    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def durations(self) -> dict[str, float]:
        """``{video_id: duration in seconds}`` (detections are clipped to these)."""
        return {k: v.duration for k, v in self.videos.items()}

    def num_instances(self) -> int:
        return sum(len(v.instances) for v in self.videos.values())

    def subset_counts(self) -> dict[str, int]:
        """Number of videos per ``subset`` spelling."""
        return dict(Counter(v.subset for v in self.videos.values()))

    def __len__(self) -> int:
        return len(self.videos)

    def __iter__(self):
        return iter(self.videos.values())


# ---------------------------------------------------------------------------------------- cleaning
def clean_instances(
    video: Video, duration: float | None = None, *, dedup_tol: float = 1e-3
) -> list[Instance]:
    """The instances the target builder uses, in source order.

    1. clip each instance to ``[0, duration]`` (default ``video.duration``; the windowing code
       passes :attr:`Video.feature_duration`, the span the features cover);
    2. drop instances whose clipped length is zero (zero-length ground truth, or lying wholly
       outside the video);
    3. drop duplicates: an instance whose label equals an earlier kept one and whose start and end
       both lie within ``dedup_tol`` seconds of it (ActivityNet validation has 17 exact duplicates
       and 2 that differ in the 7th decimal).

    The readers never do this: the evaluator must see the ground truth as published.
    """
    dur = video.duration if duration is None else float(duration)
    kept: list[Instance] = []
    for inst in video.instances:
        s = min(max(inst.start, 0.0), dur)
        e = min(max(inst.end, 0.0), dur)
        if e <= s:
            continue
        if any(
            k.label == inst.label and abs(k.start - s) <= dedup_tol and abs(k.end - e) <= dedup_tol
            for k in kept
        ):
            continue
        kept.append(Instance(s, e, inst.label))
    return kept


def split_labels(aset: AnnotationSet, fraction: float, *, seed: int = 0) -> AnnotationSet:
    """A copy where only ``fraction`` of the training videos keep their labels.

    The others get subset ``training_unlabel`` and ``labeled=False`` (SPOT's split convention).
    Deterministic for a given seed: videos are shuffled in sorted-id order with ``random.Random``.
    At least one training video stays labeled when ``fraction > 0``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label fraction must be in [0, 1], got {fraction}")
    train_ids = sorted(k for k, v in aset.videos.items() if v.base_subset == "training")
    rng = random.Random(seed)
    rng.shuffle(train_ids)
    n_lab = round(fraction * len(train_ids))
    if fraction > 0 and train_ids:
        n_lab = max(n_lab, 1)
    labeled_ids = set(train_ids[:n_lab])
    videos = {}
    for k, v in aset.videos.items():
        if v.base_subset == "training":
            lab = k in labeled_ids
            v = replace(v, subset="training" if lab else "training" + UNLABELED_SUFFIX, labeled=lab)
        videos[k] = v
    return AnnotationSet(videos, list(aset.classes))


def apply_split_file(aset: AnnotationSet, path: PathLike) -> AnnotationSet:
    """A copy where the training videos that the split file marks ``training_unlabel`` lose their labels.

    ``path``: a SPOT ``video_info_new*.csv`` (columns ``video, ..., subset, ...``). Training videos
    the file does not list keep their labels; a listed video of another base subset is an error.
    """
    split = read_video_info(path)
    videos = {}
    for k, v in aset.videos.items():
        row = split.get(k)
        if row is not None and v.base_subset == "training":
            sub = row["subset"]
            base = sub[: -len(UNLABELED_SUFFIX)] if sub.endswith(UNLABELED_SUFFIX) else sub
            if base != "training":
                raise AnnotationError(f"{path}: video {k!r} is {sub!r} there but training in the annotations")
            lab = not sub.endswith(UNLABELED_SUFFIX)
            v = replace(v, subset="training" if lab else "training" + UNLABELED_SUFFIX, labeled=lab)
        videos[k] = v
    return AnnotationSet(videos, list(aset.classes))


# ---------------------------------------------------------------------------------------- helpers
class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice (``json`` would keep the last one silently)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r} in a JSON object")
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` of every JSON read: a repeated key is an error, not last-one-wins."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKeyError(k)
        out[k] = v
    return out


def parse_json(data: str | bytes, path: PathLike, error: type[SpotError] = AnnotationError) -> Any:
    """Parse JSON text of the file ``path`` strictly: a key repeated in an object, malformed JSON,
    text that is not UTF-8 or nesting too deep for the parser raise ``error`` (default
    :class:`AnnotationError`) naming the file (and the repeated key, which for a video-keyed object
    is the video id)."""
    try:
        return json.loads(data, object_pairs_hook=_unique_keys)
    except DuplicateKeyError as e:
        raise error(f"{path}: duplicate key {e.key!r} in a JSON object (each key must appear once)") from None
    except json.JSONDecodeError as e:
        raise error(
            f"{path}: not valid JSON (malformed JSON: {e.msg}, line {e.lineno}, column {e.colno})"
        ) from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a UTF-8 JSON file (byte {e.start}: {e.reason})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to read") from None


def show(value: Any) -> str:
    """A value as its JSON spelling in messages (``null``, ``NaN``, ``"x"``), else ``repr``."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _read_json(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    except IsADirectoryError:
        raise AnnotationError(f"{path}: is a folder, expected an annotation file") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror or e})") from None
    return parse_json(data, path)


def _read_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows as (line number, dict); checks the header has ``required`` columns."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if header is None:
                raise AnnotationError(f"{path}: empty csv file (no header)")
            header = [h.strip() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise AnnotationError(f"{path}: csv header {header} lacks columns {missing}")
            rows = []
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise AnnotationError(
                        f"{path}: line {reader.line_num}: expected {len(header)} fields, got a ragged row"
                    )
                rows.append((reader.line_num, {k.strip(): v.strip() for k, v in row.items()}))
            return rows
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not a UTF-8 text csv (byte {e.start}: {e.reason})") from None
    except csv.Error as e:
        raise AnnotationError(f"{path}: malformed csv: {e}") from None


def _num(value: Any, where: str, what: str, *, integer: bool = False) -> Any:
    """``value`` as a finite float (or int with ``integer=True``); AnnotationError otherwise."""
    if isinstance(value, bool) or value is None:
        raise AnnotationError(f"{where}: {what} must be a number, got {show(value)}")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise AnnotationError(f"{where}: {what} must be a number, got {show(value)}") from None
    if not math.isfinite(x):
        raise AnnotationError(f"{where}: {what} must be finite, got {show(value)}")
    if integer:
        if x != int(x):
            raise AnnotationError(f"{where}: {what} must be an integer, got {show(value)}")
        return int(x)
    return x


def _segment(seg: Any, where: str) -> tuple[float, float]:
    """A strict segment: two finite numbers, ``0 <= start <= end``."""
    if not isinstance(seg, (list, tuple)) or len(seg) != 2:
        raise AnnotationError(f"{where}: 'segment' must be [start, end], got {show(seg)}")
    s = _num(seg[0], where, "segment start")
    e = _num(seg[1], where, "segment end")
    if s < 0:
        raise AnnotationError(f"{where}: segment start {s} < 0 (segments are seconds from the video's start)")
    if e < s:
        raise AnnotationError(f"{where}: segment end {e} < start {s} (reversed segment)")
    return s, e


def _label(value: Any, where: str) -> str:
    """A strict label: a non-empty string (or an integer class id), as a string."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise AnnotationError(f"{where}: 'label' must be a non-empty string, got {show(value)}")
    return str(value)


def read_class_names(path: PathLike) -> list[str]:
    """Class names from a csv with an ``action`` (or ``class``/``name``) column, or one per line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: class list not found") from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror or e})") from None
    lines = [ln.strip() for ln in lines if ln.strip()]
    if lines and lines[0].lower() in ("action", "class", "name", "label"):
        lines = lines[1:]
    if not lines:
        raise AnnotationError(f"{path}: empty class list")
    if len(set(lines)) != len(lines):
        dup = [c for c, n in Counter(lines).items() if n > 1]
        raise AnnotationError(f"{path}: duplicated class names {dup}")
    return lines


def _class_list(class_names: ClassNames, where: str = "the given class list") -> list[str] | None:
    """The class names as strings; ``where`` names their source in the duplicate error."""
    if class_names is None:
        return None
    if isinstance(class_names, (str, Path)):
        return read_class_names(class_names)
    names = [str(c) for c in class_names]
    if len(set(names)) != len(names):
        dup = sorted(c for c, n in Counter(names).items() if n > 1)
        raise AnnotationError(f"{where}: duplicated class names {dup[:10]}")
    return names


def _finish(path: Path, videos: dict[str, Video], classes: list[str] | None, unknown: str) -> AnnotationSet:
    """Resolve the class list; raise on (or drop) labels outside a given list."""
    if unknown not in ("error", "drop"):
        raise ValueError(f"unknown must be 'error' or 'drop', got {unknown!r}")
    if classes is None:
        labels = {i.label for v in videos.values() for i in v.instances}
        return AnnotationSet(videos, sorted(labels))
    known = set(classes)
    dropped: Counter[str] = Counter()
    for v in videos.values():
        bad = [i for i in v.instances if i.label not in known]
        if not bad:
            continue
        if unknown == "error":
            raise AnnotationError(
                f"{path}: video {v.video_id!r}: label {bad[0].label!r} is not in the class list "
                f"({len(classes)} classes); pass unknown='drop' to drop such instances"
            )
        dropped.update(i.label for i in bad)
        v.instances = [i for i in v.instances if i.label in known]
    if dropped:
        logger.warning(
            "%s: dropped %d instances with labels outside the class list: %s",
            path,
            sum(dropped.values()),
            dict(sorted(dropped.items())),
        )
    return AnnotationSet(videos, list(classes))


# ------------------------------------------------------------------------ official ActivityNet JSON
def _parse_database(path: Path, data: Any, *, require_rate: bool = False) -> dict[str, Video]:
    if not isinstance(data, dict) or "database" not in data:
        raise AnnotationError(f"{path}: expected an object with a 'database' key (ActivityNet format)")
    db = data["database"]
    if not isinstance(db, dict):
        raise AnnotationError(f"{path}: 'database' must be an object keyed by video id")
    videos: dict[str, Video] = {}
    for vid, entry in db.items():
        where = f"{path}: video {vid!r}"
        if not isinstance(entry, dict):
            raise AnnotationError(f"{where}: entry must be an object")
        for key in ("subset", "duration"):
            if key not in entry:
                raise AnnotationError(f"{where}: missing field {key!r}")
        subset = entry["subset"]
        if not isinstance(subset, str):
            raise AnnotationError(f"{where}: 'subset' must be a string, got {subset!r}")
        duration = _num(entry["duration"], where, "duration")
        if duration <= 0:
            raise AnnotationError(f"{where}: duration must be > 0, got {duration}")
        annos = entry.get("annotations", [])
        if not isinstance(annos, list):
            raise AnnotationError(f"{where}: 'annotations' must be a list")
        instances = []
        for j, a in enumerate(annos):
            w = f"{where}: annotation {j}"
            if not isinstance(a, dict) or "segment" not in a or "label" not in a:
                raise AnnotationError(f"{w}: needs 'segment' and 'label'")
            s, e = _segment(a["segment"], w)
            instances.append(Instance(s, e, _label(a["label"], w)))
        fps = entry.get("fps")
        fps = None if fps is None else _num(fps, where, "fps")
        if fps is not None and fps <= 0:
            raise AnnotationError(f"{where}: fps must be > 0, got {fps}")
        ints = {}
        for key in ("num_frames", "feature_frames"):
            val = entry.get(key)
            ints[key] = None if val is None else _num(val, where, key, integer=True)
        if require_rate and (fps is None or ints["num_frames"] is None):
            raise AnnotationError(f"{where}: ActRecTut entries need 'fps' and 'num_frames'")
        feature_file = entry.get("features")
        if feature_file is not None and not isinstance(feature_file, str):
            raise AnnotationError(f"{where}: 'features' must be a file name, got {feature_file!r}")
        labeled = entry.get("labeled", True)
        if not isinstance(labeled, bool):
            raise AnnotationError(f"{where}: 'labeled' must be true/false, got {labeled!r}")
        labeled = labeled and not _unlabeled_subset(subset, instances)
        videos[str(vid)] = Video(
            video_id=str(vid),
            duration=duration,
            subset=subset,
            instances=instances,
            labeled=labeled,
            fps=fps,
            num_frames=ints["num_frames"],
            feature_frames=ints["feature_frames"],
            feature_file=feature_file,
        )
    return videos


def _unlabeled_subset(subset: str, instances: list[Instance]) -> bool:
    """``training_unlabel``, and ActivityNet ``testing`` videos (no public labels)."""
    return subset.endswith(UNLABELED_SUFFIX) or (subset == "testing" and not instances)


#: the modes of the ActivityNet-JSON reader (see :func:`read_activitynet_json`)
ANET_MODES = ("strict", "official")


def read_activitynet_json(
    path: PathLike,
    *,
    class_names: ClassNames = None,
    unknown: str = "error",
    mode: str = "strict",
    subset: str | None = None,
) -> AnnotationSet:
    """Official ActivityNet JSON: ``{"database": {vid: {"subset", "duration", "annotations"}}}``.

    The one reader of this layout, in two modes (:func:`parse_activitynet` does the work):

    - ``"strict"`` (training, the default): every video needs ``subset`` (a string) and a positive
      ``duration``; a segment is two finite numbers with ``end >= start``; labels become strings.
      Optional per-video keys ``fps``, ``num_frames``, ``feature_frames``, ``features`` (feature
      file name) and ``labeled`` are read and checked when present (our writer emits them).
      Classes, in order of precedence: ``class_names`` (a list, or a path read by
      :func:`read_class_names`), a top-level ``"classes"`` list in the file (our writer emits it),
      else the sorted unique labels; ``unknown`` says what to do with labels outside a given list.
    - ``"official"`` (evaluation): the leniency of the official evaluator, so that any file it
      scores is scored the same. Only ``subset`` per video is required, and ``annotations`` /
      ``segment`` / ``label`` only for the videos of ``subset`` (all videos when None; the other
      videos get no instances); no ``duration`` (missing or not a number reads as 0),
      ``taxonomy`` or ``version`` needed; reversed segments are kept; labels stay as written (any
      hashable value); the classes are the labels in order of first appearance; optional keys,
      ``class_names`` and ``unknown`` are not used.

    Both modes keep zero-length and duplicated instances, as the official evaluator sees them
    (:func:`clean_instances` cleans them for the targets).
    """
    path = Path(path)
    return parse_activitynet(
        _read_json(path), path, class_names=class_names, unknown=unknown, mode=mode, subset=subset
    )


def parse_activitynet(
    data: Any,
    path: PathLike,
    *,
    class_names: ClassNames = None,
    unknown: str = "error",
    mode: str = "strict",
    subset: str | None = None,
    require_rate: bool = False,
) -> AnnotationSet:
    """The parsed JSON ``data`` of the ActivityNet file ``path`` (named in errors) as an
    :class:`AnnotationSet`; ``mode`` and the other arguments as in :func:`read_activitynet_json`.
    ``require_rate`` (strict mode): every entry needs ``fps`` and ``num_frames`` (ActRecTut)."""
    path = Path(path)
    if mode == "official":
        return _parse_database_official(path, data, subset)
    if mode != "strict":
        raise ValueError(f"mode must be one of {ANET_MODES}, got {mode!r}")
    videos = _parse_database(path, data, require_rate=require_rate)
    classes = _class_list(class_names)
    if classes is None and "classes" in data:
        if not isinstance(data["classes"], list) or not all(isinstance(c, str) for c in data["classes"]):
            raise AnnotationError(f"{path}: 'classes' must be a list of strings")
        classes = _class_list(data["classes"], f"{path}: 'classes'")
    return _finish(path, videos, classes, unknown)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def _parse_database_official(path: Path, data: Any, subset: str | None) -> AnnotationSet:
    """The official evaluator's reading (see :func:`read_activitynet_json`, ``mode="official"``)."""
    db = data["database"]
    if not isinstance(db, dict):
        raise AnnotationError(f"{path}: 'database' must map video ids to objects, got {type(db).__name__}")
    videos: dict[str, Video] = {}
    for vid, v in db.items():
        where = f"{path}: video {vid!r}"
        if not isinstance(v, dict) or "subset" not in v:
            raise AnnotationError(f"{where}: missing 'subset'")
        instances: list[Instance] = []
        if subset is None or v["subset"] == subset:
            annos = v.get("annotations")
            if not isinstance(annos, list):
                raise AnnotationError(f"{where}: 'annotations' must be a list, got {annos!r}")
            for j, a in enumerate(annos):
                if not isinstance(a, dict) or "segment" not in a or "label" not in a:
                    raise AnnotationError(f"{where}, annotation {j}: needs 'segment' and 'label'")
                seg = a["segment"]
                if not (isinstance(seg, list | tuple) and len(seg) == 2 and all(_is_number(x) for x in seg)):
                    raise AnnotationError(
                        f"{where}, annotation {j}: 'segment' must be two numbers, got {show(seg)}"
                    )
                if not all(math.isfinite(x) for x in seg):  # NaN / Infinity would change the mAP silently
                    raise AnnotationError(
                        f"{where}, annotation {j}: 'segment' must be two finite numbers, got {show(seg)}"
                    )
                try:
                    hash(a["label"])
                except TypeError:
                    raise AnnotationError(f"{where}, annotation {j}: bad label {a['label']!r}") from None
                # labels stay as written (the official code uses them as dict keys as they are)
                instances.append(Instance(float(seg[0]), float(seg[1]), a["label"]))
        duration = v.get("duration")
        duration = float(duration) if _is_number(duration) else 0.0
        videos[str(vid)] = Video(
            video_id=str(vid), duration=duration, subset=str(v["subset"]), instances=instances
        )
    classes = list(dict.fromkeys(i.label for v in videos.values() for i in v.instances))
    return AnnotationSet(videos, classes)


def read_actrectut_json(
    path: PathLike, *, class_names: ClassNames = None, unknown: str = "error"
) -> AnnotationSet:
    """ActRecTut ``gesture.json``: ActivityNet layout plus ``fps`` (sensor samples per second),
    ``num_frames`` (samples), ``channels`` and ``features`` (the ``.npy`` stream, relative to the
    JSON's folder) per stream. ``fps`` and ``num_frames`` are required here."""
    path = Path(path)
    return parse_activitynet(
        _read_json(path), path, class_names=class_names, unknown=unknown, require_rate=True
    )


def write_activitynet_json(
    aset: AnnotationSet, path: PathLike, *, version: str = "spot-tad", extra: dict[str, Any] | None = None
) -> Path:
    """Write the official ActivityNet layout (readable by the official evaluator).

    Extra keys that official tools ignore keep the round trip lossless: top-level ``classes``;
    per video ``fps``, ``num_frames``, ``feature_frames``, ``features`` when set, and
    ``labeled: false`` for unlabeled videos whose subset does not already say so. THUMOS
    ``ambiguous`` segments are not written. Output is deterministic (insertion order, fixed indent).
    """
    path = Path(path)
    db: dict[str, Any] = {}
    for vid, v in aset.videos.items():
        entry: dict[str, Any] = {
            "subset": v.subset,
            "duration": v.duration,
            "annotations": [{"segment": [i.start, i.end], "label": i.label} for i in v.instances],
        }
        if v.fps is not None:
            entry["fps"] = v.fps
        if v.num_frames is not None:
            entry["num_frames"] = v.num_frames
        if v.feature_frames is not None:
            entry["feature_frames"] = v.feature_frames
        if v.feature_file is not None:
            entry["features"] = v.feature_file
        if not v.labeled and not _unlabeled_subset(v.subset, v.instances):
            entry["labeled"] = False
        db[vid] = entry
    out = {"version": version, "classes": list(aset.classes), **(extra or {}), "database": db}
    from spot_core.outputs import write_text_atomic

    return write_text_atomic(path, json.dumps(out, indent=1) + "\n")


# ------------------------------------------------------------------------------- SPOT / BSN layout
_VIDEO_INFO_COLUMNS = ("video", "numFrame", "seconds", "fps", "subset", "featureFrame")


def read_video_info(path: PathLike) -> dict[str, dict[str, Any]]:
    """``video_info_new*.csv``: ``video,numFrame,seconds,fps,rfps,subset,featureFrame`` -> per video."""
    path = Path(path)
    out: dict[str, dict[str, Any]] = {}
    for line, row in _read_csv(path, _VIDEO_INFO_COLUMNS):
        where = f"{path}: line {line} (video {row['video']!r})"
        vid = row["video"]
        if not vid:
            raise AnnotationError(f"{where}: empty video id")
        if vid in out:
            raise AnnotationError(f"{where}: video listed twice")
        out[vid] = {
            "subset": row["subset"],
            "seconds": _num(row["seconds"], where, "seconds"),
            "fps": _num(row["fps"], where, "fps"),
            "num_frames": _num(row["numFrame"], where, "numFrame", integer=True),
            "feature_frames": _num(row["featureFrame"], where, "featureFrame", integer=True),
        }
    return out


def read_spot_bsn(
    anno_json: PathLike,
    video_info_csv: PathLike,
    split_csv: PathLike | None = None,
    class_names_csv: ClassNames = None,
    *,
    unknown: str = "error",
) -> AnnotationSet:
    """The SPOT/BSN layout.

    ``anno_json`` (``anet_anno_action.json``) maps ``v_<id>`` to ``duration_second``,
    ``duration_frame``, ``feature_frame`` and ``annotations``; ``video_info_csv``
    (``video_info_new.csv``) lists the videos and their subset; ``split_csv``
    (``video_info_new_0.9.csv`` / ``_0.4.csv``), when given, overrides the subset with the
    semi-supervised split, where unlabeled training videos are ``training_unlabel``.

    The videos are those of the csv (an id missing from the JSON is an error). ``subset`` is kept
    as the source spells it and ``labeled`` is False for ``training_unlabel`` (and for ``testing``
    videos, which have no labels); :meth:`AnnotationSet.training` returns both training parts.
    Duration and frame counts come from the JSON (what SPOT uses to place segments); ``fps`` from
    the csv. Classes: ``class_names_csv`` order (``action_name.csv``) or sorted unique labels.
    """
    anno_path = Path(anno_json)
    data = _read_json(anno_path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{anno_path}: expected an object keyed by video id")
    info = read_video_info(video_info_csv)
    split = read_video_info(split_csv) if split_csv is not None else None
    videos: dict[str, Video] = {}
    for vid, row in info.items():
        where = f"{anno_path}: video {vid!r}"
        if vid not in data:
            raise AnnotationError(f"{where}: listed in {video_info_csv} but absent from the annotations")
        entry = data[vid]
        if not isinstance(entry, dict):
            raise AnnotationError(f"{where}: entry must be an object")
        for key in ("duration_second", "duration_frame", "feature_frame", "annotations"):
            if key not in entry:
                raise AnnotationError(f"{where}: missing field {key!r}")
        duration = _num(entry["duration_second"], where, "duration_second")
        if duration <= 0:
            raise AnnotationError(f"{where}: duration_second must be > 0, got {duration}")
        num_frames = _num(entry["duration_frame"], where, "duration_frame", integer=True)
        feature_frames = _num(entry["feature_frame"], where, "feature_frame", integer=True)
        if num_frames <= 0 or feature_frames <= 0:
            raise AnnotationError(f"{where}: duration_frame and feature_frame must be > 0")
        if not isinstance(entry["annotations"], list):
            raise AnnotationError(f"{where}: 'annotations' must be a list")
        instances = []
        for j, a in enumerate(entry["annotations"]):
            w = f"{where}: annotation {j}"
            if not isinstance(a, dict) or "segment" not in a or "label" not in a:
                raise AnnotationError(f"{w}: needs 'segment' and 'label'")
            s, e = _segment(a["segment"], w)
            instances.append(Instance(s, e, _label(a["label"], w)))
        subset = row["subset"]
        if split is not None:
            if vid not in split:
                raise AnnotationError(f"{split_csv}: video {vid!r} of {video_info_csv} is missing")
            subset = split[vid]["subset"]
        videos[vid] = Video(
            video_id=vid,
            duration=duration,
            subset=subset,
            instances=instances,
            labeled=not _unlabeled_subset(subset, instances),
            fps=row["fps"],
            num_frames=num_frames,
            feature_frames=feature_frames,
        )
    return _finish(anno_path, videos, _class_list(class_names_csv), unknown)


# ----------------------------------------------------------------------------------------- THUMOS
_THUMOS_COLUMNS = ("video", "type", "start", "end")
AMBIGUOUS = "Ambiguous"


def read_thumos_csv(
    path: PathLike,
    *,
    subset: str | None = None,
    durations: dict[str, float] | None = None,
    class_names: ClassNames = None,
    unknown: str = "error",
) -> AnnotationSet:
    """THUMOS14 csv: ``video,type,type_idx,start,end,startFrame,endFrame`` (seconds and frames).

    ``Ambiguous`` rows are not instances; they go to :attr:`Video.ambiguous`. A video whose rows
    are all ambiguous is still listed, with no instances. ``subset``: ``validation`` for files whose
    name starts with ``val``, ``test`` for ``test``, unless given. The file has no durations: a
    video's duration is ``durations[video]`` when given, else the largest ``end`` of its rows
    (ambiguous included), a lower bound of the true duration. Classes: ``class_names`` or the sorted
    unique non-ambiguous types.
    """
    path = Path(path)
    if subset is None:
        name = path.name.lower()
        if name.startswith("val"):
            subset = "validation"
        elif name.startswith("test"):
            subset = "test"
        else:
            raise AnnotationError(f"{path}: cannot tell the subset from the file name; pass subset=")
    videos: dict[str, Video] = {}
    for line, row in _read_csv(path, _THUMOS_COLUMNS):
        vid = row["video"]
        where = f"{path}: line {line} (video {vid!r})"
        if not vid:
            raise AnnotationError(f"{where}: empty video id")
        s, e = _segment([row["start"], row["end"]], where)
        label = row["type"]
        if not label:
            raise AnnotationError(f"{where}: empty type")
        v = videos.get(vid)
        if v is None:
            v = videos[vid] = Video(video_id=vid, duration=0.0, subset=subset)
        inst = Instance(s, e, label)
        (v.ambiguous if label == AMBIGUOUS else v.instances).append(inst)
        v.duration = max(v.duration, e)
    for vid, v in videos.items():
        if durations is not None and vid in durations:
            v.duration = _num(durations[vid], f"{path}: video {vid!r}", "given duration")
        if v.duration <= 0:
            raise AnnotationError(f"{path}: video {vid!r}: duration unknown (all segments end at 0)")
    return _finish(path, videos, _class_list(class_names), unknown)


# -------------------------------------------------------------------------------------- dispatcher
def load_annotations(
    path: PathLike,
    *,
    video_info: PathLike | None = None,
    split: PathLike | None = None,
    class_names: ClassNames = None,
    subset: str | None = None,
    unknown: str = "error",
) -> AnnotationSet:
    """Read any supported annotation file, detecting its format.

    - ``.csv``: THUMOS (``subset`` as in :func:`read_thumos_csv`);
    - JSON with ``"database"``: official ActivityNet, or ActRecTut when its entries carry ``fps``
      and ``num_frames``;
    - JSON keyed by videos whose entries have ``duration_second``: SPOT/BSN, with ``video_info``
      defaulting to ``video_info_new.csv`` beside the JSON and ``split`` the optional
      semi-supervised split csv.

    ``class_names`` is a list or a path (e.g. ``action_name.csv``).
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        try:
            with path.open(newline="", encoding="utf-8") as f:
                header = f.readline()
        except FileNotFoundError:
            raise AnnotationError(f"{path}: annotation file not found") from None
        except UnicodeDecodeError as e:
            raise AnnotationError(f"{path}: not a UTF-8 text csv (byte {e.start}: {e.reason})") from None
        except OSError as e:
            raise AnnotationError(f"{path}: cannot read ({e.strerror or e})") from None
        if "featureFrame" in header:
            raise AnnotationError(
                f"{path}: this is a video-info csv; pass the annotation JSON and video_info={path}"
            )
        return read_thumos_csv(path, subset=subset, class_names=class_names, unknown=unknown)
    data = _read_json(path)
    if isinstance(data, dict) and "database" in data:
        db = data["database"]
        rate = (
            isinstance(db, dict)
            and bool(db)
            and all(isinstance(e, dict) and "fps" in e and "num_frames" in e for e in db.values())
        )
        return parse_activitynet(data, path, class_names=class_names, unknown=unknown, require_rate=rate)
    if (
        isinstance(data, dict)
        and data
        and all(isinstance(e, dict) and "duration_second" in e for e in _first(data.values(), 20))
    ):
        info = Path(video_info) if video_info is not None else path.parent / "video_info_new.csv"
        if not info.exists():
            raise AnnotationError(
                f"{path}: SPOT/BSN annotations need a video-info csv; {info} not found (pass video_info=)"
            )
        return read_spot_bsn(path, info, split, class_names, unknown=unknown)
    raise AnnotationError(
        f"{path}: unrecognised annotation format (expected ActivityNet JSON with 'database', "
        "SPOT/BSN JSON with 'duration_second', or a THUMOS csv)"
    )


def _first(it: Iterable[Any], n: int) -> list[Any]:
    out = []
    for x in it:
        out.append(x)
        if len(out) >= n:
            break
    return out
