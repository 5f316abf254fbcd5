"""Streaming runtime benchmarks, ANet preset (C=400, T=100, K=200), eager fp32, CPU, one torch thread.

Run with ``pytest benchmarks/test_bench_streaming.py --benchmark-only``. Random weights (classifier
scaled x5 so windows yield detections) and random features: the numbers measure speed only.

(a) one live stream at batch 1: the push that completes a window (forward, decode, Soft-NMS,
    preview merge) -- the per-window latency;
(b) 64 concurrent streams, one window each, batched into one padded batch of 64, then closed
    (final exact merge per stream);
(c) the final merge of a 1-hour stream at 2 snippets/s (143 windows of stored detections);
(d) the final merge of a 1-hour stream with the ``stream`` preset's decode (450 windows, D = 1,000),
    with and without box voting.

``extra_info`` holds windows/s and snippets/s from the median. ``python -m benchmarks.streaming``
gives the full latency percentiles and the 1 / 64 / 1024-stream table per backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.streaming import live_window_pusher, random_model
from runtime.detector import StreamDetector
from runtime.session import EagerSession

pytestmark = pytest.mark.usefixtures("one_thread")

RATE = 2.0


@pytest.fixture(scope="module")
def anet():
    model, cfg = random_model("anet", seed=0)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((4 * cfg.model.num_snippets, cfg.model.feat_dim), dtype=np.float32)
    return model, cfg, pool


def _rates(benchmark, windows: int, snippets: int) -> None:
    med = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {"windows_per_call": windows, "windows_per_s": windows / med, "snippets_per_s": snippets / med}
    )


def test_live_stream_window_latency(benchmark, anet):
    model, cfg, pool = anet
    S = cfg.data.stride
    setup_feed, one = live_window_pusher(model, cfg, pool, RATE)

    def setup():  # stop one snippet short of the next window
        setup_feed()
        return (), {}

    ran = benchmark.pedantic(one, setup=setup, rounds=20, iterations=1, warmup_rounds=2)
    assert ran == 1
    _rates(benchmark, 1, S)


def test_64_streams_one_batch(benchmark, anet):
    model, cfg, pool = anet
    T = cfg.model.num_snippets
    session = EagerSession(model, cfg, batch_size=64)

    def round_():
        det = StreamDetector(session, snippet_rate=RATE, max_delay_s=float("inf"))
        for i in range(64):
            det.open(f"s{i}")
            det.push(f"s{i}", pool[i : i + T])
        return sum(len(det.close(f"s{i}")) for i in range(64)), det.windows_run

    (_, windows) = benchmark.pedantic(round_, rounds=3, iterations=1, warmup_rounds=1)
    assert windows == 64
    _rates(benchmark, 64, 64 * T)


def test_final_merge_one_hour(benchmark, anet):
    model, cfg, pool = anet
    session = EagerSession(model, cfg, batch_size=64)
    det = StreamDetector(session, snippet_rate=RATE, max_delay_s=float("inf"), preview=False)
    det.open("hour")
    n = int(3600 * RATE)
    for a in range(0, n, len(pool)):
        det.push("hour", pool[: min(len(pool), n - a)])
    det.flush()
    st = det._streams["hour"]

    def merge():
        return det._final(st, None)

    out = benchmark.pedantic(merge, rounds=5, iterations=1, warmup_rounds=1)
    assert 0 < len(out) <= cfg.decode.max_detections
    _rates(benchmark, det.windows_run, n)


@pytest.mark.parametrize("vote", [None, 0.3])
def test_final_merge_one_hour_stream_preset(benchmark, vote):
    """(d) the final merge of a 1-hour stream with the ``stream`` preset's decode (ActRecTut shape:
    4 snippets/s, T = 128, stride 32, D = 1,000, stitching on): 450 windows of 100 stored detections
    (random), with and without its box voting (``decode.vote_iou``)."""
    from runtime.merge import final_merge
    from spot_core.config import SpotConfig

    cfg = SpotConfig.preset("actrectut").override(["decode.stitch=true", "decode.max_detections=1000"])
    cfg = cfg.override([f"decode.vote_iou={'null' if vote is None else vote}"])
    rate, T, S = 4.0, cfg.model.num_snippets, cfg.data.stride
    n = int(3600 * rate)
    W = (n - T) // S + 2
    rng = np.random.default_rng(0)
    dets = []
    for _ in range(W):
        a = rng.integers(0, T - 4, 100)
        seg = np.stack([a, np.minimum(T, a + rng.integers(4, 40, 100))], 1).astype(np.int32)
        dets.append(
            (
                seg,
                np.sort(rng.random(100, dtype=np.float32))[::-1].copy(),
                rng.integers(0, 11, 100).astype(np.int32),
            )
        )

    def merge():
        return final_merge(dets, S, 1.0 / rate, cfg.decode, window=T, num_snippets=n)

    out = benchmark.pedantic(merge, rounds=5, iterations=1, warmup_rounds=1)
    assert int(out.valid.sum()) == 1000
    benchmark.extra_info.update({"windows": W, "candidates": 100 * W, "vote_iou": vote})
