"""Command line: temporal action detection mAP with the official ActivityNet semantics.

    python -m spot_core.evaluate --gt GT --pred PRED.json --protocol activitynet|thumos \\
        [--subset validation] [--video-info video_info_new.csv] [--json]

``--gt`` is the official ActivityNet JSON (read with the official code's leniency), the SPOT/BSN
``anet_anno_action.json`` (subsets from ``video_info_new.csv`` next to it, or ``--video-info``) or a
THUMOS14 annotation csv (subset ``validation`` for ``val*`` files, ``test`` for ``test*``, else
``--subset``). ``--subset`` picks the ground-truth subset as the official code does (default
``validation``; for the THUMOS14 test csv pass ``--subset test``).
Prints a table, or with ``--json`` one JSON object with ``average_mAP`` and ``mAP`` per tIoU threshold.
Bad input prints ``error: FILE: problem`` and exits with status 2. All the logic is in
:mod:`spot_core.evaluation`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from spot_core.cli import add_debug_arg, reports_errors, setup_logging
from spot_core.evaluation import (
    PROTOCOLS,
    evaluate_detection,
    load_ground_truth,
    load_predictions,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m spot_core.evaluate",
        description="Detection mAP, identical to the official ActivityNet evaluation code.",
    )
    ap.add_argument(
        "--gt", required=True, help="ground truth: ActivityNet JSON, anet_anno_action.json or THUMOS csv"
    )
    ap.add_argument(
        "--pred", required=True, help='prediction JSON {"results": {video: [{segment, label, score}]}}'
    )
    ap.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS), help="tIoU thresholds to use")
    ap.add_argument(
        "--subset", default="validation", help="ground-truth subset to evaluate (default: validation)"
    )
    ap.add_argument(
        "--video-info", default=None, help="video_info csv giving the subsets of anet_anno_action.json"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_debug_arg(ap)
    return ap


@reports_errors  # bad input: one "error: FILE: problem" line, exit status 2
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(0)
    gt = load_ground_truth(args.gt, video_info=args.video_info, subset=args.subset)
    preds = load_predictions(args.pred)
    result = evaluate_detection(
        gt, preds, PROTOCOLS[args.protocol], subset=args.subset, pred_source=args.pred
    )
    if args.json:
        out = result.to_dict()
        out["protocol"] = args.protocol
        print(json.dumps(out))
    else:
        print(f"protocol {args.protocol}")
        print(result.format_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
