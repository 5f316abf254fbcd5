"""Torch dataset over windows, and loading a dataset folder.

A dataset folder (what :func:`spot_core.data.synthetic.generate_dataset` writes, and any folder laid
out the same way)::

    <data_dir>/annotations.json        official ActivityNet format (+ top-level "classes")
    <data_dir>/features/<video>.npy    [N, C] float32 per video (.csv accepted too)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from ..config import SpotConfig
from .annotations import AnnotationError, AnnotationSet, load_annotations
from .features import FeatureError, FeatureStore
from .windows import FeatureStats, Window, make_windows

if TYPE_CHECKING:
    from .streams import PieceSplit

logger = logging.getLogger(__name__)

ANNOTATIONS_FILE = "annotations.json"
FEATURES_DIR = "features"


class WindowDataset(Dataset):
    """Windows as dicts of tensors; the default collate stacks them into a batch.

    Item keys: ``features [C, T] float32`` (model layout), ``cls_target [T] int64``,
    ``mask_target [T, T] float32``, ``valid_mask [T] bool``, ``labeled`` (bool scalar),
    ``has_targets`` (bool scalar), ``index`` (int64 scalar: position in this dataset, to find the
    window again for decoding).
    """

    def __init__(self, windows: Sequence[Window]) -> None:
        self.windows = list(windows)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        w = self.windows[index]
        return {
            "features": torch.from_numpy(w.features_ct()),  # [C, T]
            "cls_target": torch.from_numpy(w.cls_target),  # [T]
            "mask_target": torch.from_numpy(w.mask_target),  # [T, T]
            "valid_mask": torch.from_numpy(w.valid_mask),  # [T]
            "labeled": torch.tensor(w.labeled),
            "has_targets": torch.tensor(w.has_targets),
            "index": torch.tensor(index, dtype=torch.int64),
        }

    def indices(self, *, labeled: bool) -> list[int]:
        """Positions of the windows with targets (``labeled=True``) or without (``False``)."""
        return [i for i, w in enumerate(self.windows) if (w.labeled and w.has_targets) == labeled]


def annotation_file(data_dir: Path) -> Path:
    """``<data_dir>/annotations.json``, or a clear error when the folder or the file is missing."""
    if not data_dir.is_dir():
        raise AnnotationError(f"{data_dir}: dataset folder not found")
    anno = data_dir / ANNOTATIONS_FILE
    if not anno.is_file():
        raise AnnotationError(
            f"{anno}: not found (a dataset folder holds {ANNOTATIONS_FILE} and {FEATURES_DIR}/)"
        )
    return anno


def feature_dir(data_dir: Path) -> Path:
    """``<data_dir>/features``, or a clear error when it is missing."""
    feat_dir = data_dir / FEATURES_DIR
    if not feat_dir.is_dir():
        raise FeatureError(f"{feat_dir}: feature folder not found")
    return feat_dir


def load_dataset(
    data_dir: str | Path,
    cfg: SpotConfig,
    subset: str | None = "training",
    *,
    targets: bool = True,
    progress: bool | None = None,
    relabel: Callable[[AnnotationSet], AnnotationSet] | None = None,
) -> tuple[AnnotationSet, list[Window]]:
    """Read ``<data_dir>/annotations.json`` and ``<data_dir>/features/`` into windows.

    ``subset`` selects videos by :attr:`Video.base_subset` (``"training"`` includes the
    ``training_unlabel`` videos, whose windows have ``labeled=False``); ``None`` keeps all.
    The classes come from the file's ``classes`` list, or ``cfg.class_names`` when it is set (it
    must then contain every label). With ``cfg.data.normalize`` the features are standardised with
    the statistics of the folder's training videos. Windows follow ``cfg.data.mode``; the
    ``"training"`` subset of window mode uses ``cfg.data.train_stride`` when it is set.
    ``relabel`` rewrites the annotation set before the subset is taken (a semi-supervised label
    split: :func:`~spot_core.data.annotations.split_labels`, ``apply_split_file``).
    """
    data_dir = Path(data_dir)
    anno = annotation_file(data_dir)
    aset = load_annotations(anno, class_names=list(cfg.class_names) or None)
    if relabel is not None:
        aset = relabel(aset)
    feat_dir = feature_dir(data_dir)
    ext = "npy" if any(feat_dir.glob("*.npy")) or not any(feat_dir.glob("*.csv")) else "csv"
    store = FeatureStore(feat_dir, ext, expected_dim=cfg.model.feat_dim)
    stats = None
    if cfg.data.normalize:
        train = aset.training()
        if len(train) == 0:
            raise AnnotationError(f"{anno}: data.normalize needs training videos for the statistics")
        stats = FeatureStats.fit(store.for_video(v) for v in train)
    part = aset if subset is None else aset.select(subset)
    if len(part) == 0:
        raise AnnotationError(
            f"{anno}: no videos in subset {subset!r} (subsets: {sorted(aset.subset_counts())})"
        )
    wcfg = cfg
    if subset == "training" and cfg.data.mode == "window" and cfg.data.train_stride is not None:
        wcfg = cfg.override([f"data.stride={cfg.data.train_stride}"])  # training crops
    windows = make_windows(part, store, wcfg, targets=targets, stats=stats, progress=progress)
    logger.info("%s: %d videos (%s) -> %d windows", data_dir, len(part), subset or "all", len(windows))
    return part, windows


@dataclass(frozen=True)
class DataSizes:
    """What a dataset folder says about the model's sizes (:func:`dataset_sizes`)."""

    feat_dim: int  # C of the feature files
    classes: tuple[str, ...]  # the annotation file's class list
    snippet_rate: float | None  # snippets per second when every video has the same one (window mode)


def dataset_sizes(data_dir: str | Path) -> DataSizes:
    """Feature width, classes and snippet rate of a dataset folder, read without loading the features
    (``.npy`` files are memory-mapped; every file must have the same width)."""
    from .streams import read_stream

    data_dir = Path(data_dir)
    anno = annotation_file(data_dir)
    aset = load_annotations(anno)
    feat_dir = feature_dir(data_dir)
    files = sorted(p for p in feat_dir.glob("*") if p.suffix.lower() in (".npy", ".csv"))
    if not files:
        raise FeatureError(f"{feat_dir}: no .npy or .csv feature files")
    widths: dict[int, str] = {}
    rates = set()
    by_id = {p.stem: p for p in files}
    for v in aset.videos.values():
        f = by_id.get(v.video_id)
        if f is None:
            continue
        x = read_stream(f)
        widths.setdefault(int(x.shape[1]), f.name)
        if v.feature_duration > 0:
            rates.add(round(x.shape[0] / v.feature_duration, 9))
    if not widths:
        raise FeatureError(f"{feat_dir}: no feature file of an annotated video")
    if len(widths) > 1:
        raise FeatureError(f"{feat_dir}: feature files of different widths: {widths}")
    rate = next(iter(rates)) if len(rates) == 1 else None
    return DataSizes(next(iter(widths)), tuple(aset.classes), rate)


def sized_from_data(cfg: SpotConfig, data_dir: str | Path, fixed: Iterable[str] = ()) -> SpotConfig:
    """``cfg`` with the feature width, class count, class names (and, in window mode, the snippet
    rate) of the dataset folder, for the presets that take them from the data
    (:data:`spot_core.config.DATA_SIZED_PRESETS`) except the keys in ``fixed`` (``--set``). A preset
    that fixes them must match the data: :class:`~spot_core.config.ConfigError` otherwise."""
    from ..config import DATA_SIZED_PRESETS, ConfigError

    d = dataset_sizes(data_dir)
    fixed = set(fixed)
    m = cfg.model
    if cfg.name in DATA_SIZED_PRESETS:
        sets = []
        if "model.feat_dim" not in fixed:
            sets.append(f"model.feat_dim={d.feat_dim}")
        if "model.num_classes" not in fixed and "class_names" not in fixed:
            sets.append(f"model.num_classes={len(d.classes)}")
            cfg = cfg.replace(class_names=())
        if cfg.data.mode == "window" and cfg.data.snippet_rate is None and d.snippet_rate is not None:
            sets.append(f"data.snippet_rate={d.snippet_rate!r}")
        cfg = cfg.override(sets)
        if "class_names" not in fixed and "model.num_classes" not in fixed:
            cfg = cfg.replace(class_names=d.classes)
        m = cfg.model
    bad = []
    if m.feat_dim != d.feat_dim:
        bad.append(f"model.feat_dim={m.feat_dim} (the features have {d.feat_dim} channels)")
    if not cfg.class_names and m.num_classes != len(d.classes):
        bad.append(f"model.num_classes={m.num_classes} (the annotations have {len(d.classes)} classes)")
    if bad:
        how = (
            "use --preset stream (sizes from the data)"
            if cfg.name not in DATA_SIZED_PRESETS
            else "drop the --set that fixes them"
        )
        raise ConfigError(f"{data_dir}: config {cfg.name!r} fixes {' and '.join(bad)}; {how}")
    return cfg


def load_piece_windows(
    data_dir: str | Path, cfg: SpotConfig, fraction: float, *, seed: int = 0, piece_sec: float = 60.0
) -> tuple[AnnotationSet, list[Window], PieceSplit]:
    """Training windows of a folder of long streams with the labels of a fraction of *pieces*.

    Every training stream is cut at background into pieces of about ``piece_sec`` and a seeded
    ``fraction`` of all pieces keep their labels (:func:`spot_core.data.streams.split_pieces`);
    consecutive pieces of the same status are one training video. Window mode only."""
    from .streams import split_pieces

    if cfg.data.mode != "window":
        raise AnnotationError("labelled pieces of long streams need data.mode=window")
    data_dir = Path(data_dir)
    aset = load_annotations(data_dir / ANNOTATIONS_FILE, class_names=list(cfg.class_names) or None)
    feat_dir = data_dir / FEATURES_DIR
    ext = "npy" if any(feat_dir.glob("*.npy")) or not any(feat_dir.glob("*.csv")) else "csv"
    store = FeatureStore(feat_dir, ext, expected_dim=cfg.model.feat_dim)
    train = aset.training()
    if len(train) == 0:
        raise AnnotationError(f"{data_dir}: no training streams")
    feats = {v.video_id: store.for_video(v) for v in train}
    if cfg.data.normalize:
        stats = FeatureStats.fit(feats.values())
        feats = {k: stats.apply(f) for k, f in feats.items()}
    rate = cfg.data.snippet_rate
    streams = {
        v.video_id: (v, feats[v.video_id], rate or len(feats[v.video_id]) / v.feature_duration) for v in train
    }
    sp = split_pieces(streams, list(aset.classes), fraction, seed=seed, piece_sec=piece_sec)
    wcfg = cfg if cfg.data.train_stride is None else cfg.override([f"data.stride={cfg.data.train_stride}"])
    runs_rate = {k: streams[k.rsplit("/", 1)[0]][2] for k in sp.annotations.videos}
    windows = []
    for k, v in sp.annotations.videos.items():
        one = AnnotationSet({k: v}, list(aset.classes))
        windows += make_windows(one, {k: sp.features[k]}, wcfg, snippet_rate=runs_rate[k], progress=False)
    logger.info(
        "%s: %d training streams -> %d pieces, %d labelled; %d windows",
        data_dir, len(streams), sum(len(p) for p in sp.pieces.values()), len(sp.labeled), len(windows),
    )  # fmt: skip
    return sp.annotations, windows, sp
