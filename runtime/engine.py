"""Loading serialized TensorRT engines (built by :mod:`export.trt`): the TensorRT Python module
(``tensorrt``, or ``tensorrt_rtx`` from PyPI's ``tensorrt-rtx``, imported lazily) and the engine's
metadata sidecar.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.onnx_model import OnnxModelError
from spot_core.errors import SpotError
from spot_core.outputs import DigestError, verify_digest

__all__ = [
    "INSTALL_HINT",
    "SIDECAR_FORMAT",
    "TRT_MODULES",
    "TrtBuildError",
    "TrtModule",
    "TrtUnavailableError",
    "check_engine_digest",
    "load_backend",
    "read_engine_metadata",
    "sidecar_path",
]

SIDECAR_FORMAT = "spot-trt-v1"
TRT_MODULES = ("tensorrt", "tensorrt_rtx")  # order of preference
INSTALL_HINT = (
    "install TensorRT (pip install tensorrt, NVIDIA GPU machines) or TensorRT-RTX "
    "(pip install tensorrt-rtx, builds ahead of time without a GPU)"
)


class TrtUnavailableError(SpotError, RuntimeError):
    """Neither ``tensorrt`` nor ``tensorrt_rtx`` can be imported (or the one asked for cannot)."""


class TrtBuildError(SpotError, ValueError):
    """A build that cannot be done as asked: unsupported option, parser error, failed build."""


@dataclass(frozen=True)
class TrtModule:
    """The TensorRT Python module in use: ``module`` is ``tensorrt`` or ``tensorrt_rtx``."""

    name: str
    module: Any

    @property
    def version(self) -> str:
        return str(getattr(self.module, "__version__", "unknown"))


def load_backend(name: str | None = None) -> TrtModule:
    """Import ``name``, or the first importable of :data:`TRT_MODULES`; else :class:`TrtUnavailableError`."""
    if name is not None and name not in TRT_MODULES:
        raise TrtBuildError(f"unknown backend {name!r}; choose from {', '.join(TRT_MODULES)}")
    errors = []
    for candidate in (name,) if name else TRT_MODULES:
        try:
            return TrtModule(candidate, importlib.import_module(candidate))
        except (ImportError, OSError) as e:  # not installed, or its shared libraries fail to load
            errors.append(f"{candidate}: {e}")
    raise TrtUnavailableError(f"no TensorRT Python module available ({'; '.join(errors)}); {INSTALL_HINT}")


def sidecar_path(engine: str | Path) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_engine_metadata(engine: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The sidecar of ``engine``; :class:`OnnxModelError` when missing, unreadable or of another format.

    With ``verify`` (the default) the engine is checked against the size and sha256 the sidecar
    records (:func:`check_engine_digest`) before anything uses it: a truncated or modified engine is
    a :class:`spot_core.outputs.DigestError` naming it. A sidecar that records neither (written by
    other tools) lets the engine load unverified.
    """
    engine = Path(engine)
    if not engine.is_file():
        raise OnnxModelError(f"{engine}: engine file not found")
    side = sidecar_path(engine)
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise OnnxModelError(f"{side}: missing or unreadable engine sidecar ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise OnnxModelError(f"{side}: not a SPOT engine sidecar (expected format {SIDECAR_FORMAT!r})")
    if verify:
        check_engine_digest(engine, meta)
    return meta


def check_engine_digest(engine: str | Path, side: dict[str, Any], data: bytes | None = None) -> bool:
    """Check ``engine`` (or its bytes ``data``, as read for deserializing) against the sidecar's
    ``engine_bytes`` and ``engine_sha256``: True when they match, False when the sidecar records
    neither, :class:`spot_core.outputs.DigestError` naming the engine otherwise."""
    engine = Path(engine)
    size, sha = side.get("engine_bytes"), side.get("engine_sha256")
    if size is None and sha is None:
        return False
    if data is None:
        return verify_digest(engine, sha, size=size)
    if size is not None and len(data) != size:
        raise DigestError(f"{engine}: {len(data)} bytes, the recorded size is {size} (truncated or replaced)")
    if sha is not None and hashlib.sha256(data).hexdigest() != str(sha).lower():
        raise DigestError(f"{engine}: sha256 does not match the recorded digest (file modified or corrupt)")
    return True
