"""Backend sessions: one interface over eager PyTorch, torch.compile, onnxruntime and TensorRT.

A session runs the SPOT heads on windows and decodes them::

    session.forward(x)          # x: [B, C, T] float32 -> (logits [B, K+1, T], mask [B, T, T])
    session.detect(x, valid)    # -> spot_core.decode.Detections [B, D] on the CPU (decode + Soft-NMS)

Backends (:data:`runtime.backends.BACKENDS`; the runners live in :mod:`runtime.backends`):

- ``eager``: the reference, :class:`spot_core.model.SPOT` in eval mode on ``device``;
- ``compile``: :func:`runtime.compiled.compile_inference` (Inductor, ``fullgraph=True``; static
  shapes when the batch is padded, which is what CUDA graphs need);
- ``edge``: the bf16 CPU edge model, :func:`runtime.edge.bf16_cpu_model` of the checkpoint
  (oneDNN, AMX where the CPU has it; CPU only; docs/edge.md for its speed and accuracy);
- ``onnxruntime``: :class:`runtime.onnx_model.OnnxRunner` on a heads ONNX export with the CPU, CUDA or
  TensorRT execution provider (the provider must really load: onnxruntime's silent fallback to the
  CPU is refused);
- ``tensorrt``: a serialized engine (``python -m export.trt``) with its sidecar, run on a CUDA GPU.

Every backend checks the model's metadata against the runtime config before it runs anything and
refuses a mismatch, naming it (:class:`SessionError`): C, T and K, the class names, the package
version (ONNX / engine) and the graph kind (heads graphs only: the runtime decodes itself).

Batch invariance (why ``pad=True`` is the default). On a CPU, PyTorch's oneDNN convolutions give
results that depend on the batch size in the last bits (measured with random weights: up to 3.6e-7
on the toy preset's logits / mask and 1.3e-6 on the ActivityNet preset's, batches 1..63 vs 64). A
streaming runtime batches windows of many streams together, so a stream's detections would depend
on the traffic of the other streams. With ``pad=True`` every model call runs exactly
``batch_size`` windows (the rest zero-filled), and a window's outputs are the same bits whatever
else shares its batch and wherever it sits in it (tested). This costs compute when few windows are
ready: pick ``batch_size`` near the number of windows you expect per call (1 for a single live
stream).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spot_core import __version__
from spot_core.config import SpotConfig
from spot_core.decode import Detections, detect
from spot_core.errors import SpotError
from spot_core.inference import WindowDetector
from spot_core.model import SPOT

from .backends import (
    BACKENDS,
    ORT_PROVIDERS,
    BackendUnavailable,
    compile_runner,
    open_onnxruntime,
    trt_runner,
)

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "SESSION_BACKENDS",
    "CompiledSession",
    "EagerSession",
    "EdgeSession",
    "OnnxSession",
    "Session",
    "SessionError",
    "TensorRTSession",
    "check_config_matches",
    "open_session",
]

CHECKPOINT_EXTS = (".safetensors",)
ONNX_EXTS = (".onnx",)
ENGINE_EXTS = (".plan", ".engine", ".trt")


#: what :func:`open_session` (and ``python -m runtime.stream --backend``) accepts: the backend
#: families of :data:`BACKENDS` plus ``fused`` (:class:`runtime.fused.FusedSession`)
SESSION_BACKENDS = ("eager", "compile", "edge", "fused", "onnxruntime", "tensorrt")


class SessionError(SpotError, ValueError):
    """A model file that cannot be used, or does not match the runtime config. The message names it."""


def check_config_matches(
    where: str,
    cfg: SpotConfig,
    *,
    feat_dim: Any,
    num_snippets: Any,
    num_classes: Any,
    class_names: Sequence[str] | None = None,
    version: str | None = None,
    graph: str | None = None,
) -> None:
    """Raise :class:`SessionError` naming every difference between a model's metadata and ``cfg``.

    ``class_names`` are compared when both sides have them; ``version`` (the package version that
    wrote the file) and ``graph`` (must be ``heads``) when given.
    """
    m = cfg.model
    problems = []
    for label, got, want in (
        ("C (model.feat_dim)", feat_dim, m.feat_dim),
        ("T (model.num_snippets)", num_snippets, m.num_snippets),
        ("K (model.num_classes)", num_classes, m.num_classes),
    ):
        if got != want:
            problems.append(f"{label}: model {got} vs config {want}")
    if class_names and cfg.class_names and list(class_names) != list(cfg.class_names):
        problems.append("class names differ")
    if version is not None and version != __version__:
        problems.append(f"version: model {version} vs runtime {__version__}")
    if graph is not None and graph != "heads":
        problems.append(f"graph {graph!r}: the runtime needs a heads graph (export without --with-decode)")
    if problems:
        raise SessionError(f"{where}: model does not match the config: " + "; ".join(problems))


class Session:
    """Base class: batching, padding and decode around a backend's ``_run(x [b, C, T])``.

    Attributes: ``backend`` (one of :data:`BACKENDS`), ``cfg``, ``device`` (where the model runs;
    detections always come back on the CPU), ``batch_size`` (most windows per model call) and
    ``pad`` (pad every call to exactly ``batch_size`` windows: batch-invariant outputs).
    """

    backend = "base"

    def __init__(self, cfg: SpotConfig, *, device: str | torch.device, batch_size: int, pad: bool) -> None:
        if batch_size < 1:
            raise SessionError(f"batch_size must be >= 1, got {batch_size}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.pad = bool(pad)
        self.model_calls = 0  # model invocations so far (each of batch_size windows when pad)

    # ------------------------------------------------------------------ backend hook
    def _run(self, x: Tensor) -> tuple[Tensor, Tensor]:  # x: [b, C, T] float32, CPU
        raise NotImplementedError

    # ------------------------------------------------------------------ public
    @property
    def window(self) -> int:
        """T, the snippets per window (fixed by the model's mask head)."""
        return self.cfg.model.num_snippets

    @property
    def feat_dim(self) -> int:
        """C, the feature channels per snippet."""
        return self.cfg.model.feat_dim

    def _check(self, x: Tensor | np.ndarray) -> Tensor:
        x = torch.as_tensor(x)
        C, T = self.feat_dim, self.window
        if x.dim() != 3 or tuple(x.shape[1:]) != (C, T):
            raise ValueError(
                f"{self.backend} session: features must be [B, C={C}, T={T}], got {list(x.shape)}"
            )
        return x.to(torch.float32)

    @torch.no_grad()
    def forward(self, x: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """``x [B, C, T]`` -> ``(logits [B, K+1, T], mask [B, T, T])`` on :attr:`device`, float32.

        Runs in chunks of ``batch_size`` windows, each padded to ``batch_size`` when :attr:`pad`.
        """
        x = self._check(x).cpu()
        B = x.shape[0]
        outs_l, outs_m = [], []
        for i in range(0, B, self.batch_size):
            chunk = x[i : i + self.batch_size]
            b = chunk.shape[0]
            if self.pad and b < self.batch_size:
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch_size - b, *chunk.shape[1:]))])
            logits, mask = self._run(chunk.contiguous())
            self.model_calls += 1
            outs_l.append(logits[:b].float())
            outs_m.append(mask[:b].float())
        if not outs_l:
            K1, T = self.cfg.model.num_classes + 1, self.window
            return torch.zeros(0, K1, T, device=self.device), torch.zeros(0, T, T, device=self.device)
        return torch.cat(outs_l), torch.cat(outs_m)

    @torch.no_grad()
    def detect(
        self,
        x: Tensor | np.ndarray,
        valid_len: Tensor | Sequence[int] | None = None,
        *,
        video_class: Tensor | None = None,
        video_score: Tensor | None = None,
    ) -> Detections:
        """Forward, decode, deduplicate and Soft-NMS each window: :class:`Detections` ``[B, D]`` on the CPU.

        ``valid_len [B]``: real snippets per window (the rest is zero padding, masked in decode).
        ``video_class`` / ``video_score`` ``[B]``: an external window class (decode step 2).
        Segments are window-relative snippet indices ``[start, end)``.
        """
        logits, mask = self.forward(x)
        vl = None
        if valid_len is not None:
            vl = torch.as_tensor(valid_len, dtype=torch.long, device=logits.device).reshape(-1)
        if video_class is not None and video_score is not None:
            video_class, video_score = video_class.to(logits.device), video_score.to(logits.device)
        det = detect(
            logits, mask, self.cfg.decode, video_class=video_class, video_score=video_score, valid_len=vl
        )
        return Detections(*(t.cpu() for t in det))

    def window_detector(self) -> WindowDetector:
        """This session as the window detector of :func:`spot_core.inference.detect_windows`."""

        def run(x: Tensor, valid_len: Tensor, vcls: Tensor | None, vscore: Tensor | None) -> Detections:
            return self.detect(x, valid_len, video_class=vcls, video_score=vscore)

        return run

    def describe(self) -> dict[str, Any]:
        """What runs: backend, device, batch, padding (for logs and benchmark reports)."""
        return {
            "backend": self.backend,
            "device": str(self.device),
            "batch_size": self.batch_size,
            "pad": self.pad,
        }

    def __repr__(self) -> str:
        d = self.describe()
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in d.items()) + ")"


# ------------------------------------------------------------------------------------------ eager
def _check_device(device: str | torch.device) -> None:
    """A device torch knows and this machine has (:func:`spot_core.cli.check_device`), else
    :class:`SessionError` naming it."""
    from spot_core.cli import check_device

    try:
        check_device(str(device), what="device")
    except SpotError as e:
        raise SessionError(str(e)) from None


class EagerSession(Session):
    """The reference: :class:`SPOT` (a copy, eval mode, float32) on ``device``."""

    backend = "eager"

    def __init__(
        self,
        model: SPOT,
        cfg: SpotConfig,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        pad: bool = True,
    ) -> None:
        _check_device(device)
        super().__init__(cfg, device=device, batch_size=batch_size, pad=pad)
        try:
            self.net = self._build(model, cfg)
        except SessionError:
            raise
        except ValueError as e:  # CheckpointError: tensors that do not match cfg
            raise SessionError(str(e)) from None

    def _build(self, model: SPOT, cfg: SpotConfig) -> torch.nn.Module:
        from spot_core.graph import inference_graph

        return inference_graph(model, cfg).to(self.device)

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(x.to(self.device))


class CompiledSession(Session):
    """:func:`runtime.backends.compile_runner` of the model: static shapes when ``pad`` (one compile)."""

    backend = "compile"

    def __init__(
        self,
        model: SPOT,
        cfg: SpotConfig,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        pad: bool = True,
        mode: str = "default",
    ) -> None:
        _check_device(device)
        super().__init__(cfg, device=device, batch_size=batch_size, pad=pad)
        from runtime.compiled import CompileError

        try:
            self.fn = compile_runner(model, cfg, self.device, mode=mode, dynamic=not pad)
        except (CompileError, ValueError) as e:
            raise SessionError(str(e)) from None
        self.mode = mode

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.fn(x)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mode": self.mode}


class EdgeSession(EagerSession):
    """The bf16 CPU edge model (:func:`runtime.edge.bf16_cpu_model`) of the checkpoint; CPU only."""

    backend = "edge"

    def __init__(self, model: SPOT, cfg: SpotConfig, **kw: Any) -> None:
        device = kw.get("device", "cpu")
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError):
            kind = "cpu"  # not a device at all: the generic check names it
        if kind != "cpu":  # said before "no CUDA here" or "unsupported device type"
            raise SessionError(f"the edge backend runs on the CPU only, not on {device}")
        super().__init__(model, cfg, **kw)

    def _build(self, model: SPOT, cfg: SpotConfig) -> torch.nn.Module:
        from runtime.edge import bf16_cpu_model

        return bf16_cpu_model(model, cfg)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": "bf16", "chunk": self.net.chunk}


# ------------------------------------------------------------------------------------------ onnx
class OnnxSession(Session):
    """onnxruntime on a heads ONNX export; ``provider``: ``cpu``, ``cuda`` or ``tensorrt``.

    The file's metadata is checked against ``cfg`` (:func:`runtime.onnx_model.check_onnx_metadata`); a
    heads+decode graph and a provider that does not load are refused. fp16 exports get their
    features cast to float16 explicitly.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        cfg: SpotConfig,
        *,
        provider: str = "cpu",
        batch_size: int = 64,
        pad: bool = True,
        threads: int = 0,
    ) -> None:
        super().__init__(cfg, device="cpu", batch_size=batch_size, pad=pad)
        from runtime.onnx_model import OnnxModelError, check_onnx_metadata

        self.path = Path(path)
        if provider not in ORT_PROVIDERS:
            raise SessionError(
                f"unknown onnxruntime provider {provider!r}; choose from {sorted(ORT_PROVIDERS)}"
            )
        try:
            meta = check_onnx_metadata(self.path, cfg)
        except OnnxModelError as e:
            raise SessionError(str(e)) from None
        check_config_matches(
            str(self.path),
            cfg,
            feat_dim=meta.get("feat_dim"),
            num_snippets=meta.get("num_snippets"),
            num_classes=meta.get("num_classes"),
            class_names=meta.get("class_names"),
            graph=meta.get("graph"),
        )
        try:
            self.runner = open_onnxruntime(self.path, cfg, ORT_PROVIDERS[provider], threads=threads)
        except OnnxModelError as e:
            raise SessionError(str(e)) from None
        except BackendUnavailable as e:
            raise SessionError(f"{self.path}: {e}") from None
        self.provider = provider
        self.precision = meta.get("precision", "fp32")

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.runner(x.numpy(), cast=True)
        return torch.from_numpy(out["logits"]), torch.from_numpy(out["mask"])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "provider": self.provider, "precision": self.precision}


# ------------------------------------------------------------------------------------------ tensorrt
class TensorRTSession(Session):
    """A serialized TensorRT engine and its sidecar (``python -m export.trt``), on a CUDA GPU.

    The sidecar's SPOT metadata is checked against ``cfg``; ``batch_size`` must lie inside the
    engine's batch profile. Needs ``tensorrt`` (or ``tensorrt_rtx``) and a GPU: otherwise
    :class:`SessionError` says which is missing.
    """

    backend = "tensorrt"

    def __init__(self, path: str | Path, cfg: SpotConfig, *, batch_size: int = 32, pad: bool = True) -> None:
        super().__init__(cfg, device="cuda", batch_size=batch_size, pad=pad)
        from runtime.engine import read_engine_metadata
        from runtime.onnx_model import OnnxModelError

        self.path = Path(path)
        try:
            side = read_engine_metadata(self.path)
        except OnnxModelError as e:
            raise SessionError(str(e)) from None
        spot = side.get("spot", {})
        names = spot.get("class_names")
        if isinstance(names, str):
            names = json.loads(names)
        check_config_matches(
            str(self.path),
            cfg,
            feat_dim=_int(spot.get("feat_dim")),
            num_snippets=_int(spot.get("num_snippets")),
            num_classes=_int(spot.get("num_classes")),
            class_names=names,
            version=spot.get("version"),
            graph=spot.get("graph"),
        )
        prof = side.get("batch_profile", {})
        lo, hi = int(prof.get("min", 1)), int(prof.get("max", 1))
        if not lo <= batch_size <= hi and (pad or batch_size > hi):
            raise SessionError(
                f"{self.path}: batch_size {batch_size} outside the engine's profile [{lo}, {hi}]"
            )
        try:
            self.run_engine, _ = trt_runner(self.path, side)
        except BackendUnavailable as e:
            raise SessionError(f"{self.path}: {e}") from None
        self.precision = str(side.get("precision", "fp32"))

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.run_engine(x)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.precision}


def _int(v: Any) -> Any:
    try:
        return int(v)
    except (TypeError, ValueError):
        return v


# ------------------------------------------------------------------------------------------ open
def model_config(path: str | Path) -> SpotConfig:
    """The config stored with a model file: checkpoint or ONNX metadata, or the ONNX beside an engine."""
    import yaml

    from spot_core.checkpoint import CheckpointError, checkpoint_config
    from spot_core.config import ConfigError
    from spot_core.outputs import sha256_file

    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in CHECKPOINT_EXTS:
            return checkpoint_config(path)
        if suffix in ONNX_EXTS:
            from runtime.onnx_model import OnnxModelError, read_onnx_metadata

            try:
                text = read_onnx_metadata(path).get("config")
            except OnnxModelError as e:
                raise SessionError(str(e)) from None
            if not text:
                raise SessionError(f"{path}: the ONNX file stores no config; give --config or --preset")
            return SpotConfig.from_dict(yaml.safe_load(text))
        if suffix in ENGINE_EXTS:
            from runtime.engine import read_engine_metadata
            from runtime.onnx_model import OnnxModelError

            try:
                side = read_engine_metadata(path)
            except OnnxModelError as e:
                raise SessionError(str(e)) from None
            onnx_file = path.parent / str(side.get("onnx_file", ""))
            if not side.get("onnx_file") or not onnx_file.is_file():
                raise SessionError(
                    f"{path}: the engine sidecar holds no config and its ONNX ({onnx_file.name}) is not "
                    "beside it; give --config or --preset"
                )
            if side.get("onnx_sha256") and sha256_file(onnx_file) != side["onnx_sha256"]:
                raise SessionError(
                    f"{path}: {onnx_file.name} beside it is not the ONNX the engine was built from "
                    "(sha256 differs from the sidecar's); give --config or --preset"
                )
            return model_config(onnx_file)
    except CheckpointError as e:
        raise SessionError(str(e)) from None
    except (ConfigError, yaml.YAMLError, TypeError) as e:
        raise SessionError(f"{path}: stored config is invalid ({e})") from None
    raise SessionError(
        f"{path}: unknown model file type {path.suffix!r}; use .safetensors (checkpoint), .onnx or "
        f"{'/'.join(ENGINE_EXTS)} (TensorRT engine)"
    )


def open_session(
    path: str | Path,
    *,
    backend: str = "auto",
    cfg: SpotConfig | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    pad: bool = True,
    provider: str | None = None,
    compile_mode: str = "default",
    precision: str = "fp32",
    buckets: str | Sequence[int] | None = None,
) -> Session:
    """Open a session on a model file; ``backend="auto"`` picks it from the file type.

    ``.safetensors`` -> ``eager`` (or ``compile``, ``edge``: the bf16 CPU model, or ``fused``: the
    fused path with ``precision`` and batch ``buckets``, CUDA graphs on a GPU), ``.onnx`` ->
    ``onnxruntime`` (provider ``provider``, default from ``device``: ``cpu`` or ``cuda``),
    ``.plan``/``.engine`` -> ``tensorrt``. ``cfg`` defaults to the config stored with the model;
    when given, the model is checked against it and a mismatch raises :class:`SessionError`.

    Before anything runs, an ONNX file is checked against its digest file (``model.onnx.sha256``,
    written by :mod:`export.onnx`) and an engine against the size and sha256 its sidecar records;
    a mismatch is a :class:`spot_core.outputs.DigestError` naming the file. Files without a recorded
    digest load unverified. An unknown ``device``, or CUDA on a machine without it, is a
    :class:`SessionError`.
    """
    path = Path(path)
    if not path.is_file():
        raise SessionError(f"{path}: model file not found")
    _check_device(device)
    suffix = path.suffix.lower()
    if backend not in ("auto", *SESSION_BACKENDS):
        raise SessionError(
            f"unknown backend {backend!r}; choose auto or one of {', '.join(SESSION_BACKENDS)}"
        )
    kinds = {
        "eager": CHECKPOINT_EXTS,
        "compile": CHECKPOINT_EXTS,
        "edge": CHECKPOINT_EXTS,
        "fused": CHECKPOINT_EXTS,
        "onnxruntime": ONNX_EXTS,
        "tensorrt": ENGINE_EXTS,
    }
    if backend == "auto":
        backend = next((b for b, exts in kinds.items() if suffix in exts), "")
        if not backend:
            model_config(path)  # raises the unknown-type error
    elif suffix not in kinds[backend]:
        raise SessionError(f"{path}: backend {backend!r} needs a {'/'.join(kinds[backend])} file")
    if backend != "fused" and (precision != "fp32" or buckets is not None):
        raise SessionError(f"precision and buckets are settings of the fused backend, not of {backend!r}")
    stored = model_config(path)
    if cfg is None:
        cfg = stored
    else:
        check_config_matches(
            str(path),
            cfg,
            feat_dim=stored.model.feat_dim,
            num_snippets=stored.model.num_snippets,
            num_classes=stored.model.num_classes,
            class_names=stored.class_names,
        )
    if backend in ("eager", "compile", "edge", "fused"):
        from spot_core.checkpoint import CheckpointError, load_model

        try:
            model, cfg = load_model(path, cfg)
        except CheckpointError as e:
            raise SessionError(str(e)) from None
        if backend == "eager":
            return EagerSession(model, cfg, device=device, batch_size=batch_size, pad=pad)
        if backend == "edge":
            return EdgeSession(model, cfg, device=device, batch_size=batch_size, pad=pad)
        if backend == "fused":
            from .fused import FusedSession

            return FusedSession(
                model,
                cfg,
                device=device,
                batch_size=batch_size,
                pad=pad,
                precision=precision,
                buckets=buckets,
            )
        return CompiledSession(model, cfg, device=device, batch_size=batch_size, pad=pad, mode=compile_mode)
    if backend == "onnxruntime":
        prov = provider or ("cuda" if torch.device(device).type == "cuda" else "cpu")
        return OnnxSession(path, cfg, provider=prov, batch_size=batch_size, pad=pad)
    return TensorRTSession(path, cfg, batch_size=batch_size, pad=pad)
