"""Offline streaming over feature files: ``python -m runtime.stream``.

    python -m runtime.stream --model FILE --features FILE_OR_DIR [--chunk N] [--out detections.json] \\
        [--plot out.png] [--backend auto|eager|compile|edge|fused|onnxruntime|tensorrt] [--device cpu|cuda] \\
        [--provider cpu|cuda|tensorrt] [--batch-size B] [--buckets 1,8,64] [--precision fp32|bf16] \\
        [--stride S] [--snippet-rate R] \\
        [--config FILE | --preset NAME] [--set K=V ...]

``--model``: a checkpoint (``.safetensors``), a heads ONNX export or a TensorRT engine (with its
sidecar); the config is the one stored with the model unless ``--config`` / ``--preset`` is given
(then the model is checked against it). ``--features``: one ``.npy`` / ``.csv`` file ``[N, C]`` or
a folder of them (one stream per file, named after the file); with ``--raw``, raw recordings
``[samples, channels]`` featurised by the ``stream_features.json`` stored beside the model (what
``python -m spot_core.data.prepare`` fitted and ``python -m spot_core.train`` copied). The streams
are pushed round robin in chunks of ``--chunk`` snippets through one
:class:`runtime.detector.StreamDetector`, so windows of different files share batches, exactly
as live streams would. Output: the ActivityNet result
JSON (``--out``) and a timeline plot (``--plot``).

Bad input prints one line ``error: <file>: <problem>`` (exit status 2; ``--debug`` shows the
traceback): a bad option (a rate that is not a finite number > 0, an unknown or absent
``--device``), an output path that cannot be written (checked before any work) or a model file
that does not load, match or verify against its recorded digest stops the run at once. A feature
file that is unreadable or malformed (wrong C, NaN/Inf, named with the snippet offset) is reported
once, the other streams go on, their results are written, and the exit status is 2; when no
stream succeeds nothing is written. Outputs are written atomically once the streaming is done, so
a failed or interrupted run (Ctrl-C: ``interrupted``, exit status 130) leaves earlier ``--out`` /
``--plot`` files as they were, and a symlink at an output path is replaced, never written through.

The library API (``StreamDetector``, ``open_session``, ``offline_detect``) lives in
:mod:`runtime.detector` and :mod:`runtime.session` and is re-exported here.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from spot_core.cli import (
    add_debug_arg,
    check_device,
    positive_finite,
    report_error,
    reports_errors,
    setup_logging,
)
from spot_core.config import ConfigError
from spot_core.data.features import FeatureError
from spot_core.data.streams import StreamFeaturizer, load_streams
from spot_core.outputs import check_output, write_bytes_atomic, write_json_atomic

from .detector import Detection, StreamDetector, StreamError
from .offline import offline_detect, stream_all, streamed_vs_offline_map
from .session import SESSION_BACKENDS, open_session

__all__ = [
    "Detection",
    "StreamDetector",
    "StreamError",
    "load_streams",
    "main",
    "offline_detect",
    "run_files",
    "streamed_vs_offline_map",
]

log = logging.getLogger(__name__)


def run_files(
    model: str | Path,
    features: str | Path,
    *,
    chunk: int = 64,
    out: str | Path | None = None,
    plot: str | Path | None = None,
    backend: str = "auto",
    device: str = "cpu",
    provider: str | None = None,
    batch_size: int = 64,
    stride: int | None = None,
    snippet_rate: float | None = None,
    cfg=None,
    progress: bool = True,
    raw: bool = False,
    precision: str = "fp32",
    buckets: str | None = None,
    annotations: str | Path | None = None,
) -> tuple[dict, dict[str, str]]:
    """Stream every feature file through a session; ``(result JSON, {file or stream: error})``.

    ``raw``: the files are raw recordings ``[samples, channels]``; they become snippet features
    through the featuriser stored beside the model (``stream_features.json``: the samples per
    snippet, statistics and training standardisation of ``python -m spot_core.data.prepare``).

    ``annotations``: name each stream after the annotated video its file name matches
    (:func:`spot_core.data.streams.stream_id_for`, the rule of ``spot_core.data.prepare``), so
    the output evaluates against that file; without it, streams are named by file stem.

    ``out`` / ``plot`` are checked before the work (:func:`spot_core.outputs.check_output`) and
    written atomically after it, only when at least one stream succeeded."""
    check_output(out)
    check_output(plot, what="--plot")
    if plot is not None:
        from .plot import plot_format

        plot_format(plot)
    positive_finite(snippet_rate, "--snippet-rate")
    ids = None
    if annotations is not None:
        from spot_core.data.annotations import load_annotations

        ids = list(load_annotations(annotations).videos)
    session = open_session(
        model, backend=backend, cfg=cfg, device=device, batch_size=batch_size, provider=provider,
        precision=precision, buckets=buckets,
    )  # fmt: skip
    cfg = session.cfg
    if raw:
        featurizer = StreamFeaturizer.for_model(model)
        if featurizer.feat_dim != cfg.model.feat_dim:
            raise FeatureError(
                f"{model}: the featuriser beside it makes {featurizer.feat_dim} features, the model takes "
                f"{cfg.model.feat_dim}"
            )
        streams, errors, sources = load_streams(features, featurizer.channels)
        for sid in list(streams):
            try:
                streams[sid] = featurizer(streams[sid])
            except FeatureError as e:
                errors[str(sources.pop(sid))] = str(e)
                del streams[sid]
        if snippet_rate is None and cfg.data.snippet_rate is None:
            snippet_rate = featurizer.snippet_rate
    else:
        streams, errors, sources = load_streams(features, cfg.model.feat_dim)
    if ids is not None:
        streams, sources = _rename_streams(streams, sources, ids, errors)
    # offline files: only full batches run while streaming; close() runs the rest (no latency budget)
    det = StreamDetector(
        session, stride=stride, snippet_rate=snippet_rate, max_delay_s=math.inf, preview=False
    )
    stream_errors: dict[str, str] = {}
    results = stream_all(det, streams, chunk, progress=progress, errors=stream_errors)
    for sid, msg in stream_errors.items():
        errors[str(sources[sid])] = msg
    if not results["results"]:  # every stream failed: keep whatever the outputs held before
        return results, errors
    image = None
    if plot is not None:  # rendered before anything is written: a failure here writes nothing
        from .plot import plot_format, render_stream_timeline

        rate = det.snippet_rate
        durations = {sid: f.shape[0] / rate for sid, f in streams.items()}
        image = render_stream_timeline(
            results["results"], plot_format(plot), class_names=cfg.names(), durations=durations
        )
    if out is not None:
        write_json_atomic(out, results)
    if plot is not None and image is not None:
        write_bytes_atomic(plot, image)
    return results, errors


def _rename_streams(
    streams: dict, sources: dict, ids: Sequence[str], errors: dict[str, str]
) -> tuple[dict, dict]:
    """Streams renamed to the annotated ids their files name; a second file for one id is an error
    of that file (the first keeps the id)."""
    from spot_core.data.streams import stream_id_for

    out, src = {}, {}
    for sid, feats in streams.items():
        new = stream_id_for(sid, ids)
        if new in out:
            errors[str(sources[sid])] = f"a second file for annotated video {new!r} (first: {src[new].name})"
            continue
        out[new], src[new] = feats, sources[sid]
    return out, src


def build_parser() -> argparse.ArgumentParser:
    from spot_core.cli import add_config_args

    ap = argparse.ArgumentParser(
        prog="python -m runtime.stream",
        description="Sliding-window SPOT detection over feature files, through the streaming runtime.",
    )
    ap.add_argument(
        "--model", required=True, help="checkpoint (.safetensors), heads ONNX, or TensorRT engine"
    )
    ap.add_argument(
        "--features", required=True, help=".npy/.csv file [N, C] or a folder of them (one stream each)"
    )
    ap.add_argument(
        "--raw",
        action="store_true",
        help="the files are raw recordings [samples, channels]: featurise them with the stream_features.json "
        "stored beside the model",
    )
    ap.add_argument("--chunk", type=int, default=64, help="snippets per push (default 64)")
    ap.add_argument("--out", help="ActivityNet result JSON to write")
    ap.add_argument("--plot", help="timeline PNG to write")
    ap.add_argument("--backend", default="auto", choices=("auto", *SESSION_BACKENDS))
    ap.add_argument("--device", default="cpu", help="cpu or cuda (eager, compile; onnxruntime provider)")
    ap.add_argument(
        "--provider",
        choices=("cpu", "cuda", "tensorrt"),
        help="onnxruntime provider (default: from --device)",
    )
    ap.add_argument("--batch-size", type=int, default=64, help="windows per model call (default 64)")
    ap.add_argument(
        "--stride", type=int, help="window stride S in snippets (default: the config's data.stride)"
    )
    ap.add_argument("--snippet-rate", type=float, help="snippets per second (default: config, else 1)")
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="the fused backend's precision (default fp32)",
    )
    ap.add_argument(
        "--buckets",
        help="the fused backend's batch buckets below --batch-size, e.g. 1,8,64 (default: --batch-size only, "
        "which keeps every stream's output bit-identical to the stream run alone)",
    )
    ap.add_argument(
        "--annotations",
        help="name each stream after the video of this annotation file its file name matches (as "
        "spot_core.data.prepare does: subject2_gesture_data.npy -> subject2_gesture), so the output "
        "evaluates against it; default: the file stem",
    )
    ap.add_argument("--no-progress", action="store_true")
    add_config_args(ap, default_preset=None)
    add_debug_arg(ap)
    return ap


@reports_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run :func:`run_files`; prints a summary line per stream. Bad input: ``error: ...``, status 2."""
    args = build_parser().parse_args(argv)
    setup_logging(0)
    for opt, value in (("--chunk", args.chunk), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{opt} must be >= 1, got {value}")
    if args.stride is not None and args.stride < 1:
        raise ConfigError(f"--stride must be >= 1, got {args.stride}")
    positive_finite(args.snippet_rate, "--snippet-rate")
    check_device(args.device)
    check_output(args.out)
    check_output(args.plot, what="--plot")
    cfg = None
    if args.config or args.preset:
        from spot_core.cli import config_from_args

        cfg = config_from_args(args)
    elif args.overrides:
        from runtime.session import model_config

        cfg = model_config(args.model).override(args.overrides)
    results, errors = run_files(
        args.model,
        args.features,
        chunk=args.chunk,
        out=args.out,
        plot=args.plot,
        backend=args.backend,
        device=args.device,
        provider=args.provider,
        batch_size=args.batch_size,
        stride=args.stride,
        snippet_rate=args.snippet_rate,
        cfg=cfg,
        progress=not args.no_progress,
        raw=args.raw,
        precision=args.precision,
        buckets=args.buckets,
        annotations=args.annotations,
    )
    for sid, dets in results["results"].items():
        best = max((d["score"] for d in dets), default=0.0)
        print(f"{sid}: {len(dets)} detections (best score {best:.3f})")
    if results["results"]:
        if args.out:
            print(f"detections: {args.out}")
        if args.plot:
            print(f"timeline: {args.plot}")
    for where, msg in errors.items():
        report_error(msg if msg.lstrip().startswith(where) else f"{where}: {msg}")
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
