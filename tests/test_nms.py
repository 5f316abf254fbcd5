"""Batched Gaussian Soft-NMS (spot_core.nms) against hand-computed values and the plain-Python spec."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spot_core.nms as nms_module
from spot_core.nms import iou_1d, soft_nms, soft_nms_reference


def _t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


# ------------------------------------------------------------------------------------------ iou
@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0.0, 2.0), (1.0, 3.0), 1 / 3),
        ((0.0, 4.0), (1.0, 2.0), 1 / 4),  # nested: the original formula got this wrong
        ((1.0, 2.0), (0.0, 4.0), 1 / 4),
        ((0.0, 1.0), (1.0, 2.0), 0.0),  # touching, end exclusive
        ((0.0, 1.0), (3.0, 5.0), 0.0),
        ((2.0, 5.0), (2.0, 5.0), 1.0),
        ((2.0, 2.0), (2.0, 2.0), 0.0),  # two empty intervals: union 0 -> iou 0
        ((2.0, 2.0), (1.0, 3.0), 0.0),
    ],
)
def test_iou_1d_values(a, b, expected):
    got = iou_1d(_t(a), _t(b))
    assert got.item() == pytest.approx(expected, abs=1e-7)


def test_iou_1d_broadcasts():
    a = _t([[0.0, 2.0]])  # [1, 2]
    b = _t([[0.0, 2.0], [1.0, 3.0], [5.0, 6.0]])  # [3, 2]
    torch.testing.assert_close(iou_1d(a, b), _t([1.0, 1 / 3, 0.0]))
    assert iou_1d(torch.zeros(0, 2), torch.zeros(0, 2)).shape == (0,)


# ------------------------------------------------------------------------------ hand examples
def test_soft_nms_hand_example():
    segs = _t([[[0.0, 10.0], [0.0, 5.0], [20.0, 30.0], [1.0, 10.0]]])
    scores = _t([[0.9, 0.8, 0.7, 0.9]])
    labels = torch.tensor([[0, 0, 1, 0]])
    valid = torch.tensor([[True, True, True, False]])  # the invalid 0.9 never takes part
    sigma = 0.5
    seg, sc, lab, val, idx = soft_nms(segs, scores, labels, valid, sigma=sigma, max_detections=5)
    # pick 0 (0.9); 1 decays by iou 0.5 -> 0.8 exp(-0.25/0.5); 2 (disjoint) stays 0.7
    s1 = 0.8 * math.exp(-0.25 / sigma)  # 0.485 < 0.7
    assert idx.tolist() == [[0, 2, 1, -1, -1]]
    assert val.tolist() == [[True, True, True, False, False]]
    torch.testing.assert_close(sc, _t([[0.9, 0.7, s1, 0.0, 0.0]]))
    assert lab.tolist() == [[0, 1, 0, 0, 0]]
    torch.testing.assert_close(seg[0, :3], _t([[0.0, 10.0], [20.0, 30.0], [0.0, 5.0]]))
    assert seg[0, 3:].abs().sum() == 0


def test_soft_nms_class_aware_vs_agnostic():
    # the second box overlaps the first heavily but has another label
    segs = _t([[[0.0, 10.0], [1.0, 10.0], [0.0, 9.0]]])
    scores = _t([[0.9, 0.8, 0.7]])
    labels = torch.tensor([[0, 1, 0]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    sigma = 0.1
    iou = 0.9
    _, sc_a, _, _, idx_a = soft_nms(segs, scores, labels, valid, sigma=sigma, max_detections=3)
    _, sc_c, _, _, idx_c = soft_nms(
        segs, scores, labels, valid, sigma=sigma, max_detections=3, class_aware=True
    )
    # agnostic: both others decay by exp(-0.81 / 0.1); 0.8 (index 1) then 0.7 decays again by
    # iou([1,10), [0,9)) = 8/10
    d = math.exp(-(iou**2) / sigma)
    assert idx_a.tolist() == [[0, 1, 2]]
    torch.testing.assert_close(
        sc_a, _t([[0.9, 0.8 * d, 0.7 * d * math.exp(-0.64 / sigma)]]), rtol=1e-5, atol=1e-9
    )
    # class-aware: label 1 is untouched by the label-0 pick; the label-0 box is not decayed by it
    assert idx_c.tolist() == [[0, 1, 2]]
    torch.testing.assert_close(sc_c, _t([[0.9, 0.8, 0.7 * d]]), rtol=1e-5, atol=1e-9)


def test_soft_nms_ties_lowest_index_first():
    segs = _t([[[0.0, 1.0], [5.0, 6.0], [10.0, 11.0]]])
    scores = _t([[0.5, 0.5, 0.5]])
    labels = torch.zeros(1, 3, dtype=torch.long)
    valid = torch.ones(1, 3, dtype=torch.bool)
    *_, idx = soft_nms(segs, scores, labels, valid, sigma=0.5, max_detections=3)
    assert idx.tolist() == [[0, 1, 2]]


def test_soft_nms_empty_and_padding():
    for B, N in ((0, 5), (2, 0), (0, 0)):
        out = soft_nms(
            torch.zeros(B, N, 2),
            torch.zeros(B, N),
            torch.zeros(B, N, dtype=torch.long),
            torch.ones(B, N, dtype=torch.bool),
            sigma=0.5,
            max_detections=4,
        )
        assert [tuple(x.shape) for x in out] == [(B, 4, 2), (B, 4), (B, 4), (B, 4), (B, 4)]
        assert not out[3].any()
        assert (out[4] == -1).all()


def test_soft_nms_dtypes():
    g = torch.Generator().manual_seed(0)
    segs = torch.randint(0, 20, (2, 12, 2), generator=g).sort(dim=-1).values.float()
    scores = torch.rand(2, 12, generator=g)
    labels = torch.randint(0, 2, (2, 12), generator=g)
    valid = torch.rand(2, 12, generator=g) > 0.2
    ref = soft_nms(segs, scores.half().float(), labels, valid, sigma=0.3, max_detections=8)
    got = soft_nms(segs.half(), scores.half(), labels, valid, sigma=0.3, max_detections=8)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b)
    got64 = soft_nms(segs.double(), scores, labels, valid, sigma=0.3, max_detections=8)
    assert got64[0].dtype == torch.float64


def test_soft_nms_bad_input():
    z = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="segments"):
        soft_nms(z, z, z.long(), z.bool(), sigma=0.5, max_detections=2)
    with pytest.raises(ValueError, match="scores"):
        soft_nms(torch.zeros(1, 3, 2), torch.zeros(1, 4), z.long(), z.bool(), sigma=0.5, max_detections=2)
    with pytest.raises(ValueError, match="sigma"):
        soft_nms(torch.zeros(1, 3, 2), z, z.long(), z.bool(), sigma=0.0, max_detections=2)


# ------------------------------------------------------------------- property: vs the reference
def assert_same_picks(got, ref, *, atol: float = 1e-6, by_index: bool = True) -> int:
    """Same kept set and order, scores within ``atol``; returns the number of near-tie swaps.

    The reference runs in float64 and the implementation in float32, so two candidates whose
    scores differ by rounding only may come out swapped. That is accepted where the two emitted
    scores agree within ``atol``; the rest of that row is then not compared (the two runs decay
    the remaining candidates by different picks). ``by_index=False`` identifies a pick by its
    segment and label instead of its index (for detect, where duplicates may keep another index).
    """
    g_seg, g_sc, g_lab, g_val, g_idx = (x.cpu() for x in got)
    r_seg, r_sc, r_lab, r_val, r_idx = (x.cpu() for x in ref)
    assert torch.equal(g_val, r_val)
    swaps = 0
    for b in range(g_sc.shape[0]):
        for j in range(g_sc.shape[1]):
            assert abs(float(g_sc[b, j]) - float(r_sc[b, j])) <= atol, (b, j, g_sc[b], r_sc[b])
            if by_index:
                same = bool(g_idx[b, j] == r_idx[b, j])
            else:
                same = torch.equal(g_seg[b, j], r_seg[b, j]) and bool(g_lab[b, j] == r_lab[b, j])
            if not same:
                swaps += 1
                break
            assert torch.equal(g_seg[b, j], r_seg[b, j]) and g_lab[b, j] == r_lab[b, j]
    return swaps


@st.composite
def nms_problems(draw):
    B = draw(st.integers(0, 3))
    N = draw(st.integers(0, 30))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 20, size=(B, N))
    length = rng.integers(0, 10, size=(B, N))  # zero-length intervals included
    segs = np.stack([start, start + length], axis=-1).astype(np.float32)
    if draw(st.booleans()):  # coarse grid: many exact ties
        scores = rng.integers(0, 6, size=(B, N)).astype(np.float32) / 5
    else:
        scores = rng.random((B, N), dtype=np.float32)
    labels = rng.integers(0, 3, size=(B, N))
    valid = rng.random((B, N)) < draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    sigma = draw(st.sampled_from([0.05, 0.1, 0.5, 2.0]))
    max_det = draw(st.integers(1, 35))
    class_aware = draw(st.booleans())
    return (
        torch.from_numpy(segs),
        torch.from_numpy(scores),
        torch.from_numpy(labels),
        torch.from_numpy(valid),
        dict(sigma=sigma, max_detections=max_det, class_aware=class_aware),
    )


@settings(max_examples=80, deadline=None)
@given(nms_problems())
def test_soft_nms_matches_reference(problem):
    segs, scores, labels, valid, kw = problem
    got = soft_nms(segs, scores, labels, valid, **kw)
    ref = soft_nms_reference(segs, scores, labels, valid, **kw)
    assert_same_picks(got, ref)
    # invariants: scores descending, padding at the end, each candidate at most once
    sc, val, idx = got[1], got[3], got[4]
    assert (sc[:, 1:] <= sc[:, :-1] + 1e-7).all()
    assert (val[:, 1:] <= val[:, :-1]).all()
    for b in range(idx.shape[0]):
        kept = [i for i in idx[b].tolist() if i >= 0]
        assert len(kept) == len(set(kept)) == min(int(valid[b].sum()), kw["max_detections"])


@settings(max_examples=30, deadline=None)
@given(nms_problems())
def test_soft_nms_on_the_fly_decay_matches_reference(problem):
    """Large problems compute the pick's IoU row each step instead of the [B, N, N] table."""
    segs, scores, labels, valid, kw = problem
    limit = nms_module._PRECOMPUTE_LIMIT
    nms_module._PRECOMPUTE_LIMIT = 0
    try:
        got = soft_nms(segs, scores, labels, valid, **kw)
    finally:
        nms_module._PRECOMPUTE_LIMIT = limit
    assert_same_picks(got, soft_nms_reference(segs, scores, labels, valid, **kw))


@settings(max_examples=30, deadline=None)
@given(nms_problems())
def test_soft_nms_batch_independence(problem):
    segs, scores, labels, valid, kw = problem
    got = soft_nms(segs, scores, labels, valid, **kw)
    for b in range(segs.shape[0]):
        alone = soft_nms(segs[b : b + 1], scores[b : b + 1], labels[b : b + 1], valid[b : b + 1], **kw)
        for x, y in zip(got, alone, strict=True):
            assert torch.equal(x[b : b + 1], y)
