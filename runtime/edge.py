"""The bf16 CPU edge model: SPOT's inference forward laid out for CPU matmul libraries (oneDNN,
AMX where the CPU has it). docs/edge.md has its speed and accuracy; :mod:`export.quantize`
re-exports it beside the int8 ONNX quantizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spot_core.config import SpotConfig
from spot_core.graph import check_model_matches
from spot_core.model import SPOT

__all__ = ["EDGE_CHUNK", "EdgeGraph", "bf16_cpu_model"]

EDGE_CHUNK = 8  # windows per inner step of EdgeGraph: faster per window than one step of 64 (measured)


class EdgeGraph(nn.Module):
    """SPOT's inference forward in ``dtype``, laid out for CPU matmul libraries (see the module doc).

    ``features [B, C, T]`` (any float dtype, cast to ``dtype``) -> ``logits [B, K+1, T]``,
    ``mask [B, T, T]``, both float32. Weights are copied; the caller's model is untouched.
    ``chunk`` windows are processed per inner step.
    """

    def __init__(
        self, model: SPOT, cfg: SpotConfig, dtype: torch.dtype = torch.bfloat16, chunk: int = EDGE_CHUNK
    ) -> None:
        super().__init__()
        check_model_matches(model, cfg)
        m = cfg.model
        if (m.backbone, m.mask_head, m.cls_head) != ("spot", "spot", "linear"):
            raise ValueError(
                f"the CPU edge graph is written for the original SPOT model (backbone spot, mask head "
                f"spot, linear classifier); this model has backbone {m.backbone!r}, mask head "
                f"{m.mask_head!r}, classifier {m.cls_head!r}: use the eager bf16 or onnxruntime backends"
            )
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 window, got {chunk}")
        e = model.embedding
        self.dtype, self.chunk = dtype, chunk
        self.num_heads, self.head_dim = e.num_heads, e.head_dim
        self.eps = e.norm.eps
        self.feat_dim, self.num_snippets = cfg.model.feat_dim, cfg.model.num_snippets

        def buf(t: Tensor) -> Tensor:
            return t.detach().to("cpu", dtype).contiguous().clone()

        w_m = model.mask_conv.weight.detach()  # [hidden, C, 3]
        self.register_buffer("w_qkv", buf(torch.cat([e.w_q.weight, e.w_k.weight, e.w_v.weight])))  # [3Hd, C]
        self.register_buffer("w_proj", buf(e.proj.weight))  # [C, Hd]
        self.register_buffer("b_proj", buf(e.proj.bias))
        self.register_buffer("ln_w", buf(e.norm.weight))
        self.register_buffer("ln_b", buf(e.norm.bias))
        self.register_buffer("w_cls", buf(model.classifier.weight.squeeze(-1)))  # [K+1, C]
        self.register_buffer("b_cls", buf(model.classifier.bias))
        # the k=3 conv as one linear over the taps [x_{t-1}, x_t, x_{t+1}]: column k*C + c = weight[:, c, k]
        self.register_buffer("w_mconv", buf(w_m.permute(0, 2, 1).reshape(w_m.shape[0], -1)))  # [hidden, 3C]
        self.register_buffer("b_mconv", buf(model.mask_conv.bias))
        self.register_buffer("w_mout", buf(model.mask_out.weight.squeeze(-1)))  # [T, hidden]

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # x: [B, C, T]
        if x.dim() != 3 or x.shape[1] != self.feat_dim or x.shape[2] != self.num_snippets:
            raise ValueError(
                f"features must be [B, C={self.feat_dim}, T={self.num_snippets}], got {list(x.shape)}"
            )
        b, _, t = x.shape
        logits = torch.empty(b, self.w_cls.shape[0], t, dtype=torch.float32)  # [B, K+1, T]
        mask = torch.empty(b, t, t, dtype=torch.float32)  # [B, T, T]
        for i in range(0, b, self.chunk):
            lo, ma = self._step(x[i : i + self.chunk].to("cpu", self.dtype))
            logits[i : i + self.chunk].copy_(lo)
            mask[i : i + self.chunk].copy_(ma)
        return logits, mask

    def _step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # x: [n, C, T] in self.dtype
        n, c, t = x.shape
        h, d = self.num_heads, self.head_dim
        xt = x.transpose(1, 2).contiguous()  # [n, T, C]; a strided view would make linear fall back
        # to a batched matmul over a per-window copy of the weight
        qkv = F.linear(xt, self.w_qkv).view(n, t, 3, h, d)  # [n, T, 3, H, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x [n, H, T, d] (views)
        o = F.scaled_dot_product_attention(q, k, v)  # [n, H, T, d], scale 1/sqrt(d), no dropout
        o = o.transpose(1, 2).reshape(n, t, h * d)  # [n, T, H*d]
        emb = F.layer_norm(F.linear(o, self.w_proj, self.b_proj) + xt, (c,), self.ln_w, self.ln_b, self.eps)
        logits = F.linear(emb, self.w_cls, self.b_cls).transpose(1, 2)  # [n, K+1, T]
        pad = F.pad(emb, (0, 0, 1, 1))  # [n, T+2, C]: the conv's zero padding in time
        taps = torch.cat([pad[:, :-2], pad[:, 1:-1], pad[:, 2:]], dim=-1)  # [n, T, 3C]
        hid = F.relu(F.linear(taps, self.w_mconv, self.b_mconv))  # [n, T(col), hidden]
        # sigmoid of the float32 mask logit: no rounding of the probability to dtype
        mask = torch.sigmoid(F.linear(hid, self.w_mout).float()).transpose(1, 2)  # [n, T(row), T(col)]
        return logits, mask


def bf16_cpu_model(
    model: SPOT, cfg: SpotConfig, dtype: torch.dtype = torch.bfloat16, chunk: int = EDGE_CHUNK
) -> EdgeGraph:
    """The bf16 CPU edge model of ``model``: an :class:`EdgeGraph` on the CPU, in eval mode
    (float32 gives the same layout in full precision, which the tests compare with the model)."""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported precision {dtype}; use bfloat16 (or float32 / float16)")
    return EdgeGraph(model, cfg, dtype, chunk).eval()
