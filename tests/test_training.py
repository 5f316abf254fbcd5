"""Training CLI, determinism, resume, safe checkpoints, CLI errors, evaluate round trip, demo, baseline.

Everything runs on a tiny synthetic set (12 training / 4 validation videos) with 2-3 epochs, so the
whole file takes seconds on CPU. The 2-epoch run of the ``run2`` fixture is shared by several tests.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spot_core import checkpoint as ckpt_mod
from spot_core import training as training_mod
from spot_core.checkpoint import CheckpointError, load_model, read_metadata
from spot_core.config import ConfigError, SpotConfig
from spot_core.data.datasets import load_dataset
from spot_core.data.synthetic import generate_dataset
from spot_core.evaluate import main as evaluate_main
from spot_core.inference import predict_windows
from spot_core.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_TRAIN, NUM_VAL, DATA_SEED = 12, 4, 4
# lr 0.01 / batch 6: two optimiser steps per epoch, and a tiny run learns enough to score some mAP
OVERRIDES = ["train.batch_size=6", "train.lr=0.01"]
OUTPUTS = (
    "config.yaml",
    "best.safetensors",
    "last.safetensors",
    "train_state.pt",
    "metrics.jsonl",
    "val_predictions.json",
)


def toy_cfg(epochs: int) -> SpotConfig:
    return SpotConfig.preset("toy").override([f"train.epochs={epochs}", *OVERRIDES])


def train_args(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return [
        "--preset",
        "toy",
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        *extra,
        "--set",
        f"train.epochs={epochs}",
        *OVERRIDES,
    ]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{a} and {b} differ in {different}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    # seed 4: the best validation epoch of the 2-epoch run (0) is not its last, and its mAP is > 0
    return generate_dataset(d, SpotConfig.preset("toy"), num_train=NUM_TRAIN, num_val=NUM_VAL, seed=DATA_SEED)


@pytest.fixture(scope="module")
def run2(data_dir, tmp_path_factory) -> Path:
    """A finished 2-epoch run through the CLI (read-only for the tests that use it)."""
    out = tmp_path_factory.mktemp("run2") / "out"
    assert train_main(train_args(data_dir, out, 2)) == 0
    return out


# ---------------------------------------------------------------------------------------------- 1
def test_train_cli_writes_every_output(run2, data_dir):
    for name in OUTPUTS:
        assert (run2 / name).is_file(), f"{name} missing"

    cfg = SpotConfig.from_yaml(run2 / "config.yaml")
    assert cfg.train.epochs == 2 and cfg.train.batch_size == 6
    assert len(cfg.class_names) == cfg.model.num_classes  # taken from the data set

    rows = metrics(run2)
    assert [r["epoch"] for r in rows] == [0, 1]
    for r in rows:
        for k in ("loss_loss", "loss_cls", "loss_mask"):
            assert math.isfinite(r[k]) and r[k] > 0, (k, r)
        assert 0.0 <= r["val_average_mAP"] <= 1.0
        assert r["lr"] == pytest.approx(0.01)

    preds = json.loads((run2 / "val_predictions.json").read_text())
    assert set(preds) == {"version", "results", "external_data"}
    gt = json.loads((data_dir / "annotations.json").read_text())["database"]
    val_ids = {v for v, e in gt.items() if e["subset"] == "validation"}
    assert preds["results"] and set(preds["results"]) <= val_ids
    for vid, dets in preds["results"].items():
        for d in dets:
            assert set(d) == {"label", "score", "segment"}
            assert d["label"] in cfg.class_names
            assert math.isfinite(d["score"])
            s, e = d["segment"]
            assert 0.0 <= s < e <= gt[vid]["duration"] + 1e-6

    # the checkpoints load back with their stored config and record the epoch they were taken at
    best = int(read_metadata(run2 / "best.safetensors")["epoch"])
    assert best == max(rows, key=lambda r: r["val_average_mAP"])["epoch"]
    assert int(read_metadata(run2 / "last.safetensors")["epoch"]) == 1
    model, stored = load_model(run2 / "last.safetensors")
    assert stored == cfg and not model.training


# ---------------------------------------------------------------------------------------------- 2
def test_same_seed_gives_bit_identical_weights(run2, data_dir, tmp_path):
    out = tmp_path / "again"
    assert train_main(train_args(data_dir, out, 2)) == 0
    assert_same_weights(run2 / "last.safetensors", out / "last.safetensors")
    assert_same_weights(run2 / "best.safetensors", out / "best.safetensors")
    assert without_time(metrics(out)) == without_time(metrics(run2))
    assert (out / "val_predictions.json").read_text() == (run2 / "val_predictions.json").read_text()


# ---------------------------------------------------------------------------------------------- 3
def test_resume_with_longer_schedule_equals_uninterrupted_run(run2, data_dir, tmp_path):
    full = tmp_path / "full"
    assert train_main(train_args(data_dir, full, 3)) == 0

    resumed = tmp_path / "resumed"
    shutil.copytree(run2, resumed)
    # a stray line, as if the process died after logging an epoch but before saving its state
    with (resumed / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 2, "loss_loss": 123.0, "val_average_mAP": 0.5}) + "\n")
    assert train_main(train_args(data_dir, resumed, 3, "--resume")) == 0

    assert_same_weights(full / "last.safetensors", resumed / "last.safetensors")
    assert_same_weights(full / "best.safetensors", resumed / "best.safetensors")
    rows = metrics(resumed)
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # stray line dropped, nothing duplicated
    assert without_time(rows) == without_time(metrics(full))
    assert (resumed / "val_predictions.json").read_text() == (full / "val_predictions.json").read_text()
    assert SpotConfig.from_yaml(resumed / "config.yaml").train.epochs == 3
    state = ckpt_mod.load_train_state(resumed / "train_state.pt")
    assert state["epoch"] == 3 and len(json.loads(state["history"])) == 3


def test_crash_between_metrics_and_state_then_resume(run2, data_dir, tmp_path, monkeypatch):
    """metrics.jsonl is written before train_state.pt; resuming after a crash there loses nothing."""
    out = tmp_path / "crashed"
    real = training_mod.save_train_state
    calls = []

    def crash_on_second(path, state):
        calls.append(state["epoch"])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while saving the state of epoch 1")
        return real(path, state)

    monkeypatch.setattr(training_mod, "save_train_state", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        training_mod.train(toy_cfg(2), data_dir, out, progress=False)
    monkeypatch.setattr(training_mod, "save_train_state", real)
    assert [r["epoch"] for r in metrics(out)] == [0, 1]  # epoch 1 was logged before the crash
    assert ckpt_mod.load_train_state(out / "train_state.pt")["epoch"] == 1
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]

    res = training_mod.train(toy_cfg(2), data_dir, out, resume=True, progress=False)
    assert res.best_epoch == int(read_metadata(run2 / "best.safetensors")["epoch"])
    assert without_time(metrics(out)) == without_time(metrics(run2))
    assert_same_weights(run2 / "last.safetensors", out / "last.safetensors")


def test_resume_refuses_a_different_model_config(run2, data_dir, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(run2, out)
    before = (out / "metrics.jsonl").read_text()
    args = train_args(data_dir, out, 3, "--resume") + ["model.mask_hidden=32"]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert "train_state.pt" in err and "model.mask_hidden: 64 in the state vs 32 now" in err
    assert (out / "metrics.jsonl").read_text() == before  # nothing touched

    with pytest.raises(CheckpointError, match=r"loss\.cls_weight"):
        training_mod.train(
            toy_cfg(3).override(["loss.cls_weight=0.9"]), data_dir, out, resume=True, progress=False
        )


# ---------------------------------------------------------------------------------------------- 4
def test_checkpoints_are_safe(run2, tmp_path):
    state = ckpt_mod.load_train_state(run2 / "train_state.pt")  # torch.load(weights_only=True) inside
    assert state["epoch"] == 2
    assert {"optimizer", "scheduler", "model", "config_hash", "history"} <= set(state)
    assert not [p for p in os.listdir(run2) if p.endswith(".tmp")]

    size = (run2 / "best.safetensors").stat().st_size
    for keep in (size // 2, 8):
        bad = tmp_path / f"best_{keep}.safetensors"
        bad.write_bytes((run2 / "best.safetensors").read_bytes()[:keep])
        with pytest.raises(CheckpointError, match=re.escape(str(bad))):
            load_model(bad)

    bad_state = tmp_path / "train_state.pt"
    bad_state.write_bytes((run2 / "train_state.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=re.escape(str(bad_state))):
        ckpt_mod.load_train_state(bad_state)


def test_failed_write_keeps_the_old_checkpoint_and_no_tmp(run2, tmp_path, monkeypatch):
    target = tmp_path / "last.safetensors"
    shutil.copy(run2 / "last.safetensors", target)
    original = target.read_bytes()
    model, cfg = load_model(target)

    def half_then_die(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", half_then_die)
    from spot_core.outputs import OutputError

    with pytest.raises(OutputError, match=r"last\.safetensors: could not be written \(disk full\)") as err:
        ckpt_mod.save_model(target, model, cfg, epoch=9)
    assert isinstance(err.value.__cause__, OSError)  # the write's own error stays chained
    assert target.read_bytes() == original
    assert os.listdir(tmp_path) == ["last.safetensors"]


# ---------------------------------------------------------------------------------------------- 5
@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_data", "dataset folder not found"),
        ("no_annotations", "annotations.json: not found"),
        ("no_features", "feature folder not found"),
        ("unknown_preset", "unknown preset 'nope'"),
        ("bad_value", "train.epochs: expected an integer, got 'abc'"),
        ("unknown_key", "unknown key 'train.nope'"),
        ("no_equals", "is not of the form section.key=value"),
        ("missing_config", "config file not found"),
        ("resume_without_state", "train_state.pt: resume state not found"),
    ],
)
def test_cli_bad_input_is_one_error_line(case, expected, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    data = data_dir
    pre, sets = ["--preset", "toy"], ["train.epochs=1"]
    if case == "missing_data":
        data = tmp_path / "nope"
    elif case == "no_annotations":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "no_features":
        data = tmp_path / "annos_only"
        data.mkdir()
        shutil.copy(data_dir / "annotations.json", data)
    elif case == "unknown_preset":
        pre = ["--preset", "nope"]
    elif case == "bad_value":
        sets = ["train.epochs=abc"]
    elif case == "unknown_key":
        sets = ["train.nope=1"]
    elif case == "no_equals":
        sets = ["train.epochs"]
    elif case == "missing_config":
        pre = ["--config", str(tmp_path / "missing.yaml")]
    extra = ["--resume"] if case == "resume_without_state" else []
    argv = [*pre, "--data", str(data), "--out", str(out), "--no-progress", *extra, "--set", *sets]

    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert expected in err
    if case in ("missing_data", "no_annotations", "no_features"):
        assert not out.exists()  # nothing created for a run that could not start


def test_cli_missing_required_flag_is_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--preset", "toy", "--out", "x"])
    assert e.value.code == 2
    assert "--data" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- 6
def test_evaluate_cli_matches_the_recorded_best_map(run2, data_dir, capsys):
    rows = metrics(run2)
    best = max(rows, key=lambda r: r["val_average_mAP"])  # first of equals, as training keeps it
    rc = evaluate_main(
        [
            "--gt",
            str(data_dir / "annotations.json"),
            "--pred",
            str(run2 / "val_predictions.json"),
            "--protocol",
            "activitynet",
            "--subset",
            "validation",
            "--json",
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["average_mAP"] == pytest.approx(best["val_average_mAP"], abs=1e-12)
    assert float(read_metadata(run2 / "best.safetensors")["val_average_mAP"]) == pytest.approx(
        best["val_average_mAP"], abs=1e-12
    )

    # val_predictions.json is exactly what the best checkpoint predicts (not the last epoch's)
    model, cfg = load_model(run2 / "best.safetensors")
    val_set, windows = load_dataset(data_dir, cfg, "validation")
    durations = {v.video_id: v.duration for v in val_set.videos.values()}
    preds = json.loads(json.dumps(predict_windows(model, windows, cfg, durations=durations)))
    assert preds == json.loads((run2 / "val_predictions.json").read_text())
    if best["epoch"] != rows[-1]["epoch"]:
        last_model, _ = load_model(run2 / "last.safetensors")
        last = json.loads(json.dumps(predict_windows(last_model, windows, cfg, durations=durations)))
        assert last != preds


# ---------------------------------------------------------------------------------------------- 7
def test_run_demo_on_tiny_data(tmp_path):
    from spot_core.demo import format_table, run_demo

    summary = run_demo(
        tmp_path, toy_cfg(2), seed=DATA_SEED, progress=False, num_train=NUM_TRAIN, num_val=NUM_VAL
    )
    for name in ("detections.json", "baseline_detections.json", "timeline.png", "summary.json"):
        assert (tmp_path / name).is_file(), name
    png = (tmp_path / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR" and len(png) > 1000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 100 and height > 100

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["train_videos"] == NUM_TRAIN and summary["val_videos"] == NUM_VAL
    for key in ("spot", "baseline_linear"):
        r = summary[key]
        assert 0.0 <= r["average_mAP"] <= 1.0
        assert len(r["mAP"]) == len(summary["tious"]) == 10
    # the demo reports the last epoch's model (not the best-on-validation one): its detections are
    # what last.safetensors predicts, its mAP the last metrics line's
    run = tmp_path / "run"
    rows = metrics(run)
    assert summary["epochs"] == 2 and len(rows) == 2
    assert summary["spot"]["average_mAP"] == pytest.approx(rows[-1]["val_average_mAP"], abs=1e-12)
    assert summary["best_epoch_val_average_mAP"] == pytest.approx(
        max(r["val_average_mAP"] for r in rows), abs=1e-12
    )
    model, cfg = load_model(run / "last.safetensors")
    val_set, windows = load_dataset(tmp_path / "data", cfg, "validation")
    durations = {v.video_id: v.duration for v in val_set.videos.values()}
    last = json.loads(json.dumps(predict_windows(model, windows, cfg, durations=durations)))
    assert json.loads((tmp_path / "detections.json").read_text()) == last
    if summary["best_epoch"] != rows[-1]["epoch"]:
        assert last != json.loads((run / "val_predictions.json").read_text())
    base = json.loads((tmp_path / "baseline_detections.json").read_text())
    assert base["results"] and set(base["results"]) <= set(val_set.videos)
    assert {d["label"] for dets in base["results"].values() for d in dets} <= set(cfg.class_names)

    table = format_table(summary).splitlines()
    assert len(table) == 4
    assert table[0].startswith("| model | mAP@0.50 |") and table[0].endswith("| average mAP |")
    assert set(table[1]) == {"|", "-"}
    assert table[2].startswith("| SPOT") and table[3].startswith("| per-snippet linear")
    assert len({line.count("|") for line in table}) == 1
    assert f"**{100 * summary['spot']['average_mAP']:.1f}**" in table[2]


# ---------------------------------------------------------------------------------------------- 8
def test_linear_baseline_gives_valid_results_with_known_classes(data_dir):
    from spot_core.baseline import fit_linear, predict_linear
    from spot_core.evaluation import PROTOCOLS, evaluate_detection

    cfg = toy_cfg(1)
    train_set, train_windows = load_dataset(data_dir, cfg, "training")
    val_set, val_windows = load_dataset(data_dir, cfg, "validation")
    cfg = cfg.replace(class_names=tuple(train_set.classes))
    lin = fit_linear(train_windows, cfg.model.num_classes, epochs=100, seed=0)
    assert lin.out_features == cfg.model.num_classes + 1
    durations = {v.video_id: v.duration for v in val_set.videos.values()}
    res = predict_linear(lin, val_windows, cfg, durations)

    assert set(res) == {"version", "results", "external_data"}
    assert res["results"] and set(res["results"]) <= set(val_set.videos)
    labels = set()
    for vid, dets in res["results"].items():
        for d in dets:
            labels.add(d["label"])
            assert 0.0 < d["score"] <= 1.0
            s, e = d["segment"]
            assert 0.0 <= s < e <= durations[vid] + 1e-6
    assert labels and labels <= set(train_set.classes)
    # round-trips through JSON and evaluates
    r = evaluate_detection(val_set, json.loads(json.dumps(res))["results"], PROTOCOLS["activitynet"])
    assert 0.0 <= r.average_mAP <= 1.0

    # deterministic for a seed
    again = predict_linear(
        fit_linear(train_windows, cfg.model.num_classes, epochs=100, seed=0), val_windows, cfg, durations
    )
    assert again == res


def test_cosine_schedule_and_its_resume_hash():
    """train.lr_schedule: cosine anneals lr to ~0 at the last fine-tuning epoch; under it (only) the
    epoch count is part of the resume hash, since it sets every epoch's learning rate."""
    from spot_core.model import SPOT
    from spot_core.training import make_optimizer, resume_hash

    cfg = SpotConfig.preset("toy").override(["train.epochs=4", "train.lr=0.01", "train.lr_schedule=cosine"])
    opt, sched = make_optimizer(SPOT(cfg.model), cfg)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == pytest.approx(
        [0.01, 0.01 * (1 + math.cos(math.pi / 4)) / 2, 0.005, 0.01 * (1 - math.cos(math.pi / 4)) / 2]
    )
    assert resume_hash(cfg) != resume_hash(cfg.override(["train.epochs=8"]))
    step = cfg.override(["train.lr_schedule=step"])
    assert resume_hash(step) == resume_hash(step.override(["train.epochs=8"]))
    with pytest.raises(ConfigError, match="lr_schedule"):
        SpotConfig.preset("toy").override(["train.lr_schedule=linear"])
