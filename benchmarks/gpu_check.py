"""The one script for a lent GPU: GPU-only tests and GPU benchmarks, one JSON report.

``python -m benchmarks.gpu_check --out DIR`` (on the GPU machine: ``--out $OUT``) runs, within a
time budget (``--budget``, default 270 s; later sections are skipped with the reason when it runs
out):

1. the device, its measured ceilings (bf16 matrix rate: 8192^3 products; memory bandwidth: a
   device-to-device copy) and the versions;
2. the GPU tests: the kernel test files on CUDA (their ``test_kernel_*`` tests run on the GPU
   there), with pytest-xdist;
3. decode at batch 1, 64 and 1024 windows of the ANet preset: the step-4 Triton kernel vs its
   eager PyTorch reference, and the fused decode (steps 1-6 from the hidden map) vs the unfused
   eager decode (mask formed, then decoded) vs torch.compile of that;
4. batched Soft-NMS: the Triton kernel vs the eager PyTorch reference vs torch.compile of it;
5. the whole path (features in, detections out) in windows per second, fp32 / tf32 / bf16: model +
   reference decode, the fused path, and the fused path replayed as a CUDA graph; FLOPs and bytes
   per window and the achieved fraction of the measured ceilings; the streaming runtime
   (latency at batch 1, throughput with 1, 64 and 1,024 streams; eager and compiled sessions);
6. ``export.verify`` on CUDA (with ``--checkpoint`` / ``--data`` / ``--onnx`` when given);
7. ``compute-sanitizer --tool memcheck`` over the kernels on edge cases.

Every timing is the median of CUDA-event-timed calls after warm-up, all in this one run. A table
is printed last and the report is written to ``DIR/gpu_report.json`` after every section, so a
timeout still leaves the sections done. ``--dry-run`` runs the plumbing on the CPU with tiny
sizes and the reference backends (for checking this script without a GPU; its numbers mean
nothing).
"""

# ruff: noqa: B023  (the timed lambdas run inside their own loop iteration)
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spot_core.cli import reports_errors
from spot_core.outputs import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
REPO = Path(__file__).resolve().parents[1]

SECTIONS = (
    "environment", "ceilings", "gpu_tests", "step4", "nms", "whole_path", "achieved", "whole_path_actrectut",
    "streaming", "runtime_gpu", "sanitizer", "verify", "nms_compiled",
)  # fmt: skip


# ---------------------------------------------------------------------------------------- timing
def median_ms(fn: Callable[[], Any], *, warmup: int = 3, reps: int = 20, cuda: bool = True) -> float:
    """Median wall time of ``fn`` in ms: CUDA events around each call on a GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    if cuda:
        torch.cuda.synchronize()
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


class Report:
    """The JSON report, written after every section."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.path = out / "gpu_report.json"
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.only: set[str] | None = None
        self.data: dict[str, Any] = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def save_partial(self, name: str, value: Any) -> None:
        """Write what a long section has so far (its final value replaces it when it returns)."""
        self.data[name] = {**value, "partial": True} if isinstance(value, dict) else value
        write_text_atomic(self.path, json.dumps(self.data, indent=1, default=str))

    def section(self, name: str, fn: Callable[[], Any], *, need_s: float = 0.0) -> None:
        t0 = time.perf_counter()
        if self.only is not None and name not in self.only:
            return
        if self.left() < need_s:
            self.data[name] = {
                "skipped": f"time budget: {self.left():.0f} s left, section needs ~{need_s:.0f} s"
            }
        else:
            try:
                self.data[name] = fn()
            except Exception as e:  # a broken section is reported, the others go on
                prev = self.data.get(name)
                self.data[name] = {
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()[-3000:],
                    **({"partial_results": prev} if isinstance(prev, dict) and prev.get("partial") else {}),
                }
        print(f"[{self.elapsed():6.1f} s] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        write_text_atomic(self.path, json.dumps(self.data, indent=1, default=str))


# ---------------------------------------------------------------------------------------- sections
def environment(dev: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_runtime": torch.version.cuda,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(
            device_name=p.name,
            multiprocessors=p.multi_processor_count,
            memory_gib=round(p.total_memory / 2**30, 1),
            capability=f"{p.major}.{p.minor}",
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            info["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            info["nvidia_smi"] = f"unavailable: {e}"
    else:
        info["device_name"] = "cpu (dry run)"
    return info


def ceilings(dev: torch.device, dry: bool) -> dict[str, Any]:
    """Measured bf16 matrix rate and device memory bandwidth (the roofline's ceilings)."""
    n = 512 if dry else 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    ms = median_ms(lambda: a @ b, warmup=3, reps=10, cuda=not dry)
    tflops = 2 * n**3 / (ms * 1e-3) / 1e12
    nbytes = (64 if dry else 2048) * 2**20
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    ms_copy = median_ms(lambda: dst.copy_(src), warmup=3, reps=10, cuda=not dry)
    gbs = 2 * nbytes / (ms_copy * 1e-3) / 1e9  # bytes read + written
    return {
        "bf16_matmul_tflops": round(tflops, 1),
        "matmul_shape": [n, n, n],
        "copy_gb_per_s_read_plus_write": round(gbs, 1),
        "copy_bytes": nbytes,
    }


def gpu_tests(dry: bool, timeout_s: float, out: Path) -> dict[str, Any]:
    files = ["tests/test_kernels_mask_decode.py", "tests/test_kernels_soft_nms.py"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rf", "--tb=short", "-p", "no:cacheprovider", *files]
    if dry:
        cmd += ["-k", "test_launcher"]
    else:
        cmd += ["-n", "8"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        return {"command": " ".join(cmd[1:]), "timeout_s": timeout_s, "tail": str(e.stdout)[-3000:]}
    write_text_atomic(out / "gpu_tests.txt", res.stdout + res.stderr)
    lines = res.stdout.strip().splitlines()
    return {
        "command": "python " + " ".join(cmd[1:]),
        "returncode": res.returncode,
        "summary": lines[-1] if lines else "",
        "tail": res.stdout[-2500:] + res.stderr[-1000:],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _anet(dev: torch.device, n: int, preset: str = "anet") -> dict[str, Any]:
    """A seeded random model of ``preset`` (classifier scaled x5: trained-like score spread) and n windows."""
    from benchmarks.common import make_bench

    bench = make_bench(preset, n=n, seed=0, cls_scale=5.0)
    model = bench.model.to(dev)
    x = bench.features.to(dev)
    return {"cfg": bench.cfg, "model": model, "x": x}


def step4(dev: torch.device, dry: bool, batches: list[int], rep: Report, compile_ref: bool) -> dict[str, Any]:
    """Decode on the GPU, fused vs reference, at each batch size (ANet preset):

    * ``kernel_step4_ms``: the Triton kernel alone (step 4 from h, top rows given) vs
      ``reference_step4_ms``: :func:`kernels.mask_decode.mask_decode_reference` eagerly on the same inputs;
    * ``fused_decode_ms``: steps 1-6 from h (:func:`kernels.pipeline.proposals_from_hidden`) vs
      ``reference_decode_ms``: the unfused path, mask formed by the 1x1 conv then
      :func:`spot_core.decode.decode_windows`, eager, and ``compiled_reference_decode_ms``: the same
      under torch.compile.
    """
    from kernels.mask_decode import decode_inputs, mask_decode, mask_decode_reference
    from kernels.pipeline import proposals_from_hidden
    from spot_core.decode import decode_windows

    setup = _anet(dev, max(batches))
    cfg, model, x = setup["cfg"], setup["model"], setup["x"]
    dcfg = cfg.decode
    out: dict[str, Any] = {}
    with torch.no_grad():
        emb = model.embed(x)
        logits = model.classifier(emb)
        h = model.mask_hidden(emb)
        w2 = model.mask_weight
    backend = "reference" if dry else "triton"

    def reference_decode(lg: torch.Tensor, hh: torch.Tensor) -> Any:  # what the unfused path does
        with torch.no_grad():
            return decode_windows(lg, torch.sigmoid(model.mask_out(hh)), dcfg)

    compiled = torch.compile(reference_decode, dynamic=True)  # one graph for B > 1, one for B = 1
    for B in batches:
        lg, hh = logits[:B].contiguous(), h[:B].contiguous()
        top, p, labels, scale = decode_inputs(lg, dcfg)
        kw = {"labels": labels, "scale": scale}
        row: dict[str, Any] = {
            "kernel_step4_ms": median_ms(
                lambda: mask_decode(hh, w2, top, p, dcfg, **kw, backend=backend, check_ranges=False),
                cuda=not dry,
            ),
            "reference_step4_ms": median_ms(
                lambda: mask_decode_reference(hh, w2, top, p, dcfg, **kw), cuda=not dry
            ),
            "fused_decode_ms": median_ms(
                lambda: proposals_from_hidden(lg, hh, w2, dcfg, backend=backend), cuda=not dry
            ),
            "reference_decode_ms": median_ms(lambda: reference_decode(lg, hh), cuda=not dry),
        }
        if not compile_ref:
            row["compiled_reference_decode_ms"] = "skipped: --no-compile"
        elif rep.left() > 60:
            t0 = time.perf_counter()
            row["compiled_reference_decode_ms"] = median_ms(lambda: compiled(lg, hh), cuda=not dry)
            row["compile_s"] = round(time.perf_counter() - t0, 1)
        else:
            row["compiled_reference_decode_ms"] = "skipped: time budget"
        row["speedup_kernel_vs_reference_step4"] = round(
            row["reference_step4_ms"] / row["kernel_step4_ms"], 2
        )
        row["speedup_fused_vs_reference_decode"] = round(
            row["reference_decode_ms"] / row["fused_decode_ms"], 2
        )
        out[f"B{B}"] = row
    # parity on the largest batch: fused proposals vs the unfused decode's
    B = max(batches)
    got = proposals_from_hidden(logits[:B], h[:B], w2, dcfg, backend=backend)
    want = reference_decode(logits[:B], h[:B])
    out[f"parity_B{B}"] = {
        "valid_equal_fraction": (got.valid == want.valid).float().mean().item(),
        "segments_equal_fraction": (got.segments == want.segments).all(-1).float().mean().item(),
        "labels_equal_fraction": (got.labels == want.labels).float().mean().item(),
        "max_abs_score_diff": (got.scores - want.scores).abs().max().item(),
    }
    return out


def _anet_proposals(dev: torch.device, n: int) -> tuple[Any, torch.Tensor, dict[str, Any]]:
    """The ANet model's proposals for n windows, the dedup keep mask and the Soft-NMS settings."""
    from spot_core.decode import decode_windows
    from spot_core.decode_steps import dedup

    setup = _anet(dev, n)
    model, x, dcfg = setup["model"], setup["x"], setup["cfg"].decode
    with torch.no_grad():
        logits, mask = model(x)
        props = decode_windows(logits, mask, dcfg)
        keep = dedup(props, logits.shape[-1], logits.shape[1] - 1)
    kw = {"sigma": dcfg.nms_sigma, "max_detections": dcfg.max_detections, "class_aware": dcfg.nms_class_aware}
    return props, keep, kw


def nms(dev: torch.device, dry: bool, batches: list[int], rep: Report) -> dict[str, Any]:
    """Batched Soft-NMS on the ANet model's real proposals: kernel vs eager reference vs compile."""
    from kernels.soft_nms import soft_nms as soft_nms_kernel
    from spot_core.nms import soft_nms as soft_nms_torch

    props, keep, kw = _anet_proposals(dev, max(batches))
    backend = "reference" if dry else "triton"
    out: dict[str, Any] = {"N": int(props.scores.shape[1]), "D": kw["max_detections"]}
    for B in batches:
        a = (props.segments[:B], props.scores[:B], props.labels[:B], keep[:B])
        row: dict[str, Any] = {
            "kernel_ms": median_ms(lambda: soft_nms_kernel(*a, backend=backend, **kw), cuda=not dry),
            "eager_reference_ms": median_ms(lambda: soft_nms_torch(*a, **kw), warmup=2, reps=5, cuda=not dry),
        }
        row["speedup_kernel_vs_eager"] = round(row["eager_reference_ms"] / row["kernel_ms"], 2)
        got = soft_nms_kernel(*a, backend=backend, **kw)
        want = soft_nms_torch(*a, **kw)
        row["same_index_fraction"] = (got[4] == want[4]).float().mean().item()
        row["max_abs_score_diff"] = (got[1] - want[1]).abs().max().item()
        out[f"B{B}"] = row
    return out


def nms_compiled(dev: torch.device, dry: bool, batches: list[int]) -> dict[str, Any]:
    """torch.compile of the PyTorch Soft-NMS (its D picks unrolled) at the largest batch: run last,
    because its compile time is long."""
    from spot_core.nms import soft_nms as soft_nms_torch

    props, keep, kw = _anet_proposals(dev, max(batches))
    B = max(batches)
    a = (props.segments[:B], props.scores[:B], props.labels[:B], keep[:B])
    compiled = torch.compile(lambda *t: soft_nms_torch(*t, **kw), dynamic=False)
    t0 = time.perf_counter()
    compiled(*a)
    compile_s = time.perf_counter() - t0
    ms = median_ms(lambda: compiled(*a), warmup=2, reps=5, cuda=not dry)
    return {f"B{B}": {"compiled_reference_ms": ms, "compile_s": round(compile_s, 1)}}


def flops_bytes(model: torch.nn.Module, cfg: Any, dev: torch.device) -> dict[str, Any]:
    """FLOPs per window (torch's FlopCounterMode on one window) and compulsory bytes per window."""
    from torch.utils.flop_counter import FlopCounterMode

    m = cfg.model
    x = torch.randn(1, m.feat_dim, m.num_snippets, device=dev)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    full = fc.get_total_flops()
    T, H = m.num_snippets, m.mask_hidden
    k = min(cfg.decode.top_k, T)
    H = H if m.mask_head == "spot" else m.mask_dim  # pairwise: rows are q_t . k (dq wide)
    fused = full - 2 * T * H * T + 2 * k * H * T  # the fused path forms k mask rows, not T
    D = cfg.decode.max_detections
    out_bytes = D * (2 * 4 + 4 + 8 + 1)  # segments fp32, score fp32, label int64, valid bool
    return {
        "flops_per_window_reference": int(full),
        "flops_per_window_fused": int(fused),
        "compulsory_bytes_per_window_fp32_in": m.feat_dim * T * 4 + out_bytes,
        "compulsory_bytes_per_window_bf16_in": m.feat_dim * T * 2 + out_bytes,
        "weight_bytes_fp32": sum(p.numel() * 4 for p in model.parameters()),
        "note": "compulsory = input features + detections out; weights are read once per batch",
    }


def whole_path(
    dev: torch.device, dry: bool, batches: list[int], rep: Report, preset: str = "anet"
) -> dict[str, Any]:
    """Features in, detections out, windows per second: reference / fused / fused as a CUDA graph
    (``preset``: ``anet``, the original model; ``actrectut``, the preset: local backbone + offset head)."""
    from kernels.pipeline import fused_detect
    from spot_core.decode import detect

    setup = _anet(dev, max(batches), preset)
    cfg, model, x = setup["cfg"], setup["model"], setup["x"]
    dcfg = cfg.decode
    backend = "reference" if dry else "triton"
    out: dict[str, Any] = {"roofline": flops_bytes(model, cfg, dev)}
    precisions = {"fp32": (False, None), "tf32": (True, None), "bf16": (False, torch.bfloat16)}
    for name, (tf32, amp) in precisions.items():
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        res: dict[str, Any] = {}
        for B in batches:
            xb = x[:B].contiguous()

            def ctx() -> Any:
                if amp is None:
                    return torch.autocast(dev.type, enabled=False)
                return torch.autocast(dev.type, dtype=amp)

            def reference() -> Any:
                with torch.no_grad(), ctx():
                    lg, mk = model(xb)
                return detect(lg.float(), mk.float(), dcfg)

            def fused() -> Any:
                with torch.no_grad(), ctx():
                    return fused_detect(model, xb, dcfg, backend=backend)

            row: dict[str, Any] = {}
            ms = median_ms(reference, warmup=2, reps=10, cuda=not dry)
            row["reference_ms"], row["reference_windows_per_s"] = ms, round(B / (ms * 1e-3))
            ms = median_ms(fused, warmup=3, reps=20, cuda=not dry)
            row["fused_ms"], row["fused_windows_per_s"] = ms, round(B / (ms * 1e-3))
            if not dry:
                try:
                    g = torch.cuda.CUDAGraph()
                    s = torch.cuda.Stream()
                    s.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(s):
                        for _ in range(3):
                            fused()
                    torch.cuda.current_stream().wait_stream(s)
                    with torch.cuda.graph(g):
                        static_out = fused()
                    g.replay()
                    torch.cuda.synchronize()
                    eager_out = fused()
                    row["graph_equals_eager"] = all(
                        torch.equal(a, b) for a, b in zip(static_out, eager_out, strict=True)
                    )
                    ms = median_ms(g.replay, warmup=3, reps=20)
                    row["fused_graph_ms"], row["fused_graph_windows_per_s"] = ms, round(B / (ms * 1e-3))
                except Exception as e:
                    row["fused_graph"] = f"failed: {type(e).__name__}: {str(e)[:300]}"
            res[f"B{B}"] = row
        # parity of the fused path with the reference at the largest batch, this precision
        B = max(batches)
        with (
            torch.no_grad(),
            torch.autocast(dev.type, dtype=amp) if amp else torch.autocast(dev.type, enabled=False),
        ):
            lg, mk = model(x[:B])
            got = fused_detect(model, x[:B], dcfg, backend=backend)
        want = detect(lg.float(), mk.float(), dcfg)
        res["parity_vs_reference"] = {
            "same_valid_fraction": (got.valid == want.valid).float().mean().item(),
            "same_segment_fraction": (got.segments == want.segments).all(-1).float().mean().item(),
            "max_abs_score_diff": (got.scores - want.scores).abs().max().item(),
        }
        out[name] = res
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return out


def achieved(report: dict[str, Any]) -> dict[str, Any]:
    """The fraction of the measured ceilings the fused path reaches at the largest batch."""
    ceil, wp = report.get("ceilings", {}), report.get("whole_path", {})
    rf = wp.get("roofline") if isinstance(wp, dict) else None
    if not ceil or not rf or "bf16_matmul_tflops" not in ceil:
        return {"skipped": "needs ceilings and whole_path"}
    out = {}
    for prec in ("fp32", "tf32", "bf16"):
        rows = wp.get(prec, {})
        big = [k for k in rows if k.startswith("B")]
        if not big:
            continue
        r = rows[max(big, key=lambda s: int(s[1:]))]
        wps = r.get("fused_graph_windows_per_s") or r.get("fused_windows_per_s")
        bytes_pw = rf[
            "compulsory_bytes_per_window_bf16_in" if prec == "bf16" else "compulsory_bytes_per_window_fp32_in"
        ]
        out[prec] = {
            "windows_per_s": wps,
            "tflops": round(wps * rf["flops_per_window_fused"] / 1e12, 2),
            "fraction_of_bf16_matmul_rate": round(
                wps * rf["flops_per_window_fused"] / 1e12 / ceil["bf16_matmul_tflops"], 4
            ),
            "fraction_of_copy_bandwidth": round(
                wps * bytes_pw / 1e9 / ceil["copy_gb_per_s_read_plus_write"], 4
            ),
        }
    return out


def streaming(dev: torch.device, dry: bool) -> dict[str, Any]:
    """The streaming runtime on the device (issue 6): latency at batch 1, throughput with 1, 64 and
    1,024 concurrent streams, eager and compiled sessions (benchmarks.streaming.stream_benchmark)."""
    from benchmarks.streaming import stream_benchmark

    streams = (1, 4) if dry else (1, 64, 1024)
    kw = {"target_windows": 16, "latency_windows": 5} if dry else {}
    return {b: stream_benchmark(b, dev.type, streams, **kw) for b in ("eager", "compile")}


def _det_parity(got: Any, want: Any) -> dict[str, Any]:
    """How far two Detections [B, D] agree: windows with the same valid set, detections with the
    same segment and label among both's valid ones, the largest score difference."""
    same_valid = (got.valid == want.valid).all(1)
    both = got.valid & want.valid
    same = (got.segments == want.segments).all(-1) & (got.labels == want.labels) & both
    n = int(want.valid.sum())
    return {
        "windows": int(want.valid.shape[0]),
        "same_valid_windows_fraction": same_valid.float().mean().item(),
        "same_detection_fraction": (int(same.sum()) / n) if n else 1.0,
        "max_abs_score_diff": (got.scores - want.scores)[both].abs().max().item()
        if bool(both.any())
        else 0.0,
        "identical": bool(torch.equal(got.segments, want.segments) and torch.equal(got.scores, want.scores)),
    }


def runtime_gpu(dev: torch.device, dry: bool, rep: Report) -> dict[str, Any]:
    """Issue 18: the runtime's own sessions on the device (``actrectut`` preset, random weights).

    1. the fused session (runtime.fused, CUDA graphs per bucket) fp32 / bf16: windows/s through
       ``session.detect`` at the largest batch (host features in, host detections out) and with
       the input already on the device (the graph replay); parity with the eager session;
    2. batch 1 under the runtime: one live stream pushed a snippet at a time, per-window p50 / p99;
    3. many streams (benchmarks.streaming.serve): windows/s and per-window p50 / p99 at 1..256
       streams, buckets 1/8/64/256, exactness vs each stream alone with one bucket;
    4. a long stream through ``runtime.stream`` on the device vs the CPU eager reference, and
       streamed == offline on the device;
    5. TensorRT and onnxruntime-gpu: executed when importable here, else "not run" with the reason.
    """
    import numpy as np

    from benchmarks.streaming import latency, random_model, serve
    from runtime.detector import StreamDetector
    from runtime.fused import FusedSession
    from runtime.offline import offline_detect
    from runtime.session import EagerSession

    out: dict[str, Any] = {}
    model, cfg = random_model("actrectut")
    C, T = cfg.model.feat_dim, cfg.model.num_snippets
    big = 8 if dry else 1024
    x = torch.randn(big, C, T, generator=torch.Generator().manual_seed(0))
    x_pin = x.pin_memory() if not dry else x
    from spot_core.decode import detect

    model_dev = model.to(dev)
    for prec in ("fp32", "bf16"):
        row: dict[str, Any] = {}
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
            lg, mk = model_dev(x.to(dev))
        ref = detect(lg.float(), mk.float(), cfg.decode)  # the eager reference, same precision
        ref = type(ref)(*(t.cpu() for t in ref))
        t0 = time.perf_counter()
        sess = FusedSession(model, cfg, device=dev, batch_size=big, precision=prec)
        row["open_s"] = round(time.perf_counter() - t0, 2)
        got = sess.detect(x_pin)
        row["parity_vs_eager_reference"] = _det_parity(got, ref)
        ms = median_ms(lambda: sess.detect(x_pin), warmup=2, reps=5 if dry else 20, cuda=not dry)
        row["host_to_host_ms"], row["host_to_host_windows_per_s"] = ms, round(big / (ms * 1e-3))
        if sess._graphs:
            g = sess._graphs[big]
            g.x.copy_(x.to(dev))
            ms = median_ms(g.graph.replay, warmup=3, reps=20)
            row["graph_replay_ms"], row["graph_replay_windows_per_s"] = ms, round(big / (ms * 1e-3))
        out[f"fused_{prec}_B{big}"] = row
        rep.save_partial("runtime_gpu", out)
    # 2. batch 1 under the runtime
    for prec in ("fp32", "bf16"):
        s1 = FusedSession(model, cfg, device=dev, batch_size=1, precision=prec)
        out[f"batch1_latency_{prec}"] = latency(s1, windows=10 if dry else 200, rate=4.0)
    rep.save_partial("runtime_gpu", out)
    # 3. many streams
    streams = (1, 4) if dry else (1, 16, 64, 256)
    wps = 2 if dry else 16
    for prec in ("fp32", "bf16"):
        bucketed = FusedSession(
            model,
            cfg,
            device=dev,
            batch_size=max(streams),
            precision=prec,
            buckets=[b for b in (1, 8, 64) if b < max(streams)],
        )
        one = FusedSession(model, cfg, device=dev, batch_size=max(streams), precision=prec)
        serve(bucketed, 2, windows_per_stream=2, push="many")  # warm-up
        rows = [serve(bucketed, n, windows_per_stream=wps, check_exact=2, push="many") for n in streams]
        rows.append(serve(one, max(streams), windows_per_stream=wps, check_exact=4, push="many"))
        rows.append(serve(one, max(streams), windows_per_stream=wps, push="one"))  # a push per stream
        out[f"serve_{prec}"] = rows
        rep.save_partial("runtime_gpu", out)
    # the runtime's own cost: the same serving loop with a model that costs nothing
    from benchmarks.streaming import host_ceiling

    out["host_ceiling_no_model"] = host_ceiling(
        streams=(4,) if dry else (16, 256), windows_per_stream=4 if dry else 32
    )
    rep.save_partial("runtime_gpu", out)
    # 4. a long stream: device vs CPU, streamed == offline on the device
    n_snip = 600 if dry else 20_000
    feats = np.random.default_rng(5).standard_normal((n_snip, C), dtype=np.float32)
    sess = FusedSession(model, cfg, device=dev, batch_size=8 if dry else 64)
    det = StreamDetector(sess, snippet_rate=4.0, preview=False)
    det.open("long")
    for i in range(0, n_snip, 97):
        det.push("long", feats[i : i + 97])
    streamed = det.close_json("long")[0]
    offline = offline_detect(sess, feats, snippet_rate=4.0, video_id="long")["results"]["long"]
    cpu = offline_detect(EagerSession(model, cfg, batch_size=64), feats, snippet_rate=4.0, video_id="long")
    cpu_rows = cpu["results"]["long"]
    key = lambda d: (d["label"], tuple(d["segment"]))  # noqa: E731
    matched = len({key(d) for d in offline} & {key(d) for d in cpu_rows})
    out["long_stream"] = {
        "snippets": n_snip,
        "streamed_equals_offline_on_device": streamed == offline,
        "detections_device": len(offline),
        "detections_cpu_eager": len(cpu_rows),
        "same_label_and_segment_fraction": matched / max(1, len(cpu_rows)),
    }
    rep.save_partial("runtime_gpu", out)
    # 5. engines
    notes = {}
    for mod, what in (("tensorrt", "TensorRT"), ("onnxruntime", "onnxruntime")):
        try:
            m = __import__(mod)
            notes[mod] = f"importable ({getattr(m, '__version__', '?')})"
        except ImportError as e:
            notes[mod] = f"not run: {what} is not installed here ({e})"
    if "importable" in notes.get("onnxruntime", ""):
        import onnxruntime as ort

        provs = ort.get_available_providers()
        for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            if p not in provs:
                notes[p] = (
                    f"not run: onnxruntime has only {provs} (the CPU wheel; onnxruntime-gpu not carried)"
                )
    out["engines"] = notes
    return out


def verify_rows(args: argparse.Namespace, dev: torch.device) -> dict[str, Any]:
    if not args.checkpoint:
        return {"skipped": "no --checkpoint given"}
    out = Path(args.out) / "verify.json"
    cmd = [
        sys.executable,
        "-m",
        "export.verify",
        "--checkpoint",
        args.checkpoint,
        "--json",
        str(out),
        "--device",
        dev.type,
    ]
    if args.data:
        cmd += ["--data", args.data]
    if args.onnx:
        cmd += ["--onnx", args.onnx]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=150)
    rows = json.loads(out.read_text()) if out.exists() else None
    return {"command": "python " + " ".join(cmd[1:]), "returncode": res.returncode, "rows": rows,
            "tail": (res.stdout + res.stderr)[-2000:]}  # fmt: skip


SANITIZE_SNIPPET = r"""
import torch
from kernels.mask_decode import mask_decode
from kernels.soft_nms import soft_nms
from spot_core.config import DecodeConfig
g = torch.Generator().manual_seed(0)
for T, k in [(1, 3), (7, 9), (100, 10), (129, 2)]:
    B, H = 3, 40
    h = torch.rand(B, H, T, generator=g).cuda()
    w2 = torch.randn(T, H, generator=g).cuda()
    top = torch.randint(0, T, (B, k), generator=g).cuda()
    top[0, 0] = T + 5  # out of range: guarded on the device
    probs = torch.softmax(torch.randn(B, 4, T, generator=g), 1).cuda()
    lab = torch.randint(0, 4, (B, k), generator=g).cuda()
    vl = torch.tensor([T, 0, T + 3]).cuda()
    rows = torch.empty(B, k, T, device="cuda")
    for mode in ("filled", "anchored"):
        mask_decode(h.bfloat16(), w2, top, probs, DecodeConfig(mask_segment=mode), labels=lab, valid_len=vl,
                    rows_out=rows, backend="triton", check_ranges=False)
for N, D in [(1, 1), (7, 12), (140, 100), (3000, 100)]:
    s = torch.randint(0, 50, (4, N, 1), generator=g).float()
    seg = torch.cat([s, s + 5], -1).cuda()
    soft_nms(seg, torch.rand(4, N, generator=g).cuda(), torch.randint(0, 3, (4, N), generator=g).cuda(),
             (torch.rand(4, N, generator=g) > 0.3).cuda(), sigma=0.1, max_detections=D, class_aware=True,
             backend="triton")
torch.cuda.synchronize()
print("sanitize cases done")
"""


def sanitizer(timeout_s: float) -> dict[str, Any]:
    cmd = [
        "compute-sanitizer",
        "--tool",
        "memcheck",
        "--error-exitcode",
        "9",
        sys.executable,
        "-c",
        SANITIZE_SNIPPET,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout_s)
    except FileNotFoundError:
        return {"skipped": "compute-sanitizer not on PATH"}
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout_s:.0f} s"}
    return {
        "command": "compute-sanitizer --tool memcheck --error-exitcode 9 python -c "
        "<benchmarks.gpu_check.SANITIZE_SNIPPET>",
        "returncode": res.returncode,
        "tail": (res.stdout + res.stderr)[-2500:],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def summary_table(d: dict[str, Any]) -> str:
    lines = [f"device: {d.get('environment', {}).get('device_name')}"]
    c = d.get("ceilings", {})
    if "bf16_matmul_tflops" in c:
        lines.append(
            f"ceilings: bf16 matmul {c['bf16_matmul_tflops']} TFLOP/s, "
            f"copy {c['copy_gb_per_s_read_plus_write']} GB/s"
        )
    t = d.get("gpu_tests", {})
    lines.append(f"gpu tests: {t.get('summary', t.get('error', t.get('skipped', '?')))}")
    pairs = (
        ("step4 kernel", "kernel_step4_ms", "reference_step4_ms"),
        ("decode", "fused_decode_ms", "reference_decode_ms"),
        ("nms", "kernel_ms", "eager_reference_ms"),
    )
    for name, key_a, key_b in pairs:
        sec = d.get(name.split()[0].replace("decode", "step4"), {})
        for B, row in sec.items():
            if isinstance(row, dict) and key_a in row:
                comp = row.get("compiled_reference_decode_ms", row.get("compiled_reference_ms", "-"))
                lines.append(
                    f"{name} {B}: fused {row[key_a]:.3f} ms, eager {row[key_b]:.3f} ms "
                    f"({row[key_b] / row[key_a]:.1f}x), compiled {comp}"
                )
    wp = d.get("whole_path", {})
    for prec in ("fp32", "tf32", "bf16"):
        for B, row in wp.get(prec, {}).items() if isinstance(wp, dict) else []:
            if B.startswith("B"):
                graph = row.get("fused_graph_windows_per_s", row.get("fused_graph", "-"))
                lines.append(
                    f"whole path {prec} {B}: reference {row['reference_windows_per_s']:,} w/s, "
                    f"fused {row['fused_windows_per_s']:,} w/s, graph {graph}"
                )
    for prec, row in d.get("achieved", {}).items():
        if isinstance(row, dict):
            lines.append(f"achieved {prec}: {row}")
    for backend, sb in (d.get("streaming") or {}).items():
        if isinstance(sb, dict) and "throughput" in sb:
            lat = sb.get("latency", {})
            tp = ", ".join(f"{r['streams']} streams {r['windows_per_s']:,.0f} w/s" for r in sb["throughput"])
            lines.append(f"streaming {backend}: p50 {lat.get('p50_ms', float('nan')):.2f} ms; {tp}")
        elif isinstance(sb, dict):
            lines.append(f"streaming {backend}: {sb.get('status')} {str(sb.get('reason', ''))[:80]}")
    rg = d.get("runtime_gpu") or {}
    for key, row in rg.items() if isinstance(rg, dict) else []:
        if key.startswith("fused_") and isinstance(row, dict):
            par = row.get("parity_vs_eager_reference", {})
            lines.append(
                f"runtime {key}: {row.get('host_to_host_windows_per_s', '-'):,} w/s host to host, graph "
                f"{row.get('graph_replay_windows_per_s', '-')} w/s, same detections "
                f"{par.get('same_detection_fraction', float('nan')):.4f}"
            )
        elif key.startswith("batch1_latency_") and isinstance(row, dict):
            lines.append(f"runtime {key}: p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms")
        elif key.startswith("serve_") and isinstance(row, list):
            for r in row:
                lines.append(
                    f"runtime {key} {r['streams']} streams buckets {r['buckets']}: "
                    f"{r['windows_per_s']:,.0f} w/s, p99 {r['latency_p99_ms']:.2f} ms, "
                    f"exact {r.get('exact_streams')}/{r.get('exact_checked')}"
                )
        elif key in ("long_stream", "engines"):
            lines.append(f"runtime {key}: {row}")
    s = d.get("sanitizer", {})
    lines.append(f"compute-sanitizer: rc={s.get('returncode', s.get('skipped'))}")
    v = d.get("verify", {})
    if isinstance(v, dict) and v.get("rows"):
        for r in v["rows"]:
            lines.append(
                f"verify {r.get('backend')} {r.get('precision')}: {r.get('status')} "
                f"{r.get('reason', '')[:80]}"
            )
    return "\n".join(lines)


@reports_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", default=os.environ.get("OUT", "gpu_check_out"), help="report folder (default $OUT)"
    )
    ap.add_argument("--budget", type=float, default=300.0, help="seconds for all sections (default 300)")
    ap.add_argument("--checkpoint", help="model for export.verify (e.g. the demo's run/last.safetensors)")
    ap.add_argument("--data", help="dataset folder for export.verify's mAP rows")
    ap.add_argument("--onnx", help="heads ONNX for export.verify's onnxruntime rows")
    ap.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the torch.compile rows (Inductor compiles the reference decode in ~100 s per shape)",
    )
    ap.add_argument("--sections", help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    ap.add_argument("--batches", help="comma-separated batch sizes (default 1,64,1024)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, reference backends")
    ap.add_argument(
        "--history",
        type=Path,
        default=None,
        help="append the report to this tracking history (benchmarks.track; default: "
        "benchmarks/history on a GPU, none in a dry run)",
    )
    args = ap.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run to check the script on a CPU", file=sys.stderr)
        return 2
    dev = torch.device("cpu" if dry else "cuda")
    # fp32 means fp32: no TF32 in cuBLAS or cuDNN (PyTorch's cuDNN default allows it); the
    # whole-path section turns it on for its tf32 rows only
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    batches = [1, 4] if dry else [1, 64, 1024]
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    wanted = set(args.sections.split(",")) if args.sections else None
    unknown = (wanted or set()) - set(SECTIONS)
    if unknown:
        print(
            f"gpu_check: unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    rep = Report(Path(args.out), args.budget)
    if wanted is not None:  # environment is always recorded
        rep.only = wanted | {"environment"}
    rep.section("environment", lambda: environment(dev))
    rep.section("ceilings", lambda: ceilings(dev, dry))
    rep.section(
        "gpu_tests",
        lambda: gpu_tests(dry, max(30.0, min(120.0, rep.left() - 120)), Path(args.out)),
        need_s=150,
    )
    rep.section("step4", lambda: step4(dev, dry, batches, rep, not args.no_compile), need_s=30)
    rep.section("nms", lambda: nms(dev, dry, batches, rep), need_s=20)
    rep.section("whole_path", lambda: whole_path(dev, dry, batches, rep), need_s=30)
    rep.section("whole_path_actrectut", lambda: whole_path(dev, dry, batches, rep, "actrectut"), need_s=30)
    rep.section("achieved", lambda: achieved(rep.data))
    rep.section("streaming", lambda: streaming(dev, dry), need_s=60)
    rep.section("runtime_gpu", lambda: runtime_gpu(dev, dry, rep), need_s=60)
    if not dry:
        rep.section(
            "sanitizer", lambda: sanitizer(timeout_s=max(20.0, min(90.0, rep.left() - 60))), need_s=30
        )
    rep.section("verify", lambda: verify_rows(args, dev), need_s=40)
    if not args.no_compile:
        rep.section("nms_compiled", lambda: nms_compiled(dev, dry, batches), need_s=40)
    table = summary_table(rep.data)
    rep.data["table"] = table
    write_text_atomic(rep.path, json.dumps(rep.data, indent=1, default=str))
    print(table)
    print(f"report: {rep.path}")
    history = args.history if args.history is not None or dry else REPO / "benchmarks" / "history"
    if history is not None:  # the same history as the CPU runs (python -m benchmarks.track --png)
        from benchmarks.track import import_gpu

        print(f"tracked: {import_gpu(rep.path, history, commit=_head_commit())}")
    return 0


def _head_commit() -> str | None:
    """The checkout's commit (None where there is no git: import_gpu then asks git about the file)."""
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


if __name__ == "__main__":
    raise SystemExit(main())
