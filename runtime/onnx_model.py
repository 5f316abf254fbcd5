"""Reading and running SPOT ONNX exports (written by :mod:`export.onnx`): load and check a file,
read its SPOT metadata, check it against a config, run it with onnxruntime (:class:`OnnxRunner`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from spot_core import __version__
from spot_core.config import ConfigError, SpotConfig
from spot_core.decode import num_proposals
from spot_core.errors import SpotError
from spot_core.outputs import DigestError, digest_path, verify_digest

__all__ = [
    "FORMAT",
    "GRAPH_DECODE_FIELDS",
    "OnnxModelError",
    "OnnxRunner",
    "check_onnx_digest",
    "check_onnx_metadata",
    "load_onnx",
    "read_onnx_metadata",
]

FORMAT = "spot-onnx-v1"
# the decode settings that decode_windows reads (the rest, NMS and max_detections, stay outside the graph)
GRAPH_DECODE_FIELDS = (
    "top_k",
    "mask_thresholds",
    "class_thresholds",
    "min_len_frac",
    "mask_segment",
    "class_mode",
)
_NP_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


class OnnxModelError(SpotError, ValueError):
    """An ONNX file that is missing, corrupt, not a SPOT export, or does not match the config."""


# ------------------------------------------------------------------------------------------- read
def check_onnx_digest(path: str | Path) -> bool:
    """Check ``path`` against the digest file :mod:`export.onnx` wrote beside it (``<file>.sha256``).

    True when it matches; False when no digest is recorded (files written before digests existed,
    or by other tools: they load unverified); :class:`spot_core.outputs.DigestError` naming the file
    when it does not match (truncated, bit-flipped, or replaced without its digest).
    """
    path = Path(path)
    try:
        return verify_digest(path)
    except DigestError as e:
        raise DigestError(
            f"{e}; re-export it, or delete {digest_path(path).name} if the change was intended"
        ) from None


def load_onnx(path: str | Path) -> Any:
    """``onnx.ModelProto`` of ``path``, checked against its recorded digest (:func:`check_onnx_digest`;
    a file without one loads unverified) and structurally; a clear :class:`OnnxModelError` (or
    :class:`spot_core.outputs.DigestError`) otherwise."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"{path}: ONNX file not found")
    check_onnx_digest(path)
    try:
        proto = onnx.load_model(str(path))
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError, ValidationError, OSError ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise OnnxModelError(
            f"{path}: corrupt or truncated ONNX file ({type(e).__name__}: {first})"
        ) from None
    if not proto.graph.node:
        raise OnnxModelError(f"{path}: corrupt or truncated ONNX file (empty graph)")
    return proto


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The SPOT metadata of an ONNX export, typed: ints for C/T/K/M, a list for class names."""
    path = Path(path)
    props = {p.key: p.value for p in load_onnx(path).metadata_props}
    if props.get("spot.format") != FORMAT:
        raise OnnxModelError(
            f"{path}: not a SPOT ONNX export (format {props.get('spot.format')!r}, expected {FORMAT!r})"
        )
    try:
        meta: dict[str, Any] = {k.removeprefix("spot."): v for k, v in props.items() if k.startswith("spot.")}
        for k in ("feat_dim", "num_snippets", "num_classes", "num_proposals"):
            if k in meta:
                meta[k] = int(meta[k])
        meta["class_names"] = json.loads(meta.get("class_names", "[]"))
    except (ValueError, TypeError) as e:
        raise OnnxModelError(f"{path}: unreadable SPOT metadata ({e})") from None
    return meta


def check_onnx_metadata(path: str | Path, cfg: SpotConfig, *, version: str = __version__) -> dict[str, Any]:
    """Raise :class:`OnnxModelError` naming every mismatch between ``path``'s metadata and ``cfg``.

    Checked: C (``feat_dim``), T (``num_snippets``), K (``num_classes``), class names (when both
    have them), package version, and for decode graphs the decode settings and M. A different
    config hash alone (e.g. other training settings) is not an error. Returns the metadata.
    """
    meta = read_onnx_metadata(path)
    m = cfg.model
    problems = []
    for key, label, want in (
        ("feat_dim", "C (model.feat_dim)", m.feat_dim),
        ("num_snippets", "T (model.num_snippets)", m.num_snippets),
        ("num_classes", "K (model.num_classes)", m.num_classes),
    ):
        if meta.get(key) != want:
            problems.append(f"{label}: file {meta.get(key)} vs config {want}")
    if meta.get("version") != version:
        problems.append(f"version: file {meta.get('version')} vs runtime {version}")
    if cfg.class_names and meta["class_names"] and list(cfg.class_names) != meta["class_names"]:
        problems.append("class names differ")
    if meta.get("graph") == "heads+decode":
        import yaml

        try:
            stored = SpotConfig.from_dict(yaml.safe_load(meta.get("config", "")))
        except (ConfigError, yaml.YAMLError, TypeError) as e:
            problems.append(f"stored config unreadable ({e})")
        else:
            diff = [
                f"decode.{k}"
                for k in GRAPH_DECODE_FIELDS
                if getattr(stored.decode, k) != getattr(cfg.decode, k)
            ]
            if diff:
                problems.append(f"decode settings baked into the graph differ: {', '.join(diff)}")
        want_m = num_proposals(cfg.decode, m.num_snippets)
        if meta.get("num_proposals") != want_m:
            problems.append(f"M (proposals): file {meta.get('num_proposals')} vs config {want_m}")
    if problems:
        raise OnnxModelError(f"{path}: ONNX model does not match the config: " + "; ".join(problems))
    return meta


# ------------------------------------------------------------------------------------------- run
class OnnxRunner:
    """onnxruntime session of a SPOT export: ``runner(features) -> {output name: numpy array}``.

    ``cfg`` (optional) is checked with :func:`check_onnx_metadata` first. Features must have the
    graph's input dtype (float32, or float16 for fp16 exports) unless ``cast=True`` is passed to
    :meth:`__call__`, which casts explicitly.
    """

    def __init__(
        self,
        path: str | Path,
        cfg: SpotConfig | None = None,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.meta = check_onnx_metadata(self.path, cfg) if cfg is not None else read_onnx_metadata(self.path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=list(providers))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise OnnxModelError(f"{self.path}: onnxruntime cannot load the model ({e})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = _NP_TYPES[inp.type]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, features: Any, *, cast: bool = False) -> dict[str, Any]:
        import numpy as np

        x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        if x.dtype != self.input_dtype:
            if not cast:
                raise ValueError(
                    f"{self.path}: input must be {self.input_dtype}, got {x.dtype} (cast=True converts)"
                )
            x = x.astype(self.input_dtype)
        c, t = self.meta["feat_dim"], self.meta["num_snippets"]
        if x.ndim != 3 or x.shape[1:] != (c, t):
            raise ValueError(f"{self.path}: features must be [B, C={c}, T={t}], got {list(x.shape)}")
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: x}), strict=True))
