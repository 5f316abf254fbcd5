"""Annotation readers/writers and feature files on small hand-written inputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from spot_core.data.annotations import (
    AnnotationError,
    AnnotationSet,
    Instance,
    Video,
    clean_instances,
    load_annotations,
    read_activitynet_json,
    read_actrectut_json,
    read_spot_bsn,
    read_thumos_csv,
    split_labels,
    write_activitynet_json,
)
from spot_core.data.features import FeatureError, FeatureStore, load_features, snippetize_stream


# --------------------------------------------------------------------------------------- helpers
def _anet(tmp_path: Path, database: dict, **top) -> Path:
    p = tmp_path / "anet.json"
    p.write_text(json.dumps({"version": "1.3", **top, "database": database}))
    return p


def _db() -> dict:
    return {
        "vA": {
            "subset": "training",
            "duration": 10.0,
            "annotations": [
                {"segment": [1.0, 4.0], "label": "jump"},
                {"segment": [5.0, 5.0], "label": "run"},  # zero length: kept by the reader
                {"segment": [8.0, 12.0], "label": "jump"},  # beyond the duration: kept
                {"segment": [1.0, 4.0], "label": "jump"},  # duplicate: kept
            ],
        },
        "vB": {
            "subset": "validation",
            "duration": 20.0,
            "annotations": [{"segment": [0, 3], "label": "run"}],
        },
        "vC": {"subset": "testing", "duration": 7.5, "annotations": []},
    }


def _bsn(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    anno = {
        "v_a": {
            "duration_second": 10.0,
            "duration_frame": 300,
            "feature_frame": 288,
            "annotations": [{"segment": [1.0, 3.0], "label": "B"}],
        },
        "v_b": {
            "duration_second": 20.0,
            "duration_frame": 500,
            "feature_frame": 512,
            "annotations": [{"segment": [2.0, 9.0], "label": "A"}],
        },
        "v_c": {"duration_second": 5.0, "duration_frame": 150, "feature_frame": 144, "annotations": []},
    }
    a = tmp_path / "anet_anno_action.json"
    a.write_text(json.dumps(anno))
    head = "video,numFrame,seconds,fps,rfps,subset,featureFrame\n"
    info = tmp_path / "video_info_new.csv"
    info.write_text(
        head + "v_a,300,10.0,30.0,30.0,training,288\nv_b,500,20.0,25.0,25.0,training,512\n"
        "v_c,150,5.0,30.0,30.0,testing,144\n"
    )
    split = tmp_path / "video_info_new_0.5.csv"
    split.write_text(
        head + "v_a,300,10.0,30.0,30.0,training,288\nv_b,500,20.0,25.0,25.0,training_unlabel,512\n"
        "v_c,150,5.0,30.0,30.0,testing,144\n"
    )
    names = tmp_path / "action_name.csv"
    names.write_text("action\nB\nA\n")
    return a, info, split, names


# ------------------------------------------------------------------------------ ActivityNet JSON
def test_activitynet_reader_keeps_messy_instances(tmp_path):
    aset = read_activitynet_json(_anet(tmp_path, _db()))
    assert aset.classes == ["jump", "run"]  # sorted unique labels
    v = aset.videos["vA"]
    assert v.subset == "training" and v.labeled and v.duration == 10.0
    assert len(v.instances) == 4  # zero-length, beyond-duration and duplicate all kept
    assert v.instances[1] == Instance(5.0, 5.0, "run")
    assert aset.videos["vC"].labeled is False  # ActivityNet testing: no labels
    assert aset.subset_counts() == {"training": 1, "validation": 1, "testing": 1}
    assert len(aset.subset("validation")) == 1 and aset.num_instances() == 5


def test_clean_instances_clips_drops_and_dedups():
    v = Video(
        "v",
        10.0,
        "training",
        [
            Instance(1.0, 4.0, "a"),
            Instance(5.0, 5.0, "a"),  # zero length
            Instance(8.0, 12.0, "b"),  # clipped to 10
            Instance(1.0, 4.0000001, "a"),  # near duplicate
            Instance(1.0, 4.0, "b"),  # same span, other label: kept
            Instance(-3.0, -1.0, "a"),  # wholly outside
            Instance(10.0, 11.0, "a"),  # outside after clipping
        ],
    )
    assert clean_instances(v) == [Instance(1.0, 4.0, "a"), Instance(8.0, 10.0, "b"), Instance(1.0, 4.0, "b")]
    assert clean_instances(v, 9.0)[1] == Instance(8.0, 9.0, "b")
    assert len(v.instances) == 7  # the video is untouched


def test_activitynet_class_list_and_unknown_labels(tmp_path, caplog):
    p = _anet(tmp_path, _db())
    aset = read_activitynet_json(p, class_names=["run", "jump", "swim"])
    assert aset.classes == ["run", "jump", "swim"]
    with pytest.raises(AnnotationError, match="'jump'.*not in the class list"):
        read_activitynet_json(p, class_names=["run"])
    with caplog.at_level(logging.WARNING):
        aset = read_activitynet_json(p, class_names=["run"], unknown="drop")
    assert "dropped 3 instances" in caplog.text
    assert all(i.label == "run" for v in aset for i in v.instances)


def test_activitynet_round_trip(tmp_path):
    aset = read_activitynet_json(_anet(tmp_path, _db()))
    aset.videos["vA"].fps = 30.0
    aset.videos["vA"].feature_file = "vA.npy"
    aset.videos["vB"].labeled = False
    out = write_activitynet_json(aset, tmp_path / "out" / "a.json", extra={"note": 1})
    data = json.loads(out.read_text())
    assert data["classes"] == ["jump", "run"] and data["note"] == 1
    back = read_activitynet_json(out)
    assert back.classes == aset.classes
    for k, v in aset.videos.items():
        w = back.videos[k]
        assert (w.subset, w.duration, w.instances, w.labeled, w.fps, w.feature_file) == (
            v.subset,
            v.duration,
            v.instances,
            v.labeled,
            v.fps,
            v.feature_file,
        )
    # the "classes" key wins over sorted labels: order and label-less classes are kept
    aset.classes = ["run", "jump", "zzz"]
    write_activitynet_json(aset, tmp_path / "b.json")
    assert read_activitynet_json(tmp_path / "b.json").classes == ["run", "jump", "zzz"]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["vA"].pop("duration"), "video 'vA'.*missing field 'duration'"),
        (
            lambda d: d["vA"]["annotations"][0].update(segment=[4.0, 1.0]),
            "video 'vA': annotation 0.*end 1.0 < start",
        ),
        (lambda d: d["vB"]["annotations"][0].update(segment=["x", 3]), "video 'vB'.*must be a number"),
        (lambda d: d["vB"]["annotations"][0].update(segment=[1]), "video 'vB'.*\\[start, end\\]"),
        (lambda d: d["vB"]["annotations"][0].pop("label"), "video 'vB'.*'segment' and 'label'"),
        (lambda d: d["vB"].update(duration=-1), "video 'vB'.*duration must be > 0"),
        (lambda d: d["vB"].update(duration="nan"), "video 'vB'.*finite"),
        (lambda d: d["vB"].update(annotations={}), "video 'vB'.*must be a list"),
    ],
)
def test_activitynet_bad_input_names_file_and_video(tmp_path, mutate, match):
    db = _db()
    mutate(db)
    p = _anet(tmp_path, db)
    with pytest.raises(AnnotationError, match=match) as e:
        read_activitynet_json(p)
    assert str(p) in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        read_activitynet_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="bad.json: not valid JSON"):
        load_annotations(bad)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"hello": 1}))
    with pytest.raises(AnnotationError, match="unrecognised annotation format"):
        load_annotations(odd)
    with pytest.raises(AnnotationError, match="'database'"):
        read_activitynet_json(odd)


# ---------------------------------------------------------------------------------- SPOT / BSN
def test_spot_bsn_split_and_classes(tmp_path):
    a, info, split, names = _bsn(tmp_path)
    full = read_spot_bsn(a, info)
    assert full.classes == ["A", "B"]
    assert all(v.labeled for v in full.training())
    aset = read_spot_bsn(a, info, split, names)
    assert aset.classes == ["B", "A"]  # action_name.csv order
    vb = aset.videos["v_b"]
    assert vb.subset == "training_unlabel" and not vb.labeled and vb.base_subset == "training"
    assert vb.fps == 25.0 and vb.num_frames == 500 and vb.feature_frames == 512
    assert vb.feature_duration == pytest.approx(512 / 500 * 20.0)
    assert vb.instances == [Instance(2.0, 9.0, "A")]  # kept in memory; the flag says do not train on them
    assert sorted(aset.training().videos) == ["v_a", "v_b"]
    assert sorted(aset.select("training").videos) == ["v_a", "v_b"]
    assert list(aset.subset("training").videos) == ["v_a"]
    assert list(aset.labeled().training().videos) == ["v_a"]
    assert sorted(aset.unlabeled().videos) == ["v_b", "v_c"]  # testing videos have no labels
    # auto-detection: video_info_new.csv next to the JSON
    auto = load_annotations(a, split=split, class_names=names)
    assert auto.subset_counts() == aset.subset_counts() and auto.classes == aset.classes


def test_spot_bsn_errors(tmp_path):
    a, info, split, names = _bsn(tmp_path)
    data = json.loads(a.read_text())
    del data["v_c"]
    a.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match="video 'v_c'.*absent from the annotations"):
        read_spot_bsn(a, info)
    a, info, split, names = _bsn(tmp_path)
    info.write_text(info.read_text().replace("v_b,500,20.0", "v_b,500,abc"))
    with pytest.raises(AnnotationError, match="line 3 \\(video 'v_b'\\): seconds must be a number"):
        read_spot_bsn(a, info)
    a, info, split, names = _bsn(tmp_path)
    data = json.loads(a.read_text())
    del data["v_a"]["feature_frame"]
    a.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match="v_a.*missing field 'feature_frame'"):
        read_spot_bsn(a, info)
    with pytest.raises(AnnotationError, match="video-info csv"):
        load_annotations(info)
    lonely = tmp_path / "sub"
    lonely.mkdir()
    (lonely / "a.json").write_text(a.read_text())
    with pytest.raises(AnnotationError, match="video_info_new.csv not found"):
        load_annotations(lonely / "a.json")


# ------------------------------------------------------------------------------------- THUMOS
_THUMOS = """video,type,type_idx,start,end,startFrame,endFrame
video_validation_1,Diving,26,1.5,3.0,45,90
video_validation_1,Ambiguous,0,4.0,9.5,120,285
video_validation_1,Billiards,12,6.0,7.0,180,210
video_validation_2,Ambiguous,0,0.5,2.0,15,60
"""


def test_thumos_reader(tmp_path):
    p = tmp_path / "val_Annotation.csv"
    p.write_text(_THUMOS)
    aset = read_thumos_csv(p)
    assert aset.classes == ["Billiards", "Diving"]
    assert list(aset.videos) == ["video_validation_1", "video_validation_2"]
    v1, v2 = aset.videos.values()
    assert v1.subset == "validation" and v1.duration == 9.5  # largest end, ambiguous included
    assert [i.label for i in v1.instances] == ["Diving", "Billiards"]
    assert v1.ambiguous == [Instance(4.0, 9.5, "Ambiguous")]
    assert v2.instances == [] and len(v2.ambiguous) == 1
    aset = read_thumos_csv(p, subset="test", durations={"video_validation_1": 100.0})
    assert aset.videos["video_validation_1"].duration == 100.0 and v2.subset == "validation"
    assert load_annotations(p).num_instances() == 2
    q = tmp_path / "test_x.csv"
    q.write_text(_THUMOS)
    assert read_thumos_csv(q).videos["video_validation_1"].subset == "test"


def test_thumos_errors(tmp_path):
    p = tmp_path / "annotations.csv"
    p.write_text(_THUMOS)
    with pytest.raises(AnnotationError, match="cannot tell the subset"):
        read_thumos_csv(p)
    p = tmp_path / "val_bad.csv"
    p.write_text(_THUMOS.replace("1.5,3.0", "3.5,3.0"))
    with pytest.raises(AnnotationError, match="line 2 \\(video 'video_validation_1'\\).*end 3.0 < start 3.5"):
        read_thumos_csv(p)
    p.write_text(_THUMOS.replace("1.5,3.0", "1.5,x"))
    with pytest.raises(AnnotationError, match="line 2.*segment end must be a number"):
        read_thumos_csv(p)
    p.write_text("video,kind,start,end\nv,a,1,2\n")
    with pytest.raises(AnnotationError, match="lacks columns \\['type'\\]"):
        read_thumos_csv(p)
    p.write_text(_THUMOS + "video_validation_3,Diving,26,1.0\n")
    with pytest.raises(AnnotationError, match="val_bad.csv"):
        read_thumos_csv(p)
    with pytest.raises(AnnotationError, match="not found"):
        read_thumos_csv(tmp_path / "val_missing.csv")


# ----------------------------------------------------------------------------------- ActRecTut
def test_actrectut_reader(tmp_path):
    db = {
        "s1": {
            "subset": "subject1",
            "fps": 32.0,
            "num_frames": 640,
            "duration": 20.0,
            "channels": 3,
            "features": "s1.npy",
            "annotations": [{"label": "Drink", "segment": [1.0, 3.0], "segment(frames)": [32, 96]}],
        }
    }
    p = _anet(tmp_path, db)
    aset = read_actrectut_json(p)
    v = aset.videos["s1"]
    assert (v.fps, v.num_frames, v.feature_file, v.labeled) == (32.0, 640, "s1.npy", True)
    assert load_annotations(p).videos["s1"].fps == 32.0
    del db["s1"]["fps"]
    p = _anet(tmp_path, db)
    with pytest.raises(AnnotationError, match="video 's1'.*need 'fps'"):
        read_actrectut_json(p)


def test_split_labels_is_deterministic(tmp_path):
    videos = {f"v{i}": Video(f"v{i}", 10.0, "training", [Instance(1, 2, "a")]) for i in range(20)}
    videos["val"] = Video("val", 5.0, "validation")
    aset = AnnotationSet(videos, ["a"])
    s1, s2 = split_labels(aset, 0.1, seed=3), split_labels(aset, 0.1, seed=3)
    assert [v.labeled for v in s1] == [v.labeled for v in s2]
    assert s1.subset_counts() == {"training": 2, "training_unlabel": 18, "validation": 1}
    assert len(s1.training()) == 20 and len(s1.labeled().training()) == 2
    assert split_labels(aset, 0.01).subset_counts()["training"] == 1  # at least one
    assert all(v.labeled for v in aset)  # input untouched
    with pytest.raises(ValueError):
        split_labels(aset, 1.5)


# ------------------------------------------------------------------------------------- features
def test_load_features_npy_and_csv(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    np.save(tmp_path / "a.npy", x)
    a = load_features(tmp_path / "a.npy", expected_dim=3)
    assert a.dtype == np.float32 and a.shape == (4, 3) and np.allclose(a, x)
    rows = "\n".join(",".join(repr(float(v)) for v in r) for r in x)
    (tmp_path / "b.csv").write_text("f0,f1,f2\n" + rows + "\n")
    assert np.allclose(load_features(tmp_path / "b.csv"), x)
    (tmp_path / "c.csv").write_text(rows)  # no header
    assert load_features(tmp_path / "c.csv").shape == (4, 3)
    np.save(tmp_path / "i.npy", np.ones((2, 3), dtype=np.int16))
    assert load_features(tmp_path / "i.npy").dtype == np.float32


def test_load_features_errors(tmp_path):
    def err(name: str, arr=None, text=None, **kw):
        p = tmp_path / name
        if arr is not None:
            np.save(p, arr)
        if text is not None:
            p.write_text(text)
        with pytest.raises(FeatureError) as e:
            load_features(p, **kw)
        assert str(p) in str(e.value)
        return str(e.value)

    assert "not found" in err("missing.npy")
    assert "expected 5" in err("dim.npy", np.zeros((3, 4), np.float32), expected_dim=5)
    assert "zero snippets" in err("empty.npy", np.zeros((0, 4), np.float32))
    assert "2-D" in err("ndim.npy", np.zeros((3, 4, 2), np.float32))
    assert "2-D" in err("ndim1.npy", np.zeros(4, np.float32))
    assert "dtype bool" in err("bool.npy", np.zeros((3, 4), bool))
    assert "dtype complex" in err("complex.npy", np.zeros((3, 4), np.complex64))
    bad = np.zeros((5, 3), np.float32)
    bad[3, 1] = np.nan
    bad[4, 0] = np.inf
    assert "row 3 (snippet), channel 1" in err("nan.npy", bad)
    assert "row 2 (snippet, line 4), channel 0" in err("nan.csv", text="f0,f1\n1,2\n3,4\nnan,1\n")
    assert "row 1 (line 3), column 1: non-numeric value 'x'" in err("txt.csv", text="f0,f1\n1,2\n3,x\n")
    assert "has 1 values, expected 2" in err("ragged.csv", text="f0,f1\n1,2\n3\n")
    assert "zero snippets" in err("header.csv", text="f0,f1\n")
    assert "empty csv" in err("blank.csv", text="")
    assert "unsupported" in err("x.txt", text="1,2")
    assert "overflow" in err("big.csv", text="1e39,1\n")
    (tmp_path / "pickle.npy").write_bytes(b"garbage")
    assert "npy" in err("pickle.npy")


def test_feature_store(tmp_path):
    np.save(tmp_path / "v1.npy", np.ones((5, 4), np.float32))
    np.save(tmp_path / "stream.npy", np.ones((17, 2), np.float32))
    store = FeatureStore(tmp_path, ".npy", expected_dim=4)
    assert "v1" in store and "v2" not in store and sorted(store) == ["stream", "v1"] and len(store) == 2
    assert store["v1"].shape == (5, 4)
    with pytest.raises(KeyError):
        store["v2"]
    with pytest.raises(FeatureError, match="v2.npy: feature file not found for video 'v2'"):
        store.load("v2")
    raw = FeatureStore(tmp_path, "npy", transform=lambda x: snippetize_stream(x, 4))
    v = Video("s", 10.0, "subject1", feature_file="stream.npy")
    assert raw.has_video(v) and raw.for_video(v).shape == (4, 8)
    with pytest.raises(FeatureError, match="folder not found"):
        FeatureStore(tmp_path / "nope")
    with pytest.raises(FeatureError, match="unsupported"):
        FeatureStore(tmp_path, "h5")


def test_snippetize_stream():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((35, 3)).astype(np.float32)
    f = snippetize_stream(x, 8)
    assert f.shape == (4, 12) and f.dtype == np.float32  # the partial 5th snippet is dropped
    blk = x[8:16].astype(np.float64)
    np.testing.assert_allclose(f[1, 0:3], blk.mean(0), rtol=1e-6)
    np.testing.assert_allclose(f[1, 3:6], blk.std(0), rtol=1e-6)
    np.testing.assert_allclose(f[1, 6:9], blk.min(0))
    np.testing.assert_allclose(f[1, 9:12], blk.max(0))
    assert np.array_equal(snippetize_stream(x[:32], 8), f)  # snippets do not depend on the tail
    with pytest.raises(FeatureError, match="shorter than one snippet"):
        snippetize_stream(x[:5], 8)
    with pytest.raises(FeatureError):
        snippetize_stream(x[:, 0], 8)
    with pytest.raises(FeatureError, match=">= 1"):
        snippetize_stream(x, 0)
