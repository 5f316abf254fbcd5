"""The fused session: model + :mod:`kernels.pipeline` in the runtime, CUDA graphs per batch bucket.

:class:`FusedSession` (backend ``fused``) runs :func:`kernels.pipeline.fused_detect` behind the
:class:`runtime.session.Session` interface, so :class:`runtime.detector.StreamDetector`,
:func:`runtime.offline.offline_detect` and ``python -m runtime.stream --backend fused`` use it
unchanged. Features in, detections out: the ``[B, T, T]`` mask is never formed and nothing comes
back to the host until the final detections.

- **Buckets.** A model call of ``b`` windows is padded (zero windows) to the smallest bucket
  ``>= b`` (default: one bucket, ``batch_size``). One bucket keeps the session batch-invariant: a
  window's detections are the same bits whatever shares its batch, which is what makes a stream's
  output equal to the stream run alone (``StreamDetector.close`` == ``offline_detect``, exactly).
  Several buckets (e.g. ``1, 8, 64, 1024``) cut the latency of a lone window on a GPU, at the price
  of that invariance: a window's bits may depend on which bucket ran it (matrix kernels are chosen
  per shape); the detections then agree to float32 rounding (``tests/test_runtime_fused.py``).
- **CUDA graphs.** On CUDA (``cuda_graphs``, default on there), each bucket's whole path is
  captured once, when the session opens, with static input buffers; a call copies its windows in,
  replays the graph and copies the detections out. A capture that fails is a :class:`SessionError`
  when the session opens, never a silent eager fallback. Calls with an external window class
  (``video_class``) run the path eagerly (the graphs are captured without it).
- **Precision.** ``fp32`` or ``bf16`` (autocast over the model part; the kernels upcast). The
  mask rows come from the kernel's float32 dot product, so the detections equal the eager
  session's to float32 rounding (fp32), not bit for bit (kernels/pipeline.py's docstring).

On a CPU the same session runs the PyTorch references of the kernels (``kernels="auto"``), so it
is tested without a GPU; ``TRITON_INTERPRET=1`` with ``kernels="triton"`` runs the Triton kernels
in the interpreter.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from kernels._triton import Backend
from kernels.pipeline import fused_detect
from spot_core.config import SpotConfig
from spot_core.decode import Detections
from spot_core.graph import check_model_matches
from spot_core.model import SPOT

from .session import Session, SessionError, _check_device

__all__ = ["FusedSession", "parse_buckets"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def parse_buckets(spec: str | Sequence[int] | None, batch_size: int) -> tuple[int, ...]:
    """Bucket sizes from ``"1,8,64"`` or a sequence: sorted, unique, each in ``[1, batch_size]``;
    ``batch_size`` is always one of them (None: only it). A bad value is a :class:`SessionError`."""
    if spec is None:
        return (batch_size,)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    sizes = set()
    for it in items:
        try:
            n = int(str(it).strip())
        except ValueError:
            raise SessionError(f"buckets: {it!r} is not an integer (e.g. --buckets 1,8,64)") from None
        if not 1 <= n <= batch_size:
            raise SessionError(f"buckets: {n} is outside [1, batch_size={batch_size}]")
        sizes.add(n)
    sizes.add(batch_size)
    return tuple(sorted(sizes))


class _Graph:
    """One bucket's fused path captured as a CUDA graph over static input buffers."""

    def __init__(self, fn: Any, batch: int, feat_dim: int, window: int, device: torch.device) -> None:
        self.x = torch.zeros(batch, feat_dim, window, device=device)
        self.valid = torch.full((batch,), window, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: kernel compilation and allocator pools
            for _ in range(3):
                fn(self.x, self.valid)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out: Detections = fn(self.x, self.valid)
        torch.cuda.synchronize(device)

    def run(self, x: Tensor, valid: Tensor) -> Detections:
        self.x.copy_(x, non_blocking=True)
        self.valid.copy_(valid, non_blocking=True)
        self.graph.replay()
        return self.out


class FusedSession(Session):
    """:func:`kernels.pipeline.fused_detect` as a runtime session (module docstring).

    Args:
        model, cfg: the checkpoint's model and config (checked against each other).
        device: where the model and kernels run; detections come back on the CPU.
        batch_size: most windows per model call (the largest bucket).
        pad: pad each call to its bucket (False: run exactly the windows given; no graphs).
        precision: ``fp32`` or ``bf16``.
        buckets: extra bucket sizes below ``batch_size`` (:func:`parse_buckets`).
        cuda_graphs: capture each bucket (default: on CUDA with ``pad``).
        kernels: the kernels' backend (``auto``: Triton on CUDA, the PyTorch reference on CPU).
    """

    backend = "fused"

    def __init__(
        self,
        model: SPOT,
        cfg: SpotConfig,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        pad: bool = True,
        precision: str = "fp32",
        buckets: str | Sequence[int] | None = None,
        cuda_graphs: bool | None = None,
        kernels: Backend = "auto",
    ) -> None:
        _check_device(device)
        super().__init__(cfg, device=device, batch_size=batch_size, pad=pad)
        if precision not in PRECISIONS:
            raise SessionError(f"fused session: precision {precision!r}; choose {', '.join(PRECISIONS)}")
        try:
            check_model_matches(model, cfg)
        except ValueError as e:
            raise SessionError(str(e)) from None
        self.precision = precision
        self.buckets = parse_buckets(buckets, self.batch_size)
        self.kernels = kernels
        on_cuda = self.device.type == "cuda"
        self.cuda_graphs = (on_cuda and self.pad) if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and not on_cuda:
            raise SessionError(f"fused session: CUDA graphs need a CUDA device, got {self.device}")
        if self.cuda_graphs and not self.pad:
            raise SessionError("fused session: CUDA graphs need pad=True (static batch shapes)")
        net = copy.deepcopy(model).eval().float().to(self.device)
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self._graphs: dict[int, _Graph] = {}
        if self.cuda_graphs:
            C, T = self.feat_dim, self.window
            for b in self.buckets:
                try:
                    self._graphs[b] = _Graph(self._path, b, C, T, self.device)
                except Exception as e:  # a capture that fails is reported at open, not hidden
                    raise SessionError(
                        f"fused session: CUDA graph capture of bucket {b} failed: {type(e).__name__}: {e}"
                    ) from e

    # ------------------------------------------------------------------ the path
    def _autocast(self) -> Any:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=dtype)

    def _path(
        self, x: Tensor, valid: Tensor, vcls: Tensor | None = None, vscore: Tensor | None = None
    ) -> Detections:
        with torch.no_grad(), self._autocast():
            return fused_detect(
                self.net, x, self.cfg.decode,
                video_class=vcls, video_score=vscore, valid_len=valid, backend=self.kernels,
            )  # fmt: skip

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor]:  # forward(): the heads, for comparisons
        with self._autocast():
            return self.net(x.to(self.device))

    def bucket(self, b: int) -> int:
        """The batch a call of ``b`` windows runs at (``b`` itself without padding)."""
        if not self.pad:
            return b
        return next(s for s in self.buckets if s >= b)

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def detect(
        self,
        x: Tensor | Any,
        valid_len: Tensor | Sequence[int] | None = None,
        *,
        video_class: Tensor | None = None,
        video_score: Tensor | None = None,
    ) -> Detections:
        """Features ``[B, C, T]`` -> :class:`Detections` ``[B, D]`` on the CPU (:meth:`Session.detect`)."""
        x = self._check(x).cpu()
        B, T = x.shape[0], self.window
        if valid_len is None:
            vl = torch.full((B,), T, dtype=torch.long)
        else:
            vl = torch.as_tensor(valid_len, dtype=torch.long).reshape(-1).cpu()
            if vl.shape[0] != B:
                raise ValueError(f"fused session: valid_len has {vl.shape[0]} entries for {B} windows")
        external = video_class is not None and video_score is not None
        parts: list[Detections] = []
        for i in range(0, B, self.batch_size):
            xb, vb = x[i : i + self.batch_size], vl[i : i + self.batch_size]
            b = xb.shape[0]
            size = self.bucket(b)
            if size > b:
                xb = torch.cat([xb, xb.new_zeros((size - b, *xb.shape[1:]))])
                vb = torch.cat([vb, vb.new_full((size - b,), T)])
            if external:
                vc = video_class.reshape(-1)[i : i + b].to(self.device)
                vs = video_score.reshape(-1)[i : i + b].to(self.device)
                if size > b:
                    vc = torch.cat([vc, vc.new_zeros(size - b)])
                    vs = torch.cat([vs, vs.new_zeros(size - b)])
                det = self._path(xb.to(self.device), vb.to(self.device), vc, vs)
            elif size in self._graphs:
                det = self._graphs[size].run(xb, vb)
            else:
                det = self._path(xb.contiguous().to(self.device), vb.to(self.device))
            self.model_calls += 1
            parts.append(Detections(*(t[:b].cpu() for t in det)))
        if not parts:  # B == 0: the shapes of one window's detections, no rows
            one = self._path(
                x.new_zeros((1, *x.shape[1:])).to(self.device), vl.new_full((1,), T).to(self.device)
            )
            return Detections(*(t[:0].cpu() for t in one))
        return Detections(*(torch.cat(ts) for ts in zip(*parts, strict=True)))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "precision": self.precision,
            "buckets": list(self.buckets),
            "cuda_graphs": self.cuda_graphs,
        }
