"""The inference graphs that the runtime and :mod:`export.onnx` build from a SPOT model.

Two graphs, both with one input ``features [B, C, T]``:

- heads: ``features -> (logits [B, K+1, T], mask [B, T, T])``, the model's inference forward;
- heads + decode: ``features -> (segments [B, M, 2], scores [B, M], labels [B, M] int64,
  valid [B, M] bool)``, the candidate proposals of :func:`spot_core.decode.decode_windows`
  (DESIGN.md section 4, steps 1-6, no deduplication or Soft-NMS), ``M = num_proposals(cfg, T)``.

The decode runs in float32 whatever the model's precision (it casts logits and mask itself), so
only ``logits`` and ``mask`` follow the model's dtype.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from spot_core.checkpoint import check_state
from spot_core.config import DecodeConfig, SpotConfig
from spot_core.decode import decode_windows
from spot_core.model import SPOT

INPUT_NAME = "features"
HEAD_OUTPUTS = ("logits", "mask")
DECODE_OUTPUTS = ("segments", "scores", "labels", "valid")


class HeadsDecode(nn.Module):
    """SPOT forward followed by the fixed-size decode: ``features [B, C, T]`` -> candidate proposals."""

    def __init__(self, model: SPOT, decode_cfg: DecodeConfig) -> None:
        super().__init__()
        self.model = model
        self.decode_cfg = decode_cfg

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # x: [B, C, T]
        logits, mask = self.model(x)  # [B, K+1, T], [B, T, T]
        props = decode_windows(logits, mask, self.decode_cfg)
        return props.segments, props.scores, props.labels, props.valid  # [B, M, 2], [B, M] x 3


def check_model_matches(model: SPOT, cfg: SpotConfig, where: str = "model") -> None:
    """Raise ``CheckpointError`` naming every tensor whose shape differs from the model ``cfg`` describes."""
    with torch.device("meta"):
        expected = SPOT(cfg.model).state_dict()
    check_state(expected, model.state_dict(), where)


def inference_graph(
    model: SPOT, cfg: SpotConfig, *, with_decode: bool = False, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """An eval-mode copy of ``model`` in ``dtype`` (the heads), wrapped with the decode when asked.

    The caller's model is left untouched. Only float32, float16 and bfloat16 are accepted.
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"unsupported precision {dtype}; use float32, float16 or bfloat16")
    check_model_matches(model, cfg)
    net = copy.deepcopy(model).eval().to(dtype)
    for p in net.parameters():
        p.requires_grad_(False)
    return HeadsDecode(net, cfg.decode).eval() if with_decode else net


def output_names(with_decode: bool) -> tuple[str, ...]:
    return DECODE_OUTPUTS if with_decode else HEAD_OUTPUTS
