"""python -m spot_core.train on a stream folder: sizes from the data, labelled pieces, featuriser kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spot_core.data.prepare import main as prepare
from spot_core.data.streams import FEATURIZER_FILE
from spot_core.train import main as train

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [
    "model.num_snippets=32", "model.hidden_dim=16", "model.mask_hidden=16", "model.mask_dim=8",
    "model.num_layers=1", "model.attn_window=4", "data.stride=16", "data.train_stride=8",
    "decode.top_k=32", "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def stream_dir(tmp_path_factory):
    """Two 10-minute training streams and one validation stream: 7 raw channels at 20 Hz, 3 classes."""
    tmp = tmp_path_factory.mktemp("streams")
    rng = np.random.default_rng(0)
    rows = ["video,label,start,end"]
    (tmp / "raw").mkdir()
    for s in ("a", "b", "c"):
        x = rng.standard_normal((20 * 600, 7))
        t = 5.0
        while t < 590:
            d = float(rng.uniform(3, 30))
            k = int(rng.integers(3))
            x[int(t * 20) : int((t + d) * 20), k] += 3.0
            rows.append(f"{s},act{k},{t:.2f},{t + d:.2f}")
            t += d + float(rng.uniform(5, 20))
        np.save(tmp / "raw" / f"{s}.npy", x.astype(np.float32))
    (tmp / "seg.csv").write_text("\n".join(rows) + "\n")
    out = tmp / "data"
    args = ["--recordings", str(tmp / "raw"), "--annotations", str(tmp / "seg.csv"), "--sample-rate", "20"]
    assert (
        prepare(
            [*args, "--samples-per-snippet", "5", "--validation", "c", "--out", str(out), "--no-progress"]
        )
        == 0
    )
    return out


def test_stream_preset_takes_sizes_from_the_data_and_labels_pieces(stream_dir, tmp_path, caplog):
    run = tmp_path / "run"
    argv = ["--preset", "stream", "--data", str(stream_dir), "--out", str(run), "--labeled-fraction", "0.25"]
    with caplog.at_level("INFO"):
        assert train([*argv, "--no-pretrain", "--no-progress", "--set", *SMALL]) == 0
    from spot_core.checkpoint import checkpoint_config

    cfg = checkpoint_config(run / "last.safetensors")
    assert (cfg.model.feat_dim, cfg.model.num_classes, cfg.data.snippet_rate) == (28, 3, 4.0)
    assert cfg.class_names == ("act0", "act1", "act2") and cfg.decode.stitch
    assert (run / FEATURIZER_FILE).read_text() == (stream_dir / FEATURIZER_FILE).read_text()
    pieces = [r.getMessage() for r in caplog.records if "pieces" in r.getMessage()]
    assert pieces and "2 training streams -> 20 pieces, 5 labelled" in pieces[0]


def test_fixed_sizes_must_match_the_data(stream_dir, tmp_path, capsys):
    argv = ["--data", str(stream_dir), "--out", str(tmp_path / "r"), "--no-progress"]
    assert train(["--preset", "actrectut", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fixes model.feat_dim=60 (the features have 28 channels)" in err
    assert "use --preset stream" in err
    assert train(["--preset", "stream", *argv, "--set", "model.num_classes=4"]) == 2
    assert "model.num_classes=4 (the annotations have 3 classes)" in capsys.readouterr().err
    db = json.loads((stream_dir / "annotations.json").read_text())
    assert db["classes"] == ["act0", "act1", "act2"]


def test_runtime_streams_raw_recordings_with_the_stored_featuriser(stream_dir, tmp_path, capsys):
    """runtime.stream --raw applies the training standardisation: the same result as the prepared features."""
    from runtime.stream import main as stream

    run = tmp_path / "run"
    argv = [
        "--preset",
        "stream",
        "--data",
        str(stream_dir),
        "--out",
        str(run),
        "--no-pretrain",
        "--no-progress",
    ]
    assert train([*argv, "--set", *SMALL]) == 0
    raw = stream_dir.parent / "raw" / "c.npy"
    feats = stream_dir / "features" / "c.npy"
    common = ["--model", str(run / "last.safetensors"), "--no-progress"]
    assert stream([*common, "--raw", "--features", str(raw), "--out", str(tmp_path / "raw.json")]) == 0
    assert stream([*common, "--features", str(feats), "--out", str(tmp_path / "feat.json")]) == 0
    got = json.loads((tmp_path / "raw.json").read_text())["results"]["c"]
    assert got and got == json.loads((tmp_path / "feat.json").read_text())["results"]["c"]
    (run / FEATURIZER_FILE).unlink()
    assert stream([*common, "--raw", "--features", str(raw)]) == 2
    assert "stream_features.json: not found" in capsys.readouterr().err
