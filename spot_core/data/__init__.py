"""Annotations, feature files, long streams, windows and the synthetic data generator.

The torch dataset lives in :mod:`spot_core.data.datasets` (imported explicitly, so reading
annotations or features never imports torch).
"""

from .annotations import (
    AnnotationError,
    AnnotationSet,
    Instance,
    Video,
    clean_instances,
    load_annotations,
    parse_activitynet,
    read_activitynet_json,
    read_actrectut_json,
    read_spot_bsn,
    read_thumos_csv,
    split_labels,
    write_activitynet_json,
)
from .features import FeatureError, FeatureStore, load_features, snippetize_stream
from .streams import load_streams, read_stream
from .synthetic import SyntheticSpec, generate_dataset
from .windows import FeatureStats, Window, build_targets, make_windows, rescale_video, slide_video

__all__ = [
    "AnnotationError",
    "AnnotationSet",
    "FeatureError",
    "FeatureStats",
    "FeatureStore",
    "Instance",
    "SyntheticSpec",
    "Video",
    "Window",
    "build_targets",
    "clean_instances",
    "generate_dataset",
    "load_annotations",
    "load_features",
    "load_streams",
    "make_windows",
    "parse_activitynet",
    "read_activitynet_json",
    "read_actrectut_json",
    "read_spot_bsn",
    "read_stream",
    "read_thumos_csv",
    "rescale_video",
    "slide_video",
    "snippetize_stream",
    "split_labels",
    "write_activitynet_json",
]
