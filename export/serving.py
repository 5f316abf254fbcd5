"""Triton Inference Server model repository for a SPOT ONNX export or TensorRT engine.

    python -m export.serving (--onnx FILE | --engine FILE) --out REPO [--name NAME] [--max-batch-size 8] \\
        [--preferred-batch-size 4 ...] [--max-queue-delay-us 100] [--instances 1] [--instance-kind gpu|cpu]

writes::

    REPO/NAME/config.pbtxt      platform, max_batch_size, inputs/outputs, dynamic batching, instance group
    REPO/NAME/1/model.onnx      (or model.plan)
    REPO/NAME/spot.json         SPOT metadata (C, T, K, class names, config hash; engine sidecar for plans)

Input and output names, dtypes and dims come from the ONNX graph (for an engine: from its sidecar,
which :mod:`export.trt` wrote from the parsed network); the batch dimension is left out of ``dims``
as Triton wants when ``max_batch_size > 0``. An engine's ``max_batch_size`` may not exceed its
profile's max batch. config.pbtxt is written as text (no protobuf needed here); the tests parse it
into Triton's ``ModelConfig`` schema.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.trt import check_io, onnx_io
from runtime.engine import read_engine_metadata
from runtime.onnx_model import load_onnx, read_onnx_metadata
from spot_core.cli import report_error, setup_logging
from spot_core.errors import SpotError

log = logging.getLogger(__name__)

TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class ServingError(SpotError, ValueError):
    """A model repository that cannot be written as asked."""


@dataclass(frozen=True)
class ServingOptions:
    """Batching and placement of the Triton model."""

    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    instances: int = 1
    instance_kind: str = "gpu"  # gpu | cpu

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ServingError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ServingError(f"preferred batch sizes {bad} outside 1..max_batch_size={self.max_batch_size}")
        if self.max_queue_delay_us < 0 or self.instances < 1:
            raise ServingError("max_queue_delay_us must be >= 0 and instances >= 1")
        if self.instance_kind not in ("gpu", "cpu"):
            raise ServingError(f"instance kind must be gpu or cpu, got {self.instance_kind!r}")


def _quote(s: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept as is)."""
    body = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{body}"'


def _tensor_block(t: dict[str, Any]) -> str:
    dtype = TRITON_DTYPES.get(t["dtype"])
    if dtype is None:
        raise ServingError(f"tensor {t['name']}: dtype {t['dtype']} has no Triton type")
    dims = list(t["shape"])[1:]  # batch dimension excluded
    if any(d < 0 for d in dims):
        raise ServingError(f"tensor {t['name']}: only the batch dimension may be dynamic, got {t['shape']}")
    shape = ", ".join(map(str, dims))
    return f"  {{\n    name: {_quote(t['name'])}\n    data_type: {dtype}\n    dims: [ {shape} ]\n  }}"


def config_pbtxt(
    name: str,
    platform: str,
    io: dict[str, list[dict[str, Any]]],
    opts: ServingOptions,
    params: dict[str, str],
) -> str:
    """The text of ``config.pbtxt`` (Triton ``ModelConfig`` in protobuf text format)."""
    lines = [
        f"name: {_quote(name)}",
        f'platform: "{platform}"',
        f"max_batch_size: {opts.max_batch_size}",
        "input [\n" + ",\n".join(_tensor_block(t) for t in io["inputs"]) + "\n]",
        "output [\n" + ",\n".join(_tensor_block(t) for t in io["outputs"]) + "\n]",
        "dynamic_batching {",
    ]
    if opts.preferred_batch_sizes:
        lines.append(f"  preferred_batch_size: [ {', '.join(map(str, opts.preferred_batch_sizes))} ]")
    lines += [
        f"  max_queue_delay_microseconds: {opts.max_queue_delay_us}",
        "}",
        "instance_group [",
        f"  {{\n    count: {opts.instances}\n    kind: KIND_{opts.instance_kind.upper()}\n  }}",
        "]",
    ]
    for k, v in params.items():
        lines.append(f"parameters {{\n  key: {_quote(k)}\n  value {{ string_value: {_quote(v)} }}\n}}")
    return "\n".join(lines) + "\n"


def model_repository(
    out: str | Path,
    *,
    onnx: str | Path | None = None,
    engine: str | Path | None = None,
    name: str | None = None,
    options: ServingOptions | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out/<name>/`` for exactly one of ``onnx`` / ``engine``; returns the model folder.

    ``name`` defaults to ``spot_heads`` or ``spot_heads_decode``. An existing model folder is an
    error unless ``overwrite``. Raises :class:`OnnxModelError` for a file that is not a SPOT export
    (or an engine without its sidecar) and :class:`ServingError` for options that cannot be served.
    """
    opts = options or ServingOptions()
    if (onnx is None) == (engine is None):
        raise ServingError("give exactly one of onnx / engine")
    if onnx is not None:
        src = Path(onnx)
        meta = read_onnx_metadata(src)
        io = onnx_io(load_onnx(src))
        check_io(src, io, meta)
        platform, filename, spot = "onnxruntime_onnx", "model.onnx", {"spot": meta}
    else:
        src = Path(engine)
        side = read_engine_metadata(src)
        meta, io = side["spot"], {"inputs": side["inputs"], "outputs": side["outputs"]}
        if opts.instance_kind != "gpu":
            raise ServingError(f"{src}: a TensorRT engine runs on GPU instances only")
        prof_min, prof_max = side["batch_profile"]["min"], side["batch_profile"]["max"]
        if prof_min != 1:
            raise ServingError(
                f"{src}: the engine profile's min batch is {prof_min}; Triton sends batches from 1"
            )
        if opts.max_batch_size > prof_max:
            raise ServingError(
                f"{src}: max_batch_size {opts.max_batch_size} exceeds the engine profile's "
                f"max batch {prof_max}"
            )
        platform, filename, spot = "tensorrt_plan", "model.plan", {"spot": meta, "engine": side}
    name = name or ("spot_heads_decode" if meta.get("graph") == "heads+decode" else "spot_heads")
    if not _NAME.match(name):
        raise ServingError(f"model name {name!r}: use letters, digits, '_', '.', '-'")
    params = {
        f"spot.{k}": v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        for k, v in meta.items()
        if k in ("graph", "precision", "num_classes", "class_names", "config_hash", "version")
    }
    text = config_pbtxt(name, platform, io, opts, params)

    model_dir = Path(out) / name
    if model_dir.exists():
        if not overwrite:
            raise ServingError(f"{model_dir}: model folder exists (pass overwrite to replace it)")
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    shutil.copyfile(src, model_dir / "1" / filename)
    (model_dir / "config.pbtxt").write_text(text)
    (model_dir / "spot.json").write_text(json.dumps(spot, indent=2) + "\n")
    log.info("wrote Triton model %s (%s)", model_dir, platform)
    return model_dir


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m export.serving", description="Write a Triton model repository for a SPOT export."
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", help="SPOT ONNX export (python -m export.onnx)")
    src.add_argument("--engine", help="TensorRT engine with its .json sidecar (python -m export.trt)")
    ap.add_argument("--out", required=True, help="model repository folder")
    ap.add_argument("--name", help="model name (default spot_heads / spot_heads_decode)")
    d = ServingOptions()
    ap.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    ap.add_argument("--preferred-batch-size", type=int, action="append", default=[])
    ap.add_argument("--max-queue-delay-us", type=int, default=d.max_queue_delay_us)
    ap.add_argument("--instances", type=int, default=d.instances, help="instances per device")
    ap.add_argument("--instance-kind", choices=("gpu", "cpu"), default=d.instance_kind)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Write the repository; prints the model folder. Bad input: one line ``error: ...``, status 2."""
    args = build_parser().parse_args(argv)
    setup_logging(0)
    try:
        opts = ServingOptions(
            max_batch_size=args.max_batch_size,
            preferred_batch_sizes=tuple(args.preferred_batch_size),
            max_queue_delay_us=args.max_queue_delay_us,
            instances=args.instances,
            instance_kind=args.instance_kind,
        )
        out = model_repository(
            args.out,
            onnx=args.onnx,
            engine=args.engine,
            name=args.name,
            options=opts,
            overwrite=args.overwrite,
        )
    except (SpotError, OSError) as e:
        return report_error(e)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
