"""Streaming runtime: backend sessions, the sliding-window stream detector, and its CLI.

- :mod:`runtime.session`: ``open_session`` / ``EagerSession`` / ``CompiledSession`` /
  ``OnnxSession`` / ``TensorRTSession``, one interface over the backends, metadata checked;
- :mod:`runtime.backends`: the backend names and their runners (eager, compile, edge,
  onnxruntime, TensorRT);
- :mod:`runtime.detector`: ``StreamDetector`` (push / close over many concurrent streams,
  batched windows, exact final merge);
- :mod:`runtime.offline`: ``offline_detect`` (the offline reference a stream equals exactly);
- :mod:`runtime.stream`: ``python -m runtime.stream`` over feature files;
- :mod:`runtime.plot`: the detections timeline.

See docs/runtime.md.
"""

from .detector import Detection, StreamDetector, StreamError
from .offline import offline_detect
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
