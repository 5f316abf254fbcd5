"""Contrastive boundary refinement (DESIGN.md section 4), vectorised over batch and snippets.

Shapes: B windows, C channels, T snippets, K foreground classes (class K is background);
``valid`` is ``[B, T]`` bool (False on padding).

1. **Easy snippets** (:func:`easy_snippets`): per window, the foreground class is the most frequent
   per-snippet argmax over the K foreground classes (the original's ``torch.mode``); a random 30% of
   the snippets is dropped, then the top ``k_easy`` snippets by that class's probability are the easy
   foreground and the top ``k_easy`` by the background probability the easy background.
2. **Hard snippets** (:func:`hard_snippets`): what "the binarised mask" is for a snippet sequence:
   the mask head's *diagonal* ``m[t, t]`` (:func:`foreground_profile`), the model's probability that
   snippet t is foreground (the target's diagonal is exactly the foreground indicator). It is
   binarised at its per-window median over the real snippets (``>=``). With kornia's 1-D
   morphology (kernels of ones of shape ``[1, k]`` on ``[B, 1, 1, T]``, geodesic border: the window
   edge is not an action boundary), the inner band is ``erosion_4 - erosion_8`` (foreground just
   inside a boundary) and the outer band ``dilation_8 - dilation_4`` (background just outside).
   The hard snippets are the top ``k_hard`` of each band by the profile; a band with fewer
   snippets contributes only the snippets it has (the original also picked zero-score snippets
   outside the band).
3. **InfoNCE** (:func:`refinement_loss`, temperature 0.07): the mean embedding of the hard
   foreground is pulled toward the mean of the easy foreground and pushed from each easy background
   snippet; symmetrically for the hard background. Embeddings are L2-normalised after averaging
   (as the original). A window without a hard band or without easy snippets on either side
   contributes nothing (all-background or all-foreground windows give a loss of 0, never NaN).

Mining picks indices only (no gradient through the scores); the gradient flows into the embeddings.
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F

_NEG = -1.0e4  # a logit that softmax turns into 0 without the NaN gradients of -inf


def _rand(shape: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    dev = gen.device if gen is not None else like.device
    return torch.rand(shape, generator=gen, device=dev).to(like.device)


def foreground_profile(mask: torch.Tensor) -> torch.Tensor:
    """The mask head's diagonal: [B, T, T] -> [B, T], P(snippet t is foreground)."""
    return torch.diagonal(mask, dim1=1, dim2=2)


def _morph(x: torch.Tensor, size: int, op: str) -> torch.Tensor:
    """1-D binary erosion / dilation of x: [B, T] float with a size-``size`` kernel of ones."""
    kernel = torch.ones(1, size, dtype=x.dtype, device=x.device)
    fn = kornia.morphology.erosion if op == "erosion" else kornia.morphology.dilation
    return fn(x[:, None, None, :], kernel, border_type="geodesic")[:, 0, 0, :]


def boundary_bands(
    profile: torch.Tensor, valid: torch.Tensor | None = None, inner: int = 4, outer: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner and outer boundary bands of the median-binarised profile.

    profile: [B, T] in [0, 1]; valid: [B, T] bool. Returns ``(inner_band, outer_band)`` [B, T] bool:
    ``erosion_inner - erosion_outer`` and ``dilation_outer - dilation_inner``, inside the real snippets.
    """
    p = profile.detach().float()
    if valid is None:
        valid = torch.ones_like(p, dtype=torch.bool)
    med = torch.nanmedian(p.masked_fill(~valid, float("nan")), dim=1, keepdim=True).values  # [B, 1]
    fg = (p >= med) & valid
    # padding counts as foreground for the erosion (the end of a video is no boundary to erode from)
    # and as background for the dilation; both bands are cut back to the real snippets.
    fg_e = (fg | ~valid).float()
    fg_d = fg.float()
    inner_band = (_morph(fg_e, inner, "erosion") - _morph(fg_e, outer, "erosion")) > 0.5
    outer_band = (_morph(fg_d, outer, "dilation") - _morph(fg_d, inner, "dilation")) > 0.5
    return inner_band & valid, outer_band & valid


def _top_mean(
    emb: torch.Tensor, score: torch.Tensor, allowed: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k allowed snippets by score. emb: [B, T, C], score/allowed: [B, T].

    Returns ``(mean [B, C], selected [B, k, C], weight [B, k] float, count [B])``: ``weight`` is 1 on
    selected snippets that are allowed; ``mean`` is their average (zeros when none).
    """
    k = min(k, score.shape[1])
    s = score.detach().float().masked_fill(~allowed, float("-inf"))
    idx = s.topk(k, dim=1).indices  # [B, k]
    w = allowed.gather(1, idx).to(emb.dtype)  # [B, k]
    sel = emb.gather(1, idx.unsqueeze(-1).expand(-1, -1, emb.shape[2]))  # [B, k, C]
    count = w.sum(1)
    mean = (sel * w.unsqueeze(-1)).sum(1) / count.clamp_min(1.0).unsqueeze(-1)
    return mean, sel, w, count


def easy_snippets(
    logits: torch.Tensor,
    embedding: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    k: int = 10,
    drop: float = 0.3,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Easy foreground / background snippets.

    logits: [B, K+1, T], embedding: [B, C, T]. Returns ``{"fg_mean", "bg_mean" [B, C], "fg", "bg"
    [B, k, C], "fg_w", "bg_w" [B, k], "fg_n", "bg_n" [B]}``.
    """
    b, k1, t = logits.shape
    if valid is None:
        valid = torch.ones(b, t, dtype=torch.bool, device=logits.device)
    prob = logits.detach().float().softmax(dim=1)  # [B, K+1, T]
    arg = prob[:, :-1].argmax(dim=1)  # [B, T] best foreground class per snippet
    votes = (F.one_hot(arg, k1 - 1).float() * valid.unsqueeze(-1).float()).sum(1)  # [B, K]
    cls = votes.argmax(dim=1)  # [B] most frequent (ties: lowest index)
    fg_score = prob.gather(1, cls.view(b, 1, 1).expand(b, 1, t)).squeeze(1)  # [B, T]
    bg_score = prob[:, -1]
    keep = (_rand((b, t), logits, generator) >= drop) & valid
    emb = embedding.transpose(1, 2)  # [B, T, C]
    fg_mean, fg, fg_w, fg_n = _top_mean(emb, fg_score, keep, k)
    bg_mean, bg, bg_w, bg_n = _top_mean(emb, bg_score, keep, k)
    return {"fg_mean": fg_mean, "bg_mean": bg_mean, "fg": fg, "bg": bg, "fg_w": fg_w, "bg_w": bg_w,
            "fg_n": fg_n, "bg_n": bg_n}  # fmt: skip


def hard_snippets(
    mask: torch.Tensor,
    embedding: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    k: int = 20,
    inner: int = 4,
    outer: int = 8,
) -> dict[str, torch.Tensor]:
    """Hard foreground (inner band) / background (outer band) snippets, top ``k`` by mask score.

    mask: [B, T, T], embedding: [B, C, T]. Returns ``{"fg_mean", "bg_mean" [B, C], "fg_n", "bg_n" [B]}``.
    """
    prof = foreground_profile(mask)
    band_in, band_out = boundary_bands(prof, valid, inner, outer)
    emb = embedding.transpose(1, 2)
    fg_mean, _, _, fg_n = _top_mean(emb, prof, band_in, k)
    bg_mean, _, _, bg_n = _top_mean(emb, prof, band_out, k)
    return {"fg_mean": fg_mean, "bg_mean": bg_mean, "fg_n": fg_n, "bg_n": bg_n}


def info_nce(
    query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, neg_weight: torch.Tensor, tau: float
) -> torch.Tensor:
    """Per-window InfoNCE. query, positive: [B, C]; negatives: [B, N, C]; neg_weight: [B, N] (0 = absent).

    Returns [B]: ``-log softmax([q.p, q.n_1, ...] / tau)[0]`` with L2-normalised vectors.
    """
    q = F.normalize(query.float(), dim=-1)
    p = F.normalize(positive.float(), dim=-1)
    n = F.normalize(negatives.float(), dim=-1)
    l_pos = (q * p).sum(-1, keepdim=True) / tau  # [B, 1]
    l_neg = torch.einsum("bc,bnc->bn", q, n) / tau  # [B, N]
    l_neg = l_neg.masked_fill(neg_weight <= 0, _NEG)
    logits = torch.cat([l_pos, l_neg], dim=1)
    return -logits.log_softmax(dim=1)[:, 0]


def refinement_loss(
    logits: torch.Tensor,
    mask: torch.Tensor,
    embedding: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    temperature: float = 0.07,
    k_easy: int = 10,
    k_hard: int = 20,
    easy_drop: float = 0.3,
    inner: int = 4,
    outer: int = 8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Contrastive boundary refinement loss (scalar), the mean over windows that have the snippets.

    logits: [B, K+1, T], mask: [B, T, T], embedding: [B, C, T], valid: [B, T] bool.
    ``hard fg -> easy fg`` against easy bg, plus ``hard bg -> easy bg`` against easy fg.
    """
    easy = easy_snippets(logits, embedding, valid, k=k_easy, drop=easy_drop, generator=generator)
    hard = hard_snippets(mask, embedding, valid, k=k_hard, inner=inner, outer=outer)
    both_easy = (easy["fg_n"] > 0) & (easy["bg_n"] > 0)
    ok_fg = (both_easy & (hard["fg_n"] > 0)).float()
    ok_bg = (both_easy & (hard["bg_n"] > 0)).float()
    l_fg = info_nce(hard["fg_mean"], easy["fg_mean"], easy["bg"], easy["bg_w"], temperature)
    l_bg = info_nce(hard["bg_mean"], easy["bg_mean"], easy["fg"], easy["fg_w"], temperature)
    loss_fg = (l_fg * ok_fg).sum() / ok_fg.sum().clamp_min(1.0)
    return loss_fg + (l_bg * ok_bg).sum() / ok_bg.sum().clamp_min(1.0)
