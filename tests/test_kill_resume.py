"""kill -9 a training run in the middle of each stage and resume: same final weights as an
uninterrupted run (CPU, fixed seed).

The runs are real ``python -m spot_core.train`` processes on a small synthetic set, semi-supervised
(25 % labels) with two pretraining and three fine-tuning epochs. Each is SIGKILLed once while a
pretraining epoch runs and once while a fine-tuning epoch runs, then resumed with ``--resume``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spot_core.checkpoint import load_train_state
from spot_core.data.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "spot_core.train", "--preset", "toy", "--data", str(data), "--out", str(out),
        "--no-progress", "--labeled-fraction", "0.25", *extra,
        "--set", "train.epochs=3", "semi.pretrain_epochs=2", "train.batch_size=6", "train.lr=0.01",
    ]  # fmt: skip


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _kill_when(out: Path, data: Path, ready, *extra: str) -> None:
    """Start (or resume) a run, SIGKILL it once ``ready(rows)`` holds, plus a short delay so the kill
    lands inside the next epoch rather than on its boundary."""
    proc = subprocess.Popen(
        _args(data, out, *extra), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while not ready(_rows(out)):
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill point: {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 400 training videos: an epoch takes about a second, so a kill 0.3 s in lands inside it
    return generate_dataset(tmp_path_factory.mktemp("killdata"), num_train=400, num_val=8, seed=3)


def test_kill_nine_in_each_stage_then_resume_equals_uninterrupted(data: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    subprocess.run(_args(data, full), env=ENV, check=True, capture_output=True)

    out = tmp_path / "killed"
    _kill_when(out, data, lambda rows: len(rows) >= 1)  # pretraining epoch 0 done, epoch 1 running
    state = load_train_state(out / "train_state.pt")
    assert state["stage"] == "pretrain" and state["pretrain_epoch"] >= 1
    assert not (out / "last.safetensors").exists() or state["epoch"] == 0
    _kill_when(out, data, lambda rows: sum(r.get("stage") == "finetune" for r in rows) >= 1, "--resume")
    state = load_train_state(out / "train_state.pt")
    assert state["stage"] == "finetune" and 1 <= state["epoch"] < 3
    res = subprocess.run(_args(data, out, "--resume"), env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]

    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(out / name))
        assert sorted(a) == sorted(b)
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], name
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(out)]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(full)]
    assert [r.get("stage") for r in _rows(out)] == ["pretrain"] * 2 + ["finetune"] * 3
