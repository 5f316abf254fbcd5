"""Decode of the ``actrectut`` preset, chosen without test data: ``python -m benchmarks.decode_choice``.

For each subject and seed, the model of the ``actrectut`` preset (all labels, the ``sup100`` row) is
trained on the first ``--train-frac`` of that subject's stream (cut at background,
:func:`spot_core.data.streams.cut_pieces`) and the decode variants are scored on the rest of the
*same* subject, in ~150-second pieces, at tIoU 0.3:0.1:0.7. The other subject (the protocol's test
stream) is never read. One torch thread. Prints one JSON line per subject and seed and writes
``benchmarks/results/decode_choice.json``. Every variant spells out its decode settings, so the
table does not change meaning when the preset's decode does.
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

RESULTS = Path(__file__).resolve().parent / "results" / "decode_choice.json"
ORIGINAL_CLASS_THRESHOLDS = "decode.class_thresholds=[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9]"
ORIGINAL_MASK_THRESHOLDS = "decode.mask_thresholds=[0.0,0.2,0.4,0.6,0.8]"
#: box voting off (decode.vote_iou)
NO_VOTE = "decode.vote_iou=null"
#: name -> decode overrides (of every setting the variants vary, so the names hold for any preset)
VARIANTS: dict[str, tuple[str, ...]] = {
    "with class proposals (original step 5)": (ORIGINAL_CLASS_THRESHOLDS, ORIGINAL_MASK_THRESHOLDS, NO_VOTE),
    "mask only, thresholds 0/0.2/0.4/0.6/0.8 (original)": (
        "decode.class_thresholds=[]",
        ORIGINAL_MASK_THRESHOLDS,
        NO_VOTE,
    ),
    "mask only, threshold 0.5": ("decode.class_thresholds=[]", "decode.mask_thresholds=[0.5]", NO_VOTE),
    "mask only, thresholds 0.3/0.5/0.7": (
        "decode.class_thresholds=[]",
        "decode.mask_thresholds=[0.3,0.5,0.7]",
        NO_VOTE,
    ),
    "mask only, threshold 0.5, Soft-NMS sigma 0.3": (
        "decode.class_thresholds=[]",
        "decode.mask_thresholds=[0.5]",
        "decode.nms_sigma=0.3",
        NO_VOTE,
    ),
    "mask only, original thresholds, top_k 64": (
        "decode.class_thresholds=[]",
        ORIGINAL_MASK_THRESHOLDS,
        "decode.top_k=64",
        NO_VOTE,
    ),
}


def held_out_run(
    data: Path, subject: str, seed: int = 0, train_frac: float = 0.7, sets: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Train on the first ``train_frac`` of ``subject``'s pieces, score every variant on the rest."""
    from spot_core.actrectut import (
        SNIPPET_RATE,
        Stream,
        build_split,
        default_train_stride,
        evaluate_split,
        load_subjects,
        variant_config,
    )
    from spot_core.checkpoint import load_model
    from spot_core.config import SpotConfig
    from spot_core.data.streams import cut_pieces, sub_video
    from spot_core.training import train_on_windows

    classes, streams = load_subjects(data)
    s = streams[subject]
    pieces = cut_pieces(s.video, s.num_snippets, 60.0, SNIPPET_RATE)
    cut = pieces[int(train_frac * len(pieces))][0]
    n = s.num_snippets
    a_name, b_name = f"{subject}_a", f"{subject}_b"
    a = Stream(a_name, s.features[:cut], sub_video(s.video, 0, cut, a_name, "training", True, SNIPPET_RATE))
    b = Stream(b_name, s.features[cut:], sub_video(s.video, cut, n, b_name, "validation", True, SNIPPET_RATE))
    cfg = variant_config(SpotConfig.preset("actrectut").override(list(sets)), "sup100", seed)  # sup100 row
    split = build_split(cfg, classes, a, b, train_stride=default_train_stride(cfg), test_piece_sec=150.0)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(seed)
        train_on_windows(split.cfg, split.train_windows, None, [], tmp, progress=False)
        model, mcfg = load_model(Path(tmp) / "last.safetensors")
    scores = {
        name: round(100 * evaluate_split(model, split, mcfg.override(list(dec)))["average_mAP"], 2)
        for name, dec in VARIANTS.items()
    }
    return {
        "subject": subject,
        "seed": seed,
        "train_frac": train_frac,
        "train_snippets": cut,
        "held_out_snippets": n - cut,
        "average_mAP": scores,
    }


@reports_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_choice", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "actrectut"
    )
    p.add_argument("--subjects", nargs="+", default=["subject1_gesture", "subject2_gesture"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train-frac", type=float, default=0.7, help="share of each subject's pieces trained on")
    p.add_argument("--json", type=Path, default=RESULTS)
    p.add_argument("--set", dest="sets", nargs="*", default=[], help="overrides of the actrectut preset")
    args = p.parse_args(argv)
    setup_logging(1)
    torch.set_num_threads(1)
    if not 0.1 <= args.train_frac <= 0.9:
        p.error(f"--train-frac must be in [0.1, 0.9], got {args.train_frac}")
    rows = []
    for seed in args.seeds:
        for subject in args.subjects:
            rows.append(held_out_run(args.data, subject, seed, args.train_frac, sets=tuple(args.sets)))
            print(json.dumps(rows[-1]), flush=True)
    command = " ".join(
        [
            "python -m benchmarks.decode_choice",
            f"--train-frac {args.train_frac}",
            "--seeds",
            *map(str, args.seeds),
        ]
        + (["--set", *args.sets] if args.sets else [])
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.json, json.dumps({"command": command, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
