"""CPU edge paths (fp32, bf16, int8) vs the original pipeline, in one process: ``python -m benchmarks.edge``.

Random weights and random features (seeded, :func:`benchmarks.common.make_bench`), ActivityNet
preset sizes; the numbers measure speed only. Per thread count (``--threads 1,2``; torch intra-op
threads and onnxruntime ``intra_op_num_threads`` alike), every case runs interleaved (one call of
each per round, after warm-up) as :mod:`benchmarks.compare` does, and the medians over rounds are
reported in ms per video and videos/s (p10 / p90 too). Cases:

- ``original_pipeline`` (batch 1): :mod:`benchmarks.original_pipeline`; the 10x target's baseline
  is its median at 1 thread in the same run (1 thread always runs first), whatever the thread count
  of the case compared with it;
- per path, ``forward_<path>_b<B>`` (the model alone on a ``[B, C, T]`` tensor) and
  ``end_to_end_<path>_b<B>`` (:func:`spot_core.inference.predict_windows` with that forward:
  stack, forward, decode + Soft-NMS, merge, result JSON), B in 1 and 64. Paths: ``eager_fp32``
  (the reference), ``eager_bf16`` (the model cast to bfloat16, :func:`spot_core.graph.inference_graph`:
  oneDNN, AMX where the CPU has it), ``edge_bf16`` (:func:`export.quantize.bf16_cpu_model`, the
  same maths laid out for the CPU), ``ort_fp32`` (the fp32 ONNX export in onnxruntime) and
  ``ort_int8`` (:func:`export.quantize.quantize_onnx`, dynamic, per-channel weights);
- ``decode_nms_only_b<B>``: decode + Soft-NMS on precomputed outputs (what every path adds).

Also recorded: the model's FLOPs per window (analytic, from the config), the effective rate of each
forward, the peak rate of one large fp32 / bf16 matmul of the Q/K/V shape (best of the rounds), and
the accuracy of each path against eager fp32 on the same random windows (max abs diff, cosine):
the issue asks for the fp32 ONNX vs eager max abs error on the ANet preset. Writes
``benchmarks/results/cpu_edge_<label>.json`` (the label names no host).

``--study CKPT DATA`` instead runs the precision study of docs/edge.md on a trained checkpoint and
its dataset folder (the inputs of ``python -m export.verify``): SPOT's forward with one stage or a
set of stages in bf16 / fp16 (the rest fp32), judged like verify's rows (elements outside DESIGN's
``1e-3 + 1e-2 |ref|``, max abs diff, cosine, mAP delta), and the fp32 model's own sensitivity to a
relative perturbation of its input of the size of bf16 / fp16 rounding. Writes
``benchmarks/results/cpu_edge_precision_study.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import BATCH_SIZES, Bench, decode_only, device_info, make_bench
from benchmarks.compare import default_label, percentile
from benchmarks.original_pipeline import original_detect_video
from spot_core.cli import reports_errors, setup_logging
from spot_core.config import ModelConfig
from spot_core.inference import predict_windows
from spot_core.outputs import write_text_atomic

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PATHS = ("eager_fp32", "eager_bf16", "edge_bf16", "ort_fp32", "ort_int8")
TARGET_SPEEDUP = 10.0

Forward = Callable[[Tensor], tuple[Tensor, Tensor]]  # features [B, C, T] fp32 -> fp32 logits, mask


def flops_per_window(m: ModelConfig) -> dict[str, int]:
    """Multiply-adds x 2 of one inference forward ``[1, C, T]``, by layer (elementwise ops left out)."""
    c, t, k, h, d, hid = m.feat_dim, m.num_snippets, m.num_classes, m.num_heads, m.d_head, m.mask_hidden
    parts = {
        "qkv": 3 * 2 * t * c * h * d,
        "attention_scores": 2 * h * t * t * d,
        "attention_values": 2 * h * t * t * d,
        "out_proj": 2 * t * h * d * c,
        "classifier": 2 * t * c * (k + 1),
        "mask_conv": 2 * t * c * 3 * hid,
        "mask_out": 2 * t * hid * t,
    }
    parts["total"] = sum(parts.values())
    return parts


class ForwardModule(nn.Module):
    """A forward function dressed as a module for :func:`predict_windows` (which asks for a device)."""

    def __init__(self, fn: Forward) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.fn = fn

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.fn(x)


def make_paths(bench: Bench, tmp: Path, threads: int) -> dict[str, Forward]:
    """The four forwards of :data:`PATHS`, each returning float32 outputs."""
    from export.onnx import export_onnx
    from export.quantize import bf16_cpu_model, quantize_onnx
    from runtime.onnx_model import OnnxRunner
    from spot_core.graph import inference_graph

    cfg, model = bench.cfg, bench.model
    fp32_onnx = tmp / "anet_fp32.onnx"
    int8_onnx = tmp / "anet_int8.onnx"
    if not fp32_onnx.exists():
        export_onnx(model, cfg, fp32_onnx)
        quantize_onnx(fp32_onnx, int8_onnx)
    bf16 = inference_graph(model, cfg, dtype=torch.bfloat16)
    edge = bf16_cpu_model(model, cfg)
    ort32 = OnnxRunner(fp32_onnx, cfg, intra_op_threads=threads)
    ort8 = OnnxRunner(int8_onnx, cfg, intra_op_threads=threads)

    def eager_fp32(x: Tensor) -> tuple[Tensor, Tensor]:
        return model(x)

    def eager_bf16(x: Tensor) -> tuple[Tensor, Tensor]:
        logits, mask = bf16(x.to(torch.bfloat16))
        return logits.float(), mask.float()

    def ort(runner: OnnxRunner) -> Forward:
        def run(x: Tensor) -> tuple[Tensor, Tensor]:
            out = runner(x)
            return torch.from_numpy(out["logits"]), torch.from_numpy(out["mask"])

        return run

    return {
        "eager_fp32": eager_fp32,
        "eager_bf16": eager_bf16,
        "edge_bf16": edge,
        "ort_fp32": ort(ort32),
        "ort_int8": ort(ort8),
    }


def accuracy(paths: dict[str, Forward], x: Tensor) -> dict[str, dict[str, float]]:
    """Each path against eager fp32 on ``x``: max abs diff and cosine (float64), per output."""
    ref = paths["eager_fp32"](x)
    out: dict[str, dict[str, float]] = {}
    for name, fn in paths.items():
        got = fn(x)
        row: dict[str, float] = {}
        for key, g, r in zip(("logits", "mask"), got, ref, strict=True):
            g64, r64 = g.double().flatten(), r.double().flatten()
            row[f"{key}_max_abs"] = float((g64 - r64).abs().max())
            row[f"{key}_cosine"] = float(g64 @ r64 / (g64.norm() * r64.norm()))
        out[name] = row
    return out


def matmul_peak_gflops(m: ModelConfig, batch: int, rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` rate of one ``[batch*T, C] x [C, H*d]`` linear in fp32 and in bf16."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(batch * m.num_snippets, m.feat_dim, generator=g)
    w = torch.randn(m.num_heads * m.d_head, m.feat_dim, generator=g)
    flops = 2 * a.shape[0] * a.shape[1] * w.shape[0]
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        aa, ww = a.to(dt), w.to(dt)
        torch.nn.functional.linear(aa, ww)
        best = min(_time(lambda aa=aa, ww=ww: torch.nn.functional.linear(aa, ww)) for _ in range(rounds))
        out[name] = flops / best / 1e9
    return out


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_threads(
    bench: Bench, paths: dict[str, Forward], rounds: int, inner: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """Interleaved timing of every case at the current thread count; ms per video."""
    n = bench.features.shape[0]
    vids = iter(range(10**9))
    cases: dict[str, tuple[Callable[[], Any], int, int]] = {}

    def orig() -> None:
        w = bench.windows[next(vids) % n]
        original_detect_video(bench.model, w.video_id, w.features_ct(), bench.cfg)

    cases["original_pipeline"] = (orig, 1, inner)
    with torch.no_grad():
        outs = {b: paths["eager_fp32"](bench.features[:b]) for b in BATCH_SIZES}
    for b in BATCH_SIZES:
        reps = inner if b == 1 else 1
        cases[f"decode_nms_only_b{b}"] = (lambda b=b: decode_only(bench, *outs[b]), b, reps)
        for name, fn in paths.items():
            mod = ForwardModule(fn)

            def fwd(b: int = b, fn: Forward = fn) -> Any:
                return fn(bench.features[:b])

            def e2e(b: int = b, mod: nn.Module = mod) -> Any:
                return predict_windows(mod, bench.windows[:b], bench.cfg, batch_size=b)  # type: ignore[arg-type]

            cases[f"forward_{name}_b{b}"] = (fwd, b, reps)
            cases[f"end_to_end_{name}_b{b}"] = (e2e, b, reps)
    samples: dict[str, list[float]] = {k: [] for k in cases}
    with torch.no_grad():
        for r in range(warmup + rounds):
            for name, (fn, videos, reps) in cases.items():
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                if r >= warmup:
                    samples[name].append((time.perf_counter() - t0) * 1e3 / (reps * videos))
    res = {}
    orig = samples["original_pipeline"]
    for name, xs in samples.items():
        med = statistics.median(xs)
        res[name] = {
            "ms_per_video_median": med,
            "ms_per_video_p10": percentile(xs, 0.1),
            "ms_per_video_p90": percentile(xs, 0.9),
            "videos_per_s": 1e3 / med,
            # the original's time over this case's in the same round, median over rounds: robust to
            # load drift on a shared machine (both ran within seconds of each other)
            "speedup_over_original_same_round": statistics.median(
                o / x for o, x in zip(orig, xs, strict=True)
            ),
            "batch": cases[name][1],
            "rounds": len(xs),
        }
    return res


def summarise(res: dict[str, dict[str, Any]], flops: int, base: float) -> dict[str, Any]:
    """Speed-ups over ``base`` (the original pipeline at 1 thread, ms/video, the target's baseline)
    and over the fp32 forward; effective forward GFLOP/s; what the 10x target leaves the forward."""
    med = {k: v["ms_per_video_median"] for k, v in res.items()}
    out: dict[str, Any] = {
        "baseline": "original_pipeline at 1 thread, this run",
        "baseline_ms_per_video": base,
        "target_ms_per_video": base / TARGET_SPEEDUP,
        "speedup_over_original": {},
    }
    for b in BATCH_SIZES:
        for p in PATHS:
            out["speedup_over_original"][f"end_to_end_{p}_b{b}"] = base / med[f"end_to_end_{p}_b{b}"]
            out.setdefault("forward_speedup_over_eager_fp32", {})[f"{p}_b{b}"] = (
                med[f"forward_eager_fp32_b{b}"] / med[f"forward_{p}_b{b}"]
            )
            out.setdefault("forward_gflops", {})[f"{p}_b{b}"] = flops / med[f"forward_{p}_b{b}"] / 1e6
    same = {k: v["speedup_over_original_same_round"] for k, v in res.items()}
    best = min((med[f"end_to_end_{p}_b{b}"], f"end_to_end_{p}_b{b}") for p in PATHS for b in BATCH_SIZES)
    # what every path pays per video besides its forward: decode + Soft-NMS alone, and everything
    # predict_windows adds (end-to-end minus forward; the smallest over the paths)
    decode = min(med[f"decode_nms_only_b{b}"] for b in BATCH_SIZES)
    overhead = min(med[f"end_to_end_{p}_b{b}"] - med[f"forward_{p}_b{b}"] for p in PATHS for b in BATCH_SIZES)
    budget = base / TARGET_SPEEDUP - decode
    budget_e2e = base / TARGET_SPEEDUP - overhead
    out["best_end_to_end"] = {
        "case": best[1],
        "ms_per_video": best[0],
        "speedup": base / best[0],
        "speedup_over_same_threads_original_same_round": same[best[1]],
    }
    out["target_met"] = base / best[0] >= TARGET_SPEEDUP
    out["decode_nms_ms_per_video"] = decode
    out["end_to_end_minus_forward_ms_per_video"] = overhead
    out["forward_budget_ms_for_target"] = budget  # what is left for the forward after decode + NMS
    out["forward_gflops_needed_for_target"] = flops / budget / 1e6 if budget > 0 else None
    out["forward_budget_ms_after_end_to_end_overhead"] = budget_e2e
    out["forward_gflops_needed_after_end_to_end_overhead"] = (
        flops / budget_e2e / 1e6 if budget_e2e > 0 else None
    )
    return out


def run_edge(
    threads: Sequence[int] = (1, 2), rounds: int = 7, inner: int = 8, warmup: int = 2, seed: int = 0
) -> dict[str, Any]:
    """The whole report: per thread count, timings + summary; accuracy and FLOPs once."""
    bench = make_bench("anet", n=max(BATCH_SIZES), seed=seed)
    m = bench.cfg.model
    flops = flops_per_window(m)
    rep: dict[str, Any] = {
        "what": "CPU edge paths (eager fp32 / eager bf16 / edge bf16 / onnxruntime fp32 / int8) vs the "
        "original SPOT pipeline",
        "inputs": f"random weights and random features (seed {seed}); speed only, not detections",
        "preset": "anet",
        "sizes": {"C": m.feat_dim, "T": m.num_snippets, "K": m.num_classes, "H": m.num_heads, "d": m.d_head},
        "flops_per_window": flops,
        "rounds": rounds,
        "inner": inner,
        "warmup_rounds": warmup,
        "by_threads": {},
    }
    threads = [1] + [t for t in threads if t != 1]  # the target's baseline is the 1-thread original
    base_1t = 0.0
    with tempfile.TemporaryDirectory(prefix="spot_edge_") as tmp:
        for th in threads:
            torch.set_num_threads(th)
            paths = make_paths(bench, Path(tmp), th)
            if "accuracy_vs_eager_fp32" not in rep:
                with torch.no_grad():
                    rep["accuracy_vs_eager_fp32"] = accuracy(paths, bench.features)
            load_before = os.getloadavg()
            res = run_threads(bench, paths, rounds, inner, warmup)
            base_1t = base_1t or res["original_pipeline"]["ms_per_video_median"]
            rep["by_threads"][str(th)] = {
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
                "device": device_info(),
                "matmul_peak_gflops": matmul_peak_gflops(m, max(BATCH_SIZES), rounds),
                "results": res,
                "summary": summarise(res, flops["total"], base_1t),
            }
            log.info("%s", format_threads(th, rep["by_threads"][str(th)]))
    return rep


def format_threads(th: int, r: dict[str, Any]) -> str:
    """The table of one thread count."""
    s = r["summary"]
    lines = [
        f"{th} thread(s); load avg before {r['loadavg_before'][0]:.2f}, after {r['loadavg_after'][0]:.2f}",
        f"x orig: over the original pipeline at 1 thread ({s['baseline_ms_per_video']:.3f} ms/video); "
        "(round): over the original at this thread count, same round",
        f"{'case':<28} {'ms/video':>9} {'p10':>8} {'p90':>8} {'videos/s':>9} {'x orig':>7} {'(round)':>7}",
    ]
    base = s["baseline_ms_per_video"]
    for name, v in r["results"].items():
        med = v["ms_per_video_median"]
        lines.append(
            f"{name:<28} {med:>9.3f} {v['ms_per_video_p10']:>8.3f} {v['ms_per_video_p90']:>8.3f} "
            f"{v['videos_per_s']:>9.1f} {base / med:>7.2f} {v['speedup_over_original_same_round']:>7.2f}"
        )
    pk = r["matmul_peak_gflops"]
    lines += [
        f"best end-to-end: {s['best_end_to_end']['case']} "
        f"{s['best_end_to_end']['speedup']:.2f}x the original "
        f"({s['best_end_to_end']['speedup_over_same_threads_original_same_round']:.2f}x within rounds) "
        f"(target {TARGET_SPEEDUP:g}x: {'met' if s['target_met'] else 'not met'})",
        f"forward budget for the target after decode+NMS: {s['forward_budget_ms_for_target']:.3f} ms/video "
        f"-> needs {s['forward_gflops_needed_for_target'] or float('nan'):.0f} GFLOP/s; after all of "
        f"end-to-end's non-forward work ({s['end_to_end_minus_forward_ms_per_video']:.3f} ms/video): "
        f"{s['forward_budget_ms_after_end_to_end_overhead']:.3f} ms/video -> "
        f"{s['forward_gflops_needed_after_end_to_end_overhead'] or float('nan'):.0f} GFLOP/s; "
        f"peak matmul here: fp32 {pk['fp32']:.0f}, bf16 {pk['bf16']:.0f} GFLOP/s",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- precision study
STAGES = (
    "input",
    "qkv",
    "attention",
    "softmax",
    "proj",
    "layernorm",
    "classifier",
    "mask_conv",
    "mask_out",
    "output",
)
STUDY_VARIANTS: dict[str, tuple[str, ...]] = {
    "all stages": STAGES,
    **{f"only {s}": (s,) for s in STAGES},
    "embedding matmuls (qkv, attention, proj)": ("qkv", "attention", "proj"),
    "all but layernorm / softmax / classifier (fp32 reductions and logits)": tuple(
        s for s in STAGES if s not in ("layernorm", "softmax", "classifier")
    ),
    "same, fp32 input too": tuple(
        s for s in STAGES if s not in ("layernorm", "softmax", "classifier", "input")
    ),
    "mask head only (mask_conv, mask_out)": ("mask_conv", "mask_out"),
    "mask head + output": ("mask_conv", "mask_out", "output"),
    "heads + output (classifier, mask_conv, mask_out)": ("classifier", "mask_conv", "mask_out", "output"),
    "heads + output + proj": ("classifier", "mask_conv", "mask_out", "output", "proj"),
}


@torch.no_grad()
def staged_forward(
    model: nn.Module, x: Tensor, low: Sequence[str], dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """SPOT's inference forward with the stages in ``low`` computed in ``dtype``, the rest in fp32.

    A stage in ``dtype`` rounds its operands (weights and inputs) to ``dtype`` and returns ``dtype``;
    ``input`` / ``output`` round the features / the two outputs. Same maths as ``SPOT.forward``.
    """
    lo = set(low)

    def dt(stage: str) -> torch.dtype:
        return dtype if stage in lo else torch.float32

    def cast(t: Tensor | None, stage: str) -> Tensor | None:
        return None if t is None else t.to(dt(stage))

    e = model.embedding
    x = x.to(dtype).float() if "input" in lo else x
    xt = x.transpose(1, 2)  # [B, T, C]
    b, t, c = xt.shape
    h, d = e.num_heads, e.head_dim
    q, k, v = (
        F.linear(cast(xt, "qkv"), cast(w.weight, "qkv")).view(b, t, h, d).transpose(1, 2)
        for w in (e.w_q, e.w_k, e.w_v)
    )  # [B, H, T, d]
    a = torch.matmul(cast(q, "attention"), cast(k, "attention").transpose(-1, -2)) / d**0.5
    a = cast(a, "softmax").softmax(-1)
    o = torch.matmul(cast(a, "attention"), cast(v, "attention")).transpose(1, 2).reshape(b, t, h * d)
    o = F.linear(cast(o, "proj"), cast(e.proj.weight, "proj"), cast(e.proj.bias, "proj"))
    r = cast(o, "layernorm") + cast(xt, "layernorm")
    emb = F.layer_norm(r, (c,), cast(e.norm.weight, "layernorm"), cast(e.norm.bias, "layernorm"), e.norm.eps)
    emb = emb.transpose(1, 2)  # [B, C, T]
    cl, mc, mo = model.classifier, model.mask_conv, model.mask_out
    logits = F.conv1d(cast(emb, "classifier"), cast(cl.weight, "classifier"), cast(cl.bias, "classifier"))
    hid = F.relu(
        F.conv1d(cast(emb, "mask_conv"), cast(mc.weight, "mask_conv"), cast(mc.bias, "mask_conv"), padding=1)
    )
    mask = torch.sigmoid(F.conv1d(cast(hid, "mask_out"), cast(mo.weight, "mask_out")))
    if "output" in lo:
        logits, mask = logits.to(dtype), mask.to(dtype)
    return logits.float(), mask.float()


def precision_study(
    checkpoint: str | Path, data: str | Path, num_random: int = 8, seed: int = 0
) -> dict[str, Any]:
    """The stage-by-stage bf16 / fp16 study of docs/edge.md on a trained model and its data."""
    from export.verify import TOLERANCES, Inputs, Reference, compare
    from spot_core.checkpoint import load_model

    model, cfg = load_model(checkpoint)
    model.eval()
    inputs = Inputs(cfg, num_random=num_random, seed=seed, data=data)
    ref = Reference(model, cfg, inputs, 4)
    x = ref.x
    with torch.no_grad():
        check = staged_forward(model, x, (), torch.float32)
    fp32_dev = compare(check, ref.out, "fp32")
    assert not fp32_dev["bad_outputs"], fp32_dev  # the staged forward in fp32 is the model

    def judge(out: tuple[Tensor, Tensor], prec: str) -> dict[str, Any]:
        r = ref.check("study", prec, out)
        tol = TOLERANCES[prec]
        counts = {
            name: int(((g - rr).abs() > tol["atol"] + tol["rtol"] * rr.abs()).sum())
            for name, g, rr in zip(("logits", "mask"), out, ref.out, strict=True)
        }
        return {
            "outside_tolerance": counts,
            "elements": {"logits": ref.out[0].numel(), "mask": ref.out[1].numel()},
            "meets_design_elementwise": not any(counts.values()),
            **{k: r[k] for k in ("max_abs", "cosine", "map_delta", "detections_equal")},
        }

    rep: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "windows": {"random": num_random, "validation": int(x.shape[0]) - num_random},
        "reference_map": ref.map,
        "variants": {},
        "input_perturbation_fp32_model": {},
    }
    for prec, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        for name, low in STUDY_VARIANTS.items():
            rep["variants"][f"{prec}: {name}"] = {
                "stages": list(low),
                **judge(staged_forward(model, x, low, dtype), prec),
            }
    g = torch.Generator().manual_seed(seed + 1)
    for label, eps in (("bf16 rounding size 2^-9", 2.0**-9), ("fp16 rounding size 2^-12", 2.0**-12)):
        u = (2 * torch.rand(x.shape, generator=g) - 1) * eps  # |u| <= eps, relative
        with torch.no_grad():
            out = model(x * (1 + u))
        rep["input_perturbation_fp32_model"][label] = judge(out, "bf16")
    # where the failing bf16 logits are: their |ref| against all logits
    out = staged_forward(model, x, STAGES, torch.bfloat16)
    tol = TOLERANCES["bf16"]
    bad = (out[0] - ref.out[0]).abs() > tol["atol"] + tol["rtol"] * ref.out[0].abs()
    rep["bf16_all_failing_logits_abs_ref"] = {
        "median_failing": float(ref.out[0][bad].abs().median()) if bad.any() else None,
        "median_all": float(ref.out[0].abs().median()),
        "max_all": float(ref.out[0].abs().max()),
    }
    return rep


def format_study(rep: dict[str, Any]) -> str:
    """The study as a markdown table."""
    lines = [
        "| variant (stages in low precision) | logits outside | mask outside | max abs | cosine "
        "| mAP delta |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows = list(rep["variants"].items()) + [
        (f"fp32 model, input x (1 + u), {k}", v) for k, v in rep["input_perturbation_fp32_model"].items()
    ]
    for name, v in rows:
        o, n = v["outside_tolerance"], v["elements"]
        lines.append(
            f"| {name} | {o['logits']} / {n['logits']} | {o['mask']} / {n['mask']} | {v['max_abs']:.2e} | "
            f"{v['cosine']:.7f} | {v['map_delta']:+.3f} |"
        )
    return "\n".join(lines)


@reports_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.edge", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--inner", type=int, default=8, help="batch-1 calls (videos) per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default=None, help="results file label (default: the CPU model)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--study", nargs=2, metavar=("CKPT", "DATA"), help="run the precision study instead")
    args = ap.parse_args(argv)
    setup_logging(1)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    if args.study:
        torch.set_num_threads(int(args.threads.split(",")[0]))
        rep = precision_study(*args.study, seed=args.seed)
        rep["command"] = "python -m benchmarks.edge " + " ".join(
            argv if argv is not None else os.sys.argv[1:]
        )
        print(format_study(rep))
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path = args.out_dir / "cpu_edge_precision_study.json"
        write_text_atomic(path, json.dumps(rep, indent=2) + "\n")
        log.info("wrote %s", path)
        return 0
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    rep = run_edge(threads, args.rounds, args.inner, args.warmup, args.seed)
    rep["command"] = "python -m benchmarks.edge " + " ".join(argv if argv is not None else os.sys.argv[1:])
    label = args.label or default_label(0).removesuffix("_0t")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"cpu_edge_{label}.json"
    write_text_atomic(path, json.dumps(rep, indent=2) + "\n")
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
