"""``python -m spot_core.train --preset toy --data DIR --out DIR [--resume]``: train SPOT.

Sizes: with a preset that takes them from the data (``--preset stream``) the feature width, class
count, class names and snippet rate come from ``--data`` unless ``--set`` fixes them; any other
preset must match the data (a clear error otherwise). A folder written by
``python -m spot_core.data.prepare`` has a ``stream_features.json`` (the raw-stream featuriser and
its standardisation); it is copied beside the checkpoints for inference on raw recordings.

Semi-supervised: ``--labeled-fraction F`` (or ``--split FILE``) keeps the labels of part of the
training videos; the rest are used unlabelled. In window mode, when a training stream is longer
than two pieces (``--piece-sec``, default 60 s), the streams are cut at background into pieces
and ``F`` of the pieces keep their labels (:func:`spot_core.data.datasets.load_piece_windows`).
``--set semi.pretrain_epochs=N`` pretrains first (``--no-pretrain`` sets it to 0); ``--no-refine``
turns off the contrastive boundary refinement.

Outputs: ``--out`` must not hold a training run already (``train_state.pt``, checkpoints,
``metrics.jsonl``...): pass ``--resume`` to continue it or ``--overwrite`` to replace it (the old
run's files are removed once the new run's data has loaded). Every file is written atomically, so
Ctrl-C (exit status 130) or a crash leaves the last complete checkpoint loadable and resumable.
Bad input (a file, option or config value) is one ``error:`` line naming it, exit status 2, before
anything is written; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from .cli import (
    add_config_args,
    add_debug_arg,
    check_device,
    config_from_args,
    positive_finite,
    reports_errors,
    setup_logging,
)
from .outputs import OutputError, check_output


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


log = logging.getLogger(__name__)


def fixed_keys(args: argparse.Namespace) -> set[str]:
    """The config keys the command line fixes (``--set KEY=...``)."""
    return {a.split("=", 1)[0].strip() for a in args.overrides if "=" in a}


def use_pieces(cfg, data_dir: str | Path, piece_sec: float) -> bool:
    """Labelled pieces rather than whole videos: a label fraction, window mode, and a training stream
    longer than two pieces."""
    if cfg.semi.labeled_fraction is None or cfg.data.mode != "window":
        return False
    from .data.annotations import load_annotations
    from .data.datasets import ANNOTATIONS_FILE

    aset = load_annotations(Path(data_dir) / ANNOTATIONS_FILE)
    return any(v.duration > 2 * piece_sec for v in aset.training())


def train_pieces(cfg, data_dir: str | Path, out_dir: str | Path, piece_sec: float, **kw):
    """:func:`spot_core.training.train_on_windows` on labelled pieces of the training streams,
    validated on the folder's validation streams."""
    from .data.datasets import load_dataset, load_piece_windows
    from .training import train_on_windows

    sc = cfg.semi
    _, windows, _ = load_piece_windows(
        data_dir, cfg, sc.labeled_fraction, seed=sc.split_seed, piece_sec=piece_sec
    )
    val_set, val_windows = load_dataset(data_dir, cfg, "validation")
    if not cfg.class_names:
        cfg = cfg.replace(class_names=tuple(val_set.classes))
    return train_on_windows(cfg, windows, val_set, val_windows, out_dir, **kw)


def check_run_folder(out: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Before any work: ``out`` can hold a run (a writable folder, or a path where one can be made),
    and holds no earlier run unless ``resume`` or ``overwrite``. :class:`OutputError` otherwise."""
    from .training import RUN_FILES

    check_output(out, what="--out", folder=True)
    if resume or overwrite:
        return
    found = [name for name in RUN_FILES if (Path(out) / name).exists()]
    if found:
        raise OutputError(
            f"--out {out}: holds a training run ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}); "
            "pass --resume to continue it or --overwrite to replace it"
        )


@reports_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spot_core.train", description=__doc__)
    add_config_args(p)
    p.add_argument("--data", required=True, help="dataset folder (annotations.json + features/)")
    p.add_argument("--out", required=True, help="output folder for checkpoints and logs")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    again.add_argument(
        "--overwrite", action="store_true", help="replace the training run OUT holds (default: refuse)"
    )
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
    g.add_argument(
        "--piece-sec",
        type=float,
        default=60.0,
        metavar="S",
        help="window mode, long streams: label pieces of about S seconds cut at background (default 60)",
    )
    g.add_argument("--no-pretrain", action="store_true", help="skip stage 1 (semi.pretrain_epochs=0)")
    g.add_argument("--no-refine", action="store_true", help="no contrastive boundary refinement")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    add_debug_arg(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    # every check of the command line before any work (and before torchrun's ranks meet)
    check_device(args.device)
    positive_finite(args.piece_sec, "--piece-sec")
    check_run_folder(args.out, resume=args.resume, overwrite=args.overwrite)
    from .distributed import init_from_env
    from .training import train

    dc = init_from_env()  # torchrun: join the process group (gloo on CPU, nccl on GPUs)
    device = args.device or (f"cuda:{dc.local_rank}" if dc.enabled and torch.cuda.is_available() else "cpu")

    try:
        from .data.datasets import sized_from_data
        from .data.streams import FEATURIZER_FILE
        from .outputs import write_bytes_atomic

        cfg = sized_from_data(config_from_args(args), args.data, fixed_keys(args))
        cfg = cfg.override(semi_overrides(args))
        kw = {"resume": args.resume, "progress": not args.no_progress, "device": device}
        if use_pieces(cfg, args.data, args.piece_sec):
            res = train_pieces(cfg, args.data, args.out, args.piece_sec, **kw)
        else:
            res = train(cfg, args.data, args.out, **kw)
        featurizer = Path(args.data) / FEATURIZER_FILE
        if dc.is_main and featurizer.is_file():
            write_bytes_atomic(Path(args.out) / FEATURIZER_FILE, featurizer.read_bytes())
        # every rank waits here for the others (rank 0 still validates and writes checkpoints):
        # a rank that tore down its gloo group while a peer was busy aborted once in CI
        dc.barrier()
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
