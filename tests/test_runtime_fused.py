"""The fused session (runtime/fused.py): the fused path behind the runtime's Session interface.

On a CPU it runs the kernels' PyTorch references (and, in the interpreter subprocess, the Triton
kernels); CUDA graphs are GPU-only and run in ``python -m benchmarks.gpu_check`` (``runtime_gpu``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import INTERPRETED, run_kernel_tests_in_interpreter

from kernels._triton import triton_available
from runtime.detector import StreamDetector
from runtime.fused import FusedSession, parse_buckets
from runtime.offline import offline_detect
from runtime.session import EagerSession, SessionError, open_session
from spot_core.config import SpotConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PRESETS = ("toy", "actrectut")


def _same(a, b) -> None:
    assert torch.equal(a.valid, b.valid)
    assert torch.equal(a.segments[a.valid], b.segments[b.valid])
    assert torch.equal(a.labels[a.valid], b.labels[b.valid])
    torch.testing.assert_close(a.scores[a.valid], b.scores[b.valid], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_fused_session_detects_as_the_eager_session(preset, make_model, make_features) -> None:
    cfg = SpotConfig.preset(preset)
    model = make_model(cfg, 0, sharpen=5.0)
    T = cfg.model.num_snippets
    x = make_features(cfg, 11)
    valid = [T] * 8 + [T // 2, 5, 1]  # partial windows of a stream's end
    want = EagerSession(model, cfg, batch_size=4).detect(x, valid)
    fused = FusedSession(model, cfg, batch_size=4, buckets="1,2")
    got = fused.detect(x, valid)
    assert got.valid[:10].any(1).all(), "windows should give detections (sharpened classifier)"
    _same(got, want)
    assert fused.model_calls == 3  # 4 + 4 + 3 windows (the last call padded to bucket 4)
    assert fused.detect(x[:0]).segments.shape == (0, *want.segments.shape[1:])


def test_buckets_pad_to_the_smallest_that_fits(make_model) -> None:
    cfg = SpotConfig.preset("toy")
    s = FusedSession(make_model(cfg), cfg, batch_size=64, buckets=[8, 1, 8])
    assert s.buckets == (1, 8, 64)
    assert [s.bucket(b) for b in (1, 2, 8, 9, 64)] == [1, 8, 8, 64, 64]
    assert FusedSession(make_model(cfg), cfg, batch_size=64, pad=False).bucket(5) == 5
    assert parse_buckets(None, 16) == (16,)
    for bad, msg in (("0,4", "outside"), ("4,x", "not an integer"), ([65], "outside")):
        with pytest.raises(SessionError, match=msg):
            parse_buckets(bad, 64)
    assert s.describe()["buckets"] == [1, 8, 64]


def test_bad_settings_are_errors(make_model) -> None:
    cfg = SpotConfig.preset("toy")
    model = make_model(cfg)
    with pytest.raises(SessionError, match="precision 'fp16'"):
        FusedSession(model, cfg, precision="fp16")
    with pytest.raises(SessionError, match="CUDA graphs need a CUDA device"):
        FusedSession(model, cfg, cuda_graphs=True)
    other = SpotConfig.preset("toy").override(["model.num_classes=3"])
    with pytest.raises(SessionError):
        FusedSession(model, other)


def test_bf16_runs_and_mostly_agrees(make_model, make_features) -> None:
    cfg = SpotConfig.preset("actrectut")
    model = make_model(cfg, 0, sharpen=5.0)
    x = make_features(cfg, 4)
    want = FusedSession(model, cfg, batch_size=4).detect(x)
    got = FusedSession(model, cfg, batch_size=4, precision="bf16").detect(x)
    assert got.segments.shape == want.segments.shape
    # the top detection of each window: same label, score within bf16 rounding of the model part
    assert torch.equal(got.labels[:, 0], want.labels[:, 0])
    torch.testing.assert_close(got.scores[:, 0], want.scores[:, 0], rtol=0.05, atol=0.02)


def test_many_streams_each_equal_to_the_stream_alone(make_model) -> None:
    """One session, 24 concurrent streams of different lengths pushed in uneven chunks under a
    latency budget: every stream's final output is the offline output of that stream alone."""
    cfg = SpotConfig.preset("toy").override(["data.stride=25"])
    model = make_model(cfg, 0, sharpen=5.0)
    C = cfg.model.feat_dim
    sess = FusedSession(model, cfg, batch_size=8)
    rng = np.random.default_rng(0)
    feats = {f"s{i}": rng.standard_normal((40 + 37 * i, C), dtype=np.float32) for i in range(24)}
    det = StreamDetector(sess, snippet_rate=2.0, max_delay_s=0.0005, preview=False, record_latency=True)
    for sid in feats:
        det.open(sid)
    pos = dict.fromkeys(feats, 0)
    chunks = [1, 13, 50, 7]
    k = 0
    while any(pos[s] < len(f) for s, f in feats.items()):
        for sid, f in feats.items():
            n = chunks[k % len(chunks)]
            k += 1
            if pos[sid] < len(f):
                det.push(sid, f[pos[sid] : pos[sid] + n])
                pos[sid] += n
            det.poll()
    finals = {sid: det.close_json(sid)[0] for sid in feats}
    assert len(det.window_latencies) == det.windows_run > 24
    for sid, f in feats.items():
        alone = offline_detect(sess, f, snippet_rate=2.0, video_id=sid)["results"][sid]
        assert finals[sid] == alone, sid


def test_open_session_and_the_stream_cli(toy_files, tmp_path, capsys) -> None:
    from runtime.stream import main

    s = open_session(toy_files["ckpt"], backend="fused", batch_size=4, buckets="1")
    assert isinstance(s, FusedSession) and s.buckets == (1, 4)
    with pytest.raises(SessionError, match="settings of the fused backend"):
        open_session(toy_files["ckpt"], backend="eager", precision="bf16")
    d = tmp_path / "feats"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        np.save(
            d / f"v{i}.npy",
            rng.standard_normal((90 + 40 * i, toy_files["cfg"].model.feat_dim), dtype=np.float32),
        )
    outs = {}
    for backend in ("eager", "fused"):
        out = tmp_path / f"{backend}.json"
        argv = ["--model", str(toy_files["ckpt"]), "--features", str(d), "--out", str(out), "--no-progress"]
        assert main([*argv, "--backend", backend, "--batch-size", "4"]) == 0
        outs[backend] = json.loads(out.read_text())["results"]
    assert outs["fused"].keys() == outs["eager"].keys()
    for vid in outs["eager"]:
        e, f = outs["eager"][vid], outs["fused"][vid]
        assert [(d["label"], d["segment"]) for d in f] == [(d["label"], d["segment"]) for d in e]
        np.testing.assert_allclose([d["score"] for d in f], [d["score"] for d in e], rtol=1e-6, atol=1e-7)
    capsys.readouterr()
    rc = main(["--model", str(toy_files["ckpt"]), "--features", str(d), "--buckets", "2", "--no-progress"])
    assert rc == 2 and "settings of the fused backend" in capsys.readouterr().err


def test_serve_benchmark_reports_latency_and_exactness(tmp_path, capsys) -> None:
    from benchmarks.streaming import main

    out = tmp_path / "serve.json"
    argv = ["serve", "--preset", "toy", "--streams", "1,6", "--batch-size", "4", "--windows-per-stream", "3"]
    assert main([*argv, "--check-exact", "3", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    rows = {r["streams"]: r for r in rep["rows"]}
    assert rows[6]["windows"] == 18 and rows[6]["exact_streams"] == rows[6]["exact_checked"] == 3
    assert 0 < rows[6]["latency_p50_ms"] <= rows[6]["latency_p99_ms"]
    assert "| 6 | many | 4 |" in capsys.readouterr().out


# -------------------------------------------------------------- the Triton kernels in the session
@pytest.mark.skipif(not triton_available(), reason="triton is not importable")
@pytest.mark.skipif(torch.cuda.is_available() or INTERPRETED, reason="kernel tests run in this process")
def test_interpreter_subprocess() -> None:
    run_kernel_tests_in_interpreter(__file__)


def test_kernel_fused_session_with_triton_kernels(kernel_device, make_model, make_features) -> None:
    cfg = SpotConfig.preset("toy")
    model = make_model(cfg, 0, sharpen=5.0)
    x = make_features(cfg, 3)
    want = FusedSession(model, cfg, batch_size=4).detect(x)
    got = FusedSession(model, cfg, device=kernel_device, batch_size=4, kernels="triton").detect(x)
    _same(got, want)


def test_gpu_check_runtime_section_dry_run(tmp_path) -> None:
    """The GPU script's runtime section (issue 18) runs its plumbing on the CPU: every part reports."""
    from benchmarks import gpu_check

    assert gpu_check.main(["--dry-run", "--sections", "runtime_gpu", "--out", str(tmp_path)]) == 0
    rg = json.loads((tmp_path / "gpu_report.json").read_text())["runtime_gpu"]
    assert "error" not in rg and "partial" not in rg, rg.get("error")
    assert rg["fused_fp32_B8"]["parity_vs_eager_reference"]["same_detection_fraction"] == 1.0
    assert {"batch1_latency_fp32", "batch1_latency_bf16", "serve_fp32", "serve_bf16"} <= rg.keys()
    assert any("exact_checked" in r and len(r["buckets"]) == 1 for r in rg["serve_fp32"])
    assert all(
        r["exact_streams"] == r["exact_checked"]
        for r in rg["serve_fp32"]
        if "exact_checked" in r and len(r["buckets"]) == 1
    )
    assert rg["long_stream"]["streamed_equals_offline_on_device"] is True
    assert rg["long_stream"]["same_label_and_segment_fraction"] == 1.0
    assert "tensorrt" in rg["engines"]


def test_serve_repeats_give_the_median_row_per_way_of_pushing() -> None:
    from benchmarks.streaming import serve_benchmark

    rep = serve_benchmark(
        "null", "cpu", [3], preset="toy", batch_size=4, windows_per_stream=3, check_exact=2,
        push=("one", "many"), repeat=3,
    )  # fmt: skip
    rows = rep["rows"]
    assert [r["push"] for r in rows] == ["one", "many"] and all(r["repeats"] == 3 for r in rows)
    assert all(r["windows"] == 9 and r["exact_streams"] == r["exact_checked"] == 2 for r in rows)
