"""The SPOT reference network (DESIGN.md section 4), every size from :class:`ModelConfig`.

Shapes: B windows, C feature channels, T snippets per window, K foreground classes (+1 background),
H heads of width d.

- snippet embedding: one multi-head self-attention block over the T snippets (bias-free Q/K/V
  maps C -> H*d, scaled dot product, attention dropout, output map H*d -> C, dropout, residual,
  LayerNorm);
- classification head: 1x1 conv C -> K+1;
- global segmentation mask head: conv(k=3) C -> hidden, ReLU, 1x1 conv hidden -> T (no bias),
  sigmoid, so row t of the [B, T, T] output is the foreground mask of the instance snippet t is in;
- pretext (clip-order) head, training only: conv(k=3) C -> 1, ReLU, flatten over T, dropout,
  linear T -> 2.

The mask head is split into :meth:`SPOT.mask_hidden` (h after the ReLU) and :attr:`SPOT.mask_weight`
(W2 [T, hidden]) so the fused decode kernel can compute only the rows it needs:
``mask[b, t, :] = sigmoid(W2[t] @ h[b])``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class SnippetEmbedding(nn.Module):
    """Multi-head self-attention over snippets with residual and LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, d = cfg.feat_dim, cfg.num_heads, cfg.d_head
        self.num_heads, self.head_dim = h, d
        self.w_q = nn.Linear(c, h * d, bias=False)
        self.w_k = nn.Linear(c, h * d, bias=False)
        self.w_v = nn.Linear(c, h * d, bias=False)
        self.proj = nn.Linear(h * d, c)
        self.attn_drop = nn.Dropout(cfg.attn_dropout)
        self.drop = nn.Dropout(cfg.embed_dropout)
        self.norm = nn.LayerNorm(c)
        std = math.sqrt(2.0 / (c + d))  # the original's initialisation
        for w in (self.w_q, self.w_k, self.w_v):
            nn.init.normal_(w.weight, mean=0.0, std=std)
        nn.init.xavier_normal_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, C]
        b, t, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.w_q(x).view(b, t, h, d).transpose(1, 2)  # [B, H, T, d]
        k = self.w_k(x).view(b, t, h, d).transpose(1, 2)
        v = self.w_v(x).view(b, t, h, d).transpose(1, 2)
        attn = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d))  # [B, H, T, T]
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, h * d)  # [B, T, H*d]
        return self.norm(self.drop(self.proj(out)) + x)  # [B, T, C]


class SPOT(nn.Module):
    """SPOT: snippet embedding + classification head + global segmentation mask head (+ pretext head)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, t, k = cfg.feat_dim, cfg.num_snippets, cfg.num_classes
        self.embedding = SnippetEmbedding(cfg)
        self.classifier = nn.Conv1d(c, k + 1, kernel_size=1)
        self.mask_conv = nn.Conv1d(c, cfg.mask_hidden, kernel_size=3, padding=1)
        self.mask_out = nn.Conv1d(cfg.mask_hidden, t, kernel_size=1, bias=False)
        self.order_conv = nn.Conv1d(c, 1, kernel_size=3, padding=1)
        self.order_drop = nn.Dropout(cfg.pretext_dropout)
        self.order_fc = nn.Linear(t, 2)

    # ------------------------------------------------------------------ pieces
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Snippet embedding. x: [B, C, T] -> [B, C, T]."""
        self._check_input(x)
        return self.embedding(x.transpose(1, 2)).transpose(1, 2)

    def mask_hidden(self, emb: torch.Tensor) -> torch.Tensor:
        """The mask head's hidden map after the ReLU. emb: [B, C, T] -> h: [B, hidden, T]."""
        return F.relu(self.mask_conv(emb))

    @property
    def mask_weight(self) -> torch.Tensor:
        """W2 of the mask head's last 1x1 conv: [T, hidden]."""
        return self.mask_out.weight.squeeze(-1)

    def heads(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """emb: [B, C, T] -> (class logits [B, K+1, T], mask [B, T, T])."""
        logits = self.classifier(emb)  # [B, K+1, T]
        mask = torch.sigmoid(self.mask_out(self.mask_hidden(emb)))  # [B, T(row), T(col)]
        return logits, mask

    def clip_order(self, emb: torch.Tensor) -> torch.Tensor:
        """Pretext clip-order logits. emb: [B, C, T] -> [B, 2]."""
        z = F.relu(self.order_conv(emb)).flatten(1)  # [B, T]
        return self.order_fc(self.order_drop(z))

    # ------------------------------------------------------------------ forwards
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference forward. x: [B, C, T] -> (class logits [B, K+1, T], mask [B, T, T])."""
        return self.heads(self.embed(x))

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training forward: logits, mask, the embedding [B, C, T] and the clip-order logits [B, 2]."""
        emb = self.embed(x)
        logits, mask = self.heads(emb)
        return {"logits": logits, "mask": mask, "embedding": emb, "clip_order": self.clip_order(emb)}

    def _check_input(self, x: torch.Tensor) -> None:
        c, t = self.cfg.feat_dim, self.cfg.num_snippets
        if x.dim() != 3 or x.shape[1] != c or x.shape[2] != t:
            raise ValueError(f"SPOT expects features [B, C={c}, T={t}], got {list(x.shape)}")
