"""A full disk (issue 17, docs/reliability.md): every output is written to a temporary file beside it
and renamed, so a write that fails with ENOSPC leaves the earlier output byte-identical, no
temporary file behind, and the CLI prints one ``error:`` line naming the output (exit status 2).

The full disk is simulated: ``os.fsync`` of the temporary file (the step that flushes the data to
the device, where a real full disk reports ENOSPC at the latest) raises ``OSError(ENOSPC)``.
Mounting a small tmpfs would need privileges CI does not have.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from spot_core import outputs

EARLIER = b'{"earlier": "result"}\n'


@pytest.fixture
def full_disk(monkeypatch):
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "fsync", fsync)


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_on_a_full_disk_keeps_the_file(tmp_path, full_disk):
    out = tmp_path / "result.json"
    out.write_bytes(EARLIER)
    with pytest.raises(outputs.OutputError, match=r"result\.json: could not be written \(No space left"):
        outputs.write_json_atomic(out, {"new": 1})
    assert out.read_bytes() == EARLIER
    assert _only(tmp_path) == ["result.json"]


def test_stream_cli_on_a_full_disk(toy_files, tmp_path, full_disk, capsys):
    from runtime.stream import main

    out = tmp_path / "det.json"
    out.write_bytes(EARLIER)
    rc = main(["--model", str(toy_files["ckpt"]), "--features", str(toy_files["data"] / "features"),
               "--out", str(out), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "det.json: could not be written (No space left on device)" in lines[0], err
    assert "Traceback" not in err
    assert out.read_bytes() == EARLIER and _only(tmp_path) == ["det.json"]


def test_onnx_export_on_a_full_disk(toy_files, tmp_path, full_disk, capsys):
    from export.onnx import main

    out = tmp_path / "m.onnx"
    out.write_bytes(b"earlier model")
    rc = main(["--checkpoint", str(toy_files["ckpt"]), "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "m.onnx: could not be written (No space left on device)" in err and "Traceback" not in err
    assert out.read_bytes() == b"earlier model"
    assert _only(tmp_path) == ["m.onnx"]


def test_training_on_a_full_disk_leaves_no_partial_checkpoint(toy_files, tmp_path, full_disk, capsys):
    from spot_core.train import main

    run = tmp_path / "run"
    rc = main(["--preset", "toy", "--data", str(toy_files["data"]), "--out", str(run), "--no-progress",
               "--set", "train.epochs=1"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "could not be written (No space left on device)" in err and "Traceback" not in err
    left = sorted(p.name for p in run.rglob("*")) if run.exists() else []
    assert not [n for n in left if n.endswith(".tmp")], left
    assert "last.safetensors" not in left  # no checkpoint that was not completely written


def test_outputs_get_the_usual_permissions(tmp_path):
    """mkstemp creates 0600 files; an output gets 0666 less the umask, or the mode it replaces."""
    import stat

    old = os.umask(0o022)
    try:
        new = outputs.write_text_atomic(tmp_path / "new.json", "{}")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        kept = tmp_path / "kept.json"
        kept.write_text("x")
        kept.chmod(0o640)
        outputs.write_text_atomic(kept, "{}")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    finally:
        os.umask(old)
