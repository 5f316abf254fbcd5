"""Supervised SPOT losses (DESIGN.md section 4), vectorised over batch and snippets.

total = cls_weight * focal_ce + mask_bce_weight * balanced_bce + mask_dice_weight * dice

Deviations from the original code (documented in docs/deviations.md):
- the focal modulation is applied per snippet, ``(1 - p_t)^gamma * CE``, as in the focal-loss paper;
  the original modulated the batch-mean cross entropy by ``exp(-mean CE)``;
- the dice loss is ``1 - (2 sum(p t) + 1) / (sum(p^2) + sum(t^2) + 1)``; the original omitted the 2,
  so its minimum was 0.5 instead of 0;
- padded snippets (a window past the end of a video) are excluded from every term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LossConfig


def focal_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    gamma: float = 2.0,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Focal-modulated cross entropy over K+1 classes.

    logits: [B, K+1, T], target: [B, T] long (K = background), valid: [B, T] bool. The modulation
    ``(1 - p_target)^gamma`` uses the hard target's probability; ``smoothing`` > 0 spreads that much
    of the target mass uniformly over the K+1 classes in the cross entropy (label smoothing).
    """
    ce = F.cross_entropy(logits.float(), target, reduction="none")  # [B, T]
    pt = torch.exp(-ce)
    if smoothing > 0.0:
        ce = F.cross_entropy(logits.float(), target, reduction="none", label_smoothing=smoothing)
    loss = (1.0 - pt).pow(gamma) * ce
    if valid is None:
        return loss.mean()
    w = valid.to(loss.dtype)
    return (loss * w).sum() / w.sum().clamp_min(1.0)


def balanced_bce(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Class-balanced BCE of the original: positives x 0.5r, negatives x 0.5r/(r-1), r = entries/positives.

    pred, target: [B, T, T]; weight: [B, T, T] in {0, 1} selects the entries that count.
    """
    pred = pred.float().clamp(1e-6, 1.0 - 1e-6)
    w = torch.ones_like(pred) if weight is None else weight.float()
    pos = (target > 0.5).float() * w
    neg = (target <= 0.5).float() * w
    num_pos = pos.sum() + 10.0  # smoothing of the original, "in case of nan"
    num_entries = num_pos + neg.sum() + 10.0
    ratio = num_entries / num_pos
    coef_pos = 0.5 * ratio
    coef_neg = 0.5 * ratio / (ratio - 1.0)
    loss = coef_pos * torch.log(pred) * pos + coef_neg * torch.log(1.0 - pred) * neg
    return -loss.sum() / num_entries


def dice_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-window dice loss with squared denominators, mean over the batch. pred, target: [B, T, T]."""
    p = pred.float().flatten(1)
    t = target.float().flatten(1)
    if weight is not None:
        w = weight.float().flatten(1)
        p, t = p * w, t * w
    num = 2.0 * (p * t).sum(1) + 1.0
    den = p.pow(2).sum(1) + t.pow(2).sum(1) + 1.0
    return (1.0 - num / den).mean()


def mask_weight(valid: torch.Tensor) -> torch.Tensor:
    """[B, T] valid snippets -> [B, T, T] entries whose row and column are both valid."""
    v = valid.float()
    return v.unsqueeze(2) * v.unsqueeze(1)


def mask_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None,
    cfg: LossConfig,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask head loss: bce_weight x balanced BCE + dice_weight x dice. pred, target: [B, T, T];
    ``rows`` [B, T] bool (None: every row) restricts the loss to those rows' real entries."""
    w = None if valid is None else mask_weight(valid)
    if rows is not None:
        r = rows.float().unsqueeze(2)
        w = r.expand_as(pred) if w is None else w * r
    return cfg.mask_bce_weight * balanced_bce(pred, target, w) + cfg.mask_dice_weight * dice_loss(
        pred, target, w
    )


def extent_loss(extent: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """GIoU loss of the ``offset`` head's extents against the mask target's instances.

    ``extent`` [B, 2, T]: each snippet's distances (ds, de) to its instance's start and end, in
    snippets; ``target`` [B, T, T] (row t: t's instance block, empty for background). A foreground
    snippet t (``target[t, t]``) of an instance on columns [s, e] wants ds = t - s + 0.5 and
    de = e - t + 0.5 (the box's 0.5 level then runs through the half-snippet around the block).
    Mean over the real foreground snippets; 0 when there is none."""
    T = extent.shape[2]
    tgt = target > 0.5
    fg = tgt.diagonal(dim1=1, dim2=2)  # fg: [B, T]
    if valid is not None:
        fg = fg & valid.bool()
    if not bool(fg.any()):
        return extent.sum() * 0.0
    col = torch.arange(T, device=extent.device)
    t = col.to(extent.dtype)[None, :]
    s = torch.where(tgt, col, T).amin(-1).to(extent.dtype)  # s, e: [B, T] first / last column of row t
    e = torch.where(tgt, col, -1).amax(-1).to(extent.dtype)
    # rows off the foreground (no instance: s = T, e = -1) get a harmless 0.5 / 0.5 target; they are
    # masked out of the mean, but their raw targets can make union 0 and the masked-out 0 / 0 gives a NaN
    # gradient (backward of the division), which once diverged a run (docs/results.md)
    ds_t = torch.where(fg, t - s + 0.5, 0.5)
    de_t = torch.where(fg, e - t + 0.5, 0.5)
    ds, de = extent[:, 0].float(), extent[:, 1].float()
    # both intervals contain t's own position when ds, de >= 0; unclamped, an empty or inverted
    # prediction (ds + de < 0) still has a gradient towards the target (union >= the target's length)
    inter = torch.minimum(ds, ds_t) + torch.minimum(de, de_t)
    union = (ds + de) + (ds_t + de_t) - inter
    hull = torch.maximum(ds, ds_t) + torch.maximum(de, de_t)
    giou = inter / union - (hull - union) / hull
    return (1.0 - giou)[fg].mean()


def _mask_terms(
    out: dict[str, torch.Tensor],
    target: torch.Tensor,
    valid: torch.Tensor | None,
    cfg: LossConfig,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mask loss, plus the extent loss when the head regresses extents (``offset``); ``rows``
    (None: all) restricts both to those rows."""
    msk = mask_loss(out["mask"], target, valid, cfg, rows)
    if "extent" in out and cfg.extent_weight > 0:
        ext_valid = valid if rows is None else (rows if valid is None else rows & valid.bool())
        msk = msk + cfg.extent_weight * extent_loss(out["extent"], target, ext_valid)
    return msk


def supervised_loss(
    out: dict[str, torch.Tensor],
    cls_target: torch.Tensor,
    mask_target: torch.Tensor,
    valid: torch.Tensor | None,
    cfg: LossConfig,
) -> dict[str, torch.Tensor]:
    """The labelled-window loss. Returns ``{"loss", "cls", "mask"}`` (scalars)."""
    cls = focal_cross_entropy(out["logits"], cls_target, valid, cfg.focal_gamma, cfg.label_smoothing)
    msk = _mask_terms(out, mask_target, valid, cfg)
    return {"loss": cfg.cls_weight * cls + msk, "cls": cls.detach(), "mask": msk.detach()}


@torch.no_grad()
def pseudo_targets(
    out: dict[str, torch.Tensor],
    valid: torch.Tensor | None,
    cls_threshold: float = 0.7,
    mask_threshold: float = 0.7,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pseudo-labels of an unlabelled batch from the current model's own (detached) predictions.

    Returns ``(cls_target [B, T] long, cls_keep [B, T] bool, mask_target [B, T, T] float)``:
    the per-snippet argmax over K+1 classes, kept where its probability is ``>= cls_threshold``
    (and the snippet is real); the mask pseudo-target is ``mask >= mask_threshold``.
    """
    prob = out["logits"].detach().float().softmax(dim=1)  # [B, K+1, T]
    conf, cls = prob.max(dim=1)  # [B, T]
    keep = conf >= cls_threshold
    if valid is not None:
        keep = keep & valid
    return cls, keep, (out["mask"].detach() >= mask_threshold).float()


def unlabeled_loss(
    out: dict[str, torch.Tensor],
    valid: torch.Tensor | None,
    cfg: LossConfig,
    cls_threshold: float = 0.7,
    mask_threshold: float = 0.7,
    teacher: dict[str, torch.Tensor] | None = None,
    gate: str = "threshold",
) -> dict[str, torch.Tensor]:
    """The supervised loss terms against :func:`pseudo_targets`. Returns ``{"loss", "cls", "mask",
    "confident"}`` (scalars; ``confident`` is the fraction of real snippets with a kept class).

    The pseudo-targets come from ``teacher`` (e.g. the predictions on the clean input) when given,
    else from ``out`` itself; the loss is always on ``out``.
    Snippets below ``cls_threshold`` are **ignored** by the classification term (weight 0, neither
    foreground nor background); when none is kept the term is 0. ``gate`` ``"threshold"`` (the
    original): the mask term uses every real entry; ``"class"``: only the kept rows, whose targets are
    the thresholded row for a foreground class and an empty row for background (the class decides
    whether a snippet is in an instance, the mask only where the instance ends).
    """
    src = out if teacher is None else teacher
    cls_t, keep, mask_t = pseudo_targets(src, valid, cls_threshold, mask_threshold)
    cls = focal_cross_entropy(out["logits"], cls_t, keep, cfg.focal_gamma, cfg.label_smoothing)
    if gate == "class":
        background = out["logits"].shape[1] - 1
        mask_t = mask_t * (cls_t != background).unsqueeze(2).to(mask_t.dtype)
        msk = _mask_terms(out, mask_t, valid, cfg, rows=keep)
    elif gate == "threshold":
        msk = _mask_terms(out, mask_t, valid, cfg)
    else:
        raise ValueError(f"gate must be 'threshold' or 'class', got {gate!r}")
    n_real = keep.numel() if valid is None else valid.sum().clamp_min(1)
    confident = keep.sum() / n_real
    return {
        "loss": cfg.cls_weight * cls + msk,
        "cls": cls.detach(),
        "mask": msk.detach(),
        "confident": confident.detach().float(),
    }
