"""Training curves of one ActRecTut run, a diagnostic:
``python -m benchmarks.curves --direction D --variant V --seed S [--set ...]``.

Trains exactly the run of ``python -m spot_core.actrectut --direction D --variant V --seed S`` (same
split, seeds and settings: its last epoch is bit for bit the model that command scores) and, after
every fine-tuning epoch, scores the model that epoch would save:

- ``test``: on the test subject (the protocol's number is the *last* epoch's; the curve is for
  reading how a recipe behaves, never for picking an epoch or a setting);
- ``held_out`` (10 % variants): on the training subject's unlabelled pieces, with their hidden
  labels (``benchmarks.head_choice``'s development set).

Appends one JSON line per run to ``benchmarks/results/curves.jsonl`` and, with ``--plot``, draws the
curves of every run in that file matching ``--direction`` / ``--variant`` (one torch thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from spot_core.cli import reports_errors, setup_logging

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "actrectut"


def run_curves(
    data: Path, direction: str, variant: str, seed: int, sets: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Train one run with per-epoch scoring. Returns ``{"test": [%...], "held_out": [%...], ...}``."""
    from benchmarks.head_choice import unlabelled_held_out
    from spot_core.actrectut import VARIANTS, direction_split, evaluate_split
    from spot_core.config import SpotConfig
    from spot_core.training import train_on_windows

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    cfg = SpotConfig.preset("actrectut").override(list(sets))
    split, windows, train_stream = direction_split(data, direction, cfg=cfg, variant=variant, seed=seed)
    held = None
    if VARIANTS[variant]["fraction"] is not None:
        hs, hw = unlabelled_held_out(split, train_stream)
        held = dataclasses.replace(split, test_set=hs, test_windows=hw)

    def hook(model, epoch: int) -> dict[str, float]:
        out = {"curve_test": evaluate_split(model, split)["average_mAP"]}
        if held is not None:
            out["curve_held_out"] = evaluate_split(model, held)["average_mAP"]
        return out

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(seed)  # as spot_core.actrectut.trained_direction
        res = train_on_windows(split.cfg, windows, None, [], tmp, progress=False, epoch_hook=hook)
    pct = lambda key: [round(100 * h[key], 2) for h in res.history if key in h]  # noqa: E731
    return {
        "test": pct("curve_test"),
        "held_out": pct("curve_held_out"),
        "lr": [h["lr"] for h in res.history],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def plot_curves(rows: list[dict], path: Path) -> None:
    """One panel per direction: test (solid) and held-out (dashed) average mAP per epoch; a dotted
    line where a step schedule cut the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirs = sorted({r["direction"] for r in rows})
    fig, axes = plt.subplots(1, len(dirs), figsize=(6 * len(dirs), 4), squeeze=False)
    for ax, d in zip(axes[0], dirs, strict=True):
        for i, r in enumerate(x for x in rows if x["direction"] == d):
            label = f"{r['variant']} seed {r['seed']}" + (f" {' '.join(r['sets'])}" if r["sets"] else "")
            ep = range(1, len(r["test"]) + 1)
            ax.plot(ep, r["test"], color=f"C{i}", label=f"{label}: test")
            if r["held_out"]:
                ax.plot(ep, r["held_out"], color=f"C{i}", ls="--", label=f"{label}: held-out")
            lr = r.get("lr") or []
            # lr[k] is the rate after epoch k + 1 (1-based): a drop there starts at epoch k + 2
            for k in (k for k in range(1, len(lr)) if lr[k] < 0.5 * lr[k - 1]):
                ax.axvline(k + 1.5, color=f"C{i}", ls=":", lw=0.8)
        ax.set(title=f"ActRecTut {d}", xlabel="fine-tuning epoch", ylabel="average mAP (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@reports_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--direction", default="1->2")
    p.add_argument("--variant", default="spot10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], help="overrides of the actrectut preset")
    p.add_argument("--jsonl", type=Path, default=RESULTS_DIR / "curves.jsonl")
    p.add_argument("--plot", type=Path, help="draw the matching runs of --jsonl to this PNG")
    p.add_argument("--plot-only", action="store_true", help="draw --plot from --jsonl; train nothing")
    args = p.parse_args(argv)
    setup_logging(1)
    torch.set_num_threads(1)
    if args.plot_only and args.plot is None:
        p.error("--plot-only needs --plot PATH")
    if not args.plot_only:
        if not args.data.is_dir():
            p.error(f"--data {args.data}: no such folder (the ActRecTut streams, ../shared/data/actrectut)")
        row = {"direction": args.direction, "variant": args.variant, "seed": args.seed, "sets": args.set}
        row.update(run_curves(args.data, args.direction, args.variant, args.seed, tuple(args.set)))
        print(json.dumps(row), flush=True)
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with args.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
    if args.plot is not None:
        rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r["variant"] == args.variant]
        if not rows:
            p.error(f"{args.jsonl}: no run of variant {args.variant!r} to plot")
        plot_curves(rows, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
