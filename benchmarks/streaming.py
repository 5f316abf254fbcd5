"""Streaming runtime benchmarks: per-window latency, throughput over concurrent streams, peak memory.

    python -m benchmarks.streaming [--backends eager,compile,edge,onnxruntime] [--device cpu] \\
        [--streams 1,64,1024] [--preset anet] [--json benchmarks/results/streaming_cpu.json]
    python -m benchmarks.streaming memory --hours 1 10 [--preset anet] [--rate 2]
    python -m benchmarks.streaming serve [--backend fused] [--device cuda] [--streams 1,16,64,256] \\
        [--buckets 1,8,64] [--precision bf16] [--max-delay-ms 5] [--json FILE]
    python -m benchmarks.streaming actrectut [--data ../shared/data/actrectut] [--set K=V ...]

Random weights (seeded, classifier scaled x5 so a full set of detections comes out of every
window, as from a trained model) and random features: the numbers measure speed and memory only.

- **latency**: one live stream, ``batch_size`` 1, one snippet pushed at a time; the time of each
  push that completes a window (model forward, decode, Soft-NMS, preview merge), p50 / p99 / mean
  over ``latency_windows`` windows after ``warmup`` windows.
- **throughput** with N concurrent streams: N streams open at once, pushed round robin in chunks of
  S snippets, each long enough for ``ceil(target / N)`` windows (so every row runs at least
  ``target`` windows), then closed (final exact merge included). The session's batch is
  ``min(batch_size, N)`` windows (padded, batch-invariant); latency budget 1 s (a synchronous
  round-robin driver fills batches long before that). Reported: windows/s, snippets/s and
  stream-hours/s at ``rate`` snippets per second.
- **serve** (``serve`` subcommand, :func:`serve`): N streams served by one session (the fused one
  by default) under a latency budget: windows/s and each window's latency p50 / p99, and whether
  sampled streams' outputs equal the stream run alone.
- **memory** (``memory`` subcommand): one stream of H hours at ``rate`` snippets/s, pushed in
  chunks of 64 snippets through a batch-1 session, each H in a fresh process; peak RSS
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the bytes of stored per-window detections.

:func:`stream_benchmark` is the library entry point (``device="cuda"`` from the GPU script).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.backends import BACKENDS as ALL_BACKENDS
from runtime.detector import BYTES_PER_DETECTION, StreamDetector
from runtime.session import CompiledSession, EagerSession, EdgeSession, OnnxSession, Session, SessionError
from spot_core.cli import reports_errors
from spot_core.config import SpotConfig
from spot_core.model import SPOT
from spot_core.outputs import check_output, write_text_atomic

# what runs without a GPU engine, plus the fused session (runtime.fused)
BACKENDS = (*(b for b in ALL_BACKENDS if b != "tensorrt"), "fused")


def live_window_pusher(model: SPOT, cfg: SpotConfig, pool: np.ndarray, rate: float = 2.0, wrap=None):
    """One live stream on a batch-1 eager :class:`StreamDetector`, fed from ``pool`` ``[N, C]`` (in
    a loop): ``(setup, one)``. ``setup()`` feeds up to one snippet short of the next window;
    ``one()`` pushes the snippet that completes it and returns how many windows ran (1): the
    per-window latency of a live stream. ``wrap(push)`` may wrap that last push (e.g. a delay)."""
    T = cfg.model.num_snippets
    S = cfg.data.stride or T // 2
    det = StreamDetector(EagerSession(model, cfg, batch_size=1), snippet_rate=rate)
    det.open("live")
    state = {"pos": 0}
    last_push = wrap(det.push) if wrap else det.push

    def feed(n: int, push=det.push) -> None:
        idx = (state["pos"] + np.arange(n)) % len(pool)
        push("live", pool[idx])
        state["pos"] += n

    def setup() -> None:
        feed(T + det.windows_run * S - 1 - state["pos"])

    def one() -> int:
        before = det.windows_run
        feed(1, last_push)
        return det.windows_run - before

    return setup, one


def random_model(preset: str = "anet", seed: int = 0, cls_scale: float = 5.0) -> tuple[SPOT, SpotConfig]:
    """Seeded random SPOT in eval mode; the classifier scaled so that proposals fire (as trained)."""
    cfg = SpotConfig.preset(preset)
    torch.manual_seed(seed)
    model = SPOT(cfg.model).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(cls_scale)
        model.classifier.bias.mul_(cls_scale)
    return model, cfg


def make_session(
    backend: str,
    model: SPOT,
    cfg: SpotConfig,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    workdir: str | Path | None = None,
    buckets: str | Sequence[int] | None = None,
    precision: str = "fp32",
) -> Session:
    """A padded session of ``backend`` on ``device`` (onnxruntime exports the model to ``workdir``
    first; ``buckets`` and ``precision`` are the fused session's)."""
    if backend == "fused":
        from runtime.fused import FusedSession

        return FusedSession(
            model, cfg, device=device, batch_size=batch_size, buckets=buckets, precision=precision
        )
    if backend == "eager":
        return EagerSession(model, cfg, device=device, batch_size=batch_size)
    if backend == "compile":
        return CompiledSession(model, cfg, device=device, batch_size=batch_size)
    if backend == "edge":
        return EdgeSession(model, cfg, device=device, batch_size=batch_size)
    if backend == "onnxruntime":
        from export.onnx import export_onnx

        path = Path(workdir or tempfile.mkdtemp(prefix="spot_stream_bench_")) / f"{cfg.name}.onnx"
        if not path.is_file():
            export_onnx(model, cfg, path)
        provider = "cuda" if torch.device(device).type == "cuda" else "cpu"
        threads = 1 if provider == "cpu" else 0  # as torch: one intra-op thread on our shared CPUs
        return OnnxSession(path, cfg, provider=provider, batch_size=batch_size, threads=threads)
    raise SessionError(f"backend {backend!r} is not benchmarked here (TensorRT needs an engine and a GPU)")


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def latency(session: Session, *, windows: int = 50, warmup: int = 5, rate: float = 2.0) -> dict[str, Any]:
    """Per-window latency of a live stream pushed one snippet at a time (ms): p50, p99, mean."""
    cfg = session.cfg
    T, S, C = cfg.model.num_snippets, cfg.data.stride, cfg.model.feat_dim
    rng = np.random.default_rng(1)
    n = T + (windows + warmup) * S
    feats = rng.standard_normal((n, C), dtype=np.float32)
    det = StreamDetector(session, snippet_rate=rate)
    det.open("live")
    samples = []
    for i in range(n):
        before = det.windows_run
        t0 = time.perf_counter()
        det.push("live", feats[i : i + 1])
        _sync(str(session.device))
        dt = time.perf_counter() - t0
        if det.windows_run > before and det.windows_run > warmup:
            samples.append(dt * 1e3)
    det.abort("live")
    samples.sort()
    return {
        "windows": len(samples),
        "p50_ms": statistics.median(samples),
        "p99_ms": _pct(samples, 0.99),
        "mean_ms": statistics.fmean(samples),
    }


def throughput(
    session: Session,
    streams: int,
    *,
    target_windows: int = 256,
    rate: float = 2.0,
    max_delay_s: float = 1.0,
    pool: np.ndarray | None = None,
) -> dict[str, Any]:
    """``streams`` concurrent streams, round robin in chunks of S snippets, all closed at the end."""
    cfg = session.cfg
    T, S, C = cfg.model.num_snippets, cfg.data.stride, cfg.model.feat_dim
    per_stream = max(1, math.ceil(target_windows / streams))
    length = T + (per_stream - 1) * S
    if pool is None:
        pool = np.random.default_rng(2).standard_normal((length + 997, C), dtype=np.float32)
    det = StreamDetector(session, snippet_rate=rate, max_delay_s=max_delay_s)
    ids = [f"s{i}" for i in range(streams)]
    for sid in ids:
        det.open(sid)
    offsets = [(i * 7919) % (pool.shape[0] - length + 1) for i in range(streams)]  # views, no copies
    _sync(str(session.device))
    calls0 = session.model_calls
    t0 = time.perf_counter()
    pos = 0
    first = True
    while pos < length:
        step = T if first else S
        for sid, off in zip(ids, offsets, strict=True):
            det.push(sid, pool[off + pos : off + min(pos + step, length)])
        pos += step
        first = False
    n_final = 0
    for sid in ids:
        n_final += len(det.close(sid))
    _sync(str(session.device))
    dt = time.perf_counter() - t0
    windows = det.windows_run
    snippets = streams * length
    return {
        "streams": streams,
        "batch_size": session.batch_size,
        "max_delay_s": max_delay_s,
        "model_calls": session.model_calls - calls0,
        "windows": windows,
        "seconds": dt,
        "windows_per_s": windows / dt,
        "snippets_per_s": snippets / dt,
        "stream_hours_per_s": snippets / rate / 3600 / dt,
        "final_detections": n_final,
    }


def _pct(samples: Sequence[float], q: float) -> float:
    """The q-th quantile (0..1) of sorted ``samples``, nearest rank."""
    return samples[min(len(samples) - 1, max(0, math.ceil(q * len(samples)) - 1))]


def serve(
    session: Session,
    streams: int,
    *,
    windows_per_stream: int = 8,
    max_delay_s: float = 0.005,
    rate: float = 4.0,
    check_exact: int = 0,
    reference: Session | None = None,
    push: str = "one",
) -> dict[str, Any]:
    """Many streams served by one session: ``streams`` streams open at once, pushed round robin in
    chunks of S snippets as fast as the loop runs (``push``: ``one`` call of
    :meth:`StreamDetector.push` per stream and chunk, or ``many``: one
    :meth:`StreamDetector.push_many` per round, all streams' chunks as one ``[M, S, C]`` array),
    each call running the scheduler (``poll``)
    (a partial batch runs once its oldest window waited ``max_delay_s``), so every model call takes
    windows of many streams, padded to the session's bucket. Reported: windows/s and each window's
    latency (from the push that completed it to its decoded detections) p50 / p99 in ms.

    ``check_exact``: that many streams (spread over the set) are also run alone through
    :func:`runtime.offline.offline_detect` on ``reference`` (default: ``session``), and their served
    final outputs compared with those, entry for entry (``exact_streams``: how many were identical).
    """
    from runtime.offline import offline_detect

    if push not in ("one", "many"):
        raise ValueError(f"push must be 'one' or 'many', got {push!r}")
    cfg = session.cfg
    T, S, C = cfg.model.num_snippets, cfg.data.stride, cfg.model.feat_dim
    length = T + (windows_per_stream - 1) * S
    rng = np.random.default_rng(3)
    pool = rng.standard_normal((length + 997, C), dtype=np.float32)
    det = StreamDetector(
        session, snippet_rate=rate, max_delay_s=max_delay_s, preview=False, record_latency=True
    )
    ids = [f"s{i}" for i in range(streams)]
    offsets = [(i * 7919) % (pool.shape[0] - length + 1) for i in range(streams)]
    for sid in ids:
        det.open(sid)
    _sync(str(session.device))
    calls0 = session.model_calls
    t0 = time.perf_counter()
    pos, first = 0, True
    while pos < length:
        step = T if first else S
        end = min(pos + step, length)
        if push == "many":
            det.push_many(ids, np.stack([pool[off + pos : off + end] for off in offsets]))
        else:
            for sid, off in zip(ids, offsets, strict=True):
                det.push(sid, pool[off + pos : off + end])  # push() polls
        pos += step
        first = False
    det.flush()
    _sync(str(session.device))
    dt = time.perf_counter() - t0
    finals = {sid: det.close_json(sid)[0] for sid in ids}
    lat = sorted(det.window_latencies)
    out: dict[str, Any] = {
        "streams": streams,
        "push": push,
        "batch_size": session.batch_size,
        "buckets": list(getattr(session, "buckets", [session.batch_size])),
        "max_delay_ms": 1e3 * max_delay_s,
        "model_calls": session.model_calls - calls0,
        "windows": det.windows_run,
        "seconds": dt,
        "windows_per_s": det.windows_run / dt,
        "latency_p50_ms": 1e3 * _pct(lat, 0.5),
        "latency_p99_ms": 1e3 * _pct(lat, 0.99),
    }
    if check_exact:
        ref = reference or session
        picks = sorted(
            {round(i * (streams - 1) / max(1, check_exact - 1)) for i in range(min(check_exact, streams))}
        )
        same = 0
        for i in picks:
            alone = offline_detect(
                ref, pool[offsets[i] : offsets[i] + length], snippet_rate=rate, video_id=ids[i]
            )
            same += alone["results"][ids[i]] == finals[ids[i]]
        out["exact_checked"], out["exact_streams"] = len(picks), same
    return out


def stream_benchmark(
    backend: str,
    device: str = "cpu",
    streams: Sequence[int] = (1, 64, 1024),
    *,
    preset: str = "anet",
    batch_size: int = 64,
    target_windows: int = 256,
    latency_windows: int = 50,
    rate: float = 2.0,
    threads: int | None = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency at batch 1 and throughput per number of concurrent streams, for one backend.

    Returns ``{"backend", "device", "preset", "latency": {...}, "throughput": [{...} per N],
    "status", "reason"}``; a backend that cannot run here is ``status: "skipped"`` with the reason,
    one that raises anything else ``status: "failed"`` (the rows done so far are kept).
    ``threads``: torch intra-op threads on CPU (None leaves the setting alone).
    """
    if threads is not None and torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    out: dict[str, Any] = {"backend": backend, "device": device, "preset": preset, "rate": rate}
    model, cfg = random_model(preset, seed)
    model = model.to(device)
    with tempfile.TemporaryDirectory(prefix="spot_stream_bench_") as work:
        try:
            s1 = make_session(backend, model, cfg, device=device, batch_size=1, workdir=work)
            out["latency"] = latency(s1, windows=latency_windows, rate=rate)
            rows = out["throughput"] = []
            for n in streams:
                sess = make_session(
                    backend, model, cfg, device=device, batch_size=min(batch_size, n), workdir=work
                )
                throughput(sess, min(n, 2), target_windows=2, rate=rate)  # warm-up (compiles, allocations)
                rows.append(throughput(sess, n, target_windows=target_windows, rate=rate))
            out["status"], out["reason"] = "ok", ""
        except (SessionError, ImportError) as e:
            out["status"], out["reason"] = "skipped", " ".join(str(e).split())
        except Exception as e:  # noqa: BLE001 - a time-boxed GPU script must go on to the next backend
            out["status"], out["reason"] = "failed", f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
    return out


# ---------------------------------------------------------------------------------------- memory
def memory_run(
    hours: float, *, preset: str = "anet", rate: float = 2.0, chunk: int = 64, seed: int = 0
) -> dict:
    """One stream of ``hours`` at ``rate`` snippets/s through a batch-1 eager session, in this process.

    Features are generated chunk by chunk (nothing of the stream is kept by the caller). Returns
    peak RSS (KiB), the stored per-window detections (bytes), windows, seconds.
    """
    import resource

    torch.set_num_threads(1)
    model, cfg = random_model(preset, seed)
    session = EagerSession(model, cfg, batch_size=1)
    det = StreamDetector(session, snippet_rate=rate, preview=True)
    n = int(round(hours * 3600 * rate))
    rng = np.random.default_rng(seed)
    det.open("long")
    t0 = time.perf_counter()
    done = 0
    peak_stored = 0
    while done < n:
        k = min(chunk, n - done)
        det.push("long", rng.standard_normal((k, cfg.model.feat_dim), dtype=np.float32))
        done += k
    mem = det.memory()
    peak_stored = mem["stored_detections"]
    final = det.close("long")
    dt = time.perf_counter() - t0
    return {
        "hours": hours,
        "preset": preset,
        "rate": rate,
        "snippets": n,
        "windows": det.windows_run,
        "final_detections": len(final),
        "stored_detection_bytes": peak_stored,
        "stored_bound_bytes": det.windows_run * cfg.decode.max_detections * BYTES_PER_DETECTION,
        "buffer_bytes": mem["buffers"],
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "seconds": dt,
    }


def measure_memory(hours: Sequence[float], *, preset: str = "anet", rate: float = 2.0) -> list[dict]:
    """:func:`memory_run` for each of ``hours`` in a fresh Python process (peak RSS is per process)."""
    rows = []
    for h in hours:
        cmd = [sys.executable, "-m", "benchmarks.streaming", "memory-one", "--hours", str(h)]
        cmd += ["--preset", preset, "--rate", str(rate)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return rows


# ---------------------------------------------------------------------------------------- ActRecTut
def actrectut_map(
    data_dir: str | Path,
    *,
    direction: str = "1->2",
    chunks: Sequence[int] = (1, 7, 64),
    overrides: Sequence[str] = (),
    batch_size: int = 64,
) -> dict[str, Any]:
    """Train on one ActRecTut subject (window mode, :func:`spot_core.actrectut.trained_direction`),
    stream the other subject's test pieces through the runtime in chunks of ``chunks`` snippets, and
    compare the streamed mAP with the offline mAP (:func:`runtime.offline.streamed_vs_offline_map`).

    Also reports the package's own offline evaluation (``spot_core.actrectut.evaluate_split``, the
    unpadded batch-64 path) for reference. ``overrides``: config ``--set`` strings (e.g. fewer epochs).
    """
    from runtime.offline import streamed_vs_offline_map
    from spot_core.actrectut import evaluate_split, trained_direction

    torch.set_num_threads(1)
    cfg = SpotConfig.preset("actrectut").override(list(overrides))
    t0 = time.perf_counter()
    model, mcfg, feats, gt, split = trained_direction(data_dir, direction, cfg=cfg)
    t_train = time.perf_counter() - t0
    session = EagerSession(model, mcfg, batch_size=batch_size)
    res = streamed_vs_offline_map(session, feats, gt, chunks=chunks)
    res["package_offline_average_mAP"] = evaluate_split(model, split, mcfg)["average_mAP"]
    res.update(
        direction=direction,
        overrides=list(overrides),
        pieces=len(feats),
        snippets=int(sum(f.shape[0] for f in feats.values())),
        train_seconds=round(t_train, 1),
        seconds=round(time.perf_counter() - t0, 1),
    )
    return res


# ---------------------------------------------------------------------------------------- CLI
def format_table(reports: Sequence[dict]) -> str:
    lines = ["| backend | device | p50 ms/window (b=1) | p99 | streams | batch | windows/s | snippets/s |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in reports:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['backend']} | {r['device']} | {r.get('status')}: {r.get('reason', '')[:60]} "
                "| | | | | |"
            )
            continue
        lat = r["latency"]
        for i, t in enumerate(r["throughput"]):
            head = f"{lat['p50_ms']:.2f} | {lat['p99_ms']:.2f}" if i == 0 else " | "
            lines.append(
                f"| {r['backend']} | {r['device']} | {head} | {t['streams']} | {t['batch_size']} | "
                f"{t['windows_per_s']:.1f} | {t['snippets_per_s']:.0f} |"
            )
    return "\n".join(lines)


class NullSession(Session):
    """A session whose model is free: every window gives no detection, at once. Served through the
    stream detector, it measures the runtime's own cost per window (buffers, queue, batching,
    per-window bookkeeping): the ceiling of windows/s that no faster model can pass."""

    backend = "null"

    def detect(self, x: Any, valid_len: Any = None, **kw: Any) -> Any:
        from spot_core.decode import Detections

        B, D = int(x.shape[0]), self.cfg.decode.max_detections
        self.model_calls += 1
        z = torch.zeros(B, D)
        return Detections(torch.zeros(B, D, 2), z, z.long(), z.bool())


def host_ceiling(
    preset: str = "actrectut",
    streams: Sequence[int] = (16, 256),
    *,
    batch_size: int = 256,
    windows_per_stream: int = 32,
) -> list[dict[str, Any]]:
    """:func:`serve` with :class:`NullSession`: the runtime's windows/s without a model, for both
    ways of pushing (``push_many`` per round, and a ``push`` per stream)."""
    _, cfg = random_model(preset)
    sess = NullSession(cfg, device="cpu", batch_size=batch_size, pad=True)
    serve(sess, min(2, max(streams)), windows_per_stream=2)  # warm-up
    return [
        serve(sess, n, windows_per_stream=windows_per_stream, push=push)
        for push in ("many", "one")
        for n in streams
    ]


def serve_table(rows: Sequence[dict]) -> str:
    lines = [
        "| streams | push | buckets | max delay ms | windows | model calls | windows/s | p50 ms/window "
        "| p99 ms/window | exact streams |"
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        exact = f"{r['exact_streams']} / {r['exact_checked']}" if "exact_checked" in r else "-"
        lines.append(
            f"| {r['streams']} | {r['push']} | {','.join(map(str, r['buckets']))} | {r['max_delay_ms']:g} | "
            f"{r['windows']} | "
            f"{r['model_calls']} | {r['windows_per_s']:.0f} | {r['latency_p50_ms']:.2f} | "
            f"{r['latency_p99_ms']:.2f} | {exact} |"
        )
    return "\n".join(lines)


def serve_benchmark(
    backend: str = "fused",
    device: str = "cpu",
    streams: Sequence[int] = (1, 16, 64, 256),
    *,
    preset: str = "actrectut",
    batch_size: int = 256,
    buckets: str | None = None,
    precision: str = "fp32",
    max_delay_s: float = 0.005,
    windows_per_stream: int = 8,
    check_exact: int = 4,
    threads: int | None = 1,
    push: Sequence[str] = ("many",),
    repeat: int = 1,
) -> dict[str, Any]:
    """:func:`serve` for each way of pushing and number of streams, after a warm-up run, on one
    session of ``backend``; exactness checked against each stream run alone through the same
    session. ``repeat`` > 1: each row is the run of median windows/s of ``repeat`` runs, the ways
    of pushing interleaved (so a busy machine's drift hits them alike)."""
    if isinstance(push, str):
        push = (push,)
    if threads is not None and torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    model, cfg = random_model(preset)
    if backend == "null":  # the runtime alone (NullSession): its ceiling of windows/s
        sess: Session = NullSession(cfg, device="cpu", batch_size=batch_size, pad=True)
    else:
        sess = make_session(
            backend,
            model.to(device),
            cfg,
            device=device,
            batch_size=batch_size,
            buckets=buckets,
            precision=precision,
        )
    serve(sess, min(2, max(streams)), windows_per_stream=2, max_delay_s=max_delay_s, push=push[0])  # warm-up
    rows = []
    for n in streams:
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in push}
        for r in range(max(1, repeat)):
            for p in push:
                row = serve(
                    sess, n, windows_per_stream=windows_per_stream, max_delay_s=max_delay_s,
                    check_exact=check_exact if r == 0 else 0, push=p,
                )  # fmt: skip
                runs[p].append(row)
        for p in push:
            by_rate = sorted(runs[p], key=lambda row: row["windows_per_s"])
            row = dict(by_rate[len(by_rate) // 2])
            row.update({k: runs[p][0][k] for k in ("exact_checked", "exact_streams") if k in runs[p][0]})
            row["repeats"] = len(by_rate)
            rows.append(row)
    return {"backend": backend, "device": device, "preset": preset, "precision": precision, "rows": rows}


def serve_main(argv: Sequence[str]) -> int:
    """``python -m benchmarks.streaming serve``: :func:`serve_benchmark`, a table and a JSON report."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.streaming serve", description=serve.__doc__)
    ap.add_argument(
        "--backend",
        default="fused",
        choices=(*BACKENDS, "null"),
        help="session backend (null: a model that costs nothing: the runtime's own ceiling)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--streams", default="1,16,64,256", help="numbers of concurrent streams (default 1,16,64,256)"
    )
    ap.add_argument("--preset", default="actrectut")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--buckets", help="fused backend: batch buckets below --batch-size, e.g. 1,8,64")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--max-delay-ms", type=float, default=5.0, help="latency budget of a partial batch")
    ap.add_argument("--windows-per-stream", type=int, default=8)
    ap.add_argument("--check-exact", type=int, default=4, help="streams compared with the stream run alone")
    ap.add_argument(
        "--push", default="many",
        help="many: one push_many call per round for all streams (default); one: a push per stream; "
        "one,many: both, interleaved",
    )  # fmt: skip
    ap.add_argument("--repeat", type=int, default=1, help="runs per row; the row of median windows/s")
    ap.add_argument("--json", help="write the report here")
    a = ap.parse_args(argv)
    check_output(a.json)
    from benchmarks.common import device_info

    streams = [int(s) for s in a.streams.split(",") if s]
    pushes = [p for p in a.push.split(",") if p]
    if not pushes or set(pushes) - {"one", "many"} or a.repeat < 1:
        raise SessionError(
            f"--push takes one, many or one,many and --repeat >= 1, got {a.push!r}, {a.repeat}"
        )
    if not streams or min(streams) < 1 or a.batch_size < 1 or a.windows_per_stream < 1:
        raise SessionError("--streams, --batch-size and --windows-per-stream must be >= 1")
    rep = serve_benchmark(
        a.backend, a.device, streams, preset=a.preset, batch_size=a.batch_size, buckets=a.buckets,
        precision=a.precision, max_delay_s=a.max_delay_ms / 1e3, windows_per_stream=a.windows_per_stream,
        check_exact=a.check_exact, push=pushes, repeat=a.repeat,
    )  # fmt: skip
    info = device_info()
    if torch.device(a.device).type == "cuda":
        info["device"] = torch.cuda.get_device_name()
    rep["machine"] = info
    print(serve_table(rep["rows"]))
    if a.json:
        write_text_atomic(a.json, json.dumps(rep, indent=2))
        print(f"report: {a.json}")
    return 0


@reports_errors
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["memory-one"]:
        ap = argparse.ArgumentParser(prog="python -m benchmarks.streaming memory-one")
        ap.add_argument("--hours", type=float, required=True)
        ap.add_argument("--preset", default="anet")
        ap.add_argument("--rate", type=float, default=2.0)
        a = ap.parse_args(argv[1:])
        print(json.dumps(memory_run(a.hours, preset=a.preset, rate=a.rate)))
        return 0
    if argv[:1] == ["actrectut"]:
        ap = argparse.ArgumentParser(prog="python -m benchmarks.streaming actrectut")
        ap.add_argument("--data", default="../shared/data/actrectut")
        ap.add_argument("--direction", default="1->2")
        ap.add_argument("--set", dest="overrides", nargs="*", default=[])
        ap.add_argument("--json", help="write the result here")
        a = ap.parse_args(argv[1:])
        r = actrectut_map(a.data, direction=a.direction, overrides=a.overrides)
        print("| run | average mAP (%) |")
        print("|---|---|")
        print(f"| offline | {100 * r['offline']['average_mAP']:.4f} |")
        for c, v in r["streamed"].items():
            print(f"| streamed, chunks of {c} | {100 * v['average_mAP']:.4f} |")
        print(f"equal: {r['equal']}, identical detections: {r['identical_detections']}")
        print(f"package offline path (unpadded batch 64): {100 * r['package_offline_average_mAP']:.4f}")
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(a.json, json.dumps(r, indent=2))
        return 0
    if argv[:1] == ["serve"]:
        return serve_main(argv[1:])
    if argv[:1] == ["memory"]:
        ap = argparse.ArgumentParser(prog="python -m benchmarks.streaming memory")
        ap.add_argument("--hours", type=float, nargs="+", default=[1.0, 10.0])
        ap.add_argument("--preset", default="anet")
        ap.add_argument("--rate", type=float, default=2.0)
        ap.add_argument("--json", help="write the rows here")
        a = ap.parse_args(argv[1:])
        rows = measure_memory(a.hours, preset=a.preset, rate=a.rate)
        print("| hours | snippets | windows | peak RSS MiB | stored detections KiB | seconds |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['hours']:g} | {r['snippets']} | {r['windows']} | {r['peak_rss_kib'] / 1024:.1f} | "
                f"{r['stored_detection_bytes'] / 1024:.1f} | {r['seconds']:.1f} |"
            )
        if len(rows) >= 2:
            lo, hi = rows[0]["peak_rss_kib"], rows[-1]["peak_rss_kib"]
            print(f"peak RSS ratio (last / first): {hi / lo:.4f}")
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(a.json, json.dumps(rows, indent=2))
        return 0
    ap = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--streams", default="1,64,1024")
    ap.add_argument("--preset", default="anet")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--target-windows", type=int, default=256)
    ap.add_argument("--latency-windows", type=int, default=50)
    ap.add_argument(
        "--json", help="write the report here (default benchmarks/results/streaming_<device>.json)"
    )
    a = ap.parse_args(argv)
    from benchmarks.common import device_info

    streams = [int(s) for s in a.streams.split(",") if s]
    reports = []
    for b in [s for s in a.backends.split(",") if s]:
        reports.append(
            stream_benchmark(
                b,
                a.device,
                streams,
                preset=a.preset,
                batch_size=a.batch_size,
                target_windows=a.target_windows,
                latency_windows=a.latency_windows,
            )
        )
        print(format_table(reports[-1:]), flush=True)
    info = device_info()
    if torch.device(a.device).type == "cuda":
        info["device"] = torch.cuda.get_device_name()
    report = {"machine": info, "reports": reports}
    out = Path(a.json or f"benchmarks/results/streaming_{torch.device(a.device).type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(report, indent=2))
    print()
    print(format_table(reports))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
