"""The synthetic data generator and loading a dataset folder."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter

import numpy as np
import pytest

from spot_core.config import SpotConfig
from spot_core.data.annotations import AnnotationError, load_annotations, split_labels, write_activitynet_json
from spot_core.data.datasets import WindowDataset, load_dataset
from spot_core.data.features import FeatureError
from spot_core.data.synthetic import SyntheticSpec, class_kinds, class_names, generate_dataset
from spot_core.data.windows import window_starts


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("toy"), None, num_train=24, num_val=8, seed=3)


def test_same_seed_gives_identical_bytes(tmp_path, toy):
    again = generate_dataset(tmp_path / "a", SpotConfig.preset("toy"), num_train=24, num_val=8, seed=3)
    assert _digest(again) == _digest(toy)
    other = generate_dataset(tmp_path / "b", None, num_train=24, num_val=8, seed=4)
    assert _digest(other).keys() == _digest(toy).keys() and _digest(other) != _digest(toy)
    # a video does not depend on how many others are generated
    fewer = generate_dataset(tmp_path / "c", None, num_train=5, num_val=1, seed=3)
    assert (fewer / "features/train_0004.npy").read_bytes() == (toy / "features/train_0004.npy").read_bytes()


def test_layout_and_contents(toy):
    data = json.loads((toy / "annotations.json").read_text())
    assert data["classes"] == class_names(6) and data["snippet_rate"] == 2.0
    assert data["generator"]["seed"] == 3 and data["generator"]["feat_dim"] == 32
    aset = load_annotations(toy / "annotations.json")
    assert aset.subset_counts() == {"training": 24, "validation": 8}
    assert len(aset.classes) == 6
    spec = SyntheticSpec()
    lengths = []
    for v in aset:
        x = np.load(toy / "features" / f"{v.video_id}.npy")
        assert x.dtype == np.float32 and x.shape[1] == 32 and np.isfinite(x).all()
        assert spec.min_snippets <= x.shape[0] <= spec.max_snippets
        assert v.duration == x.shape[0] / 2.0
        assert 1 <= len(v.instances) <= spec.max_instances
        ends = [0.0]
        for i in v.instances:  # sorted, separated by background, inside the video
            assert i.start >= ends[-1] + 0.5 - 1e-3 and i.end <= v.duration
            ends.append(i.end)
        lengths.append(x.shape[0])
    assert min(lengths) < 80 and max(lengths) > 200  # short and long videos
    labels = Counter(i.label for v in aset for i in v.instances)
    assert len(labels) == 6
    assert sum(len({i.label for i in v.instances}) > 1 for v in aset) >= 5  # mixed-class videos


def test_class_kinds():
    assert [k for k, _ in class_kinds(6)] == ["order", "order", "fewdims", "fewdims", "rhythm", "rhythm"]
    assert class_kinds(3)[2] == ("plain", 0) and class_names(3) == ["order0_a", "order0_b", "plain2"]


def test_order_pair_is_not_separable_per_snippet(tmp_path):
    """Classes 0/1 look the same snippet by snippet; only the order of the two phases differs."""
    d = generate_dataset(
        tmp_path, {"noise": 0.0, "distractors_per_100": 0.0}, num_train=40, num_val=0, seed=0
    )
    aset = load_annotations(d / "annotations.json")
    halves = {0: [[], []], 1: [[], []]}
    names = class_names(6)
    for v in aset:
        x = np.load(d / "features" / f"{v.video_id}.npy")
        for i in v.instances:
            c = names.index(i.label)
            if c > 1:
                continue
            a, b = int(np.ceil(i.start * 2)), int(i.end * 2)
            mid = (a + b) // 2
            if b - a >= 8:
                halves[c][0].append(x[a + 2 : mid - 1].mean(0))
                halves[c][1].append(x[mid + 1 : b - 2].mean(0))
    first0, second0 = np.mean(halves[0][0], 0), np.mean(halves[0][1], 0)
    first1, second1 = np.mean(halves[1][0], 0), np.mean(halves[1][1], 0)
    # class 0's first half looks like class 1's second half and vice versa
    assert np.linalg.norm(first0 - second1) < 0.3 * np.linalg.norm(first0 - second0)
    assert np.linalg.norm(second0 - first1) < 0.3 * np.linalg.norm(first0 - second0)


def test_load_dataset_modes(toy):
    cfg = SpotConfig.preset("toy")
    aset, ws = load_dataset(toy, cfg, "training", progress=False)
    assert len(aset) == 24 and len(ws) == 24
    assert all(w.features.shape == (64, 32) and w.has_targets for w in ws)
    assert sum(len(w.segments) for w in ws) >= 24
    item = WindowDataset(ws)[0]
    assert item["features"].shape == (32, 64) and item["mask_target"].shape == (64, 64)
    # native-rate windows: count follows the formula from each video's length
    wcfg = cfg.override(["data.mode=window", "data.stride=32"])
    aset, ws = load_dataset(toy, wcfg, "validation", progress=False)
    expected = sum(len(window_starts(int(v.duration * 2), 64, 32)) for v in aset)
    assert len(ws) == expected and all(w.snippet_sec == 0.5 for w in ws)
    # normalisation with training statistics
    ncfg = cfg.override(["data.normalize=true"])
    _, ws = load_dataset(toy, ncfg, "training", progress=False)
    allf = np.concatenate([w.features for w in ws])
    assert abs(float(allf.mean())) < 0.1 and abs(float(allf.std()) - 1.0) < 0.15


def test_load_dataset_semi_supervised_and_errors(toy, tmp_path):
    folder = tmp_path / "semi"
    shutil.copytree(toy, folder)
    aset = split_labels(load_annotations(folder / "annotations.json"), 0.25, seed=0)
    write_activitynet_json(aset, folder / "annotations.json")
    cfg = SpotConfig.preset("toy")
    part, ws = load_dataset(folder, cfg, "training", progress=False)
    assert len(part) == 24 and sum(w.labeled for w in ws) == 6
    assert all(w.has_targets == w.labeled for w in ws)
    assert WindowDataset(ws).indices(labeled=False) == [i for i, w in enumerate(ws) if not w.labeled]
    with pytest.raises(ValueError, match="num_classes"):
        load_dataset(folder, cfg.override(["model.num_classes=5"]), "training", progress=False)
    with pytest.raises(AnnotationError, match="no videos in subset 'testing'"):
        load_dataset(folder, cfg, "testing", progress=False)
    with pytest.raises(FeatureError, match="32 channels per snippet, expected 16"):
        load_dataset(folder, cfg.override(["model.feat_dim=16"]), "training", progress=False)
    with pytest.raises(AnnotationError, match="annotations.json: not found"):
        load_dataset(tmp_path, cfg, "training")


def test_generator_arguments(tmp_path):
    with pytest.raises(TypeError):
        generate_dataset(tmp_path, 3)
    with pytest.raises(ValueError):
        SyntheticSpec(feat_dim=4)
    d = generate_dataset(
        tmp_path, {"feat_dim": 12, "num_classes": 3, "max_snippets": 60}, num_train=3, num_val=0
    )
    aset = load_annotations(d / "annotations.json")
    assert aset.classes == class_names(3) and np.load(d / "features/train_0000.npy").shape[1] == 12
