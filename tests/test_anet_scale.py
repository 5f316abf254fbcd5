"""benchmarks.anet_scale on a slice of the real ActivityNet annotations (the full run is a benchmark)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.anet_scale import load_anet, run, synth_windows
from spot_core.config import SpotConfig


def test_synthetic_windows_follow_the_real_annotations(shared_data: Path) -> None:
    aset = load_anet(shared_data)
    cfg = SpotConfig.preset("anet").replace(class_names=tuple(aset.classes))
    part = {k: v for k, v in list(aset.videos.items())[:40]}
    from spot_core.data.annotations import AnnotationSet

    train, val = synth_windows(AnnotationSet(part, list(aset.classes)), cfg, seed=0)
    assert len(train) + len(val) == sum(v.base_subset in ("training", "validation") for v in part.values())
    for w in train + val:
        assert w.features.shape == (100, 400) and w.features.dtype == np.float32
        if w.labeled and w.has_targets:  # labelled: targets from the real segments
            video = part[w.video_id]
            assert (w.cls_target < 200).any() == bool(video.instances)
        else:
            assert (w.cls_target == 200).all()  # unlabelled: no targets


def test_small_run_reports_every_figure(shared_data: Path, tmp_path: Path) -> None:
    rep = run(shared_data, tmp_path / "run", epochs=1, pretrain_epochs=1, threads=1, seed=0, limit=8)
    assert rep["videos"] == {"train": 16, "train_labeled": 8, "validation": 8}
    stages = [e["stage"] for e in rep["epochs"]]
    assert stages == ["pretrain", "finetune"]
    assert all(e["windows_per_s"] > 0 for e in rep["epochs"])
    assert rep["loader_only_windows_per_s"] > 0 and rep["peak_rss_mib"] > 0
    assert 0.0 <= rep["val_average_mAP"] <= 1.0
