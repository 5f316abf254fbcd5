"""The fused detection path: features in, detections out, without the ``[B, T, T]`` mask and
without a host round trip (DESIGN.md section 6).

:func:`fused_detect` equals :func:`spot_core.decode.detect` applied to ``model(x)``:

1. the model's embedding, class logits and the mask head's hidden map ``h [B, H, T]`` (the mask
   itself is never formed);
2. steps 1-3 of decode (:func:`spot_core.decode_steps.decode_inputs`);
3. step 4 in the fused Triton kernel (:func:`kernels.mask_decode.mask_decode`), which also writes
   the k top mask rows ``[B, k, T]`` (k = 10 of T = 100 rows on ANet);
4. step 5 (class-activation proposals) as vectorised torch ops on those rows
   (:func:`spot_core.decode_steps.class_proposals`, shared with the reference decode);
5. step 6, deduplication and batched Soft-NMS in its Triton kernel (:func:`kernels.soft_nms.soft_nms`).

Every step is a fixed-size tensor op on the input's device: on CUDA nothing synchronises with the
host (no range or NaN checks; the kernels guard indices on the device), so the whole path can be
captured in a CUDA graph. On CPU (or with ``backend="reference"``) the same steps run the PyTorch
references, which makes the function testable everywhere.

Differences from ``detect(*model(x))``: the mask rows come from a float32 dot product in the
kernel's summation order rather than the 1x1 convolution's, so mask values (and with them scores)
agree to float32 rounding and a run boundary can differ only where a mask value lies within that
rounding of a threshold; ``detect`` rejects NaN inputs, this path treats NaN mask values as off.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kernels._triton import Backend
from kernels.mask_decode import mask_decode
from kernels.soft_nms import soft_nms
from spot_core import decode_steps as steps
from spot_core.config import DecodeConfig
from spot_core.decode import Detections
from spot_core.decode_steps import Proposals
from spot_core.model import SPOT, offset_logits

__all__ = [
    "detect_from_hidden",
    "detect_from_pairwise",
    "detect_from_rows",
    "offset_rows",
    "fused_detect",
    "pairwise_rows",
    "proposals_from_hidden",
]


@torch.no_grad()
def proposals_from_hidden(
    logits: Tensor,
    h: Tensor,
    w2: Tensor,
    cfg: DecodeConfig,
    *,
    video_class: Tensor | None = None,
    video_score: Tensor | None = None,
    valid_len: Tensor | None = None,
    backend: Backend = "auto",
) -> Proposals:
    """Decode steps 1-6 (:func:`spot_core.decode.decode_windows`' proposals) from the class logits
    ``[B, K+1, T]`` and the mask head's hidden map ``h [B, H, T]`` with its last-layer weight
    ``w2 [T, H]``, without forming the mask."""
    if logits.dim() != 3 or h.dim() != 3 or logits.shape[0] != h.shape[0] or logits.shape[2] != h.shape[2]:
        raise ValueError(
            f"fused detect: logits [B, K+1, T] and h [B, H, T] must agree on B and T, got "
            f"{tuple(logits.shape)} and {tuple(h.shape)}"
        )
    B, _, T = logits.shape
    dev = logits.device
    d = steps.decode_inputs(
        logits, cfg, video_class=video_class, video_score=video_score, valid_len=valid_len
    )
    rows = torch.empty(B, d.top.shape[1], T, dtype=torch.float32, device=dev)  # the k top mask rows
    mp = mask_decode(
        h, w2, d.top, d.p, cfg, labels=steps.row_labels(d), scale=d.ws, valid_len=valid_len, rows_out=rows,
        backend=backend, check_ranges=dev.type != "cuda",
    )  # fmt: skip
    cprops = steps.class_proposals(d.s, d.c, rows, d.top, d.top_ok, d.valid_t, d.wc, cfg)
    return steps.combine_proposals(Proposals(*mp), cprops, d.ws)


@torch.no_grad()
def detect_from_hidden(
    logits: Tensor,
    h: Tensor,
    w2: Tensor,
    cfg: DecodeConfig,
    *,
    video_class: Tensor | None = None,
    video_score: Tensor | None = None,
    valid_len: Tensor | None = None,
    backend: Backend = "auto",
) -> Detections:
    """``detect`` from the class logits ``[B, K+1, T]`` and the mask head's hidden map ``h [B, H, T]``
    with its last-layer weight ``w2 [T, H]`` (module docstring)."""
    props = proposals_from_hidden(
        logits, h, w2, cfg,
        video_class=video_class, video_score=video_score, valid_len=valid_len, backend=backend,
    )  # fmt: skip
    return _suppress(props, logits, cfg, backend)


def pairwise_rows(q: Tensor, k: Tensor, rel_bias: Tensor, top: Tensor) -> Tensor:
    """The top rows of the ``pairwise`` head's mask without the ``[B, T, T]`` map.

    ``q``, ``k`` ``[B, dq, T]`` (q pre-scaled, :meth:`SPOT.mask_qk`), ``rel_bias`` ``[2T - 1]``,
    ``top`` ``[B, k]``: ``[B, k, T]`` float32 rows
    ``rows[b, i, j] = sigmoid(q[b, :, top_i] . k[b, :, j] + rel_bias[j - top_i + T - 1])``
    (a batched matmul of k rows instead of T).
    """
    B, dq, T = q.shape
    q_top = q.gather(2, top[:, None, :].expand(B, dq, top.shape[1]))  # q_top: [B, dq, k]
    logit = torch.matmul(q_top.transpose(1, 2).float(), k.float())  # logit: [B, k, T]
    off = torch.arange(T, device=q.device)[None, None, :] - top[:, :, None] + (T - 1)  # off: [B, k, T]
    return torch.sigmoid(logit + rel_bias.float()[off])


def offset_rows(ds: Tensor, de: Tensor, top: Tensor) -> Tensor:
    """The top rows of the ``offset`` head's mask without the ``[B, T, T]`` map: ``ds``, ``de``
    ``[B, T]`` (:meth:`SPOT.mask_extent`), ``top`` ``[B, k]`` -> ``[B, k, T]`` float32 soft boxes."""
    T = ds.shape[1]
    ds_top, de_top = ds.float().gather(1, top), de.float().gather(1, top)  # [B, k] each
    cols = torch.arange(T, device=ds.device)
    return torch.sigmoid(offset_logits(ds_top, de_top, top, cols))


@torch.no_grad()
def detect_from_rows(
    logits: Tensor,
    rows_of: Callable[[Tensor], Tensor],
    cfg: DecodeConfig,
    *,
    video_class: Tensor | None = None,
    video_score: Tensor | None = None,
    valid_len: Tensor | None = None,
    backend: Backend = "auto",
) -> Detections:
    """``detect`` for a head whose top rows ``rows_of(top [B, k]) -> [B, k, T]`` are cheap to form
    (``pairwise``, ``offset``): steps 4-5 as torch ops on the rows, dedup and Soft-NMS in its kernel."""
    d = steps.decode_inputs(
        logits, cfg, video_class=video_class, video_score=video_score, valid_len=valid_len
    )
    rows = rows_of(d.top)  # rows: [B, k, T]
    mp = steps.mask_proposals(rows, d.top, d.top_ok, d.valid_t, d.p, steps.row_labels(d), d.ws, cfg)
    cprops = steps.class_proposals(d.s, d.c, rows, d.top, d.top_ok, d.valid_t, d.wc, cfg)
    props = steps.combine_proposals(Proposals(*mp), cprops, d.ws)
    return _suppress(props, logits, cfg, backend)


@torch.no_grad()
def detect_from_pairwise(
    logits: Tensor,
    q: Tensor,
    k: Tensor,
    rel_bias: Tensor,
    cfg: DecodeConfig,
    *,
    video_class: Tensor | None = None,
    video_score: Tensor | None = None,
    valid_len: Tensor | None = None,
    backend: Backend = "auto",
) -> Detections:
    """``detect`` for the ``pairwise`` mask head from the class logits ``[B, K+1, T]``, its queries
    and keys ``[B, dq, T]`` and offset bias ``[2T - 1]``: the k top rows by :func:`pairwise_rows`,
    steps 4-5 as in the reference decode, dedup and Soft-NMS in its kernel. Step 4 runs as torch
    ops on the rows here (the fused mask kernel is written for the ``spot`` head's ``W2 @ h``)."""
    return detect_from_rows(
        logits, lambda top: pairwise_rows(q, k, rel_bias, top), cfg,
        video_class=video_class, video_score=video_score, valid_len=valid_len, backend=backend,
    )  # fmt: skip


def _suppress(props: Proposals, logits: Tensor, cfg: DecodeConfig, backend: Backend) -> Detections:
    """Dedup and batched Soft-NMS of each window's proposals (the last step of both heads' paths)."""
    T, K = logits.shape[2], logits.shape[1] - 1
    keep = steps.dedup(props, T, K)
    seg, sc, lab, val, _ = soft_nms(
        props.segments, props.scores, props.labels, keep,
        sigma=cfg.nms_sigma, max_detections=cfg.max_detections, class_aware=cfg.nms_class_aware,
        backend=backend,
    )  # fmt: skip
    return Detections(seg, sc, lab, val)


@torch.no_grad()
def fused_detect(
    model: SPOT,
    x: Tensor,
    cfg: DecodeConfig,
    *,
    video_class: Tensor | None = None,
    video_score: Tensor | None = None,
    valid_len: Tensor | None = None,
    backend: Backend = "auto",
) -> Detections:
    """Features ``x [B, C, T]`` -> ``[B, D]`` detections through the fused path (module docstring).

    Runs under any autocast the caller set (bf16 on GPU: the hidden map reaches the kernel in
    bf16 and is upcast there)."""
    emb = model.embed(x)
    logits = model.classify(emb)
    h = model.mask_hidden(emb)
    if model.cfg.mask_head == "pairwise":
        q, k = model.mask_qk(h)
        return detect_from_pairwise(
            logits, q, k, model.mask_rel_bias, cfg,
            video_class=video_class, video_score=video_score, valid_len=valid_len, backend=backend,
        )  # fmt: skip
    if model.cfg.mask_head == "offset":
        ds, de = model.mask_extent(h)
        return detect_from_rows(
            logits, lambda top: offset_rows(ds, de, top), cfg,
            video_class=video_class, video_score=video_score, valid_len=valid_len, backend=backend,
        )  # fmt: skip
    return detect_from_hidden(
        logits, h, model.mask_weight, cfg,
        video_class=video_class, video_score=video_score, valid_len=valid_len, backend=backend,
    )  # fmt: skip
