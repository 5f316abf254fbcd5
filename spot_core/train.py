"""``python -m spot_core.train --preset toy --data DIR --out DIR [--resume]``: train SPOT."""

from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError
from .cli import add_config_args, config_from_args, setup_logging
from .config import ConfigError
from .data.annotations import AnnotationError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spot_core.train", description=__doc__)
    add_config_args(p)
    p.add_argument("--data", required=True, help="dataset folder (annotations.json + features/)")
    p.add_argument("--out", required=True, help="output folder for checkpoints and logs")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    from .training import train

    try:
        cfg = config_from_args(args)
        res = train(
            cfg, args.data, args.out, resume=args.resume, progress=not args.no_progress, device=args.device
        )
    except (ConfigError, CheckpointError, AnnotationError, ValueError, OSError, FloatingPointError) as e:
        # bad input (the message names the file or key) or a diverged loss: one line, no traceback
        msg = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
        print(f"error: {msg}".replace("\n", " "), file=sys.stderr)
        return 2
    print(f"best val average mAP {res.best_map:.4f} at epoch {res.best_epoch}; checkpoints in {res.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
