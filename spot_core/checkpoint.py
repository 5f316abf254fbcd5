"""Safe checkpoints: model weights in safetensors, resume state loadable with ``weights_only=True``.

A model checkpoint is one ``.safetensors`` file whose metadata holds the config (YAML), the package
version and free-form training facts (epoch, metric). Loading never unpickles anything: safetensors
for weights, ``torch.load(weights_only=True)`` for the optimiser/RNG state used by ``--resume``.
Every write goes to a temporary file in the same folder, is flushed to disk and renamed into place,
so a crash never leaves a half-written checkpoint under the final name.

Integrity: a model checkpoint's metadata holds ``weights_sha256``, a digest of every tensor (name,
dtype, shape, bytes), checked on load; a resume state is stored as its serialized bytes plus their
sha256, checked before they are deserialized. A truncated or modified file is reported as a
:class:`CheckpointError`, never loaded. (Files written before these digests existed load without
the check.)
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import ConfigError, SpotConfig
from .errors import SpotError
from .model import SPOT
from .outputs import atomic_write, sha256_file, write_bytes_atomic  # noqa: F401 (re-exported)

FORMAT = "spot-checkpoint-v1"
STATE_FORMAT = "spot-train-state-v2"  # serialized state bytes + their sha256


class CheckpointError(SpotError, ValueError):
    """A checkpoint file is missing, corrupt or does not match the configuration."""


def save_model(path: str | Path, model: SPOT, cfg: SpotConfig, **facts: Any) -> Path:
    """Write the model weights and config atomically to ``path`` (.safetensors)."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "version": __version__,
        "config": cfg.to_yaml(),
        "weights_sha256": _digest(tensors),
    }
    meta.update({k: str(v) for k, v in facts.items()})
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order: name, dtype, shape and raw bytes of each."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a checkpoint (config YAML, version, facts) without loading weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a SPOT checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})"
        )
    return meta


def checkpoint_config(path: str | Path) -> SpotConfig:
    """The config stored in a checkpoint."""
    import yaml

    meta = read_metadata(path)
    try:
        return SpotConfig.from_dict(yaml.safe_load(meta["config"]))
    except (KeyError, ConfigError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: stored config is invalid: {e}") from None


def load_model(
    path: str | Path, cfg: SpotConfig | None = None, map_location: str = "cpu"
) -> tuple[SPOT, SpotConfig]:
    """Load a checkpoint into a fresh :class:`SPOT` in eval mode.

    ``cfg`` defaults to the config stored in the file; when given, every tensor is checked against
    the model it describes and mismatches are named.
    """
    path = Path(path)
    stored = checkpoint_config(path)
    cfg = stored if cfg is None else cfg
    model = SPOT(cfg.model)
    try:
        tensors = load_file(str(path), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({e})") from None
    want = read_metadata(path).get("weights_sha256")
    if want is not None and _digest(tensors) != want:
        raise CheckpointError(f"{path}: corrupt checkpoint (weights checksum mismatch)")
    check_state(model.state_dict(), tensors, str(path))
    model.load_state_dict(tensors)
    model.eval()
    return model, cfg


def check_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`CheckpointError` naming every missing, unexpected or mis-shaped tensor."""
    problems = []
    for k in sorted(set(expected) - set(got)):
        problems.append(f"missing {k} {list(expected[k].shape)}")
    for k in sorted(set(got) - set(expected)):
        problems.append(f"unexpected {k} {list(got[k].shape)}")
    for k in sorted(set(expected) & set(got)):
        if expected[k].shape != got[k].shape:
            problems.append(f"{k}: checkpoint {list(got[k].shape)} vs config {list(expected[k].shape)}")
    if problems:
        raise CheckpointError(f"{where}: checkpoint does not match the config: " + "; ".join(problems))


def save_train_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically save optimiser/scheduler/RNG state (plain tensors, numbers, strings, dicts only)."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    wrapped = {
        "format": STATE_FORMAT,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    atomic_write(path, lambda tmp: torch.save(wrapped, tmp))
    return path


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Load resume state with ``weights_only=True`` (never unpickles arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: resume state not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not (isinstance(obj, dict) and obj.get("format") == STATE_FORMAT):
            return obj  # written before the checksummed format
        payload = obj["payload"].numpy().tobytes()
        if hashlib.sha256(payload).hexdigest() != obj.get("sha256"):
            raise CheckpointError(f"{path}: corrupt resume state (checksum mismatch)")
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointError(f"{path}: corrupt or unsafe resume state ({type(e).__name__}: {e})") from None
