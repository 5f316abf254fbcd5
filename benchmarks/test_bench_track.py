"""The tracked benchmarks (issue 19): the figures ``python -m benchmarks.track`` saves and gates.

Run through ``python -m benchmarks.track --run`` (it sets the variables below, saves the run with
pytest-benchmark's own storage, one folder per machine, and compares it with the previous run);
``pytest benchmarks/test_bench_track.py --benchmark-only`` runs the same measurements unsaved.

Per window size ("preset": the ``toy`` window in the CI subset; ``toy``, ``anet`` and ``actrectut``
in the full one; or a deployment's own checkpoint), one torch thread, seeded random weights and
features unless a checkpoint is given:

- ``original``: the original SPOT pipeline's shape, one video at a time;
- ``ours``: our offline path end to end (:func:`spot_core.inference.predict_windows`) at batch B;
- ``forward_fp32`` / ``forward_bf16``: the model forward at batch B in fp32, and in bf16 on the CPU
  edge model (:func:`export.quantize.bf16_cpu_model`) where the architecture has one, else the
  bf16 inference graph (``extra_info["bf16_path"]`` says which);
- ``forward_b1`` and ``stream``: one window's forward at batch 1, and the streaming runtime's push
  that completes a window (:class:`runtime.detector.StreamDetector`, batch 1; p50 / p99 latency);
- ``accuracy`` (toy window only): the embedded data's supervised model trained from scratch
  (``toy`` preset, seed 1; 12 epochs in the CI subset, the preset's 40 in the full one) and its
  average mAP, fp32 and on the bf16 edge model (the edge cost).

Each benchmark's ``extra_info`` holds ``preset``, ``figure`` (the figure's name) and the figures
(videos/s, windows/s, ms, p50 / p99, mAP). Environment: ``SPOT_TRACK_SUBSET`` (``ci`` | ``full``),
``SPOT_TRACK_CHECKPOINT`` (a model checkpoint: its weights and window size replace the presets),
``SPOT_TRACK_SLOW`` (``figure:seconds``: sleep that long inside that figure's call -- how the tests
show that the gate catches a slower path).
"""

from __future__ import annotations

import itertools
import os
import statistics
import time

import numpy as np
import pytest
import torch

from benchmarks.common import Bench, make_bench
from benchmarks.original_pipeline import original_detect_video
from spot_core.inference import predict_windows

pytestmark = pytest.mark.usefixtures("one_thread")

SUBSET = os.environ.get("SPOT_TRACK_SUBSET", "full")
CHECKPOINT = os.environ.get("SPOT_TRACK_CHECKPOINT") or None
PRESETS = ["checkpoint"] if CHECKPOINT else (["toy"] if SUBSET == "ci" else ["toy", "anet", "actrectut"])
BATCH = 16 if SUBSET == "ci" else 64
# rounds per figure: the cheap forwards get many (their ratio is the noisiest), the whole paths few
ROUNDS = {
    "ci": {"original": 7, "ours": 5, "forward": 25, "forward_b1": 25, "stream": 15},
    "full": {"original": 20, "ours": 7, "forward": 40, "forward_b1": 40, "stream": 30},
}[SUBSET if SUBSET in ("ci", "full") else "full"]


def _slow(figure: str) -> float:
    spec = os.environ.get("SPOT_TRACK_SLOW", "")
    name, _, sec = spec.partition(":")
    return float(sec) if name == figure and sec else 0.0


def _slowed(figure: str, fn):
    delay = _slow(figure)
    if not delay:
        return fn

    def slow(*a, **k):
        time.sleep(delay)
        return fn(*a, **k)

    return slow


@pytest.fixture(scope="module", params=PRESETS)
def bench(request) -> Bench:
    if request.param != "checkpoint":
        return make_bench(request.param, n=BATCH, seed=0, cls_scale=5.0)
    from spot_core.checkpoint import load_model

    model, cfg = load_model(CHECKPOINT)
    return _bench_for(cfg, model)


def _bench_for(cfg, model) -> Bench:
    """Random features of ``cfg``'s window for a loaded model (a deployment's checkpoint)."""
    from spot_core.data.windows import Window

    m = cfg.model
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((BATCH, m.num_snippets, m.feat_dim), dtype=np.float32)
    zt, ztt = np.zeros(m.num_snippets, np.int64), np.zeros((m.num_snippets,) * 2, np.float32)
    windows = [
        Window(
            video_id=f"video_{i:05d}", features=feats[i], valid=m.num_snippets, t_start=0.0, snippet_sec=1.0,
            cls_target=zt, mask_target=ztt, labeled=False, has_targets=False,
        )
        for i in range(BATCH)
    ]  # fmt: skip
    x = torch.from_numpy(np.ascontiguousarray(feats.transpose(0, 2, 1)))
    return Bench(cfg, model.eval(), windows, x)


def _name(bench: Bench) -> str:
    return "checkpoint" if CHECKPOINT else bench.cfg.name


def _record(benchmark, bench: Bench, figure: str, windows: int, **extra) -> None:
    med = benchmark.stats.stats.median
    data = sorted(benchmark.stats.stats.data)
    p99 = data[min(len(data) - 1, int(np.ceil(0.99 * len(data))) - 1)] if data else med
    m = bench.cfg.model
    benchmark.extra_info.update(
        {
            "preset": _name(bench),
            "figure": figure,
            "window": f"C={m.feat_dim} T={m.num_snippets} K={m.num_classes} {m.backbone}+{m.mask_head}",
            "windows_per_call": windows,
            "windows_per_s": windows / med,
            "ms_per_window": med * 1e3 / windows,
            # the best (minimum) round: what the gate's ratios use (a load spike only slows rounds)
            "best_ms_per_window": benchmark.stats.stats.min * 1e3 / windows,
            "p50_ms": statistics.median(data) * 1e3 if data else med * 1e3,
            "p99_ms": p99 * 1e3,
            "torch_threads": torch.get_num_threads(),
            **extra,
        }
    )


def test_original(benchmark, bench):
    windows = itertools.cycle(bench.windows)
    fn = _slowed("original", original_detect_video)

    def one():
        w = next(windows)
        return fn(bench.model, w.video_id, w.features_ct(), bench.cfg)

    out = benchmark.pedantic(one, rounds=ROUNDS["original"], iterations=1, warmup_rounds=2)
    assert isinstance(out, list)
    _record(benchmark, bench, "original", 1)


def test_ours(benchmark, bench):
    fn = _slowed("ours", predict_windows)
    out = benchmark.pedantic(
        lambda: fn(bench.model, bench.windows, bench.cfg, batch_size=BATCH),
        rounds=ROUNDS["ours"], iterations=1, warmup_rounds=1,
    )  # fmt: skip
    assert len(out["results"]) == BATCH
    _record(benchmark, bench, "ours", BATCH)


@torch.no_grad()
def test_forward_fp32(benchmark, bench):
    fn = _slowed("forward_fp32", bench.model)
    logits, _ = benchmark.pedantic(
        fn, args=(bench.features,), rounds=ROUNDS["forward"], iterations=1, warmup_rounds=3
    )
    assert logits.shape[0] == BATCH
    _record(benchmark, bench, "forward_fp32", BATCH)


def _bf16(bench: Bench):
    """The bf16 CPU edge model where the architecture has one, else the bf16 inference graph."""
    from export.quantize import bf16_cpu_model
    from spot_core.graph import inference_graph

    try:
        return bf16_cpu_model(bench.model, bench.cfg), "edge_bf16"
    except (ValueError, NotImplementedError):
        graph = inference_graph(bench.model, bench.cfg, dtype=torch.bfloat16)
        return (lambda x: graph(x.to(torch.bfloat16))), "graph_bf16"


@torch.no_grad()
def test_forward_bf16(benchmark, bench):
    model, path = _bf16(bench)
    fn = _slowed("forward_bf16", model)
    logits, _ = benchmark.pedantic(
        fn, args=(bench.features,), rounds=ROUNDS["forward"], iterations=1, warmup_rounds=3
    )
    assert logits.shape[0] == BATCH
    _record(benchmark, bench, "forward_bf16", BATCH, bf16_path=path)


@torch.no_grad()
def test_forward_b1(benchmark, bench):
    fn = _slowed("forward_b1", bench.model)
    x = bench.features[:1]
    benchmark.pedantic(fn, args=(x,), rounds=ROUNDS["forward_b1"], iterations=1, warmup_rounds=3)
    _record(benchmark, bench, "forward_b1", 1)


def test_stream(benchmark, bench):
    setup, one = _stream_pusher(bench, lambda fn: _slowed("stream", fn))

    def setup_args():
        setup()
        return (), {}

    ran = benchmark.pedantic(one, setup=setup_args, rounds=ROUNDS["stream"], iterations=1, warmup_rounds=2)
    assert ran == 1
    _record(benchmark, bench, "stream", 1)


def _stream_pusher(bench: Bench, wrap=None):
    """:func:`benchmarks.streaming.live_window_pusher` over ``bench``'s features."""
    from benchmarks.streaming import live_window_pusher

    pool = bench.features.permute(0, 2, 1).reshape(-1, bench.cfg.model.feat_dim).numpy()
    return live_window_pusher(bench.model, bench.cfg, pool, 2.0, wrap)


def _interleaved(slow, fast, rounds: int, setup=None, warmup: int = 2) -> list[float]:
    """Per round, time ``slow()`` then ``fast()`` back to back; the ratios slow / fast. A change of
    the machine's load between rounds moves both timings of a round alike."""
    ratios = []
    for i in range(warmup + rounds):
        if setup:
            setup()
        t0 = time.perf_counter()
        slow()
        t1 = time.perf_counter()
        if setup:
            setup()
        t2 = time.perf_counter()
        fast()
        t3 = time.perf_counter()
        if i >= warmup:
            ratios.append((t1 - t0) / (t3 - t2))
    return ratios


@torch.no_grad()
def test_ratios(benchmark, bench):
    """The gate's speed ratios, each from interleaved rounds (median of the per-round ratios):
    original / ours per window, fp32 / bf16 forward, streamed window / one window's forward."""
    orig = _slowed("original", original_detect_video)
    ours = _slowed("ours", predict_windows)
    f32 = _slowed("forward_fp32", bench.model)
    bf16_model, bf16_path = _bf16(bench)
    b16 = _slowed("forward_bf16", bf16_model)
    b1 = _slowed("forward_b1", bench.model)
    windows = itertools.cycle(bench.windows)
    x, x1 = bench.features, bench.features[:1]
    st_setup, st_one = _stream_pusher(bench, lambda fn: _slowed("stream", fn))
    n = len(bench.windows)

    def one_video():
        w = next(windows)
        orig(bench.model, w.video_id, w.features_ct(), bench.cfg)

    def measure() -> dict[str, float]:
        sp = _interleaved(
            lambda: [one_video() for _ in range(n)],
            lambda: ours(bench.model, bench.windows, bench.cfg, batch_size=n),
            ROUNDS["ours"],
        )  # noqa: E501
        bf = _interleaved(lambda: f32(x), lambda: b16(x), ROUNDS["forward"], warmup=3)
        so = _interleaved(st_one, lambda: b1(x1), ROUNDS["stream"], setup=st_setup)
        return {"speedup_vs_original": statistics.median(sp), "bf16_speedup": statistics.median(bf),
                "stream_overhead": statistics.median(so)}  # fmt: skip

    ratios = benchmark.pedantic(measure, rounds=1, iterations=1)
    assert all(v > 0 for v in ratios.values())
    benchmark.extra_info.update(
        {"preset": _name(bench), "figure": "ratios", "bf16_path": bf16_path, **ratios}
    )


def test_accuracy(benchmark, bench, tmp_path):
    """The embedded data's supervised model, trained from scratch, and its mAP fp32 / bf16 edge."""
    if _name(bench) != "toy":
        pytest.skip("accuracy is tracked on the embedded data's window (toy) only")
    from benchmarks.edge import ForwardModule
    from export.quantize import bf16_cpu_model
    from spot_core.config import SpotConfig
    from spot_core.data.datasets import load_dataset
    from spot_core.data.synthetic import generate_dataset
    from spot_core.training import train, validate

    cfg = SpotConfig.preset("toy")
    if SUBSET == "ci":  # a shorter schedule keeps the CI subset under a minute (compared within its subset)
        cfg = cfg.override(["train.epochs=12", "train.lr_step=9"])
    data = generate_dataset(tmp_path / "data", cfg, seed=0)

    def run():
        return train(cfg, data, tmp_path / "run", progress=False)

    res = benchmark.pedantic(run, rounds=1, iterations=1)
    from spot_core.checkpoint import load_model

    model, mcfg = load_model(tmp_path / "run" / "last.safetensors")
    gt, windows = load_dataset(data, mcfg, "validation")
    fp32 = 100 * validate(model, windows, gt, mcfg)[1]["average_mAP"]
    edge = bf16_cpu_model(model, mcfg)
    bf16 = 100 * validate(ForwardModule(edge), windows, gt, mcfg)[1]["average_mAP"]
    assert abs(fp32 - 100 * res.history[-1]["val_average_mAP"]) < 1e-6
    _record(benchmark, bench, "accuracy", 1, map_fp32=fp32, map_bf16_edge=bf16, edge_map_cost=fp32 - bf16)
