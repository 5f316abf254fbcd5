"""benchmarks.report: rows from CPU compare and GPU check reports, markdown, chart, bad input."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report import collect_rows, format_markdown, main


def _write(folder: Path) -> None:
    cpu = {
        "cls_scale": 1.0,
        "device": {"cpu_model": "Test CPU", "torch_threads": 1},
        "results": {
            "original_pipeline": {"videos_per_s": 94.4},
            "ours_end_to_end_b64": {"videos_per_s": 133.0},
        },
    }
    gpu = {
        "environment": {"device_name": "Test GPU"},
        "whole_path": {
            "roofline": {"flops_per_window_fused": 1},
            "bf16": {
                "B1024": {
                    "reference_windows_per_s": 26181,
                    "fused_windows_per_s": 128189,
                    "fused_graph": "failed",
                },
                "parity_vs_reference": {"same_valid_fraction": 1.0},
            },
        },
    }
    (folder / "cpu_x.json").write_text(json.dumps(cpu))
    (folder / "gpu_x.json").write_text(json.dumps(gpu))
    edge = {
        "by_threads": {
            "1": {
                "device": {"cpu_model": "Test CPU"},
                "results": {
                    "end_to_end_ort_int8_b64": {"videos_per_s": 119.7},
                    "forward_ort_int8_b64": {"videos_per_s": 185.6},
                },
            }
        }
    }
    stream = {
        "machine": {"cpu_model": "Test CPU", "torch_threads": 1},
        "reports": [
            {
                "backend": "eager",
                "device": "cpu",
                "throughput": [{"streams": 64, "batch_size": 64, "windows_per_s": 42.2}],
            }
        ],
    }
    (folder / "edge.json").write_text(json.dumps(edge))
    (folder / "stream.json").write_text(json.dumps(stream))
    (folder / "other.json").write_text(json.dumps({"something": 1}))
    (folder / "broken.json").write_text("{")


def test_rows_table_and_chart(tmp_path: Path) -> None:
    _write(tmp_path)
    rows, skipped = collect_rows(tmp_path)
    got = {(r["device"], r["backend"], r["precision"], r["batch"]): r["windows_per_s"] for r in rows}
    assert got == {
        ("CPU Test CPU, 1 thread(s)", "original SPOT pipeline (re-implemented)", "fp32", 1): 94.4,
        ("CPU Test CPU, 1 thread(s)", "ours end to end, eager", "fp32", 64): 133.0,
        ("GPU Test GPU", "model + reference decode", "bf16", 1024): 26181.0,
        ("GPU Test GPU", "fused path", "bf16", 1024): 128189.0,
        (
            "CPU Test CPU, 1 thread(s)",
            "end to end, onnxruntime",
            "int8",
            64,
        ): 119.7,  # forward-only rows skipped
        ("CPU Test CPU, 1 thread(s)", "streaming runtime, eager", "fp32", 64): 42.2,
    }  # the failed CUDA-graph entry and the parity block are not throughput rows
    assert len(skipped) == 2 and any("broken.json" in s for s in skipped)
    md = format_markdown(rows, skipped)
    assert "| GPU Test GPU | fused path | bf16 | 1024 | 128,189 | `gpu_x.json` |" in md
    png = tmp_path / "chart.png"
    assert main(["--results", str(tmp_path), "--png", str(png), "--md", str(tmp_path / "t.md")]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "t.md").read_text().startswith("| device |")


def test_bad_input_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["--results", str(tmp_path / "missing")]) == 2
    assert main(["--results", str(tmp_path)]) == 2  # empty folder: nothing to render
    assert "no throughput reports" in capsys.readouterr().err
