"""Raw recordings + annotations -> dataset folder (python -m spot_core.data.prepare)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spot_core.data.datasets import load_dataset
from spot_core.data.features import snippetize_stream
from spot_core.data.prepare import main
from spot_core.data.streams import StreamFeaturizer
from spot_core.data.windows import FeatureStats


def _fixture(tmp_path, rate=50.0):
    """Three raw recordings (two .npy, one .csv; 5 channels at ``rate`` Hz) and a csv of segments."""
    rng = np.random.default_rng(0)
    rec = tmp_path / "raw"
    rec.mkdir()
    raw = {}
    for i, n in enumerate((3000, 2600, 2000)):
        raw[f"s{i}"] = rng.standard_normal((n, 5)) * (i + 1) + i
    np.save(rec / "s0_data.npy", raw["s0"])
    raw["s1"] = raw["s1"].astype(np.float32)
    np.save(rec / "s1.npy", raw["s1"])
    np.savetxt(rec / "s2.csv", raw["s2"], delimiter=",")
    raw["s2"] = np.loadtxt(rec / "s2.csv", delimiter=",", dtype=np.float32)  # what the csv holds
    (tmp_path / "seg.csv").write_text(
        "video,label,start,end\ns0,walk,1.0,9.5\ns0,sit,20,31\ns1,walk,3,4.5\ns2,sit,10,30\n"
    )
    return rec, raw


def test_raw_recordings_to_dataset(tmp_path, capsys):
    rec, raw = _fixture(tmp_path)
    out = tmp_path / "data"
    rc = main(
        ["--recordings", str(rec), "--annotations", str(tmp_path / "seg.csv"), "--sample-rate", "50",
         "--samples-per-snippet", "10", "--validation", "s2", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert "3 streams (2 training, 1 validation), 2 classes, 4 instances" in capsys.readouterr().out
    db = json.loads((out / "annotations.json").read_text())
    assert db["classes"] == ["sit", "walk"]
    assert db["database"]["s0"]["duration"] == 60.0 and db["database"]["s2"]["subset"] == "validation"
    # standardised with the training streams' statistics only (s0, s1), stored for inference
    f = StreamFeaturizer.load(out / "stream_features.json")
    train = [snippetize_stream(raw[s], 10) for s in ("s0", "s1")]
    st = FeatureStats.fit(train)
    assert np.array_equal(f.mean, st.mean) and f.snippet_rate == 5.0 and f.feat_dim == 20
    for s in raw:
        assert np.array_equal(np.load(out / "features" / f"{s}.npy"), st.apply(snippetize_stream(raw[s], 10)))
    from spot_core.config import SpotConfig

    cfg = SpotConfig.preset("stream").override(
        ["model.feat_dim=20", "model.num_classes=2", "data.snippet_rate=5.0"]
    )
    aset, windows = load_dataset(out, cfg, "validation")
    assert list(aset.videos) == ["s2"] and windows[0].snippet_sec == 0.2


@pytest.mark.parametrize(
    ("csv_text", "extra", "msg"),
    [
        ("video,label,start\ns0,a,1\n", [], "header needs the columns video, label, start, end"),
        ("video,label,start,end\ns0,a,5,2\n", [], "line 2: segment"),
        ("video,label,start,end\ns0,a,x,2\n", [], "line 2: start and end must be numbers"),
        ("video,label,start,end\nnone,a,1,2\n", [], "annotated streams without a recording"),
        ("video,label,start,end\ns0,a,1,2\n", ["--validation", "zz"], "without a recording: \\['zz'\\]"),
        (
            "video,label,start,end\ns0,a,1,2\n",
            ["--samples-per-snippet", "0", "--validation", "s2"],
            "samples per snippet must be >= 1",
        ),
    ],
)
def test_clear_one_line_errors(tmp_path, capsys, csv_text, extra, msg):
    rec, _ = _fixture(tmp_path)
    (tmp_path / "bad.csv").write_text(csv_text)
    args = ["--recordings", str(rec), "--annotations", str(tmp_path / "bad.csv"), "--sample-rate", "50"]
    rc = main([*args, "--out", str(tmp_path / "d"), "--no-progress", *(extra or ["--validation", "s2"])])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    import re

    assert re.search(msg, err), err


def test_needs_a_rate_and_a_validation_split(tmp_path, capsys):
    rec, _ = _fixture(tmp_path)
    args = [
        "--recordings",
        str(rec),
        "--annotations",
        str(tmp_path / "seg.csv"),
        "--out",
        str(tmp_path / "d"),
    ]
    assert main([*args, "--validation", "s2", "--no-progress"]) == 2
    assert "--sample-rate" in capsys.readouterr().err
    assert main([*args, "--sample-rate", "50", "--no-progress"]) == 2
    assert "--validation ID" in capsys.readouterr().err
