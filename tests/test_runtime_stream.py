"""Streaming runtime (runtime.detector, runtime.stream): streaming == offline, bad input, memory."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.detector import StreamDetector, StreamError
from runtime.offline import offline_detect, offline_windows, stream_all, streamed_vs_offline_map
from runtime.session import EagerSession
from spot_core.config import SpotConfig
from spot_core.decode import merge_top, merge_windows, pass_through
from spot_core.inference import predict_windows
from spot_core.model import SPOT

pytestmark = pytest.mark.usefixtures("one_thread")

T = 64
C = 32
RATE = 2.0


def _toy():
    cfg = SpotConfig.preset("toy")
    torch.manual_seed(0)
    model = SPOT(cfg.model).eval()
    with torch.no_grad():  # sharper class scores: a full set of detections from every window
        model.classifier.weight.mul_(5)
        model.classifier.bias.mul_(5)
    return model, cfg


MODEL, CFG = _toy()
SESSIONS = {b: EagerSession(MODEL, CFG, batch_size=b) for b in (1, 3, 8)}


def _feats(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, C), dtype=np.float32)


def _stream(det: StreamDetector, sid: str, f: np.ndarray, sizes) -> list:
    previews, pos, i = [], 0, 0
    while pos < f.shape[0]:
        n = sizes[i % len(sizes)]
        previews += det.push(sid, f[pos : pos + n])
        pos += n
        i += 1
    return previews


# ----------------------------------------------------------------------------------------- exactness
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(1, 260), min_size=1, max_size=3),
    chunking=st.lists(st.integers(1, 90), min_size=1, max_size=5),
    stride=st.sampled_from([16, 32, 50, 64]),
    batch=st.sampled_from([1, 3, 8]),
    seed=st.integers(0, 2**16),
)
def test_streaming_equals_offline(lengths, chunking, stride, batch, seed):
    """Any chunking, any interleaving of concurrent streams: each final output == the offline output."""
    session = SESSIONS[batch]
    feats = {f"s{i}": _feats(n, seed + i) for i, n in enumerate(lengths)}
    det = StreamDetector(session, stride=stride, snippet_rate=RATE)
    got = stream_all(det, feats, chunking)["results"]
    for sid, f in feats.items():
        want = offline_detect(session, f, stride=stride, snippet_rate=RATE, video_id=sid)["results"][sid]
        assert got[sid] == want  # exact: same floats, same order
    assert det.open_streams == [] and det.memory()["queued_windows"] == 0


@pytest.mark.parametrize("n", [1, 20, 63, 64, 65, 200])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunk_sizes_1_7_64(n, chunk):
    session = SESSIONS[8]
    f = _feats(n, n)
    det = StreamDetector(session, stride=32, snippet_rate=RATE)
    det.open("a")
    _stream(det, "a", f, [chunk])
    entries, final = det.close_json("a")
    assert entries == offline_detect(session, f, stride=32, snippet_rate=RATE, video_id="a")["results"]["a"]
    assert all(d.final and d.stream_id == "a" for d in final)
    assert [d.to_json() for d in final] == entries


def test_short_stream_is_padded_and_detected():
    """A stream shorter than one window: one zero-padded window, padding masked, still detected."""
    f = _feats(20, 3)
    det = StreamDetector(SESSIONS[3], snippet_rate=RATE)
    det.open("short")
    assert _stream(det, "short", f, [5]) == [] and det.windows_run == 0  # nothing complete yet
    final = det.close("short")
    assert final and det.windows_run == 1
    assert max(d.end for d in final) <= 20 / RATE + 1e-9
    want = offline_detect(SESSIONS[3], f, snippet_rate=RATE, video_id="short")["results"]["short"]
    assert [d.to_json() for d in final] == want


def test_offline_reference_is_the_package_path():
    """offline_detect with an unpadded batch-64 session is exactly spot_core.inference.predict_windows."""
    session = EagerSession(MODEL, CFG, batch_size=64, pad=False)
    f = _feats(333, 5)
    windows = offline_windows(CFG, f, stride=24, snippet_rate=RATE, video_id="v")
    assert [w.valid for w in windows][-1] < T  # the last window is partial
    want = predict_windows(MODEL, windows, CFG.replace(), batch_size=64)
    assert offline_detect(session, f, stride=24, snippet_rate=RATE, video_id="v") == want


def test_merge_top_equals_merge_windows():
    """The certified reduced merge == merge_windows, incl. ties and a case that must grow K to all."""
    dec = CFG.decode
    g = torch.Generator().manual_seed(0)
    W, D = 30, dec.max_detections
    for case in range(3):
        start = torch.randint(0, 200, (W, D, 1), generator=g).double()
        seg = torch.cat([start, start + torch.randint(1, 40, (W, D, 1), generator=g)], -1)
        sc = torch.rand(W, D, generator=g)
        if case == 1:
            sc = (sc * 4).round() / 4  # many ties
        if case == 2:  # identical segments everywhere: decays are strong, the certificate fails
            seg = torch.zeros(W, D, 2, dtype=torch.float64)
            seg[..., 1] = 10
        lab = torch.randint(0, 6, (W, D), generator=g)
        val = torch.rand(W, D, generator=g) > 0.2
        want = merge_windows(["v"] * W, seg, sc, lab, val, dec)["v"]
        got = merge_top(seg.reshape(-1, 2), sc.reshape(-1), lab.reshape(-1), val.reshape(-1), dec)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------- batching
def test_windows_batched_across_streams_and_latency_budget():
    session = SESSIONS[8]
    det = StreamDetector(session, stride=64, snippet_rate=RATE, max_delay_s=3600.0)
    for i in range(5):
        det.open(f"s{i}")
        det.push(f"s{i}", _feats(T, i))  # one complete window each
    assert det.windows_run == 0 and session.batch_size == 8  # waiting for a fuller batch
    calls = session.model_calls
    for i in range(5, 8):
        det.open(f"s{i}")
        det.push(f"s{i}", _feats(T, i))
    assert det.windows_run == 8 and session.model_calls == calls + 1  # one batch of 8 streams
    det.open("late")
    det.push("late", _feats(T, 99))
    assert det.windows_run == 8
    det.max_delay_s = 0.0
    det.poll()
    assert det.windows_run == 9


def test_previews_once_each_and_settled():
    f = _feats(400, 11)
    det = StreamDetector(SESSIONS[3], stride=32, snippet_rate=RATE)
    det.open("a")
    seen, pos = [], 0
    for n in [50, 1, 70, 100, 179]:
        for d in det.push("a", f[pos : pos + n]):
            assert not d.final and d.stream_id == "a"
            # settled: no later window can overlap it (ends at or before the next window's start)
            assert d.end <= det._streams["a"].done * 32 / RATE + 1e-9
            seen.append((d.start, d.end, d.label, d.score))  # two windows may find one segment
        pos += n
    assert seen and len(seen) == len(set(seen))
    final = det.close("a")
    assert all(d.final for d in final)


# ----------------------------------------------------------------------------------------- bad input
def test_bad_chunks_are_rejected_and_other_streams_go_on():
    session = SESSIONS[3]
    good = {"g1": _feats(150, 1), "g2": _feats(90, 2)}
    det = StreamDetector(session, stride=32, snippet_rate=RATE)
    for sid in [*good, "bad"]:
        det.open(sid)
    det.push("g1", good["g1"][:40])
    det.push("bad", _feats(10, 9))
    bad = _feats(5, 9)
    bad[2, 7] = np.nan
    with pytest.raises(StreamError, match=r"stream 'bad' at snippet 12: non-finite value nan in channel 7"):
        det.push("bad", bad)
    bad[2, 7] = np.inf
    with pytest.raises(StreamError, match="at snippet 12: non-finite value inf"):
        det.push("bad", bad)
    with pytest.raises(StreamError, match=r"stream 'bad' at snippet 10: chunk has 31 channels.*expects 32"):
        det.push("bad", np.zeros((4, 31), np.float32))
    with pytest.raises(StreamError, match=r"a chunk must be \[n, C=32\]"):
        det.push("bad", np.zeros(32, np.float32))
    with pytest.raises(StreamError, match="real numbers"):
        det.push("bad", np.array([["a"] * 32]))
    assert det.push("bad", np.zeros((0, C), np.float32)) == []  # an empty chunk is a no-op
    with pytest.raises(StreamError, match="'nobody': unknown stream"):
        det.push("nobody", _feats(3, 0))
    with pytest.raises(StreamError, match="already open"):
        det.open("g1")
    det.push("g1", good["g1"][40:])
    det.push("g2", good["g2"])
    det.push("bad", _feats(3, 4))  # the rejected chunks changed nothing: the stream goes on
    det.abort("bad")
    with pytest.raises(StreamError, match="'bad': already closed"):
        det.push("bad", _feats(3, 0))
    for sid, f in good.items():
        want = offline_detect(session, f, stride=32, snippet_rate=RATE, video_id=sid)["results"][sid]
        assert det.close_json(sid)[0] == want
    with pytest.raises(StreamError, match="'g1': already closed"):
        det.push("g1", _feats(3, 0))
    with pytest.raises(StreamError, match="'g1': already closed"):
        det.close("g1")
    det.open("empty")
    assert det.close("empty") == []


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_streams=st.integers(1, 5),
    length=st.integers(1, 300),
    chunk=st.integers(1, 90),
    stride=st.sampled_from([16, 32, 64]),
    batch=st.sampled_from([1, 3, 8]),
    stacked=st.booleans(),
    delay=st.sampled_from([0.0, 0.001, math.inf]),
    seed=st.integers(0, 2**16),
)
def test_push_many_equals_each_stream_alone(n_streams, length, chunk, stride, batch, stacked, delay, seed):
    """push_many (one [M, n, C] array or a list of chunks) gives every stream its offline output,
    whatever the latency budget (``inf``: windows wait in the queue while their stream's buffer
    fills and moves, so queued windows still in the buffer must be copied out first)."""
    session = SESSIONS[batch]
    ids = [f"s{i}" for i in range(n_streams)]
    feats = np.stack([_feats(length, seed + i) for i in range(n_streams)])  # [M, N, C]
    det = StreamDetector(session, stride=stride, snippet_rate=RATE, max_delay_s=delay)
    for sid in ids:
        det.open(sid)
    for pos in range(0, length, chunk):
        part = feats[:, pos : pos + chunk]
        det.push_many(ids, part if stacked else list(part))
    for i, sid in enumerate(ids):
        want = offline_detect(session, feats[i], stride=stride, snippet_rate=RATE, video_id=sid)["results"][
            sid
        ]
        assert det.close_json(sid)[0] == want


def test_push_many_checks_every_chunk_before_storing_any():
    det = StreamDetector(SESSIONS[3], stride=32, snippet_rate=RATE)
    for sid in ("a", "b"):
        det.open(sid)
    det.push("b", _feats(7, 0))
    x = np.stack([_feats(10, 1), _feats(10, 2)])
    x[1, 4, 3] = np.inf
    with pytest.raises(StreamError, match=r"stream 'b' at snippet 11: non-finite value inf in channel 3"):
        det.push_many(["a", "b"], x)
    with pytest.raises(StreamError, match=r"stream 'b' at snippet 11: non-finite"):
        det.push_many(["a", "b"], list(x))
    with pytest.raises(StreamError, match="twice"):
        det.push_many(["a", "a"], x)
    with pytest.raises(StreamError, match="2 stream ids but features"):
        det.push_many(["a", "b"], x[:1])
    with pytest.raises(StreamError, match="'c': unknown stream"):
        det.push_many(["a", "c"], x)
    assert det._streams["a"].received == 0 and det._streams["b"].received == 7  # nothing stored
    x[1, 4, 3] = 0.0
    det.push_many(["a", "b"], x)
    assert (det._streams["a"].received, det._streams["b"].received) == (10, 17)


class _FailOn(EagerSession):
    """Raises on any batch holding a window whose first feature is the sentinel."""

    def _run(self, x):
        if bool((x[:, 0, 0] == 123.0).any()):
            raise RuntimeError("model exploded")
        return super()._run(x)


def test_model_failure_isolated_to_its_stream():
    session = _FailOn(MODEL, CFG, batch_size=3)
    good = {"g1": _feats(130, 1), "g2": _feats(70, 2)}
    poison = _feats(70, 3)
    poison[0, 0] = 123.0
    det = StreamDetector(session, stride=32, snippet_rate=RATE)
    for sid in [*good, "p"]:
        det.open(sid)
    det.push("g1", good["g1"][:64])
    det.push("p", poison)  # its first window shares a batch with g1's
    det.push("g2", good["g2"])
    det.push("g1", good["g1"][64:])
    with pytest.raises(StreamError, match="'p': failed and was dropped: window 0 failed in the model"):
        det.push("p", _feats(1, 0))
    for sid, f in good.items():
        want = offline_detect(SESSIONS[3], f, stride=32, snippet_rate=RATE, video_id=sid)["results"][sid]
        assert det.close_json(sid)[0] == want


def test_detector_arguments():
    with pytest.raises(ValueError, match="window 32 != the model's window T = 64"):
        StreamDetector(SESSIONS[1], window=32)
    with pytest.raises(ValueError, match="stride 65 > window length 64"):
        StreamDetector(SESSIONS[1], stride=65)


# ----------------------------------------------------------------------------------------- mAP
def test_streamed_vs_offline_map_on_synthetic_ground_truth():
    from spot_core.data.annotations import AnnotationSet, Instance, Video

    names = CFG.names()
    rng = np.random.default_rng(0)
    feats, videos = {}, {}
    for i, n in enumerate((150, 97)):
        vid = f"v{i}"
        feats[vid] = _feats(n, 40 + i)
        inst = []
        for _ in range(4):
            s = float(rng.uniform(0, n / RATE - 10))
            inst.append(Instance(s, s + float(rng.uniform(3, 10)), names[int(rng.integers(6))]))
        videos[vid] = Video(vid, n / RATE, "validation", inst)
    gt = AnnotationSet(videos, list(names))
    r = streamed_vs_offline_map(SESSIONS[8], feats, gt, chunks=(1, 7, 64), stride=32, snippet_rate=RATE)
    assert set(r["streamed"]) == {1, 7, 64}
    assert r["equal"] and r["identical_detections"]
    assert r["offline"]["average_mAP"] > 0  # random model, but some detection hits at low tIoU


# ----------------------------------------------------------------------------------------- CLI
def test_cli_streams_files_and_reports_bad_ones(tmp_path, capsys):
    from runtime.stream import main
    from spot_core.checkpoint import save_model

    cfg = CFG.override(["data.stride=32", "data.snippet_rate=2.0"])
    ckpt = save_model(tmp_path / "m.safetensors", MODEL, cfg)
    d = tmp_path / "feats"
    d.mkdir()
    a, b = _feats(150, 1), _feats(40, 2)
    np.save(d / "a.npy", a)
    np.savetxt(d / "b.csv", b, delimiter=",", header=",".join(f"f{i}" for i in range(C)), comments="")
    bad = _feats(80, 3)
    bad[70, 1] = np.inf
    np.save(d / "bad.npy", bad)
    np.save(d / "dim.npy", np.zeros((9, 7), np.float32))
    out, png = tmp_path / "det.json", tmp_path / "tl.png"
    argv = ["--model", str(ckpt), "--features", str(d), "--chunk", "7", "--out", str(out), "--plot", str(png)]
    rc = main([*argv, "--no-progress", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "bad.npy: stream 'bad' at snippet 70: non-finite value inf" in err
    assert "dim.npy: 7 channels per snippet, the model expects 32" in err
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"a", "b"} and png.stat().st_size > 1000
    s4 = EagerSession(MODEL, cfg, batch_size=4)
    b_csv = np.loadtxt(d / "b.csv", delimiter=",", skiprows=1, dtype=np.float32)
    assert res["a"] == offline_detect(s4, a, video_id="a")["results"]["a"]
    assert res["b"] == offline_detect(s4, b_csv, video_id="b")["results"]["b"]
    assert main(["--model", str(tmp_path / "none.onnx"), "--features", str(d)]) == 2
    assert "none.onnx: model file not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- memory
def test_peak_memory_does_not_grow_with_stream_length():
    """Peak RSS (fresh processes) of a 0.25-hour and a 2-hour toy stream at 2 snippets/s: within 5%.

    The 1-hour / 10-hour ActivityNet-preset figures are in docs/runtime.md
    (``python -m benchmarks.streaming memory --hours 1 10``).
    """
    rows = []
    for h in (0.25, 2.0):
        cmd = [sys.executable, "-m", "benchmarks.streaming", "memory-one", "--hours", str(h)]
        cmd += ["--preset", "toy"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    short, long = rows
    assert long["windows"] >= 7 * short["windows"]
    assert long["stored_detection_bytes"] <= long["stored_bound_bytes"]
    assert long["peak_rss_kib"] <= 1.05 * short["peak_rss_kib"], rows


# ----------------------------------------------------------------------------------------- real data
@pytest.mark.real_data
def test_actrectut_streamed_map_equals_offline(shared_data):
    """Issue 6 item 5: train on subject 1 (window mode, shortened schedule), stream subject 2's test
    pieces in chunks of 1, 7 and 64 snippets: streamed mAP == offline mAP, detections identical.

    The full-schedule figures are in docs/runtime.md (``python -m benchmarks.streaming actrectut``).
    """
    pytest.importorskip("spot_core.actrectut")
    from benchmarks.streaming import actrectut_map

    r = actrectut_map(shared_data / "actrectut", overrides=["train.epochs=3", "semi.pretrain_epochs=0"])
    assert set(r["streamed"]) == {1, 7, 64} and r["pieces"] >= 2
    assert r["equal"] and r["identical_detections"]
    assert r["offline"]["average_mAP"] > 0


def test_pass_through_equals_merge_windows_single_window():
    dec = CFG.decode
    g = torch.Generator().manual_seed(1)
    for M in (7, 100, 140):
        start = torch.randint(0, 60, (1, M, 1), generator=g).double()
        seg = torch.cat([start, start + torch.randint(1, 9, (1, M, 1), generator=g)], -1)
        sc = (torch.rand(1, M, generator=g) * 4).round() / 4  # ties
        lab = torch.randint(0, 6, (1, M), generator=g)
        val = torch.rand(1, M, generator=g) > 0.3
        want = merge_windows(["v"], seg, sc, lab, val, dec)["v"]
        got = [x[0] for x in pass_through(seg, sc, lab, val, dec.max_detections)]
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_cli_names_streams_after_the_annotations_and_the_output_evaluates(tmp_path, capsys):
    """--annotations: files named like prepare's recordings (``<id>_data.npy``) come out under the
    annotated ids, so ``spot_core.evaluate --gt`` scores the output directly; a second file for one
    id is that file's error."""
    from runtime.stream import main
    from spot_core.checkpoint import save_model
    from spot_core.evaluate import main as evaluate_main

    cfg = CFG.override(["data.stride=32", "data.snippet_rate=2.0"])
    ckpt = save_model(tmp_path / "m.safetensors", MODEL, cfg)
    d = tmp_path / "feats"
    d.mkdir()
    np.save(d / "walk_data.npy", _feats(150, 1))
    np.save(d / "walk-copy.npy", _feats(60, 3))  # also names "walk": a second file for it
    np.save(d / "run.npy", _feats(90, 2))
    np.save(d / "other.npy", _feats(70, 4))  # not annotated: keeps its stem
    label = cfg.names()[0]
    gt = {
        "database": {
            v: {
                "subset": "validation",
                "duration": dur,
                "annotations": [{"segment": [2.0, 9.0], "label": label}],
            }
            for v, dur in (("walk", 75.0), ("run", 45.0))
        }
    }
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(gt))
    out = tmp_path / "det.json"
    argv = ["--model", str(ckpt), "--features", str(d), "--out", str(out), "--no-progress"]
    rc = main([*argv, "--annotations", str(ann)])
    err = capsys.readouterr().err
    assert rc == 2 and "walk_data.npy" in err and "a second file for annotated video 'walk'" in err
    res = json.loads(out.read_text())["results"]
    assert sorted(res) == ["other", "run", "walk"]
    assert evaluate_main(["--gt", str(ann), "--pred", str(out), "--protocol", "thumos", "--json"]) == 0
    assert "average_mAP" in capsys.readouterr().out
