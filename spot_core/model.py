"""The SPOT network (DESIGN.md section 4), every size from :class:`ModelConfig`.

Shapes: B windows, C feature channels, T snippets per window, K foreground classes (+1 background),
E embedding channels (C for the ``spot`` backbone, ``model.hidden_dim`` for the others).

The network is a backbone (``model.backbone``) followed by SPOT's heads, whose contract never
changes: per-snippet class logits ``[B, K+1, T]`` and per-snippet instance masks ``[B, T, T]`` (row t:
the foreground mask over the window of the instance snippet t belongs to).

Backbones (:func:`build_backbone`):

- ``spot``: the original, kept bit for bit: one multi-head self-attention block over the T snippets
  (bias-free Q/K/V maps C -> H*d, scaled dot product, attention dropout, output map H*d -> C,
  dropout, residual, LayerNorm). No positional signal, no local context. E = C.
- ``local``: every snippet gets local context and relative position: a conv stem
  (``model.stem_layers`` x [conv k=3, LayerNorm, ReLU], C -> E) and ``model.num_layers`` pre-norm
  blocks of local windowed self-attention (each snippet attends to ``|j - t| <= model.attn_window``,
  a learned relative-position bias per head and offset) + MLP, at the single temporal scale T.
- ``conv``: the CPU-edge variant: the same stem and ``model.num_layers`` residual blocks of
  [depthwise conv k=``model.conv_kernel`` + LayerNorm + pointwise MLP]; no attention.

``model.abs_pos`` adds a fixed sinusoidal position code after the stem (the ``mask_head: spot``
study needs it: its last layer maps to absolute columns). It is added inside the network, after any
input transform, so the clip-order pretext (which swaps the two halves of the *input*) cannot be
solved from it.

Classifier (``model.cls_head``): ``linear`` (the original 1x1 conv E -> K+1) or ``conv``
(``model.head_layers`` x [conv k=3, LayerNorm, ReLU] then conv k=3 -> K+1).

Mask heads (``model.mask_head``), each from the hidden map ``h = ReLU(conv_k3(emb))`` [B, hidden, T]
(:meth:`SPOT.mask_hidden`):

- ``spot`` (original): ``mask[t, :] = sigmoid(W2[t] @ h)`` with a 1x1 conv hidden -> T, no bias:
  row t maps snippet t's hidden vector to T *absolute* columns (:attr:`SPOT.mask_weight` is W2).
- ``pairwise``: a translation-equivariant same-instance affinity,
  ``mask[t, j] = sigmoid(<q_t, k_j> / sqrt(dq) + b(j - t))`` with ``q = Wq h``, ``k = Wk h``
  (1x1 convs hidden -> dq) and a learned bias per offset ``j - t`` (no absolute columns).
- ``offset``: each snippet regresses its instance's extent relative to itself, as in the
  anchor-free detectors (ActionFormer): a 1x1 conv hidden -> 2 gives the distances to the start and
  the end, ``ds, de = OFFSET_SCALE * conv(h)`` in snippets (unbounded: a negative extent is an empty
  row, what background rows learn), and the row is the soft box
  ``mask[t, j] = sigmoid(min(j - t + ds_t, t + de_t - j) / OFFSET_TAU)``: above 0.5 exactly on
  ``t - ds_t < j < t + de_t``. Translation-equivariant, two numbers per snippet.

Pretext (clip-order) head, training only: conv(k=3) E -> 1, ReLU, flatten over T, dropout, linear
T -> 2. Reconstruction (pretext and fine-tuning): :meth:`SPOT.reconstruct` maps the embedding back
to the C input channels (identity for ``spot``, a 1x1 conv E -> C otherwise).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

BACKBONES = ("spot", "local", "conv")
MASK_HEADS = ("spot", "pairwise", "offset")
#: ``offset`` head: snippets per unit of the conv's output, and the soft box's edge width in snippets
#: (a wide edge keeps the mask loss's gradient alive far from the box; the 0.5 level is the box)
OFFSET_SCALE = 16.0
OFFSET_TAU = 4.0


class SnippetEmbedding(nn.Module):
    """The original SPOT block: multi-head self-attention over snippets, residual and LayerNorm."""

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


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a ``[B, E, T]`` map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, E, T]
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def conv_stack(c_in: int, c_out: int, layers: int) -> nn.Sequential:
    """``layers`` x [conv k=3, LayerNorm over channels, ReLU]: ``[B, c_in, T] -> [B, c_out, T]``."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Conv1d(c_in if i == 0 else c_out, c_out, 3, padding=1), ChannelNorm(c_out), nn.ReLU()]
    return nn.Sequential(*mods)


def sinusoid(t: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal position code ``[dim, t]`` (Vaswani et al.)."""
    pos = torch.arange(t, dtype=torch.float32)[None, :]  # [1, T]
    i = torch.arange((dim + 1) // 2, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * 2.0 * i / dim)  # [dim/2, 1]
    pe = torch.zeros(dim, t)
    pe[0::2] = torch.sin(pos * freq)[: (dim + 1) // 2]
    pe[1::2] = torch.cos(pos * freq)[: dim // 2]
    return pe


def offset_logits(ds: torch.Tensor, de: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Soft-box logits of the ``offset`` head: ``min(j - t + ds, t + de - j) / OFFSET_TAU``.

    ``ds``, ``de`` ``[B, R]`` extents of the R rows at positions ``rows`` (``[R]`` or ``[B, R]``),
    ``cols`` ``[T]`` column positions -> ``[B, R, T]``."""
    t = rows.to(ds.dtype)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    j = cols.to(ds.dtype)[None, None, :]
    start = (t - ds).unsqueeze(2)  # start, end: [B, R, 1]
    end = (t + de).unsqueeze(2)
    return torch.minimum(j - start, end - j) * (1.0 / OFFSET_TAU)


def relative_index(t: int) -> torch.Tensor:
    """``[T, T]`` int64: ``j - i + T - 1`` (the offset of column j from row i, shifted to >= 0)."""
    r = torch.arange(t)
    return r[None, :] - r[:, None] + (t - 1)


class LocalAttentionBlock(nn.Module):
    """Pre-norm block: local windowed multi-head self-attention with relative-position bias, then MLP.

    Snippet i attends to snippets ``|j - i| <= window``; the bias ``b_h(j - i)`` is learned per head.
    """

    def __init__(
        self, dim: int, heads: int, window: int, t: int, mlp_ratio: int, drop: float, attn_drop: float
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden_dim {dim} must be a multiple of num_heads {heads}")
        self.heads, self.window, self.attn_p = heads, window, attn_drop
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(drop)
        self.rel_bias = nn.Parameter(torch.zeros(heads, 2 * t - 1))
        idx = relative_index(t)
        self.register_buffer("rel_index", idx, persistent=False)
        band = (idx - (t - 1)).abs() <= window
        self.register_buffer("band", torch.where(band, 0.0, float("-inf")), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, E]
        b, t, e = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, h, e // h).permute(2, 0, 3, 1, 4)  # [B, H, T, e/H]
        bias = self.rel_bias[:, self.rel_index] + self.band  # [H, T, T]
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_p if self.training else 0.0
        )
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, e)))
        return x + self.drop(self.mlp(self.norm2(x)))


class ConvBlock(nn.Module):
    """Residual [depthwise conv, LayerNorm, pointwise MLP] (ConvNeXt-style, 1-D)."""

    def __init__(self, dim: int, kernel: int, mlp_ratio: int, drop: float) -> None:
        super().__init__()
        self.dw = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, E]
        y = self.dw(x.transpose(1, 2)).transpose(1, 2)
        return x + self.drop(self.mlp(self.norm(y)))


class TemporalBackbone(nn.Module):
    """``local`` / ``conv`` backbones: conv stem, optional position code, blocks, final LayerNorm.

    x: [B, C, T] -> [B, E, T].
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        e, t = cfg.embed_dim, cfg.num_snippets
        self.window_norm = cfg.window_norm
        self.in_drop = nn.Dropout(cfg.input_dropout)
        self.stem = conv_stack(cfg.feat_dim, e, cfg.stem_layers)
        if cfg.abs_pos:
            self.register_buffer("pos", sinusoid(t, e)[None], persistent=False)  # [1, E, T]
        else:
            self.pos = None
        if cfg.backbone == "local":
            self.blocks = nn.ModuleList(
                LocalAttentionBlock(e, cfg.num_heads, cfg.attn_window, t, cfg.mlp_ratio, cfg.embed_dropout,
                                    cfg.attn_dropout)
                for _ in range(cfg.num_layers)
            )  # fmt: skip
        else:
            self.blocks = nn.ModuleList(
                ConvBlock(e, cfg.conv_kernel, cfg.mlp_ratio, cfg.embed_dropout) for _ in range(cfg.num_layers)
            )
        self.norm = nn.LayerNorm(e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T]
        if self.window_norm:  # per window and channel: zero mean, unit variance over the T snippets
            x = (x - x.mean(dim=2, keepdim=True)) / (x.std(dim=2, keepdim=True, unbiased=False) + 1e-3)
        z = self.stem(self.in_drop(x))  # [B, E, T]
        if self.pos is not None:
            z = z + self.pos
        z = z.transpose(1, 2)  # [B, T, E]
        for blk in self.blocks:
            z = blk(z)
        return self.norm(z).transpose(1, 2)  # [B, E, T]


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """The snippet embedding of ``cfg.backbone``: ``[B, C, T] -> [B, E, T]``."""
    if cfg.backbone == "spot":
        return SnippetEmbedding(cfg)
    return TemporalBackbone(cfg)


class SPOT(nn.Module):
    """SPOT: backbone + classification head + instance-mask head (+ pretext and reconstruction)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, t, k, e = cfg.feat_dim, cfg.num_snippets, cfg.num_classes, cfg.embed_dim
        self.embedding = build_backbone(cfg)
        if cfg.cls_head == "linear":
            self.classifier = nn.Conv1d(e, k + 1, kernel_size=1)
        else:
            self.cls_stack = conv_stack(e, e, cfg.head_layers)
            self.classifier = nn.Conv1d(e, k + 1, kernel_size=3, padding=1)
        self.mask_conv = nn.Conv1d(e, cfg.mask_hidden, kernel_size=3, padding=1)
        if cfg.mask_head == "spot":
            self.mask_out = nn.Conv1d(cfg.mask_hidden, t, kernel_size=1, bias=False)
        elif cfg.mask_head == "offset":
            self.mask_box = nn.Conv1d(cfg.mask_hidden, 2, kernel_size=1)
            self.register_buffer("mask_pos", torch.arange(t, dtype=torch.float32), persistent=False)
        else:
            self.mask_q = nn.Conv1d(cfg.mask_hidden, cfg.mask_dim, kernel_size=1)
            self.mask_k = nn.Conv1d(cfg.mask_hidden, cfg.mask_dim, kernel_size=1)
            self.mask_rel_bias = nn.Parameter(torch.zeros(2 * t - 1))
            self.register_buffer("mask_rel_index", relative_index(t), persistent=False)
        self.order_conv = nn.Conv1d(e, 1, kernel_size=3, padding=1)
        self.order_drop = nn.Dropout(cfg.pretext_dropout)
        self.order_fc = nn.Linear(t, 2)
        if cfg.backbone != "spot":
            self.recon = nn.Conv1d(e, c, kernel_size=1)

    # ------------------------------------------------------------------ pieces
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Snippet embedding. x: [B, C, T] -> [B, E, T]."""
        self._check_input(x)
        if self.cfg.backbone == "spot":
            return self.embedding(x.transpose(1, 2)).transpose(1, 2)
        return self.embedding(x)

    def reconstruct(self, emb: torch.Tensor) -> torch.Tensor:
        """The embedding mapped back to the input channels: [B, E, T] -> [B, C, T] (``spot``: itself)."""
        return emb if self.cfg.backbone == "spot" else self.recon(emb)

    def classify(self, emb: torch.Tensor) -> torch.Tensor:
        """Per-snippet class logits. emb: [B, E, T] -> [B, K+1, T]."""
        if self.cfg.cls_head == "linear":
            return self.classifier(emb)
        return self.classifier(self.cls_stack(emb))

    def mask_hidden(self, emb: torch.Tensor) -> torch.Tensor:
        """The mask head's hidden map after the ReLU. emb: [B, E, T] -> h: [B, hidden, T]."""
        return F.relu(self.mask_conv(emb))

    @property
    def mask_weight(self) -> torch.Tensor:
        """W2 of the ``spot`` mask head's last 1x1 conv: [T, hidden]."""
        if self.cfg.mask_head != "spot":
            raise AttributeError("mask_weight exists only for model.mask_head = 'spot'")
        return self.mask_out.weight.squeeze(-1)

    def mask_qk(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pairwise`` head: queries and keys from h [B, hidden, T], each [B, dq, T], q pre-scaled
        by 1/sqrt(dq)."""
        return self.mask_q(h) * (1.0 / math.sqrt(self.cfg.mask_dim)), self.mask_k(h)

    def mask_bias(self) -> torch.Tensor:
        """``pairwise`` head: the relative-offset bias as a [T, T] map, ``b(j - t)`` at [t, j]."""
        return self.mask_rel_bias[self.mask_rel_index]

    def mask_extent(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``offset`` head: each snippet's distances to its instance's start and end, in snippets,
        from h [B, hidden, T]: ``(ds, de)``, each [B, T]."""
        box = self.mask_box(h) * OFFSET_SCALE  # box: [B, 2, T]
        return box[:, 0], box[:, 1]

    def mask_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Mask logits from the hidden map. h: [B, hidden, T] -> [B, T(row), T(col)]."""
        if self.cfg.mask_head == "spot":
            return self.mask_out(h)
        if self.cfg.mask_head == "offset":
            ds, de = self.mask_extent(h)
            return offset_logits(ds, de, self.mask_pos[: h.shape[2]], self.mask_pos[: h.shape[2]])
        q, k = self.mask_qk(h)
        return torch.matmul(q.transpose(1, 2), k) + self.mask_bias()

    def heads(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """emb: [B, E, T] -> (class logits [B, K+1, T], mask [B, T, T])."""
        logits = self.classify(emb)  # [B, K+1, T]
        mask = torch.sigmoid(self.mask_logits(self.mask_hidden(emb)))  # [B, T(row), T(col)]
        return logits, mask

    def clip_order(self, emb: torch.Tensor) -> torch.Tensor:
        """Pretext clip-order logits. emb: [B, E, T] -> [B, 2]."""
        z = F.relu(self.order_conv(emb)).flatten(1)  # [B, T]
        return self.order_fc(self.order_drop(z))

    # ------------------------------------------------------------------ forwards
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference forward. x: [B, C, T] -> (class logits [B, K+1, T], mask [B, T, T])."""
        return self.heads(self.embed(x))

    def head_outputs(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`heads` as a dict ``{"logits", "mask"}``, plus the ``offset`` head's extents
        ``"extent"`` [B, 2, T] (ds, de) for their own loss (losses.extent_loss)."""
        if self.cfg.mask_head == "offset":
            logits, h = self.classify(emb), self.mask_hidden(emb)
            ds, de = self.mask_extent(h)
            pos = self.mask_pos[: h.shape[2]]
            mask = torch.sigmoid(offset_logits(ds, de, pos, pos))  # = mask_logits(h), the conv run once
            return {"logits": logits, "mask": mask, "extent": torch.stack([ds, de], 1)}
        logits, mask = self.heads(emb)
        return {"logits": logits, "mask": mask}

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training forward: :meth:`head_outputs`, the embedding [B, E, T], the clip-order logits [B, 2]."""
        emb = self.embed(x)
        return {**self.head_outputs(emb), "embedding": emb, "clip_order": self.clip_order(emb)}

    def _check_input(self, x: torch.Tensor) -> None:
        c, t = self.cfg.feat_dim, self.cfg.num_snippets
        if x.dim() != 3 or x.shape[1] != c or x.shape[2] != t:
            raise ValueError(f"SPOT expects features [B, C={c}, T={t}], got {list(x.shape)}")
