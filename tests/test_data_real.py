"""The readers and windows on the real annotation files in ../shared/data (see its README)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from spot_core.config import DataConfig, ModelConfig, SpotConfig
from spot_core.data.annotations import (
    clean_instances,
    load_annotations,
    read_actrectut_json,
    read_spot_bsn,
    read_thumos_csv,
)
from spot_core.data.features import FeatureStore, load_features, snippetize_stream
from spot_core.data.windows import make_windows, window_starts

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def anet_10(shared_data):
    d = shared_data / "activitynet"
    return read_spot_bsn(
        d / "anet_anno_action.json",
        d / "video_info_new.csv",
        d / "video_info_new_0.9.csv",
        d / "action_name.csv",
    )


def test_activitynet_10_percent_split(anet_10):
    aset = anet_10
    assert len(aset) == 19_228
    assert aset.subset_counts() == {
        "training": 966,
        "training_unlabel": 8_683,
        "validation": 4_728,
        "testing": 4_851,
    }
    train = aset.training()
    assert len(train) == 9_649
    assert sum(v.labeled for v in train) == 966
    assert sum(not v.labeled for v in train) == 8_683
    assert all(v.labeled for v in aset.subset("validation"))
    assert not any(v.labeled for v in aset.subset("testing"))
    assert len(aset.classes) == 200 and aset.classes[0] == "Applying sunscreen"  # action_name.csv order
    assert all(v.instances == [] for v in aset.subset("testing"))


def test_activitynet_messy_ground_truth_is_kept(anet_10):
    val = anet_10.subset("validation")
    insts = [(v, i) for v in val for i in v.instances]
    assert sum(i.end == i.start for _, i in insts) == 3  # zero-length, kept for the evaluator
    exact_dups = sum(n - 1 for v in val for n in Counter(v.instances).values())
    assert exact_dups == 17
    beyond = sum(i.end > v.duration for v, i in insts)
    assert beyond == 71
    train_val = anet_10.training().videos | val.videos
    assert sum(i.end > v.duration for v in train_val.values() for i in v.instances) == 215
    # the target builder's view: 3 zero-length and 19 duplicates (17 exact + 2 within 1 us) removed
    cleaned = sum(len(clean_instances(v)) for v in val)
    assert len(insts) - cleaned == 3 + 19
    # feature_frame/duration_frame correction as SPOT computes it
    v = anet_10.videos["v_QOlSCBRmfWY"]
    assert v.feature_duration == pytest.approx(2064 / 2067 * 82.73)


def test_activitynet_60_percent_split_and_autodetect(shared_data):
    d = shared_data / "activitynet"
    aset = load_annotations(
        d / "anet_anno_action.json", split=d / "video_info_new_0.4.csv", class_names=d / "action_name.csv"
    )
    counts = aset.subset_counts()
    assert (counts["training"], counts["training_unlabel"]) == (5_782, 3_867)
    full = load_annotations(d / "anet_anno_action.json")
    assert full.subset_counts()["training"] == 9_649 and sorted(full.classes) == sorted(aset.classes)


def test_thumos14(shared_data):
    d = shared_data / "thumos14"
    val = load_annotations(d / "val_Annotation.csv")
    test = read_thumos_csv(d / "test_Annotation.csv")
    assert {v.subset for v in val} == {"validation"} and {v.subset for v in test} == {"test"}
    assert len(val) == 200 and sum(bool(v.instances) for v in val) == 200
    assert len(test) == 213 and sum(bool(v.instances) for v in test) == 212  # one test video: ambiguous only
    # non-Ambiguous instances; Ambiguous segments are kept apart
    assert val.num_instances() == 3_007 and sum(len(v.ambiguous) for v in val) == 89
    assert test.num_instances() == 3_358 and sum(len(v.ambiguous) for v in test) == 99
    assert len(val.classes) == 20 and val.classes == test.classes and "Ambiguous" not in val.classes
    assert all(v.duration >= max(i.end for i in v.instances + v.ambiguous) for v in test)


def test_mmaction2_feature_csvs(shared_data):
    d = shared_data / "feature_formats"
    for name in ("activitynet_features_v_test1", "activitynet_features_v_test2"):
        x = load_features(d / f"{name}.csv", expected_dim=400)
        assert x.shape == (5, 400) and x.dtype == np.float32 and np.isfinite(x).all()
    store = FeatureStore(d, "csv", expected_dim=400)
    assert sorted(store) == ["activitynet_features_v_test1", "activitynet_features_v_test2"]


def test_actrectut(shared_data):
    d = shared_data / "actrectut"
    aset = read_actrectut_json(d / "gesture.json")
    assert sorted(aset.videos) == ["subject1_gesture", "subject2_gesture"]
    assert [len(v.instances) for v in aset] == [286, 286]
    assert len(aset.classes) == 11
    s1 = aset.videos["subject1_gesture"]
    assert (s1.fps, s1.num_frames, s1.subset, s1.feature_file) == (
        32.0,
        62_480,
        "subject1",
        "subject1_gesture_data.npy",
    )
    assert load_annotations(d / "gesture.json").videos["subject2_gesture"].duration == 2211.8125


def test_actrectut_windows_have_sane_targets(shared_data):
    d = shared_data / "actrectut"
    aset = read_actrectut_json(d / "gesture.json").subset("subject1")
    store = FeatureStore(d, "npy", transform=lambda x: snippetize_stream(x, 8))  # 32 Hz / 8 = 4 snippets/s
    s1 = aset.videos["subject1_gesture"]
    feats = store.for_video(s1)
    assert feats.shape == (62_480 // 8, 60)
    t, k = 128, len(aset.classes)
    seconds = sum(i.end - i.start for i in s1.instances)
    fg = {}
    for min_inside in (0.0, 0.5):
        cfg = SpotConfig(
            name="actrectut",
            model=ModelConfig(feat_dim=60, num_snippets=t, num_classes=k, num_heads=1),
            data=DataConfig(mode="window", stride=t, snippet_rate=4.0, min_inside=min_inside),  # no overlap
        )
        ws = make_windows(aset, {s1.video_id: feats}, cfg, progress=False)
        assert len(ws) == len(window_starts(len(feats), t, t)) == 62
        for w in ws:
            assert w.has_targets and w.snippet_sec == 0.25
            assert np.array_equal(np.diag(w.mask_target) > 0, w.cls_target != k)
            assert (w.cls_target[w.valid :] == k).all()
        fg[min_inside] = sum(int((w.cls_target != k).sum()) for w in ws) / 4.0  # seconds
        spans = sum(len(w.segments) for w in ws)
        lengths = np.concatenate([w.segments[:, 1] - w.segments[:, 0] for w in ws])
        assert lengths.min() >= 1 and lengths.max() <= 4 * 20  # gestures last 2-8 s (at most 20 s)
        if min_inside == 0.0:
            # every inside part kept: 286 instances plus one per instance cut by a window boundary
            assert 286 <= spans <= 286 + len(ws)
        else:
            assert 286 - len(ws) <= spans <= 286
    # foreground seconds match the annotated seconds up to rounding; with min_inside 0.5 the smaller
    # part of each instance cut by a window boundary is background
    assert abs(fg[0.0] - seconds) / seconds < 0.005
    assert 0.9 * seconds < fg[0.5] < fg[0.0]
