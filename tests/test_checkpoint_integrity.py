"""Checkpoint integrity: a modified (not only truncated) weights file or resume state is refused."""

from __future__ import annotations

import pytest
import torch

from spot_core import checkpoint as ckpt
from spot_core.config import SpotConfig
from spot_core.model import SPOT


def _flip(path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01  # one bit inside the tensor data (safetensors puts it last)
    path.write_bytes(bytes(data))


def test_weights_checksum(tmp_path) -> None:
    cfg = SpotConfig.preset("toy")
    torch.manual_seed(0)
    model = SPOT(cfg.model)
    path = ckpt.save_model(tmp_path / "m.safetensors", model, cfg)
    assert len(ckpt.read_metadata(path)["weights_sha256"]) == 64
    loaded, _ = ckpt.load_model(path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    )
    _flip(path, 100)
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch"):
        ckpt.load_model(path)


def test_resume_state_checksum(tmp_path) -> None:
    state = {"epoch": 3, "model": {"w": torch.arange(1000.0)}, "history": [{"loss": 0.5}]}
    path = ckpt.save_train_state(tmp_path / "s.pt", state)
    got = ckpt.load_train_state(path)
    assert got["epoch"] == 3 and torch.equal(got["model"]["w"], state["model"]["w"])
    raw = bytearray(path.read_bytes())
    i = raw.find(bytes(torch.tensor([500.0]).numpy().tobytes()))  # inside the stored payload
    assert i > 0
    raw[i] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match=r"s\.pt: corrupt"):
        ckpt.load_train_state(path)


def test_states_written_before_checksums_still_load(tmp_path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"epoch": 1}, path)
    assert ckpt.load_train_state(path) == {"epoch": 1}
