"""``python -m spot_core.train --preset toy --data DIR --out DIR [--resume]``: train SPOT.

Semi-supervised: ``--labeled-fraction F`` (or ``--split FILE``) keeps the labels of part of the
training videos; the rest are used unlabelled. ``--set semi.pretrain_epochs=N`` pretrains first
(``--no-pretrain`` sets it to 0); ``--no-refine`` turns off the contrastive boundary refinement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .cli import add_config_args, config_from_args, report_error, setup_logging
from .errors import SpotError


def semi_overrides(args: argparse.Namespace) -> list[str]:
    """The ``semi.*`` overrides that the semi-supervised flags stand for."""
    out = []
    if args.labeled_fraction is not None:
        out.append(f"semi.labeled_fraction={args.labeled_fraction!r}")
    if args.split is not None:
        out.append(f"semi.split_file={json.dumps(str(Path(args.split).resolve()))}")
    if args.no_pretrain:
        out.append("semi.pretrain_epochs=0")
    if args.no_refine:
        out.append("semi.refine=false")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spot_core.train", description=__doc__)
    add_config_args(p)
    p.add_argument("--data", required=True, help="dataset folder (annotations.json + features/)")
    p.add_argument("--out", required=True, help="output folder for checkpoints and logs")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument(
        "--device",
        default=None,
        help="torch device (default: cpu; under torchrun with GPUs present: cuda:LOCAL_RANK)",
    )
    g = p.add_argument_group("semi-supervised")
    lab = g.add_mutually_exclusive_group()
    lab.add_argument(
        "--labeled-fraction",
        type=float,
        metavar="F",
        help="keep the labels of this fraction of the training videos (seed: semi.split_seed)",
    )
    lab.add_argument("--split", metavar="FILE", help="video_info csv marking training_unlabel videos")
    g.add_argument("--no-pretrain", action="store_true", help="skip stage 1 (semi.pretrain_epochs=0)")
    g.add_argument("--no-refine", action="store_true", help="no contrastive boundary refinement")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    from .distributed import init_from_env
    from .training import train

    dc = init_from_env()  # torchrun: join the process group (gloo on CPU, nccl on GPUs)
    device = args.device or (f"cuda:{dc.local_rank}" if dc.enabled and torch.cuda.is_available() else "cpu")

    try:
        cfg = config_from_args(args)
        cfg = cfg.override(semi_overrides(args))
        res = train(
            cfg, args.data, args.out, resume=args.resume, progress=not args.no_progress, device=device
        )
        # every rank waits here for the others (rank 0 still validates and writes checkpoints):
        # a rank that tore down its gloo group while a peer was busy aborted once in CI
        dc.barrier()
    except (SpotError, ValueError, OSError, FloatingPointError) as e:
        # bad input (the message names the file or key) or a diverged loss: one line, no traceback
        msg = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
        return report_error(msg)
    finally:
        if dc.enabled:
            torch.distributed.destroy_process_group()
    if dc.is_main:
        print(
            f"best val average mAP {res.best_map:.4f} at epoch {res.best_epoch}; checkpoints in {res.out_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
