"""Pipeline benchmarks, ANet preset (C=400, T=100, K=200), fp32, CPU, one torch thread.

Run with ``pytest benchmarks/ --benchmark-only`` (plain ``pytest`` collects ``tests/`` only).
Random weights and random features (seeded): the numbers measure speed, not detections.

(a) the original SPOT pipeline's shape, one video at a time (:mod:`benchmarks.original_pipeline`);
(b) ours end to end per batch (:func:`spot_core.inference.predict_windows`: batched forward, detect,
    merge per video, result JSON) at batch 1 and 64;
(c) the model forward alone at the same batch sizes;
(d) decode + dedup + Soft-NMS alone (:func:`spot_core.decode.detect`) at the same batch sizes;
(e) the forward per backend and precision (:data:`benchmarks.edge.PATHS`: eager fp32, the model cast
    to bf16, the bf16 CPU edge model, onnxruntime fp32 and int8), and end to end with each, at the
    same batch sizes (a path whose runtime is not installed is skipped with the reason).

Each benchmark records ``videos_per_s`` and ``snippets_per_s`` (from the median) in ``extra_info``.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from benchmarks.common import BATCH_SIZES, decode_only, end_to_end, forward_only, make_bench
from benchmarks.edge import PATHS, ForwardModule, make_paths
from benchmarks.original_pipeline import original_detect_video
from spot_core.inference import predict_windows

pytestmark = pytest.mark.usefixtures("one_thread")

N_VIDEOS = max(BATCH_SIZES)


@pytest.fixture(scope="module")
def bench():
    return make_bench("anet", n=N_VIDEOS, seed=0)


def _throughput(benchmark, videos: int, T: int) -> None:
    med = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "videos_per_call": videos,
            "ms_per_video": med * 1e3 / videos,
            "videos_per_s": videos / med,
            "snippets_per_s": videos * T / med,
            "torch_threads": torch.get_num_threads(),
        }
    )


def test_original_pipeline_per_video(benchmark, bench):
    windows = itertools.cycle(bench.windows)

    def one():
        w = next(windows)
        return original_detect_video(bench.model, w.video_id, w.features_ct(), bench.cfg)

    out = benchmark.pedantic(one, rounds=30, iterations=1, warmup_rounds=3)
    assert out and all(len(d["segment"]) == 2 for d in out)
    _throughput(benchmark, 1, bench.cfg.model.num_snippets)


@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_ours_end_to_end(benchmark, bench, batch):
    rounds = 30 if batch == 1 else 5
    out = benchmark.pedantic(end_to_end, args=(bench, batch), rounds=rounds, iterations=1, warmup_rounds=1)
    assert len(out["results"]) == batch
    _throughput(benchmark, batch, bench.cfg.model.num_snippets)


@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_forward_only(benchmark, bench, batch):
    rounds = 30 if batch == 1 else 5
    logits, _ = benchmark.pedantic(
        forward_only, args=(bench, batch), rounds=rounds, iterations=1, warmup_rounds=1
    )
    assert logits.shape[0] == batch
    _throughput(benchmark, batch, bench.cfg.model.num_snippets)


@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_decode_nms_only(benchmark, bench, batch):
    logits, mask = forward_only(bench, batch)
    rounds = 30 if batch == 1 else 10
    det = benchmark.pedantic(
        decode_only, args=(bench, logits, mask), rounds=rounds, iterations=1, warmup_rounds=1
    )
    assert det.scores.shape == (batch, bench.cfg.decode.max_detections)
    _throughput(benchmark, batch, bench.cfg.model.num_snippets)


@pytest.fixture(scope="module")
def paths(bench, tmp_path_factory):
    """Every forward of :data:`benchmarks.edge.PATHS` (exports the ONNX and int8 files once)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the ONNX paths need it)")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (the ONNX export needs it)")
    return make_paths(bench, tmp_path_factory.mktemp("edge"), threads=1)


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("path", PATHS)
def test_forward_per_backend(benchmark, bench, paths, path, batch):
    fn = paths[path]
    x = bench.features[:batch]
    rounds = 20 if batch == 1 else 5
    logits, mask = benchmark.pedantic(fn, args=(x,), rounds=rounds, iterations=1, warmup_rounds=2)
    assert logits.shape == (batch, bench.cfg.model.num_classes + 1, bench.cfg.model.num_snippets)
    assert logits.dtype == torch.float32 and bool(torch.isfinite(mask).all())
    benchmark.extra_info["path"] = path
    _throughput(benchmark, batch, bench.cfg.model.num_snippets)


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("path", PATHS)
def test_end_to_end_per_backend(benchmark, bench, paths, path, batch):
    mod = ForwardModule(paths[path])
    rounds = 20 if batch == 1 else 5

    def run():
        return predict_windows(mod, bench.windows[:batch], bench.cfg, batch_size=batch)

    out = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=2)
    assert len(out["results"]) == batch
    benchmark.extra_info["path"] = path
    _throughput(benchmark, batch, bench.cfg.model.num_snippets)
