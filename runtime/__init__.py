"""Streaming runtime: backend sessions, the sliding-window stream detector, and its CLI.

- :mod:`runtime.session`: ``open_session`` / ``EagerSession`` / ``CompiledSession`` /
  ``OnnxSession`` / ``TensorRTSession``, one interface over the backends, metadata checked;
- :mod:`runtime.detector`: ``StreamDetector`` (push / close over many concurrent streams,
  batched windows, exact final merge) and ``offline_detect`` (the offline reference);
- :mod:`runtime.stream`: ``python -m runtime.stream`` over feature files;
- :mod:`runtime.plot`: the detections timeline.

See docs/runtime.md.
"""

from .detector import Detection, StreamDetector, StreamError, offline_detect
from .session import Session, SessionError, open_session

__all__ = [
    "Detection",
    "Session",
    "SessionError",
    "StreamDetector",
    "StreamError",
    "offline_detect",
    "open_session",
]
