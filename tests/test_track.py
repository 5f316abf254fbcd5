"""Issue 19: the throughput history and its regression gate (benchmarks.track).

The gate's logic runs on small run files written here (fast, deterministic); one test runs two
benchmarks of the real tracked suite twice, the second time with a sleep injected into our path,
and checks that the gate fails naming the row.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import track


def _run_file(folder: Path, n: int, commit: str, when: str, figures: dict, subset: str = "ci") -> Path:
    """A pytest-benchmark-shaped run: one benchmark per (preset, figure) with its extra_info."""
    benches = [{"name": f"test_{fig}[{p}]", "extra_info": {"preset": p, "figure": fig, **vals}}
               for (p, fig), vals in figures.items()]  # fmt: skip
    doc = {
        "datetime": when,
        "commit_info": {"id": commit},
        "spot_track": {"subset": subset, "machine": folder.name},
        "benchmarks": benches,
    }
    path = folder / "Linux-CPython-3.11-64bit" / f"{n:04d}_{commit}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _figures(ours: float = 300.0, orig: float = 25.0, mAP: float = 40.0, cost: float = 0.05) -> dict:
    return {
        ("toy", "ours"): {"windows_per_s": ours},
        ("toy", "original"): {"windows_per_s": orig},
        ("toy", "forward_fp32"): {"ms_per_window": 0.4},
        ("toy", "forward_bf16"): {"ms_per_window": 0.15},
        ("toy", "forward_b1"): {"p50_ms": 0.35},
        ("toy", "stream"): {"p50_ms": 30.0, "p99_ms": 31.0},
        ("toy", "accuracy"): {"map_fp32": mAP, "edge_map_cost": cost},
    }


def test_rows_are_in_run_ratios(tmp_path):
    run = track.load_run(_run_file(tmp_path / "cpu-x-1t", 1, "a" * 40, "2026-12-01T10:00:00", _figures()))
    assert run.rows["toy/speedup_vs_original"] == pytest.approx(12.0)
    assert run.rows["toy/bf16_speedup"] == pytest.approx(0.4 / 0.15)
    assert run.rows["toy/stream_overhead"] == pytest.approx(30.0 / 0.35)
    assert run.rows["toy/map"] == 40.0 and run.rows["toy/edge_map_cost"] == 0.05
    assert run.machine == "cpu-x-1t" and run.subset == "ci"


def test_second_run_passes_and_a_slower_path_fails_naming_the_row(tmp_path, capsys):
    m = tmp_path / "cpu-x-1t"
    _run_file(m, 1, "a" * 40, "2026-12-01T10:00:00", _figures())
    _run_file(m, 2, "b" * 40, "2026-12-01T11:00:00", _figures(ours=290.0, orig=24.5))  # noise: -1 %
    assert track.main(["--compare", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "the previous run of this machine" in out and "REGRESSION" not in out
    _run_file(m, 3, "c" * 40, "2026-12-01T12:00:00", _figures(ours=150.0))  # our path 2x slower
    assert track.main(["--compare", "--storage", str(tmp_path)]) == 1
    cap = capsys.readouterr()
    assert "error: regression in toy/speedup_vs_original" in cap.err
    assert "toy/map" not in cap.err  # only the row that moved


def test_accuracy_rows_use_absolute_points(tmp_path, capsys):
    m = tmp_path / "cpu-x-1t"
    _run_file(m, 1, "a" * 40, "2026-12-01T10:00:00", _figures(mAP=40.0, cost=0.05))
    _run_file(m, 2, "b" * 40, "2026-12-01T11:00:00", _figures(mAP=39.0, cost=0.05))
    assert track.main(["--compare", "--storage", str(tmp_path)]) == 1
    assert "toy/map" in capsys.readouterr().err
    _run_file(m, 3, "c" * 40, "2026-12-01T12:00:00", _figures(mAP=39.0, cost=0.9))
    assert track.main(["--compare", "--storage", str(tmp_path)]) == 1
    assert "toy/edge_map_cost" in capsys.readouterr().err


def test_baseline_is_same_machine_and_subset_else_another_machine(tmp_path):
    a = tmp_path / "cpu-a-1t"
    b = tmp_path / "cpu-b-1t"
    _run_file(a, 1, "a" * 40, "2026-12-01T10:00:00", _figures())
    _run_file(a, 2, "f" * 40, "2026-12-01T10:30:00", _figures(), subset="full")
    new = track.load_run(_run_file(b, 1, "b" * 40, "2026-12-01T11:00:00", _figures()))
    old, why = track.baseline_for(new, track.history(tmp_path))
    assert old is not None and old.machine == "cpu-a-1t" and old.subset == "ci" and "another machine" in why
    newer = track.load_run(_run_file(b, 2, "c" * 40, "2026-12-01T12:00:00", _figures()))
    old, why = track.baseline_for(newer, track.history(tmp_path))
    assert old.path.parent.parent.name == "cpu-b-1t" and old.commit == "b" * 40


def test_ratios_use_best_rounds_when_recorded(tmp_path):
    figs = _figures()
    figs[("toy", "ours")]["best_ms_per_window"] = 2.0
    figs[("toy", "original")]["best_ms_per_window"] = 30.0
    figs[("toy", "stream")]["best_ms_per_window"] = 20.0
    figs[("toy", "forward_b1")]["best_ms_per_window"] = 0.25
    run = track.load_run(_run_file(tmp_path / "cpu-x-1t", 1, "a" * 40, "2026-12-01T10:00:00", figs))
    assert run.rows["toy/speedup_vs_original"] == pytest.approx(15.0)  # not the medians' 12
    assert run.rows["toy/stream_overhead"] == pytest.approx(80.0)
    assert run.rows["toy/bf16_speedup"] == pytest.approx(0.4 / 0.15)  # no best recorded: medians


def test_other_machine_speed_is_shown_not_gated_accuracy_is(tmp_path, capsys):
    _run_file(tmp_path / "cpu-a-1t", 1, "a" * 40, "2026-12-01T10:00:00", _figures())
    _run_file(tmp_path / "cpu-b-1t", 1, "b" * 40, "2026-12-01T11:00:00", _figures(ours=100.0))  # 3x slower
    assert track.main(["--compare", "--storage", str(tmp_path)]) == 0
    assert "not gated (other machine)" in capsys.readouterr().out
    _run_file(tmp_path / "cpu-b-1t", 2, "c" * 40, "2026-12-01T12:00:00", _figures(mAP=30.0))
    _run_file(tmp_path / "cpu-c-1t", 1, "d" * 40, "2026-12-01T13:00:00", _figures(mAP=20.0))
    assert track.main(["--compare", "--storage", str(tmp_path)]) == 1
    assert "regression in toy/map" in capsys.readouterr().err


def test_gpu_reports_join_the_history_and_the_chart(tmp_path):
    rep = {
        "started_utc": "2026-11-26T10:48:19Z",
        "environment": {"device_name": "NVIDIA H200"},
        "whole_path": {
            "roofline": {"x": 1},
            "bf16": {"B1024": {"reference_windows_per_s": 26181.0, "fused_windows_per_s": 128189.0,
                               "fused_graph_windows_per_s": 132302.0}},
        },
    }  # fmt: skip
    src = tmp_path / "gpu.json"
    src.write_text(json.dumps(rep))
    storage = tmp_path / "history"
    out = track.import_gpu(src, storage, commit="d" * 40, when="2026-11-26T10:48:19")
    run = track.load_run(out)
    assert run.kind == "gpu" and run.machine == "gpu-nvidia-h200"
    assert run.rows["anet/bf16_B1024/fused_vs_reference"] == pytest.approx(132302.0 / 26181.0)
    m = storage / "cpu-x-1t"
    for i, c in enumerate("abc"):
        _run_file(m, i + 1, c * 40, f"2026-12-0{i + 1}T10:00:00", _figures(ours=300.0 + 10 * i))
    png = track.plot_trend(track.history(storage), tmp_path / "trend.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unreadable_run_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "cpu-x-1t" / "p"
    bad.mkdir(parents=True)
    (bad / "0001_x.json").write_text("{not json")
    assert track.main(["--compare", "--storage", str(tmp_path)]) == 2
    assert "not a readable run file" in capsys.readouterr().err


def test_injected_sleep_in_the_real_suite_fails_the_gate(tmp_path, capsys):
    """The gate's interleaved ratios of the tracked suite, run twice (toy window); the second run
    sleeps 0.3 s inside our path, which must fail the gate on ``toy/speedup_vs_original`` (and only
    there: the other rows do not run our path)."""
    sel = "test_ratios"
    track.run_suite(tmp_path, "ci", select=sel)
    track.run_suite(tmp_path, "ci", select=sel, env={"SPOT_TRACK_SLOW": "ours:0.3"})
    assert track.main(["--compare", "--storage", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "error: regression in toy/speedup_vs_original" in err
    assert err.count("error: regression") == 1, err


def test_gpu_check_appends_to_the_history(tmp_path, capsys):
    """benchmarks.gpu_check (a dry run on the CPU, one section) appends its report to --history."""
    from benchmarks import gpu_check

    hist = tmp_path / "history"
    argv = ["--dry-run", "--out", str(tmp_path / "out"), "--sections", "environment", "--no-compile"]
    assert gpu_check.main([*argv, "--history", str(hist)]) == 0
    (entry,) = hist.glob("gpu-*/*.json")
    run = track.load_run(entry)
    assert run.kind == "gpu" and run.subset == "gpu"
    assert "tracked:" in capsys.readouterr().out
    assert gpu_check.main(argv) == 0  # a dry run without --history appends nowhere
    assert len(list(hist.glob("gpu-*/*.json"))) == 1
