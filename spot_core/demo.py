"""``python -m spot_core.demo [--out DIR]``: the main job on the embedded synthetic data.

Generates the synthetic data set, trains SPOT (toy preset), evaluates it on the validation videos,
fits the per-snippet linear baseline on the same labels, writes the detections JSON and a timeline
PNG, and prints a results table.

``--out`` is the demo's own folder: a second demo run into it replaces the earlier demo's files
(each written atomically). A bad ``--preset``, ``--set`` or ``--out`` (a file, an unwritable place)
is one ``error:`` line before anything is generated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli import add_config_args, add_debug_arg, config_from_args, reports_errors, setup_logging
from .outputs import check_output, write_json_atomic


def run_demo(
    out: Path,
    cfg,
    *,
    seed: int = 0,
    progress: bool = True,
    num_train: int | None = None,
    num_val: int | None = None,
) -> dict:
    """Generate data, train, evaluate SPOT and the baseline. Returns the summary dict.

    ``num_train`` / ``num_val``: videos to generate (None: the generator's defaults).
    """
    from .baseline import fit_linear, predict_linear
    from .checkpoint import load_model
    from .data.datasets import load_dataset
    from .data.synthetic import generate_dataset
    from .evaluation import PROTOCOLS, evaluate_detection
    from .inference import predict_windows
    from .plots import plot_timelines
    from .training import train

    t0 = time.perf_counter()
    sizes = {k: v for k, v in (("num_train", num_train), ("num_val", num_val)) if v is not None}
    data_dir = generate_dataset(out / "data", cfg, seed=seed, **sizes)
    t_gen = time.perf_counter() - t0
    res = train(cfg, data_dir, out / "run", progress=progress)
    t_train = time.perf_counter() - t0 - t_gen
    # Report the last epoch's model: picking the best epoch on the validation videos and then
    # reporting its mAP on those same videos would be an optimistic number.
    model, cfg = load_model(out / "run" / "last.safetensors")
    train_set, train_windows = load_dataset(data_dir, cfg, "training")
    val_set, val_windows = load_dataset(data_dir, cfg, "validation")
    durations = val_set.durations()
    tious = PROTOCOLS[cfg.data.protocol]

    preds = predict_windows(model, val_windows, cfg, durations=durations)
    write_json_atomic(out / "detections.json", preds)
    spot = evaluate_detection(val_set, preds["results"], tious, subset=None)

    lin = fit_linear(train_windows, cfg.model.num_classes, seed=seed)
    base_preds = predict_linear(lin, val_windows, cfg, durations)
    write_json_atomic(out / "baseline_detections.json", base_preds)
    base = evaluate_detection(val_set, base_preds["results"], tious, subset=None)

    vids = sorted(val_set.videos)[:4]
    plot_timelines(
        val_set, preds["results"], vids, out / "timeline.png", title="SPOT on the embedded validation set"
    )
    summary = {
        "tious": [round(float(t), 2) for t in tious],
        "spot": spot.to_dict(),
        "baseline_linear": base.to_dict(),
        "epochs": cfg.train.epochs,
        "best_epoch": res.best_epoch,
        "best_epoch_val_average_mAP": res.best_map,
        "train_videos": len(train_set),
        "val_videos": len(val_set),
        "seconds": {
            "generate": round(t_gen, 1),
            "train": round(t_train, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }
    write_json_atomic(out / "summary.json", summary, indent=2)
    return summary


def format_table(summary: dict) -> str:
    tious = summary["tious"]
    head = "| model | " + " | ".join(f"mAP@{t:.2f}" for t in tious) + " | average mAP |"
    sep = "|" + "---|" * (len(tious) + 2)
    rows = [head, sep]
    for name, key in (
        ("SPOT (toy preset, last epoch)", "spot"),
        ("per-snippet linear + arg-max runs", "baseline_linear"),
    ):
        r = summary[key]
        rows.append(
            f"| {name} | "
            + " | ".join(f"{100 * m:.1f}" for m in r["mAP"].values())
            + f" | **{100 * r['average_mAP']:.1f}** |"
        )
    return "\n".join(rows)


@reports_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m spot_core.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, default_preset="toy")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    p.add_argument("--no-progress", action="store_true")
    add_debug_arg(p)
    args = p.parse_args(argv)
    setup_logging()
    out = Path(args.out)
    cfg = config_from_args(args)  # a bad --preset / --config / --set fails here, before any work
    check_output(out, what="--out", folder=True)
    for sub in ("data", "run"):
        check_output(out / sub, what="--out", folder=True)
    summary = run_demo(out, cfg, seed=args.seed, progress=not args.no_progress)
    print()
    print(format_table(summary))
    print(
        f"\n{summary['train_videos']} training / {summary['val_videos']} validation videos; "
        f"{summary['epochs']} epochs (best validation epoch: {summary['best_epoch']}); "
        f"{summary['seconds']['total']:.0f} s in all"
    )
    print(
        f"detections: {out / 'detections.json'}  timeline: {out / 'timeline.png'}  "
        f"summary: {out / 'summary.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
