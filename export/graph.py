"""Re-export of :mod:`spot_core.graph` (the inference graphs live in the core: the runtime builds them)."""

from spot_core.graph import (
    DECODE_OUTPUTS,
    HEAD_OUTPUTS,
    INPUT_NAME,
    HeadsDecode,
    check_model_matches,
    inference_graph,
    output_names,
)

__all__ = [
    "DECODE_OUTPUTS",
    "HEAD_OUTPUTS",
    "INPUT_NAME",
    "HeadsDecode",
    "check_model_matches",
    "inference_graph",
    "output_names",
]
