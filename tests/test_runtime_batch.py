"""runtime.batch: sharded corpus detection under torchrun (gloo, 2 processes on CPU), kill -9 and
rerun, corrupt shard files, bad input.

One random toy model and 1,000 synthetic videos of 20-199 snippets (random features: the outputs
only need to be compared, not to be good).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.batch import BatchError, Shard, _annotations, detect_corpus, main, plan_shards, read_shard
from spot_core.checkpoint import save_model
from spot_core.config import SpotConfig
from spot_core.data.features import FeatureStore
from spot_core.data.windows import make_windows
from spot_core.inference import predict_windows
from spot_core.model import SPOT

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _cmd(corpus: dict[str, Path], out: Path, *extra: str, procs: int = 1) -> list[str]:
    args = ["--model", str(corpus["model"]), "--features", str(corpus["features"]), "--out", str(out),
            "--snippet-rate", "2", "--no-progress", *extra]  # fmt: skip
    if procs == 1:
        return [sys.executable, "-m", "runtime.batch", *args]
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
    return [*run, "--master_port", str(29500 + os.getpid() % 1000), "-m", "runtime.batch", *args]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc; torchrun's workers do not die with their launcher)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    cfg = SpotConfig.preset("toy")
    torch.manual_seed(0)
    model = save_model(root / "model.safetensors", SPOT(cfg.model), cfg)
    feats = root / "features"
    feats.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1000):
        n = int(rng.integers(20, 200))
        np.save(feats / f"v{i:04d}.npy", rng.standard_normal((n, cfg.model.feat_dim)).astype(np.float32))
    ref = root / "single"
    subprocess.run(_cmd({"model": model, "features": feats}, ref, "--shard-size", "5"), env=ENV, check=True)
    return {"model": model, "features": feats, "single": ref / "detections.json"}


def test_two_processes_equal_one(corpus: dict[str, Path], tmp_path: Path) -> None:
    res = subprocess.run(
        _cmd(corpus, tmp_path / "two", "--shard-size", "5", procs=2), env=ENV, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 1: 100 shards detected" in res.stderr and "rank 0: 100 shards detected" in res.stderr
    one = json.loads(corpus["single"].read_text())
    two = json.loads((tmp_path / "two" / "detections.json").read_text())
    assert len(one["results"]) == 1000 and sum(map(len, one["results"].values())) > 1000
    assert two == one


def test_kill_nine_and_rerun_loses_and_duplicates_nothing(corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "killed"
    shards = out / "shards"
    proc = subprocess.Popen(
        _cmd(corpus, out, "--shard-size", "5", procs=2), env=ENV, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(shards.glob("shard_*.json"))) < 10:
        time.sleep(0.01)
    for pid in [proc.pid, *_descendants(proc.pid)]:  # torchrun and both workers, at once
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    assert not (out / "detections.json").exists(), "the run finished before it was killed"
    finished = sorted(shards.glob("shard_*.json"))
    assert 10 <= len(finished) < 200
    # every shard file a killed run left behind is complete (atomic writes); no temporary is mistaken
    # for a shard
    for path in finished:
        doc = json.loads(path.read_text())
        read_shard(path, doc["run_key"], Shard(doc["shard"], tuple(doc["videos"])))
    res = subprocess.run(_cmd(corpus, out, "--shard-size", "5"), env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{len(finished)} already done" in res.stderr
    merged = json.loads((out / "detections.json").read_text())
    assert merged == json.loads(corpus["single"].read_text())


def test_corrupt_shards_are_reported_and_recomputed(corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    subprocess.run(_cmd(corpus, out, "--shard-size", "5"), env=ENV, check=True)  # 1 thread, as the reference
    s0, s1, s2 = (out / "shards" / f"shard_0000{i}.json" for i in range(3))
    s0.write_bytes(s0.read_bytes()[:-50])  # truncated
    doc = json.loads(s1.read_text())
    first = next(v for v in doc["results"] if doc["results"][v])
    doc["results"][first][0]["score"] += 0.5  # edited: checksum no longer matches
    s1.write_text(json.dumps(doc))
    doc = json.loads(s2.read_text())
    doc["run_key"] = "0" * 64  # another run's shard
    s2.write_text(json.dumps(doc))
    res = subprocess.run(_cmd(corpus, out, "--shard-size", "5"), env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "unreadable shard file" in res.stderr and "checksum mismatch" in res.stderr
    assert "written by another run" in res.stderr and "3 shards detected, 197 already done" in res.stderr
    assert all(p.with_name(p.name + ".corrupt").exists() for p in (s0, s1, s2))
    assert json.loads((out / "detections.json").read_text()) == json.loads(corpus["single"].read_text())


def test_plan_is_independent_of_order_and_world_size() -> None:
    shards = plan_shards(["c", "a", "b", "e", "d"], 2)
    assert shards == [Shard(0, ("a", "b")), Shard(1, ("c", "d")), Shard(2, ("e",))]
    with pytest.raises(BatchError, match="shard-size"):
        plan_shards(["a"], 0)


def test_bad_input(corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "--model",
        str(corpus["model"]),
        "--features",
        str(corpus["features"]),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*base, "--no-progress"]) == 2  # no durations: no --snippet-rate, no annotations
    assert "durations unknown" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(corpus["model"].read_bytes()[:1000])
    assert main(["--model", str(bad), *base[2:], "--snippet-rate", "2"]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert main([*base[:2], "--features", str(tmp_path / "none"), *base[4:], "--snippet-rate", "2"]) == 2
    assert "not found" in capsys.readouterr().err


def _same_detections(a: dict, b: dict) -> None:
    """Equal labels per video; scores equal to float rounding (other batch compositions), and so
    segments too (the preset's box voting weights them by scores)."""
    assert a.keys() == b.keys()
    for v, dets in a.items():
        assert [d["label"] for d in dets] == [d["label"] for d in b[v]]
        np.testing.assert_allclose(
            [d["score"] for d in dets], [d["score"] for d in b[v]], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            [d["segment"] for d in dets], [d["segment"] for d in b[v]], rtol=1e-6, atol=1e-6
        )


def test_actrectut_preset_model_shards_equal_one_pass(tmp_path: Path, make_model) -> None:
    """The ``actrectut`` preset's model (backbone local + mask head offset, issue 14) through
    runtime.batch: shard sizes 1 and 3 give the same detections, and they are what the reference
    window predictor gives on the whole corpus in one call (scores to float rounding: the batches
    differ)."""
    cfg = SpotConfig.preset("actrectut")
    assert cfg.model.mask_head == "offset"
    model = make_model(cfg, 0, sharpen=5.0)
    path = save_model(tmp_path / "model.safetensors", model, cfg)
    feats = tmp_path / "features"
    feats.mkdir()
    rng = np.random.default_rng(0)
    for i, n in enumerate((40, 130, 300, 517)):
        np.save(feats / f"s{i}.npy", rng.standard_normal((n, cfg.model.feat_dim)).astype(np.float32))
    got = []
    for size in (1, 3):
        merged = detect_corpus(path, feats, tmp_path / f"out{size}", shard_size=size, batch_size=4,
                               snippet_rate=4.0, progress=False)  # fmt: skip
        got.append(json.loads(Path(merged).read_text())["results"])
    assert all(len(dets) > 0 for dets in got[0].values())
    _same_detections(got[0], got[1])
    store = FeatureStore(feats, "npy", expected_dim=cfg.model.feat_dim)
    aset = _annotations(store, cfg, None, 4.0)
    windows = make_windows(aset, store, cfg, targets=False, progress=False)
    durations = {v: video.duration for v, video in aset.videos.items()}
    want = predict_windows(model, windows, cfg, batch_size=4, durations=durations)["results"]
    _same_detections(json.loads(json.dumps(want)), got[0])
