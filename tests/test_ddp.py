"""DistributedDataParallel training under torchrun, CPU, gloo, 2 processes (spot_core/distributed.py).

The 2-process runs use the same global batch as the 1-process runs; dropout is off so the only
differences left are the per-slice normalisations and augmentation draws (see the module doc of
spot_core.distributed): the loss curves must agree within a few percent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import BatchSampler, SequentialSampler

from spot_core.data.synthetic import generate_dataset
from spot_core.distributed import RankSlicedBatchSampler

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
COMMON = ["train.batch_size=8", "train.lr=0.005", "model.attn_dropout=0", "model.embed_dropout=0",
          "model.pretext_dropout=0"]  # fmt: skip


def _train(
    data: Path, out: Path, procs: int, *extra: str, sets: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    args = ["-m", "spot_core.train", "--preset", "toy", "--data", str(data), "--out", str(out),
            "--no-progress", *extra, "--set", *COMMON, *sets]  # fmt: skip
    if procs > 1:
        port = str(29700 + os.getpid() % 200)
        args = ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", port, *args]
    return subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=600)


def _losses(out: Path) -> list[tuple[str | None, int, float]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r.get("stage"), r["epoch"], r["loss_loss"]) for r in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("ddpdata"), num_train=32, num_val=8, seed=2)


def test_supervised_two_processes_follow_the_one_process_curve(data: Path, tmp_path: Path) -> None:
    one = _train(data, tmp_path / "one", 1, sets=("train.epochs=3",))
    two = _train(data, tmp_path / "two", 2, sets=("train.epochs=3",))
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [r[:2] for r in a] == [r[:2] for r in b]  # rank 0 alone wrote one row per epoch
    for (_, e, la), (_, _, lb) in zip(a, b, strict=True):
        assert lb == pytest.approx(la, rel=0.03), f"epoch {e}: {la} vs {lb}"
    assert a[-1][2] < a[0][2] and b[-1][2] < b[0][2]  # both learn
    assert two.stdout.count("best val average mAP") == 1  # printed by rank 0 only
    # rank 0 wrote the same set of files as the single process (no per-rank copies)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def test_semi_supervised_with_pretraining_and_resume_under_ddp(data: Path, tmp_path: Path) -> None:
    sets = ("train.epochs=2", "semi.pretrain_epochs=2")
    one = _train(data, tmp_path / "one", 1, "--labeled-fraction", "0.5", sets=sets)
    assert one.returncode == 0, one.stderr[-2000:]
    # two processes: first only the pretraining and one fine-tuning epoch, then --resume to the end
    first = _train(data, tmp_path / "two", 2, "--labeled-fraction", "0.5", sets=("train.epochs=1", sets[1]))
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _train(data, tmp_path / "two", 2, "--labeled-fraction", "0.5", "--resume", sets=sets)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [r[:2] for r in a] == [r[:2] for r in b] == [("pretrain", 0), ("pretrain", 1), ("finetune", 0),
                                                         ("finetune", 1)]  # fmt: skip
    for (stage, e, la), (_, _, lb) in zip(a, b, strict=True):
        assert lb == pytest.approx(la, rel=0.05), f"{stage} epoch {e}: {la} vs {lb}"


def test_bf16_autocast_option(data: Path, tmp_path: Path) -> None:
    res = _train(data, tmp_path / "bf16", 1, sets=("train.epochs=1", "train.autocast=bf16"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert torch.isfinite(torch.tensor(_losses(tmp_path / "bf16")[0][2]))
    bad = _train(data, tmp_path / "bad", 1, sets=("train.autocast=fp8",))
    assert bad.returncode == 2 and "train.autocast" in bad.stderr


@pytest.mark.parametrize("n", [16, 17, 9])
def test_rank_slices_partition_each_global_batch(n: int) -> None:
    batches = BatchSampler(SequentialSampler(range(n)), batch_size=8, drop_last=False)
    per_rank = [list(RankSlicedBatchSampler(batches, r, 3)) for r in range(3)]
    assert all(len(p) == len(RankSlicedBatchSampler(batches, 0, 3)) for p in per_rank)
    for step, parts in enumerate(zip(*per_rank, strict=True)):
        assert sum(parts, []) == list(batches)[step]  # contiguous slices, in rank order
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    skipped = [b for b in batches if len(b) < 3]  # n = 9: the last global batch (1 window) is skipped
    assert sum(len(p) for p in per_rank[0]) + sum(len(p) for p in per_rank[1]) + sum(
        len(p) for p in per_rank[2]
    ) == n - sum(map(len, skipped))
    with pytest.raises(ValueError, match="rank"):
        RankSlicedBatchSampler(batches, 3, 3)
