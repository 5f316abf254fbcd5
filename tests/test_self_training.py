"""Self-training on unlabelled streams (spot_core.self_training, ``semi.self_train_rounds``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spot_core.config import ConfigError, SpotConfig
from spot_core.data.annotations import Instance, Video
from spot_core.data.windows import slide_video
from spot_core.self_training import (
    infer_train_stride,
    pseudo_instances,
    pseudo_label_windows,
    video_features,
)

WINDOW = ["data.mode=window", "data.stride=16", "model.num_snippets=16", "data.snippet_rate=4.0"]


def _cfg(*sets: str) -> SpotConfig:
    cfg = SpotConfig.preset("toy").override([*WINDOW, *sets])
    return cfg.replace(class_names=tuple(f"c{i}" for i in range(cfg.model.num_classes)))


def _stream(n: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, c)).astype(np.float32)


def test_video_features_and_stride_from_the_windows():
    cfg = _cfg()
    index = {k: i for i, k in enumerate(cfg.class_names)}
    x, y = _stream(101, cfg.model.feat_dim, 0), _stream(7, cfg.model.feat_dim, 1)
    crops = cfg.override(["data.stride=4"])
    ws = slide_video(Video("a", 101 / 4, "training_unlabel", labeled=False), x, crops, index, 4.0)
    ws += slide_video(Video("b", 7 / 4, "training_unlabel", labeled=False), y, crops, index, 4.0)
    got = video_features(ws)
    assert set(got) == {"a", "b"}
    np.testing.assert_array_equal(got["a"][0], x)
    np.testing.assert_array_equal(got["b"][0], y)
    assert got["a"][1] == 0.25
    assert infer_train_stride(ws) == 4


def test_pseudo_instances_keep_sure_detections_without_overlap():
    dets = [
        {"segment": [1.0, 3.0], "label": "c0", "score": 0.9},
        {"segment": [2.0, 4.0], "label": "c1", "score": 0.8},  # overlaps the first: dropped
        {"segment": [3.0, 5.0], "label": "c2", "score": 0.7},  # touches it only: kept
        {"segment": [6.0, 6.0], "label": "c0", "score": 0.95},  # empty: dropped
        {"segment": [8.0, 9.0], "label": "c1", "score": 0.4},  # below the threshold
    ]
    got = pseudo_instances(dets, 0.5)
    assert got == [Instance(1.0, 3.0, "c0"), Instance(3.0, 5.0, "c2")]
    assert pseudo_instances(dets, 0.99) == []


def test_pseudo_label_windows_are_the_ground_truth_windows(monkeypatch):
    """A teacher that detects exactly the ground truth (score 1) gives the windows the labelled video
    would give: same features, targets and segments, at the caller's training stride."""
    import spot_core.inference

    cfg = _cfg()
    index = {k: i for i, k in enumerate(cfg.class_names)}
    x = _stream(90, cfg.model.feat_dim)
    truth = [Instance(2.0, 5.5, "c1"), Instance(9.0, 12.25, "c3"), Instance(15.0, 22.5, "c0")]
    crops = cfg.override(["data.stride=4"])
    unlabeled = slide_video(Video("s", 22.5, "training_unlabel", labeled=False), x, crops, index, 4.0)
    want = slide_video(Video("s", 22.5, "training", truth, labeled=True), x, crops, index, 4.0)

    def oracle(model, windows, c, **kw):
        assert {w.video_id for w in windows} == {"s"} and c.data.stride == 16  # the inference stride
        return {
            "results": {"s": [{"segment": [i.start, i.end], "label": i.label, "score": 1.0} for i in truth]}
        }

    monkeypatch.setattr(spot_core.inference, "predict_windows", oracle)
    got, summary = pseudo_label_windows(None, cfg, unlabeled, train_stride=4)
    assert summary["instances"] == 3 and summary["videos"] == 1
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.labeled and g.has_targets and g.t_start == w.t_start and g.valid == w.valid
        np.testing.assert_array_equal(g.features, w.features)
        np.testing.assert_array_equal(g.cls_target, w.cls_target)
        np.testing.assert_array_equal(g.mask_target, w.mask_target)
        np.testing.assert_array_equal(g.segments, w.segments)


def test_config_checks():
    with pytest.raises(ConfigError, match="self_train_rounds must be >= 0"):
        _cfg("semi.self_train_rounds=-1")
    with pytest.raises(ConfigError, match=r"self_train_score must be in \[0, 1\]"):
        _cfg("semi.self_train_score=1.5")
    with pytest.raises(ConfigError, match="needs data.mode: window"):
        SpotConfig.preset("toy").override(["semi.self_train_rounds=1"])


def test_two_rounds_end_to_end_and_resume(tmp_path):
    """spot_core.train with 25 % labels and two rounds: the teacher in round0, a student in round1,
    the last student in OUT; a resumed finished run retrains nothing."""
    from spot_core.checkpoint import load_model
    from spot_core.data.synthetic import generate_dataset
    from spot_core.train import main as train_main

    data = generate_dataset(tmp_path / "data", SpotConfig.preset("toy"), num_train=8, num_val=2)
    out = tmp_path / "run"
    sets = [*WINDOW, "data.train_stride=8", "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=4",
            "semi.self_train_rounds=2", "semi.self_train_score=0.0"]  # fmt: skip
    argv = ["--preset", "toy", "--data", str(data), "--out", str(out), "--no-progress",
            "--labeled-fraction", "0.25", "--set", *sets]  # fmt: skip
    assert train_main(argv) == 0
    for d in (out / "round0", out / "round1", out):
        assert (d / "last.safetensors").is_file(), d
    rounds = json.loads((out / "self_training.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["instances"] > 0 for r in rounds)
    _, final = load_model(out / "last.safetensors")
    assert (
        final.semi.self_train_rounds == 2 and not final.semi.use_unlabeled and final.semi.pretrain_epochs == 0
    )
    before = {p: p.read_bytes() for p in out.rglob("*.safetensors")}
    assert train_main([*argv[: argv.index("--set")], "--resume", "--set", *sets]) == 0
    assert {p: p.read_bytes() for p in out.rglob("*.safetensors")} == before
