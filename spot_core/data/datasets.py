"""Torch dataset over windows, and loading a dataset folder.

A dataset folder (what :func:`spot_core.data.synthetic.generate_dataset` writes, and any folder laid
out the same way)::

    <data_dir>/annotations.json        official ActivityNet format (+ top-level "classes")
    <data_dir>/features/<video>.npy    [N, C] float32 per video (.csv accepted too)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..config import SpotConfig
from .annotations import AnnotationError, AnnotationSet, load_annotations
from .features import FeatureError, FeatureStore
from .windows import FeatureStats, Window, make_windows

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
    if not data_dir.is_dir():
        raise AnnotationError(f"{data_dir}: dataset folder not found")
    anno = data_dir / ANNOTATIONS_FILE
    if not anno.is_file():
        raise AnnotationError(
            f"{anno}: not found (a dataset folder holds {ANNOTATIONS_FILE} and {FEATURES_DIR}/)"
        )
    aset = load_annotations(anno, class_names=list(cfg.class_names) or None)
    if relabel is not None:
        aset = relabel(aset)
    feat_dir = data_dir / FEATURES_DIR
    if not feat_dir.is_dir():
        raise FeatureError(f"{feat_dir}: feature folder not found")
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
