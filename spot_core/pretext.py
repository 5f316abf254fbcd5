"""Self-supervised pieces of SPOT (DESIGN.md section 4): random-foreground inputs, feature
reconstruction and clip order. Vectorised over the batch; every random draw takes a
``torch.Generator`` so a run is reproducible and the global RNG (dropout) is left alone.

Shapes: B windows, C channels, T snippets. ``valid`` is ``[B, T]`` bool (False on padding).

- :func:`random_foreground`: the pretext input of the pretraining stage. Each window keeps one or
  two random segments of at least ``min_len`` snippets, copied from its per-channel min-max
  normalised features; everything else is zero. The target is the T x T mask of those segments
  (``mask[i, j] = 1`` when i and j lie in the same segment), what the mask head learns to predict.
- :func:`drop_input` + :func:`reconstruction_loss`: MSE between the snippet embedding of a corrupted
  input and the clean input.
- :func:`swap_halves` + :func:`clip_order_loss`: half of the batch has its two temporal halves
  swapped; the 2-way clip-order head tells which (binary cross entropy as 2-class CE).

Decisions (docs/deviations.md):
- Segments are drawn inside the window's real snippets: length uniform in
  ``[min_len, max(min_len, round(max_frac * valid))]``, start uniform in ``[0, valid - length]``.
  Two segments that overlap or touch form one contiguous foreground run, which is one instance of
  the target (one block), since nothing in the input separates them.
- Min-max normalisation is per window and channel over the real snippets,
  ``(x - min) / (max - min + eps)``.
- Corruption zeroes entries without rescaling the survivors (``F.dropout`` would scale them by
  ``1 / (1 - p)``, which the reconstruction target does not have).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rand(shape: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) drawn on the generator's device, moved to ``like``'s device."""
    dev = gen.device if gen is not None else like.device
    return torch.rand(shape, generator=gen, device=dev).to(like.device)


def minmax_normalise(x: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Per window and channel min-max normalisation over the real snippets. x: [B, C, T] -> [B, C, T]."""
    if valid is None:
        lo = x.amin(dim=2, keepdim=True)
        hi = x.amax(dim=2, keepdim=True)
    else:
        v = valid.unsqueeze(1)  # [B, 1, T]
        lo = x.masked_fill(~v, float("inf")).amin(dim=2, keepdim=True)
        hi = x.masked_fill(~v, float("-inf")).amax(dim=2, keepdim=True)
        lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))  # windows with no real snippet
        hi = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi))
    out = (x - lo) / (hi - lo + eps)
    return out if valid is None else out * valid.unsqueeze(1).to(x.dtype)


def runs_mask(fg: torch.Tensor) -> torch.Tensor:
    """Block mask of the contiguous runs of ``fg``. fg: [B, T] bool -> [B, T, T] float,
    1 where row and column snippets are both foreground and in the same run."""
    start = fg & ~F.pad(fg, (1, 0))[:, :-1]  # [B, T] first snippet of each run
    run_id = torch.cumsum(start.long(), dim=1) * fg.long()  # 0 on background
    same = run_id.unsqueeze(2) == run_id.unsqueeze(1)
    both = fg.unsqueeze(2) & fg.unsqueeze(1)
    return (same & both).float()


def random_segments(
    valid_len: torch.Tensor,
    num_snippets: int,
    *,
    min_len: int = 5,
    max_frac: float = 0.5,
    max_segments: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One to ``max_segments`` random segments per window. valid_len: [B] long -> fg [B, T] bool."""
    b = valid_len.shape[0]
    dev = valid_len.device
    t = torch.arange(num_snippets, device=dev)
    vl = valid_len.clamp(min=1).float()  # [B]
    lo = torch.minimum(torch.full_like(vl, float(min_len)), vl)
    hi = torch.maximum(lo, torch.round(max_frac * vl))
    u = _rand((b, 3, max_segments), vl, generator)  # count, length, start draws
    count = 1 + (u[:, 0, 0] * max_segments).long().clamp(max=max_segments - 1)  # [B] in 1..max
    length = lo.unsqueeze(1) + torch.floor(u[:, 1] * (hi - lo + 1).unsqueeze(1))  # [B, S]
    length = torch.minimum(length, hi.unsqueeze(1))
    start = torch.floor(u[:, 2] * (vl.unsqueeze(1) - length + 1))  # [B, S]
    used = torch.arange(max_segments, device=dev).unsqueeze(0) < count.unsqueeze(1)  # [B, S]
    tt = t.view(1, 1, -1).float()
    inside = (tt >= start.unsqueeze(2)) & (tt < (start + length).unsqueeze(2)) & used.unsqueeze(2)
    return inside.any(dim=1)  # [B, T]


def random_foreground(
    x: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    min_len: int = 5,
    max_frac: float = 0.5,
    max_segments: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pretext "random foreground" input.

    x: [B, C, T], valid: [B, T] bool. Returns ``(x_fg [B, C, T], mask_target [B, T, T],
    fg [B, T] bool)``: ``x_fg`` is zero except on ``fg``, where it holds the min-max normalised
    features; ``mask_target`` is :func:`runs_mask` of ``fg``.
    """
    b, _, t = x.shape
    if valid is None:
        valid = torch.ones(b, t, dtype=torch.bool, device=x.device)
    fg = random_segments(
        valid.sum(1),
        t,
        min_len=min_len,
        max_frac=max_frac,
        max_segments=max_segments,
        generator=generator,
    )
    fg = fg & valid
    x_fg = minmax_normalise(x, valid) * fg.unsqueeze(1).to(x.dtype)
    return x_fg, runs_mask(fg), fg


def drop_input(
    x: torch.Tensor, p: float, mode: str = "element", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero parts of x: [B, C, T] with probability p (no rescaling).

    ``mode``: ``"element"`` single entries, ``"snippet"`` whole snippets (all channels at one t; the
    original's ``dropout2d`` on the ``[B, T, C]`` layout), ``"channel"`` whole channels of a window.
    """
    if p <= 0.0:
        return x
    b, c, t = x.shape
    shape = {"element": (b, c, t), "snippet": (b, 1, t), "channel": (b, c, 1)}.get(mode)
    if shape is None:
        raise ValueError(f"drop mode must be 'element', 'snippet' or 'channel', got {mode!r}")
    keep = _rand(shape, x, generator) >= p
    return x * keep.to(x.dtype)


def reconstruction_loss(
    embedding: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE between the snippet embedding and the clean input over the real snippets.

    embedding, target: [B, C, T]; valid: [B, T] bool. Scalar (0 when no snippet is real).
    """
    se = (embedding.float() - target.float()).pow(2).mean(dim=1)  # [B, T]
    if valid is None:
        return se.mean()
    w = valid.to(se.dtype)
    return (se * w).sum() / w.sum().clamp_min(1.0)


def swap_halves(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap the two temporal halves of a random half (``B // 2``) of the batch.

    x: [B, C, T] -> ``(x_order [B, C, T], label [B] long)``, label 1 where swapped, 0 in order.
    The swapped window is ``cat(x[..., T//2:], x[..., :T//2])`` (same length for odd T).
    """
    b, _, t = x.shape
    perm = torch.argsort(_rand((b,), x, generator))
    label = torch.zeros(b, dtype=torch.long, device=x.device)
    label[perm[: b // 2]] = 1
    swapped = torch.cat([x[..., t // 2 :], x[..., : t // 2]], dim=2)
    out = torch.where(label.view(b, 1, 1).bool(), swapped, x)
    return out, label


def clip_order_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy of the 2-way clip-order head. logits: [B, 2], label: [B] long."""
    return F.cross_entropy(logits.float(), label)
