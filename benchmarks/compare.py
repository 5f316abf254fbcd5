"""Original SPOT pipeline vs ours, in one process: ``python -m benchmarks.compare``.

Random weights and random features (seeded); the numbers measure speed only. Cases run
interleaved (one call of every case per round, after warm-up) so that load drift on a shared
machine hits them alike; each round of a batch-1 case times ``--inner`` consecutive videos.
Reported: medians over rounds (p10 / p90 too), ms per video, videos/s and snippets/s, and the
ratios: ours end-to-end vs the original per video, and ours end-to-end vs the forward alone
(the issue's CPU target: end-to-end within 1.2x of the forward alone). Writes
``benchmarks/results/cpu_<label>.json`` (the label names no host).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    BATCH_SIZES,
    decode_only,
    device_info,
    end_to_end,
    forward_only,
    make_bench,
)
from benchmarks.original_pipeline import original_detect_video, original_postprocess
from spot_core.cli import reports_errors, setup_logging
from spot_core.outputs import write_text_atomic

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    i = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[i]


def run_compare(
    preset: str = "anet",
    rounds: int = 15,
    inner: int = 8,
    warmup: int = 2,
    seed: int = 0,
    cls_scale: float = 1.0,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> dict[str, Any]:
    """Time every case interleaved over ``rounds`` rounds; return the results dict (ms per video)."""
    n = max(max(batch_sizes), inner)
    bench = make_bench(preset, n=n, seed=seed, cls_scale=cls_scale)
    T = bench.cfg.model.num_snippets
    vids = itertools.cycle(range(n))
    with torch.no_grad():
        outs = {b: forward_only(bench, b) for b in batch_sizes}
        logits_np, mask_np = (x.numpy() for x in forward_only(bench, n))

    def orig_full() -> None:
        i = next(vids)
        w = bench.windows[i]
        original_detect_video(bench.model, w.video_id, w.features_ct(), bench.cfg)

    def orig_post() -> None:
        i = next(vids)
        original_postprocess(bench.windows[i].video_id, logits_np[i], mask_np[i], bench.cfg)

    # name -> (fn, videos per call, calls per round)
    cases: dict[str, tuple[Callable[[], Any], int, int]] = {
        "original_pipeline": (orig_full, 1, inner),
        "original_postprocess_only": (orig_post, 1, inner),
    }
    for b in batch_sizes:
        reps = inner if b == 1 else 1
        cases[f"ours_end_to_end_b{b}"] = (lambda b=b: end_to_end(bench, b), b, reps)
        cases[f"forward_only_b{b}"] = (lambda b=b: forward_only(bench, b), b, reps)
        cases[f"decode_nms_only_b{b}"] = (lambda b=b, o=outs[b]: decode_only(bench, *o), b, reps)

    samples: dict[str, list[float]] = {k: [] for k in cases}
    load_before = os.getloadavg()
    with torch.no_grad():
        for r in range(warmup + rounds):
            for name, (fn, videos, reps) in cases.items():
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                ms_per_video = (time.perf_counter() - t0) * 1e3 / (reps * videos)
                if r >= warmup:
                    samples[name].append(ms_per_video)
    load_after = os.getloadavg()

    results = {}
    for name, xs in samples.items():
        med = statistics.median(xs)
        results[name] = {
            "ms_per_video_median": med,
            "ms_per_video_p10": percentile(xs, 0.1),
            "ms_per_video_p90": percentile(xs, 0.9),
            "videos_per_s": 1e3 / med,
            "snippets_per_s": 1e3 * T / med,
            "batch": cases[name][1],
            "rounds": len(xs),
        }
    med = {k: v["ms_per_video_median"] for k, v in results.items()}
    ratios = {}
    for b in batch_sizes:
        ratios[f"original_over_ours_end_to_end_b{b}"] = (
            med["original_pipeline"] / med[f"ours_end_to_end_b{b}"]
        )
        ratios[f"end_to_end_over_forward_b{b}"] = med[f"ours_end_to_end_b{b}"] / med[f"forward_only_b{b}"]
    m = bench.cfg.model
    return {
        "what": "original SPOT pipeline shape vs spot_core batched pipeline, CPU, fp32",
        "inputs": f"random weights and random features (seed {seed}); speed only, not detections",
        "preset": preset,
        "sizes": {"C": m.feat_dim, "T": m.num_snippets, "K": m.num_classes, "H": m.num_heads},
        "cls_scale": cls_scale,
        "rounds": rounds,
        "inner": inner,
        "warmup_rounds": warmup,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "device": device_info(),
        "results": results,
        "ratios": ratios,
        "cpu_target": "end_to_end_over_forward <= 1.2",
    }


def format_report(rep: dict[str, Any]) -> str:
    """The human-readable table of :func:`run_compare`'s result."""
    d = rep["device"]
    lines = [
        f"{rep['what']}; {rep['inputs']}",
        f"preset {rep['preset']} {rep['sizes']}, cls_scale {rep['cls_scale']}, "
        f"{rep['rounds']} rounds after {rep['warmup_rounds']} warm-up (medians, p10-p90)",
        f"{d['cpu_model']}, {d['logical_cpus']} logical CPUs, torch {d['torch_version']}, "
        f"{d['torch_threads']} thread(s); load avg before {rep['loadavg_before'][0]:.2f}, "
        f"after {rep['loadavg_after'][0]:.2f}",
        "",
        f"{'case':<28} {'ms/video':>9} {'p10':>8} {'p90':>8} {'videos/s':>9} {'snippets/s':>11}",
    ]
    for name, r in rep["results"].items():
        lines.append(
            f"{name:<28} {r['ms_per_video_median']:>9.3f} {r['ms_per_video_p10']:>8.3f} "
            f"{r['ms_per_video_p90']:>8.3f} {r['videos_per_s']:>9.1f} {r['snippets_per_s']:>11.0f}"
        )
    lines.append("")
    for name, v in rep["ratios"].items():
        lines.append(f"{name:<36} {v:6.2f}x")
    lines.append(f"target: {rep['cpu_target']}")
    return "\n".join(lines)


def default_label(threads: int) -> str:
    """A host-name-free label: the CPU model slug and the thread count."""
    slug = re.sub(r"\(r\)|\(tm\)|cpu|@.*$", "", device_info()["cpu_model"].lower())
    slug = re.sub(r"[^a-z0-9]+", "_", slug).strip("_") or "cpu"
    return f"{slug}_{threads}t"


@reports_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="anet")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=8, help="batch-1 calls (videos) per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (machines are shared)")
    ap.add_argument("--cls-scale", type=float, default=1.0, help="classifier weight scale (see make_bench)")
    ap.add_argument("--label", default=None, help="results file label (default: CPU model and threads)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    setup_logging(1)
    torch.set_num_threads(args.threads)
    rep = run_compare(
        args.preset, args.rounds, args.inner, args.warmup, args.seed, args.cls_scale, BATCH_SIZES
    )
    print(format_report(rep))
    label = args.label or default_label(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"cpu_{label}.json"
    write_text_atomic(path, json.dumps(rep, indent=2) + "\n")
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
