"""ONNX export of the SPOT inference graph with the dynamo exporter, plus metadata checks and a runner.

    python -m export.onnx --checkpoint CKPT [--preset NAME | --config FILE] [--set K=V ...] \\
        --out model.onnx [--fp16] [--with-decode] [--opset 18]

Two graphs (:mod:`spot_core.graph`), one input ``features [B, C, T]`` with a dynamic batch ``B``
(C and T are fixed: T by the mask head):

- heads: outputs ``logits [B, K+1, T]`` and ``mask [B, T, T]``;
- ``--with-decode``: outputs ``segments [B, M, 2]`` float32, ``scores [B, M]`` float32,
  ``labels [B, M]`` int64 and ``valid [B, M]`` bool, the fixed-size candidate proposals of
  :func:`spot_core.decode.decode_windows`, so an engine does everything but dedup + Soft-NMS.

Output: ``--out`` and its digest file ``<out>.sha256`` (``sha256sum`` format), written atomically
once the export succeeded; every reader (the runtime's sessions, export.verify, export.trt,
export.quantize, export.serving) checks the digest before use. An existing ``--out`` is refused
unless ``--overwrite``; bad input is one line ``error: ...``, exit status 2 (``--debug``: traceback).

Precision: fp32 by default. ``--fp16`` casts the model to half before export: the input and the
heads outputs are float16 (feed half-precision features); the decode still runs in float32, so the
with-decode outputs keep the types above. Nothing else (bf16 ONNX, static batch) is offered.

Metadata (``metadata_props``, all strings): ``spot.format``, ``spot.version`` (package),
``spot.graph`` (``heads`` or ``heads+decode``), ``spot.precision``, ``spot.feat_dim`` (C),
``spot.num_snippets`` (T), ``spot.num_classes`` (K), ``spot.num_proposals`` (M, decode graphs),
``spot.class_names`` (JSON list), ``spot.config_hash`` and ``spot.config`` (YAML).
:func:`check_onnx_metadata` refuses a file whose C, T, K, class names, version or (for decode graphs)
decode settings differ from the runtime config. Every step is a small function; onnx and
onnxruntime are imported lazily.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from runtime.onnx_model import (
    FORMAT,
)
from spot_core import __version__
from spot_core.checkpoint import load_model
from spot_core.cli import add_debug_arg, reports_errors, setup_logging
from spot_core.config import SpotConfig
from spot_core.decode import num_proposals
from spot_core.errors import SpotError
from spot_core.graph import INPUT_NAME, inference_graph, output_names
from spot_core.model import SPOT
from spot_core.outputs import atomic_write, check_output, digest_path, refuse_overwrite, write_digest

log = logging.getLogger(__name__)

# reading, checking and running exports lives in runtime.onnx_model
__all__ = ["OnnxExportError", "export_onnx", "main", "save_proto"]

MIN_OPSET = 18
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


class OnnxExportError(SpotError, ValueError):
    """An ONNX export that cannot be done as asked (opset, precision, shapes)."""


# ------------------------------------------------------------------------------------------- export
def example_input(cfg: SpotConfig, *, batch: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random ``features [batch, C, T]`` (batch 2: torch specialises sizes 0 and 1)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, cfg.model.feat_dim, cfg.model.num_snippets, generator=g).to(dtype)


def export_program(graph: torch.nn.Module, example: torch.Tensor, *, with_decode: bool, opset: int) -> Any:
    """``torch.onnx.export(..., dynamo=True)`` with a dynamic batch; returns the ``ONNXProgram``."""
    if opset < MIN_OPSET:
        raise OnnxExportError(f"opset {opset} is not supported; use opset >= {MIN_OPSET}")
    batch = torch.export.Dim("batch", min=1)
    try:
        return torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(output_names(with_decode)),
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; keep its message
        raise OnnxExportError(f"torch.onnx.export (dynamo) failed: {type(e).__name__}: {e}") from e


def metadata(cfg: SpotConfig, *, with_decode: bool, precision: str) -> dict[str, str]:
    """The ``spot.*`` metadata strings stored in the ONNX model."""
    m = cfg.model
    meta = {
        "spot.format": FORMAT,
        "spot.version": __version__,
        "spot.graph": "heads+decode" if with_decode else "heads",
        "spot.precision": precision,
        "spot.feat_dim": str(m.feat_dim),
        "spot.num_snippets": str(m.num_snippets),
        "spot.num_classes": str(m.num_classes),
        "spot.class_names": json.dumps(list(cfg.class_names)),
        "spot.config_hash": cfg.config_hash(),
        "spot.config": cfg.to_yaml(),
    }
    if with_decode:
        meta["spot.num_proposals"] = str(num_proposals(cfg.decode, m.num_snippets))
    return meta


def finish_proto(proto: Any, meta: dict[str, str]) -> Any:
    """Attach metadata, check that the batch dimension stayed dynamic, run ``onnx.checker`` (full)."""
    import onnx

    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.doc_string = "SPOT temporal action detection (spot-tad), exported by export.onnx"
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        if dim0.HasField("dim_value"):
            raise OnnxExportError(f"{vi.name}: batch dimension was baked in as {dim0.dim_value}")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_proto(proto: Any, path: str | Path) -> Path:
    """Write ``proto`` atomically (:func:`spot_core.outputs.atomic_write`: temporary file in the same
    folder, fsync, rename) and its digest file ``<path>.sha256`` beside it
    (:func:`spot_core.outputs.write_digest`), which every reader checks before use
    (:func:`runtime.onnx_model.check_onnx_digest`).

    An earlier digest file is removed first, so an interrupted save never leaves a new model under
    an old digest (nor an old model under a new one): at worst a model without a digest, which
    loads unverified.
    """
    import onnx

    path = Path(path)
    digest_path(path).unlink(missing_ok=True)
    atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
    write_digest(path)
    return path


def export_onnx(
    model: SPOT,
    cfg: SpotConfig,
    path: str | Path,
    *,
    with_decode: bool = False,
    fp16: bool = False,
    opset: int = MIN_OPSET,
) -> Path:
    """Export ``model`` (checked against ``cfg``) to ``path``: heads graph, or heads + decode.

    ``fp16`` exports a half-precision graph (float16 input and heads outputs). The model is copied,
    never modified. Raises :class:`spot_core.checkpoint.CheckpointError` naming the tensors that do
    not match ``cfg`` and :class:`OnnxExportError` for an unsupported opset or a failed export.
    The file (and its digest ``<path>.sha256``, :func:`save_proto`) is written only once the export
    succeeded; an existing file is replaced (the CLI refuses that without ``--overwrite``).
    """
    path = Path(path)
    precision = "fp16" if fp16 else "fp32"
    dtype = PRECISIONS[precision]
    graph = inference_graph(model, cfg, with_decode=with_decode, dtype=dtype)
    device = next(graph.parameters()).device
    t0 = time.perf_counter()
    program = export_program(
        graph, example_input(cfg, dtype=dtype).to(device), with_decode=with_decode, opset=opset
    )
    proto = finish_proto(program.model_proto, metadata(cfg, with_decode=with_decode, precision=precision))
    save_proto(proto, path)
    dt = time.perf_counter() - t0
    log.info("exported %s (%s, %s) in %.1f s", path, precision, meta_graph(with_decode), dt)
    return path


def meta_graph(with_decode: bool) -> str:
    return "heads+decode" if with_decode else "heads"


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from spot_core.cli import add_config_args

    ap = argparse.ArgumentParser(
        prog="python -m export.onnx", description="Export a SPOT checkpoint to ONNX (dynamo exporter)."
    )
    ap.add_argument("--checkpoint", required=True, help="model checkpoint (.safetensors)")
    ap.add_argument("--out", required=True, help="output .onnx file")
    ap.add_argument("--fp16", action="store_true", help="half-precision graph (float16 input and heads)")
    ap.add_argument("--with-decode", action="store_true", help="append the fixed-size decode (no NMS)")
    ap.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_config_args(ap, default_preset=None)
    add_debug_arg(ap)
    return ap


@reports_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Export; prints the output path. Bad input: one line ``error: ...`` and exit status 2.

    ``--out`` is checked before the checkpoint loads: an existing file is refused unless
    ``--overwrite``, a folder or an unwritable place always."""
    args = build_parser().parse_args(argv)
    setup_logging(0)
    check_output(args.out)
    refuse_overwrite(args.out, args.overwrite)
    if args.opset < MIN_OPSET:
        raise OnnxExportError(f"--opset {args.opset} is not supported; use opset >= {MIN_OPSET}")
    cfg = None
    if args.config or args.preset:
        from spot_core.cli import config_from_args

        cfg = config_from_args(args)
    elif args.overrides:
        from spot_core.checkpoint import checkpoint_config

        cfg = checkpoint_config(args.checkpoint).override(args.overrides)
    model, cfg = load_model(args.checkpoint, cfg)
    out = export_onnx(model, cfg, args.out, with_decode=args.with_decode, fp16=args.fp16, opset=args.opset)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
