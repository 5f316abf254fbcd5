"""The inference backends: one registry of names and one runner per backend (DESIGN.md section 7).

A runner is a function ``features [B, C, T] float32 -> (logits [B, K+1, T], mask [B, T, T])``.
:mod:`runtime.session` wraps them in sessions (batching, padding, decode, config checks) and
:mod:`export.verify` compares what they return with eager fp32. Heavy dependencies (onnxruntime,
TensorRT, Inductor) are imported when a runner is built, never at import time.

Backends (:data:`BACKENDS`):

- ``eager``: :class:`spot_core.model.SPOT` in eval mode (:func:`eager_runner`; also cast to bf16 /
  fp16, or under ``torch.autocast``: :func:`autocast_runner`);
- ``compile``: :func:`runtime.compiled.compile_inference`, Inductor, ``fullgraph=True``
  (:func:`compile_runner`);
- ``edge``: the bf16 CPU edge model :func:`runtime.edge.bf16_cpu_model` (:func:`edge_runner`);
- ``onnxruntime``: a SPOT ONNX export (fp32, fp16 or int8) on one of :data:`ORT_PROVIDERS`
  (:func:`ort_runner`); the provider must really load: onnxruntime's silent fallback to the CPU
  is refused;
- ``tensorrt``: a serialized engine with its sidecar, on a CUDA GPU (:func:`trt_runner`).

A backend that cannot run here raises :class:`BackendUnavailable`, whose message says why.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from spot_core.config import SpotConfig
from spot_core.errors import SpotError
from spot_core.graph import inference_graph
from spot_core.model import SPOT

__all__ = [
    "BACKENDS",
    "DTYPES",
    "ORT_PROVIDERS",
    "BackendUnavailable",
    "Runner",
    "autocast_runner",
    "compile_runner",
    "eager_runner",
    "edge_runner",
    "open_onnxruntime",
    "ort_runner",
    "trt_runner",
]

#: the backend names, the one registry (sessions, ``python -m runtime.stream``, ``export.verify``)
BACKENDS = ("eager", "compile", "edge", "onnxruntime", "tensorrt")
#: onnxruntime execution providers by short name
ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

Runner = Callable[[Tensor], tuple[Tensor, Tensor]]  # features [B, C, T] fp32 -> logits, mask


class BackendUnavailable(SpotError):
    """A backend that cannot run here (a module, provider or GPU missing); the message says which."""


def eager_runner(model: SPOT, cfg: SpotConfig, precision: str, device: torch.device) -> Runner:
    """The model cast to ``precision`` on ``device`` (a copy), fed features in that dtype."""
    dtype = DTYPES[precision]
    net = inference_graph(model, cfg, dtype=dtype).to(device)

    @torch.no_grad()
    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        return net(x.to(device, dtype))

    return run


def autocast_runner(model: SPOT, cfg: SpotConfig, precision: str, device: torch.device) -> Runner:
    """The fp32 model under ``torch.autocast(device, dtype)`` (fp32 features in)."""
    dtype = DTYPES[precision]
    net = inference_graph(model, cfg).to(device)

    @torch.no_grad()
    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(device.type, dtype=dtype):
            return net(x.to(device))

    return run


def edge_runner(model: SPOT, cfg: SpotConfig, precision: str) -> Runner:
    """:func:`runtime.edge.bf16_cpu_model` in ``precision`` on the CPU (fp32 features in, fp32 out)."""
    from runtime.edge import bf16_cpu_model

    net = bf16_cpu_model(model, cfg, DTYPES[precision])

    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        return net(x.cpu())

    return run


def compile_runner(
    model: SPOT, cfg: SpotConfig, device: torch.device, *, mode: str = "default", dynamic: bool = True
) -> Runner:
    """:func:`runtime.compiled.compile_inference` of a copy of the model on ``device``
    (:class:`runtime.compiled.CompileError` for an unsupported mode / device)."""
    from runtime.compiled import compile_inference

    fn = compile_inference(copy.deepcopy(model).to(device), cfg, mode=mode, dynamic=dynamic)

    @torch.no_grad()
    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        return fn(x.to(device))

    return run


def open_onnxruntime(path: Path, cfg: SpotConfig | None, provider: str, *, threads: int = 0) -> Any:
    """A :class:`runtime.onnx_model.OnnxRunner` on execution provider ``provider`` (a value of
    :data:`ORT_PROVIDERS`); :class:`BackendUnavailable` when onnxruntime lacks it or it does not load."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailable(f"onnxruntime is not installed ({e})") from None
    have = ort.get_available_providers()
    if provider not in have:
        raise BackendUnavailable(
            f"onnxruntime {ort.__version__} has no {provider} (available: {', '.join(have)})"
        )
    from runtime.onnx_model import OnnxRunner

    r = OnnxRunner(path, cfg, providers=[provider], intra_op_threads=threads)
    active = r.session.get_providers()
    if active[0] != provider:  # onnxruntime falls back to the CPU silently when a provider fails
        raise BackendUnavailable(f"{provider} did not load (session providers: {', '.join(active)})")
    return r


def ort_runner(path: Path, cfg: SpotConfig, provider: str, *, threads: int = 0) -> tuple[Runner, str]:
    """onnxruntime on ``provider`` (:func:`open_onnxruntime`); ``(runner, precision of the graph)``."""
    r = open_onnxruntime(path, cfg, provider, threads=threads)

    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        out = r(x, cast=True)
        return torch.from_numpy(out["logits"]), torch.from_numpy(out["mask"])

    return run, r.meta.get("precision", "fp32")


def trt_runner(engine: Path, side: dict[str, Any]) -> tuple[Runner, int]:
    """A TensorRT execution context on the GPU; ``(runner, max batch of the engine's profile)``.

    The bytes deserialized are the ones checked against the sidecar's size and sha256
    (:func:`runtime.engine.check_engine_digest`)."""
    from runtime.engine import TrtUnavailableError, check_engine_digest, load_backend

    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA GPU visible to torch: a TensorRT engine can only run on a GPU")
    try:
        be = load_backend(side.get("backend"))
    except TrtUnavailableError as e:
        raise BackendUnavailable(str(e)) from None
    trt = be.module
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    data = engine.read_bytes()
    check_engine_digest(engine, side, data)
    eng = runtime.deserialize_cuda_engine(data)
    if eng is None:
        raise RuntimeError(f"{engine}: {be.name} {be.version} cannot deserialize the engine")
    ctx = eng.create_execution_context()
    tdt = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16}

    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        xin = x.to("cuda", tdt[eng.get_tensor_dtype("features").name]).contiguous()
        ctx.set_input_shape("features", tuple(xin.shape))
        ctx.set_tensor_address("features", xin.data_ptr())
        outs = []
        for name in ("logits", "mask"):
            t = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=tdt[eng.get_tensor_dtype(name).name])
            t = t.to("cuda")
            ctx.set_tensor_address(name, t.data_ptr())
            outs.append(t)
        stream = torch.cuda.current_stream()
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{engine}: execute_async_v3 failed")
        stream.synchronize()
        return outs[0], outs[1]

    return run, int(side.get("batch_profile", {}).get("max", 1))
