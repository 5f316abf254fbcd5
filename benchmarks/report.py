"""Render the saved benchmark results as a markdown table and a PNG chart.

``python -m benchmarks.report [--results benchmarks/results] [--md OUT.md] [--png OUT.png]``

Reads every JSON report in the results folder that it knows:

* CPU pipeline comparisons (``python -m benchmarks.compare``: ``cpu_*.json``): the original
  pipeline, ours end to end and the forward alone, per batch size, in windows (videos) per second;
* GPU check reports (``python -m benchmarks.gpu_check``: JSON with a ``whole_path`` section): the
  whole path per precision, batch size and variant (model + reference decode, fused, fused as a
  CUDA graph), in windows per second;
* CPU edge runs (``python -m benchmarks.edge``): end to end per precision (fp32, bf16, int8),
  backend, batch size and thread count;
* streaming runs (``python -m benchmarks.streaming``): windows per second per backend and number of
  concurrent streams.

One row per (device, backend, precision, batch); the table is printed (or written with ``--md``)
and the chart (``--png``) puts CPU and GPU side by side on a log scale, each bar labelled with its
device. Other JSON files in the folder are listed as not rendered. Every number comes from the
report it names; nothing is recomputed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spot_core.cli import report_error
from spot_core.errors import SpotError
from spot_core.outputs import atomic_write, write_text_atomic

__all__ = ["collect_rows", "format_markdown", "main", "plot_rows"]

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"

_CPU_CASES = {  # compare.py result key -> (backend label, batch)
    "original_pipeline": ("original SPOT pipeline (re-implemented)", 1),
    "ours_end_to_end_b1": ("ours end to end, eager", 1),
    "ours_end_to_end_b64": ("ours end to end, eager", 64),
    "forward_only_b1": ("model forward alone, eager", 1),
    "forward_only_b64": ("model forward alone, eager", 64),
}
_GPU_VARIANTS = {
    "reference_windows_per_s": "model + reference decode",
    "fused_windows_per_s": "fused path",
    "fused_graph_windows_per_s": "fused path, CUDA graph",
}


def _cpu_rows(name: str, rep: dict[str, Any]) -> list[dict[str, Any]]:
    dev = rep.get("device", {})
    device = f"CPU {dev.get('cpu_model', '?')}, {dev.get('torch_threads', '?')} thread(s)"
    extra = f"cls-scale {rep.get('cls_scale')}"
    rows = []
    for key, (backend, batch) in _CPU_CASES.items():
        r = rep.get("results", {}).get(key)
        if r and "videos_per_s" in r:
            rows.append(
                {"device": device, "backend": backend, "precision": "fp32", "batch": batch,
                 "windows_per_s": float(r["videos_per_s"]), "source": name, "note": extra}
            )  # fmt: skip
    return rows


def _gpu_rows(name: str, rep: dict[str, Any]) -> list[dict[str, Any]]:
    device = "GPU " + str(rep.get("environment", {}).get("device_name", "?"))
    rows = []
    for prec, sec in rep.get("whole_path", {}).items():
        if not isinstance(sec, dict) or prec == "roofline":
            continue
        for bkey, r in sec.items():
            if not bkey.startswith("B") or not isinstance(r, dict):
                continue
            for field, backend in _GPU_VARIANTS.items():
                if isinstance(r.get(field), int | float):
                    rows.append(
                        {"device": device, "backend": backend, "precision": prec, "batch": int(bkey[1:]),
                         "windows_per_s": float(r[field]), "source": name, "note": ""}
                    )  # fmt: skip
    return rows


_EDGE_PATHS = {  # benchmarks.edge end-to-end keys -> backend label
    "end_to_end_eager_fp32": ("end to end, eager", "fp32"),
    "end_to_end_eager_bf16": ("end to end, eager (model cast)", "bf16"),
    "end_to_end_edge_bf16": ("end to end, bf16 edge model", "bf16"),
    "end_to_end_ort_fp32": ("end to end, onnxruntime", "fp32"),
    "end_to_end_ort_int8": ("end to end, onnxruntime", "int8"),
}


def _edge_rows(name: str, rep: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for threads, run in rep.get("by_threads", {}).items():
        dev = run.get("device", {})
        device = f"CPU {dev.get('cpu_model', '?')}, {threads} thread(s)"
        for key, r in run.get("results", {}).items():
            base, _, b = key.rpartition("_b")
            if base in _EDGE_PATHS and b.isdigit() and "videos_per_s" in r:
                backend, prec = _EDGE_PATHS[base]
                rows.append(
                    {"device": device, "backend": backend, "precision": prec, "batch": int(b),
                     "windows_per_s": float(r["videos_per_s"]), "source": name, "note": Path(name).stem}
                )  # fmt: skip
    return rows


def _streaming_rows(name: str, rep: dict[str, Any]) -> list[dict[str, Any]]:
    m = rep.get("machine", {})
    rows = []
    for r in rep.get("reports", []):
        if r.get("device", "cpu") == "cpu":
            device = f"CPU {m.get('cpu_model', '?')}, {m.get('torch_threads', '?')} thread(s)"
        else:
            device = f"GPU {r.get('device')}"
        for t in r.get("throughput", []):
            rows.append(
                {"device": device, "backend": f"streaming runtime, {r.get('backend')}", "precision": "fp32",
                 "batch": int(t["batch_size"]), "windows_per_s": float(t["windows_per_s"]), "source": name,
                 "note": f"{t['streams']} streams"}
            )  # fmt: skip
    return rows


def collect_rows(results: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """``(rows, not_rendered)`` from every JSON report in ``results``."""
    if not results.is_dir():
        raise FileNotFoundError(f"{results}: no such results folder")
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for path in sorted(results.glob("*.json")):
        try:
            rep = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            skipped.append(f"{path.name} (unreadable: {e})")
            continue
        if not isinstance(rep, dict):
            skipped.append(f"{path.name} (not a report object)")
        elif "whole_path" in rep and isinstance(rep["whole_path"], dict):
            rows += _gpu_rows(path.name, rep)
        elif isinstance(rep.get("results"), dict) and "original_pipeline" in rep["results"]:
            rows += _cpu_rows(path.name, rep)
        elif isinstance(rep.get("by_threads"), dict):
            rows += _edge_rows(path.name, rep)
        elif isinstance(rep.get("reports"), list):
            rows += _streaming_rows(path.name, rep)
        else:
            skipped.append(f"{path.name} (no throughput section this renderer knows)")
    return rows, skipped


def format_markdown(rows: Sequence[dict[str, Any]], skipped: Sequence[str] = ()) -> str:
    lines = [
        "| device | backend | precision | batch | windows/s | report |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: (r["device"], r["source"], r["backend"], r["precision"], r["batch"])):
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(
            f"| {r['device']} | {r['backend']} | {r['precision']} | {r['batch']} | "
            f"{r['windows_per_s']:,.0f} | `{r['source']}`{note} |"
        )
    if skipped:
        lines += ["", "Not rendered: " + "; ".join(skipped)]
    return "\n".join(lines)


def plot_rows(rows: Sequence[dict[str, Any]], out: Path) -> Path:
    """Horizontal bars, log scale, grouped by device: one bar per (backend, precision, batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("no throughput rows to plot")
    order = sorted(rows, key=lambda r: (not r["device"].startswith("CPU"), r["device"], r["source"],
                                         r["backend"], r["precision"], r["batch"]))  # fmt: skip
    devices = list(dict.fromkeys(r["device"] for r in order))
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(order) + 1.5))
    labels = []
    for i, r in enumerate(order):
        ax.barh(i, r["windows_per_s"], color=colors(devices.index(r["device"]) % 10))
        note = f", {r['note']}" if r["note"] else ""
        labels.append(f"{r['backend']}, {r['precision']}, batch {r['batch']}{note}")
        ax.text(r["windows_per_s"], i, f" {r['windows_per_s']:,.0f}", va="center", fontsize=7)
    ax.set_yticks(range(len(order)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(r["windows_per_s"] for r in order) * 4)  # room for the value labels
    ax.set_xlabel("windows per second (ANet preset, T = 100; log scale)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors(i % 10)) for i in range(len(devices))]
    ax.legend(handles, devices, fontsize=7, loc="lower right")
    ax.set_title("SPOT detection throughput (features in, detections out)")
    fig.tight_layout()
    try:  # atomic; the format from the final name (the temporary file has none)
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(DEFAULT_RESULTS), help="folder of JSON reports")
    ap.add_argument("--md", help="write the markdown table here (default: print it)")
    ap.add_argument("--png", help="write the chart here")
    args = ap.parse_args(argv)
    try:
        rows, skipped = collect_rows(Path(args.results))
    except (SpotError, FileNotFoundError) as e:
        return report_error(e)
    if not rows:
        return report_error(f"{args.results}: no throughput reports found")
    table = format_markdown(rows, skipped)
    if args.md:
        write_text_atomic(args.md, table + "\n")
        print(f"wrote {args.md}")
    else:
        print(table)
    if args.png:
        print(f"wrote {plot_rows(rows, Path(args.png))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
