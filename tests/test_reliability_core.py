"""Interrupted training (issue 17): Ctrl-C stops cleanly, a kill at any point leaves every output
under its final name complete.

The runs are real ``python -m spot_core.train --resume`` processes on a small synthetic set whose
folder already holds an earlier run (one finished epoch). ``tests/test_kill_resume.py`` covers the
other half: a run SIGKILLed inside each stage resumes to the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spot_core.checkpoint import load_model, load_train_state
from spot_core.config import SpotConfig
from spot_core.data.synthetic import generate_dataset
from spot_core.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
SETS = ("train.batch_size=8", "train.lr=0.01")


def _cfg(epochs: int) -> SpotConfig:
    return SpotConfig.preset("toy").override([f"train.epochs={epochs}", *SETS])


def _resume_args(data: Path, out: Path, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "spot_core.train", "--preset", "toy", "--data", str(data), "--out", str(out),
        "--no-progress", "--resume", "--set", f"train.epochs={epochs}", *SETS,
    ]  # fmt: skip


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _assert_outputs_complete(out: Path, min_epoch: int) -> int:
    """Every file under a final name is whole: the state and both checkpoints load (their digests
    are checked on load), config.yaml, metrics.jsonl and val_predictions.json parse. Returns the
    state's epoch."""
    state = load_train_state(out / "train_state.pt")
    assert state["epoch"] >= min_epoch
    load_model(out / "last.safetensors")
    load_model(out / "best.safetensors")
    SpotConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    rows = _rows(out)  # every line parses (the log may be ahead of the state, never torn)
    assert len(rows) >= state["epoch"]
    assert "results" in json.loads((out / "val_predictions.json").read_text())
    finals = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert finals <= {"train_state.pt", "last.safetensors", "best.safetensors", "config.yaml",
                      "metrics.jsonl", "val_predictions.json"}, finals  # fmt: skip
    assert all(p.name.endswith(".tmp") for p in out.iterdir() if p.name.startswith("."))
    return int(state["epoch"])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("reldata"), _cfg(1), num_train=24, num_val=4, seed=5)


@pytest.fixture
def earlier_run(data: Path, tmp_path: Path) -> Path:
    """A folder holding a finished one-epoch run."""
    out = tmp_path / "run"
    train(_cfg(1), data, out, progress=False)
    return out


def test_ctrl_c_exits_130_and_keeps_the_last_checkpoint(data: Path, earlier_run: Path) -> None:
    out = earlier_run
    proc = subprocess.Popen(
        _resume_args(data, out, 100_000), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while len(_rows(out)) < 4:  # three epochs of the resumed run logged: it is mid-training
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the resumed run never got going"
        time.sleep(0.02)
    time.sleep(random.Random(0).uniform(0.0, 0.2))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err.splitlines()[-1], err[-3000:]
    assert not [ln for ln in err.splitlines() if ln.startswith("error:")]
    epoch = _assert_outputs_complete(out, min_epoch=3)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # Ctrl-C removes its temporaries

    # the state it kept resumes
    res = subprocess.run(_resume_args(data, out, epoch + 1), env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_train_state(out / "train_state.pt")["epoch"] == epoch + 1


def test_kill_nine_at_random_points_leaves_no_partial_output(data: Path, earlier_run: Path) -> None:
    out = earlier_run
    rng = random.Random(17)
    epoch = _assert_outputs_complete(out, min_epoch=1)
    for _ in range(3):
        proc = subprocess.Popen(
            _resume_args(data, out, 100_000), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        start = len(_rows(out))
        deadline = time.monotonic() + 240
        while len(_rows(out)) <= start:  # the resumed run is training ...
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the resumed run never got going"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))  # ... and is killed at a random point of it
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        epoch = _assert_outputs_complete(out, min_epoch=epoch)

    res = subprocess.run(_resume_args(data, out, epoch + 1), env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_outputs_complete(out, min_epoch=epoch + 1)
