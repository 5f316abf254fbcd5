"""Windows, targets and the torch dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from spot_core.config import DataConfig, ModelConfig, SpotConfig
from spot_core.data.annotations import AnnotationSet, Instance, Video
from spot_core.data.datasets import WindowDataset
from spot_core.data.features import FeatureError
from spot_core.data.windows import (
    FeatureStats,
    build_targets,
    interpolate_linear,
    make_windows,
    rescale_video,
    slide_video,
    snippet_span,
    window_starts,
)

CLASSES = ["a", "b", "c"]
CI = {c: i for i, c in enumerate(CLASSES)}


def _cfg(t=10, c=4, k=3, mode="rescale", stride=5, trim=False, min_inside=0.5) -> SpotConfig:
    return SpotConfig(
        name="test",
        model=ModelConfig(feat_dim=c, num_snippets=t, num_classes=k, num_heads=1),
        data=DataConfig(mode=mode, stride=stride, trim_targets=trim, min_inside=min_inside),
    )


def _feats(n, c=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, c)).astype(np.float32)


def _check_targets(w, k):
    """Invariants every window's targets satisfy."""
    t = w.num_snippets
    assert w.features.shape[0] == t and w.features.dtype == np.float32
    assert w.cls_target.shape == (t,) and w.cls_target.dtype == np.int64
    assert w.mask_target.shape == (t, t) and w.mask_target.dtype == np.float32
    assert ((w.cls_target >= 0) & (w.cls_target <= k)).all()
    assert np.array_equal(np.diag(w.mask_target) > 0, w.cls_target != k)  # diagonal == foreground
    assert np.array_equal(w.mask_target, w.mask_target.T)
    assert (w.cls_target[w.valid :] == k).all()  # padding is background
    assert not w.mask_target[w.valid :].any() and not w.mask_target[:, w.valid :].any()
    assert not w.features[w.valid :].any()  # zero padding
    for s, e, c in w.segments:
        assert 0 <= s < e <= w.valid and 0 <= c < k
    cover = np.zeros(t, int)
    for s, e, _ in w.segments:
        cover[s:e] += 1
    if (cover <= 1).all():  # no overlap: each span is exactly one class run and one mask block
        for s, e, c in w.segments:
            assert (w.cls_target[s:e] == c).all()
            block = np.zeros(t, np.float32)
            block[s:e] = 1
            assert all(np.array_equal(w.mask_target[r], block) for r in range(s, e))
        assert np.array_equal(w.cls_target != k, cover > 0)
    if not w.has_targets:
        assert (w.cls_target == k).all() and not w.mask_target.any()


# ----------------------------------------------------------------------------------- primitives
@pytest.mark.parametrize(("n", "t"), [(1, 5), (7, 7), (13, 5), (5, 13), (100, 64), (3, 100)])
def test_interpolate_matches_torch(n, t):
    x = _feats(n, 6)
    ref = F.interpolate(torch.from_numpy(x.T.copy())[None], size=t, mode="linear", align_corners=False)[0].T
    np.testing.assert_allclose(interpolate_linear(x, t), ref.numpy(), rtol=1e-6, atol=1e-6)


def test_window_starts_formula():
    assert window_starts(5, 10, 5) == [0]
    assert window_starts(10, 10, 5) == [0]
    assert window_starts(11, 10, 5) == [0, 5]
    assert window_starts(21, 10, 5) == [0, 5, 10, 15]
    assert window_starts(20, 10, 10) == [0, 10]
    with pytest.raises(ValueError, match="uncovered"):
        window_starts(50, 10, 11)


def test_snippet_span_rounding():
    assert snippet_span(1.0, 4.0, 0.0, 1.0, 10) == (1, 4)
    assert snippet_span(1.5, 3.49, 0.0, 1.0, 10) == (2, 3)  # round half up, then nearest
    assert snippet_span(2.2, 2.3, 0.0, 1.0, 10) == (2, 3)  # at least one snippet
    assert snippet_span(9.7, 9.9, 0.0, 1.0, 10) == (9, 10)  # ... also at the right edge
    assert snippet_span(2.0, 2.0, 0.0, 1.0, 10) is None  # zero length
    assert snippet_span(-5.0, 30.0, 0.0, 1.0, 10) == (0, 10)  # clamped
    assert snippet_span(10.0, 12.0, 0.0, 1.0, 10) is None  # touches only the edge
    assert snippet_span(6.0, 9.0, 5.0, 0.5, 10) == (2, 8)  # relative to t_start


def test_build_targets_overlap_and_trim():
    cls, mask, seg = build_targets([(1, 5, 0), (4, 8, 2)], 10, 3)
    assert cls.tolist() == [3, 0, 0, 0, 2, 2, 2, 2, 3, 3]  # later instance overwrites the class
    assert mask[1:5, 1:5].all() and mask[4:8, 4:8].all() and mask.sum() == 16 + 16 - 1
    assert mask[4].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 0, 0]  # row of the overlap = union
    cls, mask, seg = build_targets([(1, 5, 0), (6, 8, 1)], 10, 3, trim=True)
    assert seg.tolist() == [[2, 4, 0], [6, 8, 1]]  # only instances longer than 2 snippets are trimmed
    assert cls.tolist() == [3, 3, 0, 0, 3, 3, 1, 1, 3, 3]
    with pytest.raises(ValueError):
        build_targets([(3, 3, 0)], 10, 3)


# -------------------------------------------------------------------------------------- rescale
def test_rescale_video_targets_and_duration_correction():
    cfg = _cfg(t=10)
    # features cover 90 of 100 frames -> 9 s of the 10 s video; snippet_sec = 0.9
    v = Video("v", 10.0, "training", [Instance(0.9, 2.7, "b"), Instance(4.5, 9.9, "c")], num_frames=100)
    v.feature_frames = 90
    w = rescale_video(v, _feats(37), cfg, CI)
    assert w.valid == 10 and w.t_start == 0.0 and w.snippet_sec == pytest.approx(0.9)
    assert w.segments.tolist() == [[1, 3, 1], [5, 10, 2]]  # 9.9 clipped to 9.0
    assert w.cls_target.tolist() == [3, 1, 1, 3, 3, 2, 2, 2, 2, 2]
    assert w.labeled and w.has_targets
    np.testing.assert_allclose(w.to_seconds(np.array([1, 3])), [0.9, 2.7])
    _check_targets(w, 3)
    w = rescale_video(v, _feats(37), _cfg(t=10, trim=True), CI)
    assert w.segments.tolist() == [[1, 3, 1], [6, 9, 2]]


def test_rescale_messy_and_unlabeled():
    cfg = _cfg(t=10)
    v = Video(
        "v", 10.0, "training", [Instance(5.0, 5.0, "a"), Instance(2.0, 3.0, "a"), Instance(2.0, 3.0, "a")]
    )
    w = rescale_video(v, _feats(3), cfg, CI)
    assert w.segments.tolist() == [[2, 3, 0]]  # zero-length dropped, duplicate removed
    v.labeled = False
    w = rescale_video(v, _feats(3), cfg, CI)
    assert not w.labeled and not w.has_targets and (w.cls_target == 3).all()
    w = rescale_video(
        Video("v", 10.0, "validation", [Instance(1, 2, "a")]), _feats(3), cfg, CI, targets=False
    )
    assert w.labeled and not w.has_targets
    with pytest.raises(ValueError, match="label 'zzz'"):
        rescale_video(Video("v", 10.0, "training", [Instance(1, 2, "zzz")]), _feats(3), cfg, CI)
    with pytest.raises(ValueError, match="5 channels"):
        rescale_video(v, _feats(3, c=5), cfg, CI)


# -------------------------------------------------------------------------------------- sliding
def test_slide_video_basic():
    cfg = _cfg(t=10, stride=5)
    # 23 snippets at 2 snippets/s = 11.5 s
    v = Video(
        "v", 11.5, "training", [Instance(1.0, 2.0, "a"), Instance(3.0, 6.0, "b"), Instance(10.5, 11.5, "c")]
    )
    feats = _feats(23)
    ws = slide_video(v, feats, cfg, CI, 2.0)
    assert [w.t_start for w in ws] == [0.0, 2.5, 5.0, 7.5]  # starts 0, 5, 10, 15 snippets
    assert [w.valid for w in ws] == [10, 10, 10, 8]
    assert [(w.window_index, w.num_windows) for w in ws] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    np.testing.assert_array_equal(ws[3].features[:8], feats[15:])
    for w in ws:
        _check_targets(w, 3)
        assert w.snippet_sec == 0.5
    assert ws[0].segments.tolist() == [[2, 4, 0], [6, 10, 1]]  # b: 2 of its 3 s inside, kept
    assert ws[1].segments.tolist() == [[1, 7, 1]]  # a lies outside; b wholly inside
    assert ws[2].segments.tolist() == []  # b: 1 of 3 s inside (< min_inside 0.5), dropped
    assert ws[3].segments.tolist() == [[6, 8, 2]]  # c in the padded last window


def test_slide_video_short_and_long_instances():
    cfg = _cfg(t=10, stride=10)
    v = Video("v", 3.0, "training", [Instance(0.5, 2.0, "a")])
    (w,) = slide_video(v, _feats(6), cfg, CI, 2.0)  # shorter than T: one padded window
    assert w.valid == 6 and w.segments.tolist() == [[1, 4, 0]]
    _check_targets(w, 3)
    # an instance longer than two windows still appears in every window it fills
    v = Video("v", 30.0, "training", [Instance(0.0, 30.0, "c")])
    ws = slide_video(v, _feats(30), cfg, CI, 1.0)
    assert [w.segments.tolist() for w in ws] == [[[0, 10, 2]]] * 3
    with pytest.raises(ValueError, match="uncovered"):
        slide_video(v, _feats(30), _cfg(t=10, stride=11), CI, 1.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 90),
    t=st.integers(1, 24),
    stride_frac=st.floats(0.05, 1.0),
    rate=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    trim=st.booleans(),
    min_inside=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    raw=st.lists(st.tuples(st.floats(-5, 100), st.floats(0, 30), st.integers(0, 2)), max_size=6),
)
def test_windowing_properties(n, t, stride_frac, rate, trim, min_inside, raw):
    stride = max(1, min(t, round(stride_frac * t)))
    cfg = _cfg(t=t, stride=stride, trim=trim, min_inside=min_inside)
    duration = n / rate
    v = Video("v", duration, "training", [Instance(s, s + d, CLASSES[c]) for s, d, c in raw])
    feats = _feats(n) + 1.0  # never zero, so padding is recognisable
    ws = slide_video(v, feats, cfg, CI, rate)
    # count formula
    assert len(ws) == (1 if n <= t else math.ceil((n - t) / stride) + 1)
    # every snippet of the video is covered, in the right place
    covered = np.zeros(n, bool)
    for w in ws:
        a = round(w.t_start * rate)
        assert w.valid == min(t, n - a) and w.valid >= 1
        np.testing.assert_array_equal(w.features[: w.valid], feats[a : a + w.valid])
        covered[a : a + w.valid] = True
        _check_targets(w, 3)
    assert covered.all()
    # rescale: one full window with consistent targets
    w = rescale_video(v, feats, cfg, CI)
    assert w.valid == t
    _check_targets(w, 3)


@settings(max_examples=80, deadline=None)
@given(
    start=st.floats(-10, 40),
    length=st.floats(0, 20),
    t0=st.floats(0, 10),
    sec=st.sampled_from([0.25, 0.5, 1.0, 1.7]),
    valid=st.integers(1, 30),
)
def test_snippet_span_properties(start, length, t0, sec, valid):
    end = start + length
    span = snippet_span(start, end, t0, sec, valid)
    overlap = min(end, t0 + valid * sec) - max(start, t0)
    if length == 0 or overlap <= 0:
        assert span is None
    else:
        s, e = span
        assert 0 <= s < e <= valid
        lo, hi = max(start, t0), min(end, t0 + valid * sec)  # the clipped instance
        if e - s > 1:  # plain rounding: each boundary within half a snippet
            assert abs(t0 + s * sec - lo) <= 0.5 * sec + 1e-9
            assert abs(t0 + e * sec - hi) <= 0.5 * sec + 1e-9
        else:  # the one-snippet minimum: that snippet touches the instance's rounded position
            assert t0 + s * sec <= hi + 0.5 * sec + 1e-9 and t0 + e * sec >= lo - 0.5 * sec - 1e-9


# ---------------------------------------------------------------------------------- make_windows
def _aset():
    vids = {
        "v1": Video("v1", 10.0, "training", [Instance(2.0, 5.0, "a")]),
        "v2": Video("v2", 4.0, "training", [Instance(1.0, 3.0, "c")], labeled=False),
    }
    return AnnotationSet(vids, list(CLASSES))


def test_make_windows_modes_and_errors(caplog):
    feats = {"v1": _feats(20), "v2": _feats(8)}
    ws = make_windows(_aset(), feats, _cfg(t=10), progress=False)
    assert [w.video_id for w in ws] == ["v1", "v2"] and ws[0].segments.tolist() == [[2, 5, 0]]
    ws = make_windows(_aset(), feats, _cfg(t=10, mode="window", stride=5), progress=False)
    assert [w.video_id for w in ws] == ["v1", "v1", "v1", "v2"]  # rate from N / duration = 2 /s
    assert ws[0].snippet_sec == 0.5 and ws[3].snippet_sec == 0.5 and not ws[3].has_targets
    ws = make_windows(_aset(), feats, _cfg(t=10), mode="window", snippet_rate=4.0, progress=False)
    # windows of 2.5 s every 1.25 s; a = [2, 5] s: 0.5 s inside window 0 (dropped), 1.75 s in window 1
    assert ws[0].segments.tolist() == [] and ws[1].segments.tolist() == [[3, 10, 0]]
    with pytest.raises(FeatureError, match="no features for video 'v2'"):
        make_windows(_aset(), {"v1": _feats(20)}, _cfg(t=10), progress=False)
    assert len(make_windows(_aset(), {"v1": _feats(20)}, _cfg(t=10), missing="skip", progress=False)) == 1
    assert "skipped 1 videos" in caplog.text
    with pytest.raises(ValueError, match="3 classes, model.num_classes is 4"):
        make_windows(_aset(), feats, _cfg(t=10, k=4), progress=False)
    stats = FeatureStats.fit(feats.values())
    ws = make_windows(_aset(), feats, _cfg(t=10), mode="window", stats=stats, progress=False)
    allf = np.concatenate([w.features[: w.valid] for w in ws[:2]] + [ws[3].features[:8]])
    assert abs(float(allf.mean())) < 0.2


def test_window_dataset_batches():
    feats = {"v1": _feats(20), "v2": _feats(8)}
    ws = make_windows(_aset(), feats, _cfg(t=10, mode="window", stride=5), progress=False)
    ds = WindowDataset(ws)
    item = ds[3]
    assert item["features"].shape == (4, 10) and item["features"].dtype == torch.float32
    assert item["cls_target"].dtype == torch.int64 and item["mask_target"].shape == (10, 10)
    assert item["valid_mask"].dtype == torch.bool and item["valid_mask"].sum() == 8
    assert item["labeled"].item() is False and item["index"].item() == 3
    torch.testing.assert_close(item["features"], torch.from_numpy(ws[3].features.T.copy()))
    assert ws[3].features_ct().shape == (4, 10) and ws[3].features_tc() is ws[3].features
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["features"].shape == (4, 4, 10) and batch["mask_target"].shape == (4, 10, 10)
    assert batch["labeled"].tolist() == [True, True, True, False]
    assert ds.indices(labeled=True) == [0, 1, 2] and ds.indices(labeled=False) == [3]
