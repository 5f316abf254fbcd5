"""TensorRT engine build from a SPOT ONNX export, with a metadata sidecar.

    python -m export.trt model.onnx --out model.plan [--fp16] [--min-batch 1 --opt-batch 8 --max-batch 32] \\
        [--timing-cache FILE] [--workspace-mib 1024] [--backend tensorrt|tensorrt_rtx] \\
        [--compute-capability SM86 ...]

A chain of small steps (Polygraphy style): :func:`load_backend` picks the TensorRT Python module
lazily (``tensorrt`` if installed, else ``tensorrt_rtx`` from PyPI's ``tensorrt-rtx``, which builds
ahead of time on a machine without a GPU); :func:`parse_onnx` fills a network with the ONNX parser;
:func:`builder_config` sets the optimisation profile over the batch dimension (C and T are fixed),
the workspace limit and the timing cache; :func:`build_engine` builds and serializes the engine
and writes ``<out>.json`` beside it (:func:`engine_sidecar`).

Precision. TensorRT 11 and TensorRT-RTX build strongly typed networks: the ONNX's types are the
engine's types, so fp16 means a half-precision ONNX (``python -m export.onnx --fp16``). ``--fp16``
on a float32 ONNX is accepted only by a backend that still has the weakly typed ``BuilderFlag.FP16``
(TensorRT 10); anywhere else it is refused, never silently built in float32.

Timing cache. TensorRT-RTX has none (its timing-cache calls are no-ops), so ``--timing-cache`` is
refused with that backend rather than writing an empty file.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runtime.engine import (
    SIDECAR_FORMAT,
    TRT_MODULES,
    TrtBuildError,
    TrtModule,
    load_backend,
    sidecar_path,
)
from runtime.onnx_model import OnnxModelError, load_onnx, read_onnx_metadata
from spot_core.cli import add_debug_arg, reports_errors, setup_logging
from spot_core.graph import INPUT_NAME
from spot_core.outputs import (
    check_output,
    refuse_overwrite,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)

log = logging.getLogger(__name__)

# loading engines and reading their sidecars lives in runtime.engine
__all__ = [
    "BatchProfile",
    "build_engine",
    "builder_config",
    "check_io",
    "engine_sidecar",
    "main",
    "network_io",
    "onnx_io",
    "parse_onnx",
]

# ONNX TensorProto element types and TensorRT DataType names -> numpy-style names
_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 6: "int32", 7: "int64", 9: "bool", 2: "uint8"}
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64"}
_TRT_DTYPES.update({"BOOL": "bool", "UINT8": "uint8", "INT8": "int8"})


@dataclass(frozen=True)
class BatchProfile:
    """Optimisation profile over the batch dimension: ``1 <= min <= opt <= max``."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise TrtBuildError(
                f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}"
            )


# ------------------------------------------------------------------------------------------- steps
def onnx_io(proto: Any) -> dict[str, list[dict[str, Any]]]:
    """``{"inputs": [...], "outputs": [...]}``, each ``{name, dtype, shape}``; dynamic dims are -1."""

    def desc(vi: Any) -> dict[str, Any]:
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        dtype = _ONNX_DTYPES.get(tt.elem_type)
        if dtype is None:
            raise OnnxModelError(f"tensor {vi.name}: unsupported ONNX element type {tt.elem_type}")
        return {"name": vi.name, "dtype": dtype, "shape": shape}

    inits = {i.name for i in proto.graph.initializer}
    return {
        "inputs": [desc(v) for v in proto.graph.input if v.name not in inits],
        "outputs": [desc(v) for v in proto.graph.output],
    }


def check_io(path: Path, io: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> dict[str, Any]:
    """The single ``features [-1, C, T]`` input, checked against the metadata; returns it."""
    inputs = io["inputs"]
    want = [-1, meta["feat_dim"], meta["num_snippets"]]
    if len(inputs) != 1 or inputs[0]["name"] != INPUT_NAME or inputs[0]["shape"] != want:
        got = [(i["name"], i["shape"]) for i in inputs]
        raise OnnxModelError(f"{path}: expected one input {INPUT_NAME!r} of shape {want}, got {got}")
    return inputs[0]


def parse_onnx(backend: TrtModule, path: Path, *, strongly_typed: bool) -> tuple[Any, Any, Any]:
    """``(builder, network, parser)`` with ``path`` parsed; :class:`TrtBuildError` lists parser errors."""
    trt = backend.module
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errs = "; ".join(" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors))
        raise TrtBuildError(f"{path}: {backend.name} {backend.version} cannot parse the ONNX: {errs}")
    return builder, network, parser


def builder_config(
    backend: TrtModule,
    builder: Any,
    network: Any,
    profile: BatchProfile,
    *,
    fp16_flag: bool,
    workspace_mib: int,
    timing_cache: bytes | None,
    compute_capabilities: Sequence[str] = (),
) -> Any:
    """``IBuilderConfig``: batch profile on every input, workspace pool, fp16 flag, timing cache, targets."""
    trt = backend.module
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    prof = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        rest = tuple(t.shape)[1:]
        prof.set_shape(t.name, (profile.min, *rest), (profile.opt, *rest), (profile.max, *rest))
    config.add_optimization_profile(prof)
    if fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if timing_cache is not None:
        config.set_timing_cache(config.create_timing_cache(timing_cache), False)
    if compute_capabilities:
        if not hasattr(config, "set_compute_capability"):
            raise TrtBuildError(f"{backend.name} has no compute-capability targets (a TensorRT-RTX option)")
        config.num_compute_capabilities = len(compute_capabilities)
        for i, cc in enumerate(compute_capabilities):
            members = trt.ComputeCapability.__members__
            if cc.upper() not in members:
                raise TrtBuildError(f"unknown compute capability {cc!r}; choose from {', '.join(members)}")
            config.set_compute_capability(members[cc.upper()], i)
    return config


def network_io(network: Any) -> dict[str, list[dict[str, Any]]]:
    """The parsed network's inputs and outputs as ``{name, dtype, shape}`` (what the engine binds)."""

    def desc(t: Any) -> dict[str, Any]:
        return {"name": t.name, "dtype": _TRT_DTYPES.get(t.dtype.name, t.dtype.name), "shape": list(t.shape)}

    return {
        "inputs": [desc(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [desc(network.get_output(i)) for i in range(network.num_outputs)],
    }


# ------------------------------------------------------------------------------------------- build
def build_engine(
    onnx_path: str | Path,
    out: str | Path,
    *,
    fp16: bool = False,
    profile: BatchProfile | None = None,
    timing_cache: str | Path | None = None,
    workspace_mib: int = 1024,
    backend: str | None = None,
    compute_capabilities: Sequence[str] = (),
) -> Path:
    """Build a serialized engine of a SPOT ONNX export at ``out`` and its sidecar ``out.json``.

    The ONNX must carry SPOT metadata (:func:`runtime.onnx_model.read_onnx_metadata`; a corrupt or
    truncated file is an :class:`OnnxModelError` naming it). ``profile`` spans the batch dimension.
    ``timing_cache`` is read if it exists and written back after the build (full TensorRT only).
    Raises :class:`TrtUnavailableError` when no backend imports and :class:`TrtBuildError` for an
    unsupported request, a parser error or a failed build; nothing is written then. The ONNX is
    checked against its recorded digest first (:func:`runtime.onnx_model.check_onnx_digest`). The
    engine and its sidecar (which records the engine's size and sha256, checked by every loader)
    are written atomically after the build; an existing ``out`` is replaced (the CLI refuses that
    without ``--overwrite``).
    """
    onnx_path, out = Path(onnx_path), Path(out)
    profile = profile or BatchProfile()
    if workspace_mib < 1:
        raise TrtBuildError(f"workspace must be at least 1 MiB, got {workspace_mib}")
    meta = read_onnx_metadata(onnx_path)  # refuses missing, corrupt, or metadata-less files
    io = onnx_io(load_onnx(onnx_path))
    inp = check_io(onnx_path, io, meta)
    be = load_backend(backend)
    trt = be.module

    onnx_half = inp["dtype"] == "float16"
    fp16_flag = False
    if fp16 and not onnx_half:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise TrtBuildError(
                f"{onnx_path}: --fp16 with a float32 ONNX: {be.name} {be.version} builds strongly typed "
                "networks (no BuilderFlag.FP16); export a half-precision ONNX with "
                "`python -m export.onnx --fp16`"
            )
        fp16_flag = True
    precision = "fp16" if onnx_half or fp16_flag else "fp32"
    cache_bytes = None
    if timing_cache is not None:
        if be.name == "tensorrt_rtx":
            raise TrtBuildError(
                "--timing-cache: TensorRT-RTX has no timing cache (its timing-cache calls are no-ops); "
                "build without it or with full TensorRT"
            )
        timing_cache = Path(timing_cache)
        cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""

    t0 = time.perf_counter()
    builder, network, _parser = parse_onnx(be, onnx_path, strongly_typed=not fp16_flag)
    config = builder_config(
        be,
        builder,
        network,
        profile,
        fp16_flag=fp16_flag,
        workspace_mib=workspace_mib,
        timing_cache=cache_bytes,
        compute_capabilities=compute_capabilities,
    )
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TrtBuildError(f"{onnx_path}: {be.name} {be.version} failed to build the engine (see log above)")
    data = bytes(memoryview(plan))
    build_s = time.perf_counter() - t0
    if timing_cache is not None:
        write_bytes_atomic(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))

    # the old sidecar goes first: an interrupted write leaves no engine under a sidecar of another
    sidecar_path(out).unlink(missing_ok=True)
    write_bytes_atomic(out, data)
    side = engine_sidecar(
        meta,
        onnx_path=onnx_path,
        backend=be,
        precision=precision,
        profile=profile,
        io=network_io(network),
        workspace_mib=workspace_mib,
        timing_cache=timing_cache,
        compute_capabilities=compute_capabilities,
        engine_bytes=data,
        build_s=build_s,
    )
    write_json_atomic(sidecar_path(out), side, indent=2)
    log.info("built %s with %s %s (%s) in %.1f s", out, be.name, be.version, precision, build_s)
    return out


def engine_sidecar(
    meta: dict[str, Any],
    *,
    onnx_path: Path,
    backend: TrtModule,
    precision: str,
    profile: BatchProfile,
    io: dict[str, list[dict[str, Any]]],
    workspace_mib: int,
    timing_cache: Path | None,
    compute_capabilities: Sequence[str],
    engine_bytes: bytes,
    build_s: float,
) -> dict[str, Any]:
    """The JSON written beside the engine: what was built, from which ONNX, with what and how."""
    rest = lambda b: [b, *io["inputs"][0]["shape"][1:]]  # noqa: E731
    return {
        "format": SIDECAR_FORMAT,
        "backend": backend.name,
        "backend_version": backend.version,
        "precision": precision,
        "onnx_file": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
        "engine_bytes": len(engine_bytes),
        "batch_profile": asdict(profile),
        "input_shapes": {"min": rest(profile.min), "opt": rest(profile.opt), "max": rest(profile.max)},
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "workspace_mib": workspace_mib,
        "timing_cache": str(timing_cache) if timing_cache is not None else None,
        "compute_capabilities": [cc.upper() for cc in compute_capabilities],
        "build_seconds": round(build_s, 3),
        "spot": {k: v for k, v in meta.items() if k != "config"},
    }


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m export.trt", description="Build a TensorRT engine from a SPOT ONNX export."
    )
    ap.add_argument("onnx", help="SPOT ONNX export (python -m export.onnx)")
    ap.add_argument("--out", required=True, help="output engine (.plan); metadata goes to OUT.json")
    ap.add_argument(
        "--fp16", action="store_true", help="half precision (needs an fp16 ONNX on TensorRT 11/RTX)"
    )
    d = BatchProfile()
    ap.add_argument("--min-batch", type=int, default=d.min)
    ap.add_argument("--opt-batch", type=int, default=d.opt)
    ap.add_argument("--max-batch", type=int, default=d.max)
    ap.add_argument("--timing-cache", help="timing cache file, read if present and written back")
    ap.add_argument("--workspace-mib", type=int, default=1024, help="workspace memory pool limit (MiB)")
    ap.add_argument(
        "--backend", choices=TRT_MODULES, help="default: tensorrt if installed, else tensorrt_rtx"
    )
    ap.add_argument(
        "--compute-capability",
        action="append",
        default=[],
        help="TensorRT-RTX target, e.g. SM86 (repeatable; default: the backend's choice)",
    )
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out engine")
    add_debug_arg(ap)
    return ap


@reports_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Build; prints the engine path. Bad input or no TensorRT: one line ``error: ...``, status 2.

    The output paths are checked before the build: an existing ``--out`` is refused unless
    ``--overwrite``."""
    args = build_parser().parse_args(argv)
    setup_logging(0)
    check_output(args.out)
    check_output(sidecar_path(args.out), what="--out's sidecar")
    check_output(args.timing_cache, what="--timing-cache")
    refuse_overwrite(args.out, args.overwrite)
    out = build_engine(
        args.onnx,
        args.out,
        fp16=args.fp16,
        profile=BatchProfile(args.min_batch, args.opt_batch, args.max_batch),
        timing_cache=args.timing_cache,
        workspace_mib=args.workspace_mib,
        backend=args.backend,
        compute_capabilities=args.compute_capability,
    )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
