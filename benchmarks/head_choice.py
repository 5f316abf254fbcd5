"""Few-label model choices of the ``actrectut`` preset, made without test data:
``python -m benchmarks.head_choice --arms A=overrides ...``.

For each training subject and seed, the protocol's 10 % label split of that subject's stream (the
same seeded draw of ~1-minute pieces as ``spot_core.actrectut --variant sup10``) trains each arm,
``--variant sup10``: supervised on the labelled pieces only, or ``spot10``: SPOT's semi-supervised
recipe, which also trains on the unlabelled pieces without their labels. Every arm is scored on the
*unlabelled* pieces of the same subject (their hidden labels, in ~150-second pieces, tIoU
0.3:0.1:0.7). The other subject (the protocol's test stream) is never read. This is the development
protocol for few-label choices: it measures how well a few labelled minutes generalise to the rest
of the same stream (not to another subject: cross-subject shift is what it cannot see). Arms that
differ only in ``decode`` settings are scored on one trained model. One torch
thread. Prints one JSON line per subject, seed and arm and writes
``benchmarks/results/head_choice_<variant>.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from spot_core.cli import reports_errors, setup_logging
from spot_core.outputs import write_text_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "actrectut"


def unlabelled_runs(split) -> list[int]:
    """Indices (in :func:`~spot_core.data.streams.join_runs` order, the ``runNN`` of the split's
    training videos) of the unlabelled runs of ``split``'s training stream."""
    from spot_core.data.streams import join_runs

    labeled = set(split.labeled_pieces)
    status = [i in labeled for i in range(len(split.pieces))]
    return [j for j, (_, _, is_labeled) in enumerate(join_runs(split.pieces, status)) if not is_labeled]


def unlabelled_held_out(split, stream, piece_sec: float = 150.0, only: set[int] | None = None):
    """The unlabelled runs of ``split``'s training stream (those in ``only`` when given) as a scored
    set: ``(AnnotationSet, windows)``, each run cut at background into ~``piece_sec`` pieces,
    standardised with the split's statistics."""
    from spot_core.actrectut import SNIPPET_RATE
    from spot_core.data.annotations import AnnotationSet
    from spot_core.data.streams import cut_pieces, join_runs, sub_video
    from spot_core.data.windows import make_windows

    labeled = set(split.labeled_pieces)
    status = [i in labeled for i in range(len(split.pieces))]
    videos, feats = {}, {}
    for j, (a, b, is_labeled) in enumerate(join_runs(split.pieces, status)):
        if is_labeled or (only is not None and j not in only):
            continue
        run = sub_video(stream.video, a, b, "run", "validation", True, SNIPPET_RATE)
        for i, (pa, pb) in enumerate(cut_pieces(run, b - a, piece_sec, SNIPPET_RATE)):
            name = f"{stream.name}/held{j:02d}_{i:02d}"
            videos[name] = sub_video(stream.video, a + pa, a + pb, name, "validation", True, SNIPPET_RATE)
            feats[name] = split.stats.apply(stream.features[a + pa : a + pb])
    held = AnnotationSet(videos, list(split.cfg.class_names))
    windows = make_windows(held, feats, split.cfg, snippet_rate=SNIPPET_RATE, targets=False, progress=False)
    return held, windows


def held_out_arms(
    data: Path,
    subject: str,
    seed: int,
    arms: list[tuple[str, tuple[str, ...]]],
    variant: str = "sup10",
    inductive: bool = False,
) -> dict[str, dict[str, Any]]:
    """Train the ``variant`` row (``sup10``: the labelled pieces only; ``spot10``: SPOT's
    semi-supervised recipe, which also trains on the unlabelled pieces, without their labels) of the
    preset + each arm's overrides on ``subject`` and score it on that subject's unlabelled pieces.
    ``inductive``: every other unlabelled run (the 2nd, 4th, ...) is kept out of training altogether
    and only those runs are scored, so a ``spot10`` arm is scored on data it never saw, not on the
    pieces it pseudo-labelled. Arms whose configs differ only in ``decode`` share one trained model.
    Returns, per arm name, ``{"average_mAP": %, "labeled_s", "held_out_s"}``."""
    import dataclasses

    from spot_core.actrectut import (
        build_split,
        default_train_stride,
        evaluate_split,
        load_subjects,
        training_settings,
        variant_config,
    )
    from spot_core.checkpoint import load_model
    from spot_core.config import SpotConfig
    from spot_core.training import train_on_windows

    classes, streams = load_subjects(data)
    if subject not in streams:
        raise ValueError(f"no subject {subject!r} in {data}; there are {sorted(streams)}")
    s = streams[subject]
    if variant not in ("sup10", "spot10"):
        raise ValueError(f"variant must be sup10 or spot10, got {variant!r}")
    trained: list[tuple[dict, Any, Any, Any, Any]] = []  # (settings, model, split, held, windows)
    out = {}
    for name, sets in arms:
        cfg = variant_config(SpotConfig.preset("actrectut").override(list(sets)), variant, seed)
        settings = training_settings(cfg)
        hit = next((t for t in trained if t[0] == settings), None)
        if hit is None:  # a new training config: split, held-out pieces and model built once
            split = build_split(
                cfg,
                classes,
                s,
                s,
                labeled_fraction=0.1,
                split_seed=seed,
                train_stride=default_train_stride(cfg),
            )
            only = set(unlabelled_runs(split)[1::2]) if inductive else None
            held, windows = unlabelled_held_out(split, s, only=only)
            with tempfile.TemporaryDirectory() as tmp:
                torch.manual_seed(seed)
                train = split.train_windows
                if variant != "spot10":
                    train = [w for w in train if w.labeled]
                if only is not None:
                    out_of_training = {f"{s.name}/run{j:02d}" for j in only}
                    train = [w for w in train if w.video_id not in out_of_training]
                train_on_windows(split.cfg, train, None, [], tmp, progress=False)
                model, _ = load_model(Path(tmp) / "last.safetensors")
            hit = (settings, model, split, held, windows)
            trained.append(hit)
        _, model, split, held, windows = hit
        scored = dataclasses.replace(split, test_set=held, test_windows=windows)
        res = evaluate_split(model, scored, split.cfg.replace(decode=cfg.decode))
        out[name] = {
            "average_mAP": round(100 * res["average_mAP"], 2),
            "labeled_s": split.labeled_seconds,
            "held_out_s": round(sum(held.durations().values()), 1),
        }
    return out


def parse_arm(text: str) -> tuple[str, tuple[str, ...]]:
    """``name=override,override`` -> (name, overrides); ``name=`` is the preset itself."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"an arm is NAME=OVERRIDE[,OVERRIDE...] (NAME= for none), got {text!r}"
        )
    return name, tuple(o for o in rest.split(",") if o)


@reports_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.head_choice", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--subjects", nargs="+", default=["subject1_gesture", "subject2_gesture"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument(
        "--arms", type=parse_arm, nargs="+", required=True,
        help="NAME=OVERRIDE[,OVERRIDE...] of the actrectut preset per arm (NAME= for the preset)",
    )  # fmt: skip
    p.add_argument(
        "--variant", default="sup10", choices=("sup10", "spot10"),
        help="sup10: supervised on the labelled pieces (default); spot10: SPOT's semi-supervised recipe",
    )  # fmt: skip
    p.add_argument(
        "--inductive", action="store_true",
        help="keep every other unlabelled run out of training and score only those (spot10 arms are "
        "then scored on data they never saw, not on the pieces they pseudo-labelled)",
    )  # fmt: skip
    p.add_argument("--json", type=Path, help="default: benchmarks/results/head_choice_<variant>.json")
    args = p.parse_args(argv)
    args.json = args.json or RESULTS_DIR / f"head_choice_{args.variant}.json"
    setup_logging(1)
    torch.set_num_threads(1)
    if not args.data.is_dir():
        p.error(f"--data {args.data}: no such folder (the ActRecTut streams, ../shared/data/actrectut)")
    rows = []
    for seed in args.seeds:
        for subject in args.subjects:
            scored = held_out_arms(args.data, subject, seed, args.arms, args.variant, args.inductive)
            for name, sets in args.arms:
                row = {
                    "subject": subject,
                    "seed": seed,
                    "variant": args.variant,
                    "arm": name,
                    "sets": list(sets),
                    "inductive": args.inductive,
                }
                rows.append({**row, **scored[name]})
                print(json.dumps(rows[-1]), flush=True)
    means = {}
    for name, _ in args.arms:
        vals = [r["average_mAP"] for r in rows if r["arm"] == name]
        means[name] = round(sum(vals) / len(vals), 2)
    print(json.dumps({"mean_average_mAP": means}), flush=True)
    arms = " ".join(f"{n}={','.join(s)}" for n, s in args.arms)
    seeds = " ".join(map(str, args.seeds))
    command = f"python -m benchmarks.head_choice --variant {args.variant} --seeds {seeds} --arms {arms}"
    if args.inductive:
        command += " --inductive"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        args.json, json.dumps({"command": command, "runs": rows, "mean": means}, indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
