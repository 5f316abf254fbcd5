"""Issue 17 for the runtime and export CLIs, beyond the bad-invocation table (tests/cases_runtime.py):
Ctrl-C and kill -9 during ``python -m runtime.stream`` keep the earlier output, a stream's error is
printed once, a symlink at ``--out`` is replaced (never written through), digests are written and
checked by the library functions, and StreamDetector refuses rates and durations that are not
finite numbers > 0.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
EARLIER = b'{"version": "VERSION 1.3", "results": {"earlier": []}, "external_data": {}}\n'


# ------------------------------------------------------------------------------------------- helpers
def _long_stream(path: Path, cfg, n: int = 100_000) -> Path:
    """One feature file long enough to stream for minutes on one thread at stride 1."""
    rng = np.random.default_rng(0)
    np.save(path, rng.standard_normal((n, cfg.model.feat_dim)).astype(np.float32))
    return path


def _start_streaming(ckpt: Path, features: Path, out: Path, tmp: Path) -> tuple[subprocess.Popen, list[str]]:
    """Start ``runtime.stream`` with a progress bar; return once the bar shows it is streaming."""
    cmd = [sys.executable, "-m", "runtime.stream", "--model", str(ckpt), "--features", str(features)]
    # stride 1: a window per snippet, so the stream runs for minutes however fast the machine (a
    # default stride once let a fast CPU finish before the signal)
    cmd += ["--out", str(out), "--batch-size", "16", "--stride", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chunks: list[str] = []

    def read() -> None:
        for block in iter(lambda: proc.stderr.read1(4096), b""):
            chunks.append(block.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 120
    while "snippet" not in "".join(chunks):  # tqdm's bar: "stream: ...snippet/s"
        assert proc.poll() is None, "".join(chunks)
        assert time.monotonic() < deadline, "runtime.stream did not start streaming"
        time.sleep(0.1)
    time.sleep(1.0)  # well inside the stream (seconds from its end)
    assert proc.poll() is None, "the stream finished before the signal: make it longer"
    return proc, chunks


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") or p.name == name)


# ------------------------------------------------------------------------------------------- signals
def test_ctrl_c_stops_cleanly_and_keeps_the_earlier_output(toy_files, tmp_path):
    out = tmp_path / "det.json"
    out.write_bytes(EARLIER)
    feats = _long_stream(tmp_path / "long.npy", toy_files["cfg"])
    proc, chunks = _start_streaming(toy_files["ckpt"], feats, out, tmp_path)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=60)
    time.sleep(0.2)
    err = "".join(chunks)
    assert rc == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert out.read_bytes() == EARLIER
    assert _leftovers(tmp_path, "det.json") == ["det.json"]  # no temporary file left behind


def test_kill_9_leaves_the_earlier_output_and_no_partial_file(toy_files, tmp_path):
    out = tmp_path / "det.json"
    out.write_bytes(EARLIER)
    feats = _long_stream(tmp_path / "long.npy", toy_files["cfg"])
    proc, _ = _start_streaming(toy_files["ckpt"], feats, out, tmp_path)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert out.read_bytes() == EARLIER
    # the only file under the final name is the earlier one (a write is a temporary file + rename)
    assert all(n == "det.json" or n.endswith(".tmp") for n in _leftovers(tmp_path, "det.json"))


# ------------------------------------------------------------------------------------------- CLI
def _stream_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "runtime.stream", "--no-progress", *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=180)


def test_stream_error_printed_once(toy_files, tmp_path):
    """A stream that fails mid-way (NaN at snippet 150) is reported once, not logged and reported."""
    x = np.random.default_rng(0).standard_normal((200, toy_files["cfg"].model.feat_dim)).astype(np.float32)
    x[150, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    feats = str(tmp_path / "nan.npy")
    res = _stream_cli("--model", str(toy_files["ckpt"]), "--features", feats, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.count("non-finite value nan") == 1, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")


@pytest.mark.parametrize("how", ["--debug", "SPOT_DEBUG=1"])
def test_debug_shows_the_traceback(toy_files, tmp_path, how):
    """Without --debug a bad rate is one error line (the table); with it, the traceback of the error."""
    args = ["--model", str(toy_files["ckpt"]), "--features", str(toy_files["data"] / "features")]
    args += ["--snippet-rate", "nan"]
    env = {**ENV, "SPOT_DEBUG": "1"} if how == "SPOT_DEBUG=1" else ENV
    cmd = [sys.executable, "-m", "runtime.stream", *args, *(["--debug"] if how == "--debug" else [])]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode not in (0, 2), res.stderr
    assert "Traceback" in res.stderr and "--snippet-rate must be a finite number > 0" in res.stderr


def test_symlink_at_out_is_replaced_not_written_through(toy_files, tmp_path):
    from runtime.stream import main

    target = tmp_path / "target.json"
    target.write_bytes(EARLIER)
    link = tmp_path / "det.json"
    link.symlink_to(target)
    feats = toy_files["data"] / "features" / "val_0000.npy"
    assert main(["--model", str(toy_files["ckpt"]), "--features", str(feats), "--out", str(link)]) == 0
    assert not link.is_symlink() and '"val_0000"' in link.read_text()
    assert target.read_bytes() == EARLIER


def test_huge_chunk_and_plot_written_atomically(toy_files, tmp_path):
    from runtime.stream import main

    feats = toy_files["data"] / "features"
    out, png = tmp_path / "det.json", tmp_path / "tl.png"
    argv = ["--model", str(toy_files["ckpt"]), "--features", str(feats), "--out", str(out)]
    argv += ["--plot", str(png)]
    assert main([*argv, "--chunk", str(10**18), "--no-progress"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and len(out.read_text()) > 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.json", "tl.png"]


# ------------------------------------------------------------------------------------------- digests
def test_onnx_export_writes_a_digest_that_sessions_check(toy_files, tmp_path):
    from export.onnx import export_onnx
    from runtime.session import open_session
    from spot_core.outputs import DigestError, digest_path, verify_digest

    path = export_onnx(toy_files["model"], toy_files["cfg"], tmp_path / "m.onnx")
    assert verify_digest(path) and digest_path(path).read_text().endswith("  m.onnx\n")
    open_session(path)  # verified, loads
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DigestError, match=r"m\.onnx: sha256 does not match.*m\.onnx\.sha256"):
        open_session(path)
    digest_path(path).unlink()  # no digest recorded: loads unverified (the flip is in a weight)
    assert open_session(path).backend == "onnxruntime"


def test_engine_digest_from_the_sidecar(tmp_path):
    import hashlib

    from runtime.engine import check_engine_digest
    from spot_core.outputs import DigestError

    data = b"engine bytes" * 100
    eng = tmp_path / "m.plan"
    eng.write_bytes(data)
    side = {"engine_bytes": len(data), "engine_sha256": hashlib.sha256(data).hexdigest()}
    assert check_engine_digest(eng, side) and check_engine_digest(eng, side, data)
    assert check_engine_digest(eng, {}) is False  # nothing recorded: unverified
    eng.write_bytes(data[:-1])
    with pytest.raises(DigestError, match=r"m\.plan: 1199 bytes, the recorded size is 1200"):
        check_engine_digest(eng, side)
    with pytest.raises(DigestError, match=r"m\.plan: sha256 does not match"):
        check_engine_digest(eng, side, data[:-1] + b"X")


def test_serving_repository_records_and_checks_the_digest(toy_files, tmp_path):
    from export.serving import main, verify_repository
    from spot_core.outputs import DigestError

    repo = tmp_path / "repo"
    assert main(["--onnx", str(toy_files["onnx"]), "--out", str(repo)]) == 0
    model = verify_repository(repo / "spot_heads")
    assert model.read_bytes() == Path(toy_files["onnx"]).read_bytes()
    assert main(["--onnx", str(toy_files["onnx"]), "--out", str(repo), "--overwrite"]) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["spot_heads"]  # no temporary folder left
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(DigestError, match=r"model\.onnx: \d+ bytes, the recorded size"):
        verify_repository(repo / "spot_heads")


# ------------------------------------------------------------------------------------------- library
@pytest.fixture(scope="module")
def session(toy_files):
    from runtime.session import EagerSession

    return EagerSession(toy_files["model"], toy_files["cfg"], batch_size=4)


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan, math.inf])
def test_detector_refuses_bad_rates(session, rate):
    from runtime.detector import StreamDetector, StreamError
    from spot_core.config import ConfigError

    with pytest.raises(ConfigError, match="snippet_rate must be a finite number > 0"):
        StreamDetector(session, snippet_rate=rate)
    det = StreamDetector(session, snippet_rate=2.0)
    with pytest.raises(StreamError, match="stream 'a': snippet_rate must be a finite number > 0"):
        det.open("a", snippet_rate=rate)
    assert det.open_streams == []


def test_detector_refuses_bad_max_delay(session):
    from runtime.detector import StreamDetector
    from spot_core.config import ConfigError

    for bad in (-1.0, math.nan):
        with pytest.raises(ConfigError, match="max_delay_s must be >= 0"):
            StreamDetector(session, max_delay_s=bad)
    StreamDetector(session, max_delay_s=math.inf)


@pytest.mark.parametrize("duration", [-10.0, 0.0, math.nan, math.inf])
def test_close_refuses_bad_duration_and_keeps_the_stream(session, toy_files, duration):
    from runtime.detector import StreamDetector, StreamError

    det = StreamDetector(session, snippet_rate=2.0, max_delay_s=math.inf, preview=False)
    det.open("a")
    x = np.random.default_rng(1).standard_normal((120, toy_files["cfg"].model.feat_dim)).astype(np.float32)
    det.push("a", x)
    with pytest.raises(StreamError, match="stream 'a': duration must be a finite number"):
        det.close("a", duration=duration)
    assert det.open_streams == ["a"]
    assert det.close("a", duration=60.0)  # still usable: the exact result


def test_offline_detect_refuses_bad_rate(session, toy_files):
    from runtime.offline import offline_detect
    from spot_core.config import ConfigError

    x = np.zeros((80, toy_files["cfg"].model.feat_dim), np.float32)
    with pytest.raises(ConfigError, match="snippet_rate"):
        offline_detect(session, x, snippet_rate=math.nan)


def test_session_refuses_unknown_and_absent_devices(toy_files):
    import torch

    from runtime.session import EagerSession, SessionError, open_session

    with pytest.raises(SessionError, match="'banana': not a device"):
        open_session(toy_files["ckpt"], device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(SessionError, match="CUDA is not available"):
            EagerSession(toy_files["model"], toy_files["cfg"], device="cuda")
