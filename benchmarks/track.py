"""Throughput and accuracy tracking over time: history, a regression gate, trend charts (issue 19).

::

    python -m benchmarks.track --run --subset ci --compare    # measure, save, gate (CI: < 1 minute)
    python -m benchmarks.track --run --subset full --compare  # toy, anet and actrectut windows
    python -m benchmarks.track --compare                      # the latest saved run vs the one before
    python -m benchmarks.track --png docs/img/track_trend.png # every tracked figure against commit
    python -m benchmarks.track --import-gpu benchmarks/results/gpu_nvidia_h200.json
    python -m benchmarks.track --run --checkpoint RUN/last.safetensors --compare   # your own model

History. ``--run`` runs ``benchmarks/test_bench_track.py`` under pytest-benchmark with
``--benchmark-autosave`` into ``--storage`` (default ``benchmarks/history``), one folder per machine
named by its CPU and torch thread count (``cpu-<model>-1t``; pytest-benchmark adds its own
platform sub-folder), so each run is a pytest-benchmark JSON holding the commit, the machine and,
per benchmark, the figures in ``extra_info``. GPU runs (``benchmarks.gpu_check`` reports) are
appended with ``--import-gpu`` (the GPU check does it itself) to ``gpu-<name>/``.

Gate. Absolute times move with the load of a shared machine, so the gate compares *ratios measured
within one run*: our offline path / the original pipeline, bf16 / fp32 forward, the streaming
runtime's per-window latency / one window's forward; on a GPU, fused path / reference, per
precision. Accuracy is tracked the same way: the embedded data's mAP and the bf16 edge model's mAP
cost. ``--compare`` compares each row of the newest run with the previous run of the same machine
and subset (else the newest of another machine of the same kind, said so), and exits 1 when a row
moved the wrong way by more than its tolerance (:data:`ROWS`), naming the row and the change.
Tolerances come from the measured run-to-run spread (``--spread N``: N runs in a row, written to
``benchmarks/results/track_spread_<machine>.json``; docs/tracking.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spot_core.cli import reports_errors
from spot_core.errors import SpotError
from spot_core.outputs import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORAGE = REPO / "benchmarks" / "history"
SUITE = "benchmarks/test_bench_track.py"


class TrackError(SpotError, ValueError):
    """A history folder or run file that cannot be used."""


@dataclass(frozen=True)
class Row:
    """A gated figure: ``higher`` is better or not; ``tol`` relative (ratios) or absolute (points)."""

    better: str  # "higher" | "lower"
    tol: float
    relative: bool
    what: str


#: Tolerances, from the measured run-to-run spread (``--spread 5 --subset ci``,
#: benchmarks/results/track_spread_*.json; docs/tracking.md): the speed ratios come from interleaved
#: rounds (test_ratios), whose largest deviation from the median over 5 runs was 4.5 % (bf16),
#: 11.5 % (speedup) and 9.8 % (stream) with a training run on the machine's other core; each
#: tolerance is about 3x that. The accuracy rows are deterministic on one machine (deviation 0);
#: their tolerances allow another CPU's float rounding.
ROWS: dict[str, Row] = {
    "speedup_vs_original": Row(
        "higher", 0.30, True, "the original pipeline's time / our offline path's, per window"
    ),
    "bf16_speedup": Row("higher", 0.15, True, "fp32 forward time / bf16 edge forward time, batch B"),
    "stream_overhead": Row("lower", 0.30, True, "streamed window's push / one window's forward, batch 1"),
    "map": Row("higher", 0.5, False, "embedded data, supervised, average mAP (points)"),
    "edge_map_cost": Row("lower", 0.3, False, "fp32 mAP - bf16 edge mAP (points)"),
    "fused_vs_reference": Row("higher", 0.30, True, "GPU whole path: fused / model + reference decode"),
}


# ----------------------------------------------------------------------------------- machines
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_isa() -> str:
    """The CPU's widest matrix / vector feature that changes our speed ratios (``amx``,
    ``avx512bf16``, ``avx512``, ``avx2``, ``base``): virtual machines often report only a family
    name ("AMD EPYC"), and a bf16 speedup differs between CPUs with and without native bf16."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "base"
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    for flag, name in (
        ("amx_bf16", "amx"),
        ("avx512_bf16", "avx512bf16"),
        ("avx512f", "avx512"),
        ("avx2", "avx2"),
    ):
        if flag in flags:
            return name
    return "base"


def machine_name(threads: int = 1) -> str:
    """``cpu-<cpu model>-<isa>-<threads>t``: the history folder of this machine."""
    from benchmarks.common import cpu_model

    return f"cpu-{_slug(cpu_model())}-{cpu_isa()}-{threads}t"


# ---------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    path: Path
    machine: str
    kind: str  # "cpu" | "gpu"
    subset: str
    commit: str
    time: str  # ISO datetime of the run
    rows: dict[str, float]  # "<preset>/<row>" -> value
    figures: dict[str, float]  # absolute figures (windows/s ...), charted, not gated


def _get(benchmarks: dict[tuple[str, str], dict], preset: str, figure: str, key: str) -> float | None:
    v = benchmarks.get((preset, figure), {}).get(key)
    return float(v) if v is not None else None


def cpu_rows(extra: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Gated rows and charted figures of one pytest-benchmark run (its benchmarks' ``extra_info``)."""
    by = {(e["preset"], e["figure"]): e for e in extra if "figure" in e}
    rows: dict[str, float] = {}
    figs: dict[str, float] = {}

    def ratio(p: str, slow: str, fast: str, median_key: str) -> float | None:
        """Time of ``slow`` / time of ``fast`` per window, from their best rounds when recorded (a
        load spike slows some rounds, rarely the best one), else from their medians."""
        a, b = _get(by, p, slow, "best_ms_per_window"), _get(by, p, fast, "best_ms_per_window")
        if not (a and b):
            a, b = _get(by, p, slow, median_key), _get(by, p, fast, median_key)
        return a / b if a and b else None

    for p in sorted({k[0] for k in by}):
        interleaved = by.get((p, "ratios")) or {}  # test_ratios: medians of interleaved rounds (preferred)
        for name in ("speedup_vs_original", "bf16_speedup", "stream_overhead"):
            if interleaved.get(name):
                rows[f"{p}/{name}"] = float(interleaved[name])
        ours, orig = _get(by, p, "ours", "windows_per_s"), _get(by, p, "original", "windows_per_s")
        best = ratio(p, "original", "ours", "")
        if f"{p}/speedup_vs_original" in rows:
            pass
        elif best is not None:
            rows[f"{p}/speedup_vs_original"] = best
        elif ours and orig:
            rows[f"{p}/speedup_vs_original"] = ours / orig
        for name, slow, fast, key in (
            ("bf16_speedup", "forward_fp32", "forward_bf16", "ms_per_window"),
            ("stream_overhead", "stream", "forward_b1", "p50_ms"),
        ):
            v = ratio(p, slow, fast, key)
            if v is not None and f"{p}/{name}" not in rows:
                rows[f"{p}/{name}"] = v
        acc = by.get((p, "accuracy"))
        if acc:
            rows[f"{p}/map"] = float(acc["map_fp32"])
            rows[f"{p}/edge_map_cost"] = float(acc["edge_map_cost"])
        for fig, key, name in (
            ("ours", "windows_per_s", "ours windows/s"),
            ("original", "windows_per_s", "original windows/s"),
            ("stream", "p50_ms", "stream p50 ms"),
            ("stream", "p99_ms", "stream p99 ms"),
        ):
            v = _get(by, p, fig, key)
            if v is not None:
                figs[f"{p}/{name}"] = v
    return rows, figs


def gpu_rows(report: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Gated rows and charted figures of a ``benchmarks.gpu_check`` report (its ``whole_path``)."""
    rows: dict[str, float] = {}
    figs: dict[str, float] = {}
    for prec, per_batch in (report.get("whole_path") or {}).items():
        if not isinstance(per_batch, dict) or prec == "roofline":
            continue
        for batch, r in per_batch.items():
            if not isinstance(r, dict):
                continue
            ref, fused = (
                r.get("reference_windows_per_s"),
                r.get("fused_graph_windows_per_s") or r.get("fused_windows_per_s"),
            )
            if ref and fused:
                rows[f"anet/{prec}_{batch}/fused_vs_reference"] = fused / ref
                figs[f"anet/{prec}_{batch} fused windows/s"] = float(fused)
    return rows, figs


def load_run(path: Path) -> Run:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrackError(f"{path}: not a readable run file ({e})") from None
    meta = doc.get("spot_track") or {}
    commit = (doc.get("commit_info") or {}).get("id") or meta.get("commit") or "unknown"
    when = doc.get("datetime") or meta.get("time") or ""
    machine = meta.get("machine") or path.parent.name
    if "gpu_report" in doc:
        rows, figs = gpu_rows(doc["gpu_report"])
        return Run(path, machine, "gpu", meta.get("subset", "gpu"), commit, when, rows, figs)
    rows, figs = cpu_rows([b.get("extra_info") or {} for b in doc.get("benchmarks", [])])
    return Run(path, machine, "cpu", meta.get("subset", "full"), commit, when, rows, figs)


def history(storage: Path) -> list[Run]:
    """Every run under ``storage`` (``<machine>/**/*.json``), oldest first."""
    if not storage.is_dir():
        return []
    runs = [load_run(p) for p in sorted(storage.glob("*/**/*.json"))]
    return sorted(runs, key=lambda r: (r.time, r.path.name))


# ---------------------------------------------------------------------------------------- gate
def row_spec(name: str) -> Row:
    return ROWS[name.rsplit("/", 1)[1]]


def compare(new: Run, old: Run) -> list[dict[str, Any]]:
    """One dict per row both runs hold: old, new, change, tolerance, ``gated`` and ``ok``. Against
    another machine's run the speed ratios are shown but not gated (a CPU with AMX has another bf16
    speedup than one without); the accuracy rows are gated on every machine."""
    out = []
    same_machine = new.machine == old.machine
    for name in sorted(set(new.rows) & set(old.rows)):
        spec = row_spec(name)
        a, b = old.rows[name], new.rows[name]
        change = (b - a) / a if spec.relative and a else b - a
        worse = -change if spec.better == "higher" else change
        gated = same_machine or not spec.relative
        ok = worse <= spec.tol or not gated
        out.append({"row": name, "old": a, "new": b, "change": change, "tol": spec.tol,
                    "relative": spec.relative, "gated": gated, "ok": ok})  # fmt: skip
    return out


def baseline_for(new: Run, runs: Sequence[Run]) -> tuple[Run | None, str]:
    """The run to compare ``new`` with: the previous run of its machine and subset, else the newest
    run of the same kind and subset from another machine."""
    before = [r for r in runs if r.path != new.path and r.subset == new.subset and r.kind == new.kind]
    same = [
        r for r in before if r.machine == new.machine and (r.time, r.path.name) < (new.time, new.path.name)
    ]
    if same:
        return same[-1], "the previous run of this machine"
    other = [r for r in before if r.machine != new.machine]
    if other:
        return other[-1], f"the newest run of another machine ({other[-1].machine}): ratios only"
    return None, "no earlier run of this subset"


def format_compare(rows: Sequence[dict[str, Any]], new: Run, old: Run, why: str) -> str:
    lines = [f"{new.path.name} ({new.commit[:8]}) vs {old.path.name} ({old.commit[:8]}), {why}:"]
    for r in rows:
        ch = f"{100 * r['change']:+.1f} %" if r["relative"] else f"{r['change']:+.2f} pts"
        tol = f"{100 * r['tol']:.0f} %" if r["relative"] else f"{r['tol']:.2f} pts"
        verdict = ("ok" if r["ok"] else "REGRESSION") if r.get("gated", True) else "not gated (other machine)"
        lines.append(
            f"  {r['row']:<40} {r['old']:>9.3f} -> {r['new']:>9.3f}  {ch:>10} (tolerance {tol})  {verdict}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- run
def run_suite(
    storage: Path,
    subset: str,
    checkpoint: str | None = None,
    env: dict | None = None,
    select: str | None = None,
) -> Path:
    """Run the tracked suite once, autosaved into ``storage/<machine>``; returns the new run file.
    ``select``: a pytest ``-k`` expression (the tests run part of the suite)."""
    machine = machine_name(1)
    folder = storage / machine
    before = set(folder.glob("**/*.json")) if folder.is_dir() else set()
    e = {**os.environ, "SPOT_TRACK_SUBSET": subset, "SPOT_TRACK_MACHINE": machine, **(env or {})}
    if checkpoint:
        e["SPOT_TRACK_CHECKPOINT"] = str(Path(checkpoint).resolve())
    cmd = [sys.executable, "-m", "pytest", SUITE, "-q", "-p", "no:cacheprovider", "--benchmark-only",
           "--benchmark-autosave", f"--benchmark-storage=file://{folder}"]  # fmt: skip
    if select:
        cmd += ["-k", select]
    res = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True)
    if res.returncode != 0:
        raise TrackError(
            f"the tracked suite failed (exit {res.returncode}):\n{res.stdout[-3000:]}{res.stderr[-2000:]}"
        )
    new = sorted(set(folder.glob("**/*.json")) - before)
    if not new:
        raise TrackError(f"the tracked suite saved no run under {folder}")
    return new[-1]


def import_gpu(report_path: Path, storage: Path, commit: str | None = None, when: str | None = None) -> Path:
    """Append a GPU check report to the history (``gpu-<device>/NNNN_<commit>.json``)."""
    rep = json.loads(Path(report_path).read_text(encoding="utf-8"))
    env = rep.get("environment") or {}
    name = env.get("device_name") if isinstance(env, dict) else None
    if not name:
        raise TrackError(f"{report_path}: not a GPU check report (no environment.device_name)")
    if commit is None:
        commit, when2 = _git_commit_of(report_path)
        when = when or when2
    when = when or rep.get("started_utc", "")
    folder = storage / f"gpu-{_slug(name)}"
    n = len(list(folder.glob("*.json"))) + 1 if folder.is_dir() else 1
    doc = {"spot_track": {"machine": folder.name, "subset": "gpu", "commit": commit, "time": when,
                          "source": str(report_path)},
           "datetime": when, "commit_info": {"id": commit}, "gpu_report": rep}  # fmt: skip
    return write_json_atomic(folder / f"{n:04d}_{commit[:12]}.json", doc, indent=1)


def _git_commit_of(path: Path) -> tuple[str, str]:
    res = subprocess.run(["git", "log", "-1", "--format=%H %cI", "--", str(path)], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    parts = res.stdout.split()
    return (parts[0], parts[1]) if len(parts) == 2 else ("unknown", "")


# --------------------------------------------------------------------------------------- chart
def plot_trend(runs: Sequence[Run], out: Path) -> Path:
    """Each tracked figure against commit (in time order), one line per machine; CPU rows on the
    left, GPU rows on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    commits: list[str] = []
    for r in runs:
        if r.commit not in commits:
            commits.append(r.commit)
    cols = {"cpu": sorted({k for r in runs if r.kind == "cpu" for k in r.rows}),
            "gpu": sorted({k for r in runs if r.kind == "gpu" for k in r.rows})}  # fmt: skip
    n = max(1, max(len(v) for v in cols.values()))
    fig, axes = plt.subplots(n, 2, figsize=(12, 2.4 * n), squeeze=False)
    for c, kind in enumerate(("cpu", "gpu")):
        for i in range(n):
            ax = axes[i][c]
            if i >= len(cols[kind]):
                ax.axis("off")
                if i == 0:
                    ax.text(0.5, 0.5, f"no {kind.upper()} runs recorded", ha="center", va="center")
                continue
            name = cols[kind][i]
            for machine in sorted({r.machine for r in runs if r.kind == kind}):
                pts = [(commits.index(r.commit), r.rows[name]) for r in runs
                       if r.kind == kind and r.machine == machine and name in r.rows]  # fmt: skip
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, "o-", label=machine)
            spec = row_spec(name)
            ax.set_title(f"{kind.upper()} {name} ({spec.better} is better)", fontsize=9)
            ax.set_xticks(range(len(commits)), [c[:7] for c in commits], fontsize=7, rotation=45)
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
    fig.suptitle("tracked figures per commit (python -m benchmarks.track --png)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.4 * n)))  # room for the title
    out = Path(out)

    def save(tmp: str) -> None:
        fig.savefig(tmp, dpi=90, format="png")

    from spot_core.outputs import atomic_write

    atomic_write(out, save)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------- spread
def measure_spread(n: int, subset: str, out: Path) -> dict[str, Any]:
    """Run the suite ``n`` times into a temporary storage; per row: values, median, the largest
    relative (or absolute) deviation from the median."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = [load_run(run_suite(Path(tmp), subset)) for _ in range(n)]
    rep: dict[str, Any] = {"command": f"python -m benchmarks.track --spread {n} --subset {subset}",
                           "machine": machine_name(1), "rows": {}}  # fmt: skip
    for name in sorted(set.intersection(*(set(r.rows) for r in runs))):
        vals = [r.rows[name] for r in runs]
        med = statistics.median(vals)
        spec = row_spec(name)
        dev = max(abs(v - med) / med if spec.relative and med else abs(v - med) for v in vals)
        rep["rows"][name] = {"values": vals, "median": med, "max_deviation": dev, "relative": spec.relative,
                             "tolerance": spec.tol}  # fmt: skip
    write_json_atomic(out, rep, indent=1)
    return rep


# ----------------------------------------------------------------------------------------- CLI
@reports_errors
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.track", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--run", action="store_true", help="run the tracked suite and save it to the history")
    ap.add_argument("--subset", choices=["ci", "full"], default="full")
    ap.add_argument(
        "--checkpoint", help="track this model checkpoint (its window size) instead of the presets"
    )
    ap.add_argument("--compare", action="store_true", help="gate the newest run against the previous one")
    ap.add_argument("--png", type=Path, help="write the trend chart here")
    ap.add_argument("--import-gpu", nargs="+", type=Path, default=[], metavar="REPORT")
    ap.add_argument("--spread", type=int, metavar="N", help="measure the run-to-run spread over N runs")
    ap.add_argument("--storage", type=Path, default=DEFAULT_STORAGE)
    ap.add_argument("--debug", action="store_true", help="on error, show the traceback")
    args = ap.parse_args(argv)
    if not (args.run or args.compare or args.png or args.import_gpu or args.spread):
        ap.error("nothing to do: give --run, --compare, --png, --import-gpu or --spread")
    newest: Path | None = None
    for rep in args.import_gpu:
        print(f"imported {rep} -> {import_gpu(rep, args.storage)}")
    if args.spread:
        out = REPO / "benchmarks" / "results" / f"track_spread_{machine_name(1)}_{args.subset}.json"
        rep = measure_spread(args.spread, args.subset, out)
        for name, r in rep["rows"].items():
            print(f"{name:<40} median {r['median']:.3f}  max deviation {r['max_deviation']:.3f}  "
                  f"tolerance {r['tolerance']}")  # fmt: skip
        print(f"spread: {out}")
    if args.run:
        newest = run_suite(args.storage, args.subset, args.checkpoint)
        print(f"saved {newest.relative_to(args.storage) if newest.is_relative_to(args.storage) else newest}")
    status = 0
    if args.compare:
        runs = history(args.storage)
        if newest is not None:  # the run just made
            news = [r for r in runs if r.path == newest]
        else:  # the newest CPU run and the newest GPU run
            news = [k[-1] for k in ([r for r in runs if r.kind == kind] for kind in ("cpu", "gpu")) if k]
        if not news:
            raise TrackError(f"no run to compare under {args.storage}")
        for new in news:
            old, why = baseline_for(new, runs)
            if old is None:
                print(
                    f"{new.path.name}: {why}; nothing to compare (this run is the baseline of the next one)"
                )
                continue
            rows = compare(new, old)
            print(format_compare(rows, new, old, why))
            bad = [r for r in rows if not r["ok"]]
            for r in bad:
                ch = f"{100 * r['change']:+.1f} %" if r["relative"] else f"{r['change']:+.2f} points"
                print(
                    f"error: regression in {r['row']}: {r['old']:.3f} -> {r['new']:.3f} ({ch})",
                    file=sys.stderr,
                )
            status = 1 if bad else status
    if args.png:
        print(f"trend chart: {plot_trend(history(args.storage), args.png)}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
