"""Shared set-up of the pipeline benchmarks: seeded random model and features, our pipeline's pieces.

Every benchmark uses *random weights and random features* (seeded): the numbers measure speed only.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spot_core.config import SpotConfig
from spot_core.data.windows import Window
from spot_core.decode import Detections, detect
from spot_core.inference import predict_windows
from spot_core.model import SPOT

__all__ = [
    "BATCH_SIZES",
    "Bench",
    "cpu_model",
    "decode_only",
    "device_info",
    "end_to_end",
    "forward_only",
    "make_bench",
    "median_ms",
]

BATCH_SIZES = (1, 64)


class Bench:
    """A seeded random SPOT model in eval mode and ``n`` random videos (one window each)."""

    def __init__(self, cfg: SpotConfig, model: SPOT, windows: list[Window], features: torch.Tensor) -> None:
        self.cfg = cfg
        self.model = model
        self.windows = windows  # [n] windows, rescale mode: one per video
        self.features = features  # [n, C, T] float32, the same features as the windows


def make_bench(preset: str = "anet", n: int = 64, seed: int = 0, cls_scale: float = 1.0) -> Bench:
    """Random weights (``torch.manual_seed(seed)``) and ``n`` random videos of T snippets each.

    ``cls_scale`` multiplies the classifier's weights and bias: at 1 (the plain random init) the
    K+1-way softmax is nearly uniform, so no class-activation proposal fires; at about 5 the
    per-snippet best score spreads over (0, 1) as a trained model's does and post-processing has
    more proposals to handle.
    """
    cfg = SpotConfig.preset(preset)
    m = cfg.model
    torch.manual_seed(seed)
    model = SPOT(m).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(cls_scale)
        model.classifier.bias.mul_(cls_scale)
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, m.num_snippets, m.feat_dim), dtype=np.float32)  # [n, T, C]
    zeros_t = np.zeros(m.num_snippets, np.int64)
    zeros_tt = np.zeros((m.num_snippets, m.num_snippets), np.float32)
    windows = [
        Window(
            video_id=f"video_{i:05d}",
            features=feats[i],
            valid=m.num_snippets,
            t_start=0.0,
            snippet_sec=1.0,
            cls_target=zeros_t,
            mask_target=zeros_tt,
            labeled=False,
            has_targets=False,
        )
        for i in range(n)
    ]
    features = torch.from_numpy(np.ascontiguousarray(feats.transpose(0, 2, 1)))  # [n, C, T]
    return Bench(cfg, model, windows, features)


def end_to_end(bench: Bench, batch: int, start: int = 0) -> dict:
    """Ours, production path: :func:`spot_core.inference.predict_windows` on ``batch`` videos
    (stack features, batched forward, detect, to seconds, merge per video, result JSON)."""
    chunk = bench.windows[start : start + batch]
    return predict_windows(bench.model, chunk, bench.cfg, batch_size=batch)


@torch.no_grad()
def forward_only(bench: Bench, batch: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The model forward alone on ``[batch, C, T]`` features already in a tensor."""
    return bench.model(bench.features[start : start + batch])


@torch.no_grad()
def decode_only(bench: Bench, logits: torch.Tensor, mask: torch.Tensor) -> Detections:
    """Decode + dedup + Soft-NMS (:func:`spot_core.decode.detect`) on precomputed model outputs."""
    return detect(logits, mask, bench.cfg.decode)


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` in ms after ``warmup`` calls, and all the samples."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples), samples


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_info() -> dict[str, Any]:
    """The machine as the results JSON records it (no host name)."""
    import os

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "device": "cpu",
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "loadavg_1_5_15": load,
    }
