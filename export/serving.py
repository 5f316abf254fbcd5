"""Triton Inference Server model repository for a SPOT ONNX export or TensorRT engine.

    python -m export.serving (--onnx FILE | --engine FILE) --out REPO [--name NAME] [--max-batch-size 8] \\
        [--preferred-batch-size 4 ...] [--max-queue-delay-us 100] [--instances 1] [--instance-kind gpu|cpu]

writes::

    REPO/NAME/config.pbtxt      platform, max_batch_size, inputs/outputs, dynamic batching, instance group
    REPO/NAME/1/model.onnx      (or model.plan)
    REPO/NAME/spot.json         SPOT metadata (C, T, K, class names, config hash; engine sidecar for plans;
                                the model file's size and sha256, checked by :func:`verify_repository`)

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
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.trt import check_io, onnx_io
from runtime.engine import read_engine_metadata
from runtime.onnx_model import load_onnx, read_onnx_metadata
from spot_core.cli import add_debug_arg, reports_errors, setup_logging
from spot_core.errors import SpotError
from spot_core.outputs import (
    check_output,
    sha256_file,
    verify_digest,
    write_json_atomic,
    write_text_atomic,
)

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
    (or an engine without its sidecar), :class:`spot_core.outputs.DigestError` for a source that
    does not match its recorded digest (the ONNX's ``.sha256`` file, the engine sidecar's size and
    sha256; a source without one is packaged unverified) and :class:`ServingError` for options
    that cannot be served.

    The model folder is built beside its final place and renamed into it when complete, so a failed
    or interrupted run leaves an earlier folder as it was. ``spot.json`` records the model file's
    size and sha256 (``model_bytes``, ``model_sha256``; :func:`verify_repository` checks them).
    """
    opts = options or ServingOptions()
    if (onnx is None) == (engine is None):
        raise ServingError("give exactly one of onnx / engine")
    if onnx is not None:
        src = Path(onnx)
        meta = read_onnx_metadata(src)  # checks the digest file beside it first
        io = onnx_io(load_onnx(src))
        check_io(src, io, meta)
        platform, filename, spot = "onnxruntime_onnx", "model.onnx", {"spot": meta}
    else:
        src = Path(engine)
        side = read_engine_metadata(src)  # checks the engine's size and sha256 against the sidecar
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
    src_sha = sha256_file(src)
    name = name or ("spot_heads_decode" if meta.get("graph") == "heads+decode" else "spot_heads")
    if not _NAME.match(name):
        raise ServingError(f"model name {name!r}: use letters, digits, '_', '.', '-'")
    params = {
        f"spot.{k}": v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        for k, v in meta.items()
        if k in ("graph", "precision", "num_classes", "class_names", "config_hash", "version")
    }
    text = config_pbtxt(name, platform, io, opts, params)

    out = Path(out)
    check_output(out, what="repository", folder=True)
    model_dir = out / name
    if model_dir.is_symlink() or (model_dir.exists() and not model_dir.is_dir()):
        raise ServingError(f"{model_dir}: exists and is not a model folder; remove it first")
    if model_dir.exists() and not overwrite:
        raise ServingError(
            f"{model_dir}: model folder exists; pass --overwrite (overwrite=True) to replace it"
        )
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out))
    try:
        (tmp / "1").mkdir()
        copy = tmp / "1" / filename
        shutil.copyfile(src, copy)
        spot["model_file"] = f"1/{filename}"
        spot["model_sha256"] = sha256_file(copy)
        spot["model_bytes"] = copy.stat().st_size
        if spot["model_sha256"] != src_sha:
            raise ServingError(f"{src}: changed while it was copied into the repository")
        write_text_atomic(tmp / "config.pbtxt", text)
        write_json_atomic(tmp / "spot.json", spot, indent=2)
        _replace_folder(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote Triton model %s (%s)", model_dir, platform)
    return model_dir


def _replace_folder(new: Path, dest: Path) -> None:
    """Put the finished folder ``new`` at ``dest`` by renames: an existing ``dest`` is moved aside
    first and removed after, so ``dest`` is always either the old or the new complete folder (or,
    for the instant between the two renames, absent)."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        old.rmdir()
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def verify_repository(model_dir: str | Path) -> Path:
    """Check the model file of a repository written by :func:`model_repository` against the size and
    sha256 its ``spot.json`` records; returns the model file. :class:`spot_core.outputs.DigestError`
    naming the file on a mismatch; :class:`ServingError` when ``spot.json`` is missing or records no
    digest (repositories written before digests existed)."""
    model_dir = Path(model_dir)
    try:
        spot = json.loads((model_dir / "spot.json").read_text())
        rel, sha, size = spot["model_file"], spot["model_sha256"], spot["model_bytes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ServingError(f"{model_dir}/spot.json: missing, unreadable or without a digest ({e})") from None
    path = model_dir / rel
    if not path.is_file():
        raise ServingError(f"{path}: model file missing from the repository")
    verify_digest(path, sha, size=size)
    return path


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
    add_debug_arg(ap)
    return ap


@reports_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Write the repository; prints the model folder. Bad input: one line ``error: ...``, status 2."""
    args = build_parser().parse_args(argv)
    setup_logging(0)
    check_output(args.out, folder=True)
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
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
