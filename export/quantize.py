"""CPU edge models: int8 quantization of a SPOT heads ONNX export, and the bf16 CPU graph.

    python -m export.quantize model.onnx --out model_int8.onnx [--per-tensor]
    python -m export.quantize model.onnx --out model_int8.onnx --static --calibration DATA_DIR \\
        [--calibration-windows 256] [--calibration-method minmax|entropy|percentile]

Input: an fp32 heads graph written by :mod:`export.onnx` (``features [B, C, T] -> logits, mask``).
Refused with a clear :class:`QuantizeError`: a missing or corrupt file, a file that is not a SPOT
export, a heads+decode graph (its thresholds and arg-max would run on quantized values; quantize
the heads graph and decode outside it), a graph that is not fp32.

Two modes, both keep the float32 input and outputs, so the runtime feeds the same features:

- dynamic (default): ``quantize_dynamic`` on the ``MatMul`` nodes only (Q/K/V, the attention
  output map): int8 weights per output channel (per tensor with ``--per-tensor``) and uint8
  activations quantized per call (``DynamicQuantizeLinear`` + ``MatMulInteger``). The Conv heads
  stay fp32: onnxruntime's CPU ``ConvInteger`` is slower than its fp32 Conv on these shapes.
- ``--static``: QDQ format, ``MatMul`` and ``Conv``, int8 weights per output channel, uint8
  activations whose ranges come from calibration on the *training* windows of ``DATA_DIR``
  (a dataset folder as ``--data`` elsewhere; at most ``--calibration-windows`` windows, never
  the validation videos that verify evaluates on).

Before quantizing, ``quant_pre_process`` runs onnxruntime's symbolic shape inference. The output
keeps every ``spot.*`` metadata entry of the input (C, T, K, class names, config, version) with
``spot.precision = "int8"``, and adds ``spot.quantization`` (JSON: mode, op types, per-channel,
calibration) and ``spot.source_sha256`` (of the fp32 file). :class:`runtime.onnx_model.OnnxRunner` and
``python -m export.verify --onnx`` run it like any SPOT export; verify judges int8 rows by the
mAP delta (docs/verify.md).

bf16 (:func:`bf16_cpu_model`, PyTorch, no file): :class:`EdgeGraph` is SPOT's inference forward
laid out for a CPU in bfloat16 (oneDNN; AMX where the CPU has it): windows in steps of
``EDGE_CHUNK`` (8: batch 64 in one step was slower per window than steps of 8 on our CPU,
measured; smaller working buffers are the likely reason, not profiled), each step's input copied once to a
contiguous ``[n, T, C]`` (on a strided view ``linear`` falls back to a batched matmul over a copy
of the weight per window), one fused Q/K/V matmul, ``scaled_dot_product_attention`` on strided
head views (no copies of Q, K, V), the classifier as a linear on ``[n, T, C]``, the k=3 mask conv
as one linear over the three taps ``[x_{t-1}, x_t, x_{t+1}]``, the mask's sigmoid on the float32
logit. (Folding the attention weights per head, ``w_q^T w_k`` and ``w_v^T w_proj^T``, would cut
the FLOPs by 39 % on the ANet preset but moved the demo model's mAP by -0.25 to -0.35 points in
bf16, against -0.05 for this layout: measured, not used.) Same maths as
:class:`spot_core.model.SPOT` (in float32 it matches it within fp32 tolerance); fp32 features in,
fp32 logits and mask out. Timed by ``python -m benchmarks.edge`` and verified as the ``edge-cpu``
rows of ``python -m export.verify``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.onnx import save_proto
from runtime.edge import EDGE_CHUNK, EdgeGraph, bf16_cpu_model
from runtime.onnx_model import FORMAT, OnnxModelError, load_onnx, read_onnx_metadata
from spot_core.cli import add_debug_arg, reports_errors, setup_logging
from spot_core.config import ConfigError, SpotConfig
from spot_core.errors import SpotError
from spot_core.outputs import check_output, refuse_overwrite, sha256_file

log = logging.getLogger(__name__)

__all__ = ["EDGE_CHUNK", "EdgeGraph", "QuantizeError", "bf16_cpu_model", "quantize_onnx"]

MODES = ("dynamic", "static")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DYNAMIC_OPS = ("MatMul",)
STATIC_OPS = ("MatMul", "Conv")


class QuantizeError(SpotError, ValueError):
    """A quantization request that cannot be done: bad input file, wrong graph, bad calibration data."""


# ------------------------------------------------------------------------------------------- checks
def check_source(path: str | Path) -> dict[str, Any]:
    """The SPOT metadata of ``path`` if it is an fp32 heads export; :class:`QuantizeError` otherwise."""
    path = Path(path)
    try:
        meta = read_onnx_metadata(path)
    except OnnxModelError as e:
        raise QuantizeError(str(e)) from None
    if meta.get("graph") != "heads":
        raise QuantizeError(
            f"{path}: graph {meta.get('graph')!r}; only heads graphs are quantized (export without "
            "--with-decode, decode outside the graph)"
        )
    if meta.get("precision", "fp32") != "fp32":
        raise QuantizeError(f"{path}: precision {meta.get('precision')!r}; quantize an fp32 export")
    return meta


def stored_config(meta: dict[str, Any], path: Path) -> SpotConfig:
    """The :class:`SpotConfig` stored in the export's ``spot.config`` metadata."""
    import yaml

    try:
        return SpotConfig.from_dict(yaml.safe_load(meta.get("config", "")))
    except (ConfigError, yaml.YAMLError, TypeError, ValueError) as e:
        raise QuantizeError(f"{path}: stored config unreadable ({e})") from None


# ------------------------------------------------------------------------------------------- calibration
def calibration_windows(data: str | Path, cfg: SpotConfig, limit: int) -> np.ndarray:
    """Up to ``limit`` training windows of the dataset folder ``data``: ``[N, C, T]`` float32."""
    from spot_core.data.annotations import AnnotationError
    from spot_core.data.datasets import load_dataset
    from spot_core.data.features import FeatureError

    try:
        _, windows = load_dataset(data, cfg, "training", targets=False, progress=False)
    except (AnnotationError, FeatureError, OSError, ValueError) as e:
        raise QuantizeError(f"--calibration: {' '.join(str(e).split())}") from None
    if not windows:
        raise QuantizeError(f"--calibration {data}: no training windows")
    if limit < 1:
        raise QuantizeError("--calibration-windows must be >= 1")
    step = max(1, len(windows) // limit)  # spread over the videos rather than the first few
    picked = windows[::step][:limit]
    return np.stack([w.features_ct() for w in picked]).astype(np.float32)


def _reader(x: np.ndarray, input_name: str, batch: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = (x[i : i + batch] for i in range(0, len(x), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.batches, None)
            return None if b is None else {input_name: b}

    return Reader()


# ------------------------------------------------------------------------------------------- quantize
def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    static: bool = False,
    calibration: str | Path | None = None,
    calibration_windows_max: int = 256,
    calibration_method: str = "minmax",
    per_channel: bool = True,
) -> Path:
    """Quantize the fp32 SPOT heads export ``src`` to int8 at ``dst`` (see the module doc).

    ``static`` needs ``calibration`` (a dataset folder); ``per_channel`` applies to dynamic mode
    (static mode is always per channel). Raises :class:`QuantizeError` on bad input, and
    :class:`spot_core.outputs.DigestError` when ``src`` does not match its recorded digest. ``dst``
    and its digest file are written atomically (:func:`export.onnx.save_proto`) once the
    quantization succeeded; an existing ``dst`` is replaced (the CLI refuses that without
    ``--overwrite``).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    meta = check_source(src)
    if src.resolve() == dst.resolve():
        raise QuantizeError(f"{dst}: the output would overwrite the input")
    if static and calibration is None:
        raise QuantizeError("--static needs --calibration DATA_DIR (a dataset folder)")
    if not static and calibration is not None:
        raise QuantizeError("--calibration is only used with --static")
    if calibration_method not in CALIBRATION_METHODS:
        raise QuantizeError(f"calibration method {calibration_method!r}; choose {CALIBRATION_METHODS}")
    src_proto = load_onnx(src)
    input_name = src_proto.graph.input[0].name
    info: dict[str, Any] = {"mode": "static-qdq" if static else "dynamic"}
    with tempfile.TemporaryDirectory(prefix="spot_quant_") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_optimization=True)
        except Exception as e:  # noqa: BLE001 - shape inference raises many types; keep its message
            raise QuantizeError(f"{src}: onnxruntime shape inference failed ({type(e).__name__}: {e})") from e
        out = Path(tmp) / "int8.onnx"
        if static:
            cfg = stored_config(meta, src)
            x = calibration_windows(calibration, cfg, calibration_windows_max)
            method = {
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[calibration_method]
            quantize_static(
                str(pre),
                str(out),
                _reader(x, input_name, batch=16),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(STATIC_OPS),
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
            )
            info.update(
                op_types=list(STATIC_OPS),
                per_channel=True,
                activations="uint8 (calibrated)",
                calibration={
                    "data": Path(calibration).name,
                    "subset": "training",
                    "windows": int(x.shape[0]),
                    "method": calibration_method,
                },
            )
        else:
            quantize_dynamic(
                str(pre),
                str(out),
                op_types_to_quantize=list(DYNAMIC_OPS),
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
            )
            info.update(op_types=list(DYNAMIC_OPS), per_channel=per_channel, activations="uint8 (per call)")
        proto = load_onnx(out)
    _attach_metadata(proto, meta_props(src_proto), info, sha256_file(src))
    _check_dynamic_batch(proto, dst)
    save_proto(proto, dst)
    log.info("wrote %s (int8, %s)", dst, info["mode"])
    return dst


def meta_props(proto: Any) -> dict[str, str]:
    """The ``spot.*`` metadata entries of a model proto."""
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith("spot.")}


def _attach_metadata(proto: Any, props: dict[str, str], info: dict[str, Any], sha: str) -> None:
    new = dict(props)
    new["spot.precision"] = "int8"
    new["spot.quantization"] = json.dumps(info, sort_keys=True)
    new["spot.source_sha256"] = sha
    assert new.get("spot.format") == FORMAT
    del proto.metadata_props[:]
    for k, v in new.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.doc_string = "SPOT temporal action detection (spot-tad), int8 by export.quantize"


def _check_dynamic_batch(proto: Any, path: Path) -> None:
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        if dim0.HasField("dim_value"):
            raise QuantizeError(f"{path}: {vi.name}: batch dimension was baked in as {dim0.dim_value}")


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m export.quantize",
        description="int8-quantize a SPOT fp32 heads ONNX export (onnxruntime.quantization).",
    )
    ap.add_argument("onnx", help="fp32 heads export of python -m export.onnx")
    ap.add_argument("--out", required=True, help="output .onnx file")
    ap.add_argument("--static", action="store_true", help="static QDQ quantization (needs --calibration)")
    ap.add_argument("--calibration", help="dataset folder; its training windows calibrate --static")
    ap.add_argument("--calibration-windows", type=int, default=256, help="at most this many (default 256)")
    ap.add_argument("--calibration-method", default="minmax", choices=CALIBRATION_METHODS)
    ap.add_argument(
        "--per-tensor", action="store_true", help="dynamic mode: one weight scale per tensor, not per channel"
    )
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_debug_arg(ap)
    return ap


@reports_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Quantize; prints the output path. Bad input: one line ``error: ...`` and exit status 2.

    ``--out`` is checked first: an existing file is refused unless ``--overwrite``."""
    args = build_parser().parse_args(argv)
    setup_logging(0)
    check_output(args.out)
    refuse_overwrite(args.out, args.overwrite)
    out = quantize_onnx(
        args.onnx,
        args.out,
        static=args.static,
        calibration=args.calibration,
        calibration_windows_max=args.calibration_windows,
        calibration_method=args.calibration_method,
        per_channel=not args.per_tensor,
    )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
