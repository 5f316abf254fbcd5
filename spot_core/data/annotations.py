"""One in-memory structure for every annotation format we read.

Times are in seconds. ``Instance.end`` may equal ``Instance.start`` (zero-length ground truth exists
in ActivityNet validation) and may exceed ``Video.duration`` (real data is messy): readers keep such
instances as they are, and the windowing code decides what to do with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class AnnotationError(ValueError):
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
    must not be used for training (semi-supervised splits). ``fps`` is the source frame rate when
    known; ``feature_frames`` the number of frames the features cover when it differs from the video.
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


@dataclass
class AnnotationSet:
    """Videos keyed by id plus the ordered class list (index = class id)."""

    videos: dict[str, Video]
    classes: list[str]

    def subset(self, *names: str) -> AnnotationSet:
        """The videos whose ``subset`` is one of ``names`` (same class list)."""
        return AnnotationSet({k: v for k, v in self.videos.items() if v.subset in names}, list(self.classes))

    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def num_instances(self) -> int:
        return sum(len(v.instances) for v in self.videos.values())

    def __len__(self) -> int:
        return len(self.videos)
