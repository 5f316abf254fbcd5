"""Streaming runtime benchmarks, ANet preset (C=400, T=100, K=200), eager fp32, CPU, one torch thread.

Run with ``pytest benchmarks/test_bench_streaming.py --benchmark-only``. Random weights (classifier
scaled x5 so windows yield detections) and random features: the numbers measure speed only.

(a) one live stream at batch 1: the push that completes a window (forward, decode, Soft-NMS,
    preview merge) -- the per-window latency;
(b) 64 concurrent streams, one window each, batched into one padded batch of 64, then closed
    (final exact merge per stream);
(c) the final merge of a 1-hour stream at 2 snippets/s (143 windows of stored detections).

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
