"""Vectorised decode (spot_core.decode) against hand-built examples and a slow plain-Python spec."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spot_core.config import ConfigError, DecodeConfig, SpotConfig
from spot_core.decode import (
    Detections,
    Proposals,
    decode_windows,
    detect,
    merge_windows,
    num_proposals,
    results_json,
    stack_detections,
    to_seconds,
    vote_segments,
)
from spot_core.decode_steps import dedup
from spot_core.nms import soft_nms_reference

# --------------------------------------------------------------------------- hand-built window
# T = 8, K = 2 (class 2 is background). Column t holds the class probabilities of snippet t; the
# logits are their logs, so softmax gives them back.
PROBS = np.array(
    [
        [0.1, 0.2, 0.1, 0.3, 0.1, 0.6, 0.9, 0.1],  # class 0
        [0.1, 0.7, 0.8, 0.6, 0.1, 0.2, 0.05, 0.1],  # class 1
        [0.8, 0.1, 0.1, 0.1, 0.8, 0.2, 0.05, 0.8],  # background
    ]
)
# s = [.1 .7 .8 .6 .1 .6 .9 .1], c = [0 1 1 1 0 0 0 0]; top-2 snippets: 6 (0.9), 2 (0.8)
MASK = np.zeros((8, 8))
MASK[6] = [0, 0, 0, 0, 0.2, 0.9, 0.7, 0]  # on > 0.5 at 5, 6
MASK[2] = [0, 0.6, 0.9, 0.3, 0.8, 0.7, 0, 0]  # on at 1, 2, 4, 5: two runs of 2, earliest wins
HAND_CFG = DecodeConfig(
    top_k=2, mask_thresholds=(0.5,), class_thresholds=(0.5,), min_len_frac=0.1, class_mode="snippet"
)


def hand_inputs(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor(np.log(PROBS), dtype=torch.float32)[None].repeat(batch, 1, 1)
    mask = torch.tensor(MASK, dtype=torch.float32)[None].repeat(batch, 1, 1)
    return logits, mask


def test_hand_example_snippet_mode():
    logits, mask = hand_inputs()
    p = decode_windows(logits, mask, HAND_CFG)
    assert num_proposals(HAND_CFG, 8) == 4
    # layout: mask(t=6), mask(t=2), class(t=6), class(t=2)
    assert p.valid.tolist() == [[True, True, True, True]]
    assert p.segments[0].tolist() == [[5, 7], [1, 6], [1, 7], [1, 7]]
    assert p.labels[0].tolist() == [0, 1, 0, 0]
    # t=6: max p[0, 5..6] = 0.9, mean mask = 0.8; t=2: run [1, 2]: max p[1, 1..2] = 0.8, mean 0.75;
    # class span [1, 6]: max s = 0.9, times max mask row on the span = 0.9 for both rows
    torch.testing.assert_close(p.scores, torch.tensor([[0.72, 0.6, 0.81, 0.81]]))


def test_hand_example_window_mode_external_class():
    logits, mask = hand_inputs()
    cfg = DecodeConfig(**{**HAND_CFG.__dict__, "class_mode": "window"})
    p = decode_windows(logits, mask, cfg, video_class=torch.tensor([1]), video_score=torch.tensor([0.5]))
    assert p.labels[0].tolist() == [1, 1, 1, 1]
    assert p.segments[0].tolist() == [[5, 7], [1, 6], [1, 7], [1, 7]]
    # t=6: max p[1, 5..6] = 0.2 -> 0.2 * 0.8 * 0.5; t=2: 0.8 * 0.75 * 0.5; class: 0.81 * 0.5
    torch.testing.assert_close(p.scores, torch.tensor([[0.08, 0.3, 0.405, 0.405]]))


def test_hand_example_window_mode_internal_class():
    logits, mask = hand_inputs()
    cfg = DecodeConfig(**{**HAND_CFG.__dict__, "class_mode": "window"})
    p = decode_windows(logits, mask, cfg)
    # mean log-prob: class 1 wins (prod 3.36e-6 vs 3.24e-6); ws = softmax of the two means
    l0, l1 = np.log(PROBS[0]).mean(), np.log(PROBS[1]).mean()
    ws = 1 / (1 + math.exp(l0 - l1))
    assert p.labels[0].tolist() == [1, 1, 1, 1]
    torch.testing.assert_close(p.scores, torch.tensor([[0.16 * ws, 0.6 * ws, 0.81 * ws, 0.81 * ws]]))


def test_hand_example_min_length():
    logits, mask = hand_inputs()
    cfg = DecodeConfig(**{**HAND_CFG.__dict__, "min_len_frac": 0.2})  # runs need b - a > 1.6
    p = decode_windows(logits, mask, cfg)
    assert p.valid.tolist() == [[False, False, True, True]]
    assert p.scores[0, :2].tolist() == [0.0, 0.0] and p.segments[0, :2].abs().sum() == 0


def test_hand_example_valid_len():
    logits, mask = hand_inputs()
    p = decode_windows(logits, mask, HAND_CFG, valid_len=torch.tensor([5]))
    # valid snippets 0..4: top-2 = 2 (0.8), 1 (0.7). Row 2 on at 1, 2, 4 -> [1, 5), run [1, 2].
    # Row 1 is all zero -> invalid. Class: s > 0.5 at 1, 2, 3 -> [1, 4).
    assert p.valid.tolist() == [[True, False, True, True]]
    assert p.segments[0].tolist() == [[1, 5], [0, 0], [1, 4], [1, 4]]
    torch.testing.assert_close(p.scores[0, 0], torch.tensor(0.6))
    torch.testing.assert_close(p.scores[0, 2:], torch.tensor([0.8 * 0.9, 0.0]))  # row 1 max on span = 0
    p0 = decode_windows(logits, mask, HAND_CFG, valid_len=torch.tensor([0]))
    assert not p0.valid.any()


def test_hand_example_detect_agnostic_and_class_aware():
    logits, mask = hand_inputs()
    sigma = 0.5
    cfg = DecodeConfig(**{**HAND_CFG.__dict__, "nms_sigma": sigma, "max_detections": 5})
    d = detect(logits, mask, cfg)
    # the two class proposals are duplicates ([1, 7), label 0, 0.81): one is kept
    # pick [1, 7) 0.81; [5, 7) decays by iou 1/3, [1, 6) by iou 5/6; then [5, 7); then [1, 6)
    # decays again by iou([5, 7), [1, 6)) = 1/6
    s2 = 0.72 * math.exp(-(1 / 9) / sigma)
    s3 = 0.6 * math.exp(-(25 / 36) / sigma) * math.exp(-(1 / 36) / sigma)
    assert d.valid.tolist() == [[True, True, True, False, False]]
    assert d.segments[0, :3].tolist() == [[1, 7], [5, 7], [1, 6]]
    assert d.labels[0, :3].tolist() == [0, 0, 1]
    torch.testing.assert_close(d.scores, torch.tensor([[0.81, s2, s3, 0.0, 0.0]]))
    # class-aware: [1, 6) (label 1) is never decayed by the label-0 picks and overtakes [5, 7)
    cfg_c = DecodeConfig(**{**cfg.__dict__, "nms_class_aware": True})
    dc = detect(logits, mask, cfg_c)
    assert dc.segments[0, :3].tolist() == [[1, 7], [1, 6], [5, 7]]
    torch.testing.assert_close(dc.scores[0, :3], torch.tensor([0.81, 0.6, s2]))


def test_dedup_keeps_best_then_lowest_index():
    seg = torch.tensor([[[1.0, 4.0], [1.0, 4.0], [1.0, 4.0], [1.0, 4.0], [2.0, 4.0], [1.0, 4.0]]])
    sc = torch.tensor([[0.5, 0.7, 0.7, 0.9, 0.9, 0.95]])
    lab = torch.tensor([[0, 0, 0, 1, 0, 0]])
    val = torch.tensor([[True, True, True, True, True, False]])
    keep = dedup(Proposals(seg, sc, lab, val), T=5, K=2)
    # [1, 4) label 0: 0.5, 0.7, 0.7 -> the first 0.7; label 1 and [2, 4) are unique; 5 is invalid
    assert keep.tolist() == [[False, True, False, True, True, False]]
    assert dedup(Proposals(seg[:0], sc[:0], lab[:0], val[:0]), T=5, K=2).shape == (0, 6)


def test_longest_run_tie_earliest_and_holes_filled():
    # one row, three runs: [1..2], [4..6], [8..10]; the two of length 3 tie -> [4..6]
    T = 12
    logits = torch.zeros(1, 2, T)  # K = 1
    logits[0, 0, 5] = 1.0  # snippet 5 is the top snippet
    row = torch.zeros(T)
    row[[1, 2, 4, 5, 6, 8, 9, 10]] = 1.0
    row[[4, 5, 6]] = torch.tensor([0.6, 0.7, 0.8])
    row[[8, 9, 10]] = 0.9
    mask = torch.zeros(1, T, T)
    mask[0, 5] = row
    cfg = DecodeConfig(top_k=1, mask_thresholds=(0.5,), class_thresholds=(), min_len_frac=0.0)
    p = decode_windows(logits, mask, cfg)
    assert p.segments[0].tolist() == [[1, 11]]
    p_fg = torch.softmax(logits, dim=1)[0, 0]  # class 0 probability per snippet
    # window mode, K = 1: ws = 1; run [4..6]: max p over it * mean(0.6, 0.7, 0.8)
    torch.testing.assert_close(p.scores[0, 0], p_fg[4:7].max() * 0.7)


@pytest.mark.parametrize(("run", "ok"), [(30, True), (29, False)])
def test_min_length_decided_in_float64(run, ok):
    # 0.29 * 100 = 28.999999999999996 in float64 (29.0 in float32): b - a = 29 is long enough
    T = 100
    logits = torch.zeros(1, 2, T)
    logits[0, 0, 0] = 1.0
    mask = torch.zeros(1, T, T)
    mask[0, 0, 10 : 10 + run] = 1.0
    cfg = DecodeConfig(top_k=1, mask_thresholds=(0.5,), class_thresholds=(), min_len_frac=0.29)
    assert decode_windows(logits, mask, cfg).valid.tolist() == [[ok]]


def test_top_k_ties_lower_index_first_and_k_clipped():
    T = 3
    logits = torch.zeros(1, 3, T)  # all snippets tie
    mask = torch.ones(1, T, T)
    mask[0, 0] = torch.tensor([1.0, 1.0, 0.0])
    mask[0, 1] = torch.tensor([0.0, 1.0, 1.0])
    mask[0, 2] = torch.tensor([1.0, 1.0, 1.0])
    cfg = DecodeConfig(top_k=10, mask_thresholds=(0.5,), class_thresholds=(), min_len_frac=0.0)
    p = decode_windows(logits, mask, cfg)
    assert p.segments.shape == (1, 3, 2)  # k = min(10, T)
    assert p.segments[0].tolist() == [[0, 2], [1, 3], [0, 3]]


# ------------------------------------------------------------------------------- bad inputs
def test_bad_inputs():
    cfg = DecodeConfig()
    logits, mask = hand_inputs()
    with pytest.raises(ValueError, match="mask must be"):
        decode_windows(logits, mask[:, :7], cfg)
    with pytest.raises(ValueError, match="mask must be"):
        decode_windows(logits, torch.zeros(2, 8, 8), cfg)
    with pytest.raises(ValueError, match="K\\+1 >= 2"):
        decode_windows(logits[:, :1], mask, cfg)
    with pytest.raises(ValueError, match="logits must be"):
        decode_windows(logits[0], mask, cfg)
    bad = logits.clone()
    bad[0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="logits contain NaN"):
        decode_windows(bad, mask, cfg)
    badm = mask.clone()
    badm[0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="mask contains NaN"):
        detect(logits, badm, cfg)
    # +inf and -inf make the sum NaN without a NaN in the input: the exact test must not raise
    infs = logits.clone()
    infs[0, 0, 3], infs[0, 1, 4] = float("inf"), float("-inf")
    assert infs.sum().isnan() and not infs.isnan().any()
    decode_windows(infs, mask, cfg)
    infs[0, 1, 5] = float("nan")
    with pytest.raises(ValueError, match="logits contain NaN"):
        decode_windows(infs, mask, cfg)
    with pytest.raises(ValueError, match="both video_class and video_score"):
        decode_windows(logits, mask, cfg, video_class=torch.tensor([0]))
    with pytest.raises(ValueError, match="video_class must be in"):
        decode_windows(logits, mask, cfg, video_class=torch.tensor([2]), video_score=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="valid_len must be in"):
        decode_windows(logits, mask, cfg, valid_len=torch.tensor([9]))
    with pytest.raises(ValueError, match="valid_len must have shape"):
        decode_windows(logits, mask, cfg, valid_len=torch.tensor([3, 4]))


def test_empty_batch_and_single_snippet():
    cfg = DecodeConfig()
    p = decode_windows(torch.zeros(0, 4, 7), torch.zeros(0, 7, 7), cfg)
    M = num_proposals(cfg, 7)
    assert p.segments.shape == (0, M, 2) and p.scores.shape == (0, M) and p.valid.shape == (0, M)
    d = detect(torch.zeros(0, 4, 7), torch.zeros(0, 7, 7), cfg)
    assert d.segments.shape == (0, cfg.max_detections, 2) and d.valid.shape == (0, cfg.max_detections)
    # T = 1: a run of one snippet is never longer than 2% of T; a class span needs last - first > 1
    d1 = detect(torch.randn(2, 4, 1), torch.rand(2, 1, 1), cfg)
    assert d1.segments.shape == (2, cfg.max_detections, 2) and not d1.valid.any()
    d1 = detect(torch.randn(2, 4, 1), torch.rand(2, 1, 1), DecodeConfig(min_len_frac=-1.0))
    assert d1.valid[:, 0].all() and d1.segments[:, 0].tolist() == [[0, 1], [0, 1]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_match_fp32_of_same_values(dtype):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 5, 16, generator=g) * 2).to(dtype)
    mask = torch.rand(3, 16, 16, generator=g).to(dtype)
    cfg = DecodeConfig(class_mode="snippet")
    got = detect(logits, mask, cfg)
    ref = detect(logits.float(), mask.float(), cfg)
    assert got.scores.dtype == torch.float32
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- slow plain-Python reference
def reference_decode(logits, mask, cfg, video_class=None, video_score=None, valid_len=None):
    """The module docstring's steps 1-6, one window, snippet and threshold at a time (numpy).

    Returns per-proposal arrays in the same slot layout as ``decode_windows``.
    """
    B, K1, T = logits.shape
    K = K1 - 1
    p_all = torch.softmax(logits.float(), dim=1).numpy()  # the same probabilities as the model's
    lg_all = logits.float().numpy().astype(np.float64)
    mask_all = mask.float().numpy()
    k = min(cfg.top_k, T)
    nm, nc = len(cfg.mask_thresholds), len(cfg.class_thresholds)
    M = k * (nm + nc)
    segs = np.zeros((B, M, 2))
    scores = np.zeros((B, M))
    labels = np.zeros((B, M), dtype=np.int64)
    valid = np.zeros((B, M), dtype=bool)
    window = cfg.class_mode == "window"
    anchored = cfg.mask_segment == "anchored"
    for b in range(B):
        n = T if valid_len is None else int(valid_len[b])
        p = p_all[b]
        s = p[:K].max(axis=0)
        c = p[:K].argmax(axis=0)
        if video_class is not None:
            wc, ws = int(video_class[b]), float(video_score[b])
        else:
            mean = lg_all[b, :K, :n].mean(axis=1) if n > 0 else np.zeros(K)
            e = np.exp(mean - mean.max())
            pw = e / e.sum()
            wc, ws = int(pw.argmax()), float(pw.max())
        top = sorted(range(n), key=lambda t: -s[t])[:k]  # Python's sort is stable
        for i in range(k):
            if i >= len(top):
                continue
            t = top[i]
            row = mask_all[b, t, :n]
            # mask proposals
            for j, th in enumerate(cfg.mask_thresholds):
                slot = i * nm + j
                on = row > np.float32(th)
                if not on.any():
                    continue
                idx = np.flatnonzero(on)
                first, last = int(idx[0]), int(idx[-1])
                best_a, best_len, run_a = 0, 0, None
                for u in range(n + 1):
                    if u < n and on[u]:
                        if run_a is None:
                            run_a = u
                    elif run_a is not None:
                        if u - run_a > best_len:  # strict: the earliest longest run wins
                            best_a, best_len = run_a, u - run_a
                        run_a = None
                a, bb = best_a, best_a + best_len - 1
                if anchored:  # the run around t itself; none when t is off
                    if not on[t]:
                        continue
                    a, bb = t, t
                    while a > 0 and on[a - 1]:
                        a -= 1
                    while bb + 1 < n and on[bb + 1]:
                        bb += 1
                    first, last = a, bb
                if not (bb - a) > cfg.min_len_frac * T:
                    continue
                lab = wc if window else int(c[t])
                sc = float(p[lab, a : bb + 1].max()) * float(row[a : bb + 1].astype(np.float64).mean())
                segs[b, slot] = (first, last + 1)
                scores[b, slot] = sc * (ws if window else 1.0)
                labels[b, slot] = lab
                valid[b, slot] = True
            # class-activation proposals
            for j, th in enumerate(cfg.class_thresholds):
                slot = k * nm + i * nc + j
                on = s[:n] > np.float32(th)
                if not on.any():
                    continue
                idx = np.flatnonzero(on)
                first, last = int(idx[0]), int(idx[-1])
                if anchored:
                    if not on[t]:
                        continue
                    first, last = t, t
                    while first > 0 and on[first - 1]:
                        first -= 1
                    while last + 1 < n and on[last + 1]:
                        last += 1
                if not last - first > 1:
                    continue
                span = s[first : last + 1]
                lab = wc if window else int(c[first + int(span.argmax())])
                sc = float(span.max()) * float(row[first : last + 1].max())
                segs[b, slot] = (first, last + 1)
                scores[b, slot] = sc * (ws if window else 1.0)
                labels[b, slot] = lab
                valid[b, slot] = True
    return segs, scores, labels, valid


def reference_detect(logits, mask, cfg, **kw):
    """reference_decode, then Python dedup (best score, then lowest index), then soft_nms_reference."""
    segs, scores, labels, valid = reference_decode(logits, mask, cfg, **kw)
    keep = valid.copy()
    for b in range(segs.shape[0]):
        best: dict[tuple, int] = {}
        for i in np.flatnonzero(valid[b]):
            key = (segs[b, i, 0], segs[b, i, 1], labels[b, i])
            if key not in best or scores[b, i] > scores[b, best[key]]:
                best[key] = i
        keep[b] = False
        keep[b, list(best.values())] = True
    return soft_nms_reference(
        torch.tensor(segs, dtype=torch.float32),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels),
        torch.tensor(keep),
        sigma=cfg.nms_sigma,
        max_detections=cfg.max_detections,
        class_aware=cfg.nms_class_aware,
    )


@st.composite
def decode_problems(draw):
    B = draw(st.integers(0, 3))
    K = draw(st.integers(1, 5))
    T = draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    # logits on a grid of 1/4 (exact sums: no rounding-only near ties in the window class)
    logits = rng.integers(-8, 9, size=(B, K + 1, T)).astype(np.float32) / 4
    if draw(st.booleans()):  # a confident action region in each window
        for b in range(B):
            s0 = rng.integers(0, T)
            e0 = rng.integers(s0, T) + 1
            logits[b, rng.integers(0, K), s0:e0] += 3
    # mask on a grid of 1/10 (values equal to the thresholds test the strict '>')
    mask = rng.integers(0, 11, size=(B, T, T)).astype(np.float32) / 10
    if draw(st.booleans()):  # block structure: long runs with holes
        mask = (mask > 0.7).astype(np.float32) * 0.3
        for b in range(B):
            for t in range(T):
                s0 = rng.integers(0, T)
                e0 = rng.integers(s0, T) + 1
                mask[b, t, s0:e0] = rng.integers(5, 11) / 10
    cfg = DecodeConfig(
        top_k=draw(st.integers(1, 12)),
        mask_thresholds=draw(st.sampled_from([(0.0, 0.2, 0.4, 0.6, 0.8), (0.5,), ()])),
        class_thresholds=draw(
            st.sampled_from([(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), (0.3, 0.6), ()])
        ),
        min_len_frac=draw(st.sampled_from([0.0, 0.02, 0.1])),
        class_mode=draw(st.sampled_from(["window", "snippet"])),
        mask_segment=draw(st.sampled_from(["filled", "anchored"])),
        nms_sigma=draw(st.sampled_from([0.1, 0.5])),
        nms_class_aware=draw(st.booleans()),
        max_detections=draw(st.integers(1, 30)),
    )
    kw = {}
    if draw(st.booleans()):
        kw["valid_len"] = torch.from_numpy(rng.integers(0, T + 1, size=B))
    if draw(st.booleans()):
        kw["video_class"] = torch.from_numpy(rng.integers(0, K, size=B))
        kw["video_score"] = torch.from_numpy(rng.random(B).astype(np.float32))
    return torch.from_numpy(logits), torch.from_numpy(mask), cfg, kw


@settings(max_examples=60, deadline=None)
@given(decode_problems())
def test_decode_matches_reference(problem):
    logits, mask, cfg, kw = problem
    got = decode_windows(logits, mask, cfg, **kw)
    r_seg, r_sc, r_lab, r_val = reference_decode(logits, mask, cfg, **kw)
    B, T = logits.shape[0], logits.shape[2]
    assert got.segments.shape == (B, num_proposals(cfg, T), 2)
    assert np.array_equal(got.valid.numpy(), r_val)
    assert np.array_equal(got.segments.numpy(), r_seg.astype(np.float32))
    assert np.array_equal(got.labels.numpy(), r_lab)
    np.testing.assert_allclose(got.scores.numpy(), r_sc, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(decode_problems())
def test_detect_matches_reference(problem):
    logits, mask, cfg, kw = problem
    got = detect(logits, mask, cfg, **kw)
    ref = reference_detect(logits, mask, cfg, **kw)
    # same detections in the same order and scores within 1e-5. Reference scores come from
    # float64 arithmetic, so two candidates that tie up to rounding may come out swapped: accepted
    # where the emitted scores agree, and the rest of that row (decayed by other picks) is skipped.
    assert torch.equal(got.valid, ref[3])
    for b in range(got.scores.shape[0]):
        for j in range(got.scores.shape[1]):
            assert abs(float(got.scores[b, j]) - float(ref[1][b, j])) <= 1e-5, (b, j)
            if not (torch.equal(got.segments[b, j], ref[0][b, j]) and got.labels[b, j] == ref[2][b, j]):
                break


@settings(max_examples=25, deadline=None)
@given(decode_problems())
def test_detect_batch_independence(problem):
    logits, mask, cfg, kw = problem
    got = detect(logits, mask, cfg, **kw)
    for b in range(logits.shape[0]):
        kw_b = {key: v[b : b + 1] for key, v in kw.items()}
        alone = detect(logits[b : b + 1], mask[b : b + 1], cfg, **kw_b)
        for x, y in zip(got, alone, strict=True):
            assert torch.equal(x[b : b + 1], y)


# --------------------------------------------------------------------- seconds, json, merging
def test_to_seconds():
    seg = torch.tensor([[[0.0, 10.0]], [[5.0, 6.0]]])
    out = to_seconds(seg, torch.tensor([0.0, 100.0]), torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 5.0]], [[110.0, 112.0]]]))
    out64 = to_seconds(seg, torch.tensor([0.0, 1e6], dtype=torch.float64), torch.tensor([0.5, 0.5]))
    assert out64.dtype == torch.float64 and out64[1, 0, 1].item() == 1e6 + 3.0


def test_results_json():
    det = Detections(
        torch.tensor([[[0.0, 5.0], [8.0, 12.0], [11.0, 13.0]], [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]]),
        torch.tensor([[0.875, 0.5, 0.25], [0.75, 0.0, 0.0]]),
        torch.tensor([[1, 0, 1], [0, 0, 0]]),
        torch.tensor([[True, True, True], [True, False, False]]),
    )
    out = results_json(["a", "b"], det, ["walk", "run"], duration=[10.0, 30.0])
    assert out["version"] and out["external_data"] == {}
    assert out["results"] == {
        "a": [
            {"label": "run", "score": 0.875, "segment": [0.0, 5.0]},
            {"label": "walk", "score": 0.5, "segment": [8.0, 10.0]},  # clipped; [11, 13) dropped
        ],
        "b": [{"label": "walk", "score": 0.75, "segment": [1.0, 2.0]}],
    }
    out = results_json(["a", "b"], det, ["walk", "run"])
    assert out["results"]["a"][2]["segment"] == [11.0, 13.0]
    # the per-video mapping merge_windows returns, durations by video id (unknown: no clipping)
    per_video = {v: Detections(*(x[i] for x in det)) for i, v in enumerate(["a", "b"])}
    out2 = results_json(["b", "a"], per_video, ["walk", "run"], duration={"a": 10.0})
    assert list(out2["results"]) == ["b", "a"]
    row_a = Detections(*(x[:1] for x in det))
    assert out2["results"]["a"] == results_json(["a"], row_a, ["walk", "run"], [10.0])["results"]["a"]
    assert out2["results"]["b"] == out["results"]["b"]
    assert results_json([], None, ["walk"])["results"] == {}
    with pytest.raises(ValueError, match="video ids"):
        results_json(["a"], det, ["walk", "run"])


def test_merge_windows_identity_for_single_windows():
    g = torch.Generator().manual_seed(3)
    cfg = DecodeConfig(max_detections=20)
    logits = torch.randn(4, 6, 30, generator=g) * 2
    mask = torch.rand(4, 30, 30, generator=g)
    d = detect(logits, mask, cfg)
    sec = to_seconds(d.segments, torch.zeros(4), torch.full((4,), 0.5))
    merged = merge_windows(["v3", "v1", "v2", "v0"], sec, d.scores, d.labels, d.valid, cfg)
    assert list(merged) == ["v3", "v1", "v2", "v0"]
    for b, vid in enumerate(merged):
        m = merged[vid]
        assert torch.equal(m.segments, sec[b]) and torch.equal(m.scores, d.scores[b])
        assert torch.equal(m.labels, d.labels[b]) and torch.equal(m.valid, d.valid[b])
    ids, stacked = stack_detections(merged)
    assert ids == ["v3", "v1", "v2", "v0"] and stacked.segments.shape == (4, 20, 2)


def test_merge_windows_overlapping_windows():
    cfg = DecodeConfig(max_detections=4, nms_sigma=0.5)
    # video "a" has two overlapping windows that both saw the action [10, 20) s; "b" has one
    seg = torch.tensor(
        [
            [[10.0, 20.0], [0.0, 5.0], [0.0, 0.0]],
            [[40.0, 50.0], [0.0, 0.0], [0.0, 0.0]],  # video b
            [[10.0, 20.0], [11.0, 20.0], [30.0, 35.0]],
        ]
    )
    sc = torch.tensor([[0.9, 0.3, 0.0], [0.6, 0.0, 0.0], [0.8, 0.7, 0.4]])
    lab = torch.tensor([[1, 1, 0], [2, 0, 0], [1, 1, 1]])
    val = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    out = merge_windows(["a", "b", "a"], seg, sc, lab, val, cfg)
    assert list(out) == ["a", "b"]
    # a: 0.9 [10, 20); the duplicate 0.8 decays by exp(-1/0.5), [11, 20) (iou 0.9) by exp(-0.81/0.5)
    d_dup, d_near = math.exp(-1 / 0.5), math.exp(-0.81 / 0.5)
    a = out["a"]
    assert a.segments.tolist() == [[10, 20], [30, 35], [0, 5], [11, 20]]
    expected_last = 0.7 * d_near  # beats the decayed duplicate, 0.8 * d_dup, which is cut off
    assert 0.8 * d_dup < expected_last
    torch.testing.assert_close(a.scores, torch.tensor([0.9, 0.4, 0.3, expected_last]))
    assert a.valid.all()
    b = out["b"]
    assert b.valid.tolist() == [True, False, False, False]
    assert b.segments[0].tolist() == [40, 50] and b.labels[0] == 2 and b.scores[0] == pytest.approx(0.6)
    # the multi-window result is Soft-NMS over the concatenated windows
    ref = soft_nms_reference(
        torch.cat([seg[0], seg[2]])[None],
        torch.cat([sc[0], sc[2]])[None],
        torch.cat([lab[0], lab[2]])[None],
        torch.cat([val[0], val[2]])[None],
        sigma=0.5,
        max_detections=4,
    )
    torch.testing.assert_close(a.scores[None], ref[1])
    assert (
        merge_windows(
            [],
            torch.zeros(0, 3, 2),
            torch.zeros(0, 3),
            torch.zeros(0, 3).long(),
            torch.zeros(0, 3).bool(),
            cfg,
        )
        == {}
    )


def test_box_voting_moves_boundaries_to_the_weighted_mean_of_overlapping_candidates():
    """decode.vote_iou: the merge of test_merge_windows_overlapping_windows, then box voting."""
    cfg = DecodeConfig(max_detections=4, nms_sigma=0.5, vote_iou=0.5)
    seg = torch.tensor(
        [
            [[10.0, 20.0], [0.0, 5.0], [0.0, 0.0]],
            [[40.0, 50.0], [0.0, 0.0], [0.0, 0.0]],
            [[10.0, 20.0], [11.0, 20.0], [30.0, 35.0]],
        ]
    )
    sc = torch.tensor([[0.9, 0.3, 0.0], [0.6, 0.0, 0.0], [0.8, 0.7, 0.4]])
    lab = torch.tensor([[1, 1, 0], [2, 0, 0], [1, 1, 1]])
    val = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    plain = merge_windows(["a", "b", "a"], seg, sc, lab, val, DecodeConfig(max_detections=4, nms_sigma=0.5))
    out = merge_windows(["a", "b", "a"], seg, sc, lab, val, cfg)
    # [10, 20) and [11, 20) vote with both [10, 20) candidates and [11, 20) (IoU 0.9), weights 0.9, 0.8, 0.7
    start = (10 * 0.9 + 10 * 0.8 + 11 * 0.7) / (0.9 + 0.8 + 0.7)
    a = out["a"]
    assert a.segments[:, 0].tolist() == pytest.approx([start, 30, 0, start])
    assert a.segments[:, 1].tolist() == [20, 35, 5, 20]
    for x, y in zip(out["a"][1:], plain["a"][1:], strict=True):  # scores, labels, valid untouched
        assert torch.equal(x, y)
    assert torch.equal(out["b"].segments, plain["b"].segments)  # one candidate: itself


def test_box_voting_reads_only_same_class_valid_candidates_and_ignores_padding(monkeypatch):
    det = Detections(
        torch.tensor([[0.0, 10.0], [20.0, 30.0], [0.0, 0.0]], dtype=torch.float64),
        torch.tensor([0.9, 0.5, 0.0]),
        torch.tensor([0, 1, 0]),
        torch.tensor([True, True, False]),
    )
    seg = torch.tensor(
        [[0.0, 10.0], [2.0, 10.0], [0.0, 12.0], [20.0, 30.0], [0.0, 9.0], [25.0, 45.0]]
    ).double()
    sc = torch.tensor([0.9, 0.6, 0.3, 0.5, 0.8, 0.9])
    lab = torch.tensor([0, 0, 1, 1, 0, 1])
    val = torch.tensor([True, True, True, True, False, True])
    got = vote_segments(det, seg, sc, lab, val, 0.7)
    # row 0: [0, 10) and [2, 10) (IoU 0.8); [0, 12) is another class, [0, 9) is not valid.
    # row 1: [25, 45) overlaps [20, 30) by 0.2 < 0.7: alone. Row 2 is not valid: unchanged
    want = [[(0 * 0.9 + 2 * 0.6) / 1.5, 10.0], [20.0, 30.0], [0.0, 0.0]]
    torch.testing.assert_close(got.segments, torch.tensor(want, dtype=torch.float64))
    assert torch.equal(got.scores, det.scores) and torch.equal(got.labels, det.labels)
    # the same valid candidates between invalid padding: the same bits; in chunks of 2: the same values
    pad = lambda x, v: torch.cat([x[:2], v.expand(3, *x.shape[1:]), x[2:], v.expand(5, *x.shape[1:])])  # noqa: E731
    again = vote_segments(
        det,
        pad(seg, torch.tensor([[7.0, 8.0]]).double()),
        pad(sc, torch.tensor([1.0])),
        pad(lab, torch.tensor([0])),
        pad(val, torch.tensor([False])),
        0.7,
    )
    assert torch.equal(again.segments, got.segments)
    monkeypatch.setattr("spot_core.decode.VOTE_CHUNK", 2)
    torch.testing.assert_close(vote_segments(det, seg, sc, lab, val, 0.7).segments, got.segments)
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match="decode.vote_iou"):
            SpotConfig.preset("toy").override([f"decode.vote_iou={bad}"])


# ------------------------------------------------------------------------------------- export
@pytest.mark.slow
def test_detect_exports_with_dynamic_batch():
    """torch.export (what the dynamo ONNX exporter traces) with a dynamic batch: no data-dependent
    Python control flow in decode / dedup / Soft-NMS; the exported program matches eager at other
    batch sizes."""
    cfg = DecodeConfig(max_detections=8, class_mode="snippet", nms_class_aware=True)

    class Detect(torch.nn.Module):
        def forward(self, logits, mask):
            return tuple(detect(logits, mask, cfg))

    g = torch.Generator().manual_seed(2)
    K, T = 4, 12
    batch = torch.export.Dim("batch", min=1, max=256)
    ep = torch.export.export(
        Detect(),
        (torch.randn(3, K + 1, T, generator=g), torch.rand(3, T, T, generator=g)),
        dynamic_shapes=({0: batch}, {0: batch}),
    )
    for B in (1, 5):
        logits, mask = torch.randn(B, K + 1, T, generator=g) * 2, torch.rand(B, T, T, generator=g)
        for a, b in zip(ep.module()(logits, mask), detect(logits, mask, cfg), strict=True):
            torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------- timing
def test_detect_anet_preset_time():
    cfg = DecodeConfig()  # the ActivityNet defaults
    B, K, T = 64, 200, 100
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, K + 1, T, generator=g) * 3
    mask = torch.rand(B, T, T, generator=g)
    # one intra-op thread: on a shared 2-core box, OpenMP threads that wait for a busy core make
    # small-op loops like Soft-NMS many times slower and the number meaningless
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        detect(logits, mask, cfg)  # warm-up
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            d = detect(logits, mask, cfg)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    times.sort()
    med = times[2]
    print(
        f"detect B={B} K={K} T={T} (1 thread): median {med * 1e3:.1f} ms, "
        f"min {times[0] * 1e3:.1f} ms, {B / med:.0f} windows/s"
    )
    assert d.segments.shape == (B, cfg.max_detections, 2)
    assert med < 2.0


def test_anchored_segments_follow_each_rows_own_instance():
    # Two instances in one window, [1, 4) class 0 and [6, 9) class 1; every mask row marks both.
    T, K = 10, 2
    logits = torch.full((1, K + 1, T), -4.0)
    logits[0, K] = 4.0  # background elsewhere
    logits[0, 0, 1:4], logits[0, K, 1:4] = 4.0, -4.0
    logits[0, 1, 6:9], logits[0, K, 6:9] = 3.0, -4.0
    fg = torch.zeros(T)
    fg[1:4] = fg[6:9] = 0.9
    mask = fg.expand(1, T, T).clone()
    base = DecodeConfig(
        top_k=6, mask_thresholds=(0.5,), class_thresholds=(), min_len_frac=0.1, class_mode="snippet"
    )
    filled = decode_windows(logits, mask, base)
    anchored = decode_windows(logits, mask, DecodeConfig(**{**base.__dict__, "mask_segment": "anchored"}))
    # filled: every row gives the holes-filled span [1, 9); anchored: each row its own instance
    assert {tuple(x) for x in filled.segments[0].tolist()} == {(1.0, 9.0)}
    got = {
        (tuple(seg), lab)
        for seg, lab in zip(anchored.segments[0].tolist(), anchored.labels[0].tolist(), strict=True)
    }
    assert got == {((1.0, 4.0), 0), ((6.0, 9.0), 1)}
