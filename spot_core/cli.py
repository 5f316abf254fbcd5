"""Helpers shared by the command-line entry points (config selection, logging, error reports)."""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
from collections.abc import Callable

from .config import ConfigError, SpotConfig
from .errors import SpotError


def add_config_args(p: argparse.ArgumentParser, default_preset: str | None = "toy") -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", type=str, help="YAML config file")
    g.add_argument(
        "--preset",
        type=str,
        default=None,
        help=f"named preset ({', '.join(SpotConfig.preset_names())}); default {default_preset}",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. --set train.epochs=5 model.num_heads=2",
    )
    p.set_defaults(_default_preset=default_preset)


def config_from_args(args: argparse.Namespace) -> SpotConfig:
    if args.config:
        cfg = SpotConfig.from_yaml(args.config)
    else:
        name = args.preset or args._default_preset
        if name is None:
            raise ConfigError("give --config FILE or --preset NAME")
        cfg = SpotConfig.preset(name)
    return cfg.override(args.overrides)


LOG_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)


def setup_logging(verbosity: int | bool = 1) -> None:
    """The one logging setup of every CLI: ``verbosity`` 0 warnings only, 1 info, 2 (or more) debug.

    A bool is the old ``--verbose`` flag: True means debug, False info. Messages go to stderr as
    ``HH:MM:SS LEVEL logger: message``.
    """
    if isinstance(verbosity, bool):
        verbosity = 2 if verbosity else 1
    logging.basicConfig(
        level=LOG_LEVELS[min(max(verbosity, 0), len(LOG_LEVELS) - 1)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def report_error(message: object) -> int:
    """Print ``error: <message>`` as one line on stderr (whitespace runs collapsed) and return 2,
    the exit status of every entry point on bad input."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


#: exit status of a CLI stopped by Ctrl-C (SIGINT), as a shell reports it (128 + 2)
EXIT_INTERRUPTED = 130


def add_debug_arg(p: argparse.ArgumentParser) -> None:
    """``--debug``: show the full traceback instead of the one-line ``error:`` message."""
    p.add_argument("--debug", action="store_true", help="on error, show the traceback (for bug reports)")


def _debug_requested(args: tuple, kwargs: dict) -> bool:
    argv = kwargs.get("argv", args[0] if args else None)
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in list(argv) or os.environ.get("SPOT_DEBUG", "") not in ("", "0")


def os_error_message(e: OSError) -> str:
    """One line for an OSError: ``<file>: <reason>`` when it names a file."""
    if e.filename:
        return f"{e.filename}: {e.strerror or e}"
    return str(e)


def reports_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a CLI ``main``: the one error path of every entry point.

    A :class:`SpotError` (bad file, option, config or stream; the message names it), a ``ValueError``
    from option checks or an ``OSError`` (a file that cannot be read or written) is printed as one
    ``error:`` line, exit status 2; Ctrl-C prints ``interrupted`` and exits 130 (outputs are written
    atomically, so every earlier one is intact). ``--debug`` (or ``SPOT_DEBUG=1``) re-raises with
    the traceback instead.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        debug = _debug_requested(args, kwargs)
        try:
            return main(*args, **kwargs)
        except (SpotError, ValueError) as e:
            if debug:
                raise
            return report_error(e)
        except OSError as e:
            if debug:
                raise
            return report_error(os_error_message(e))
        except KeyboardInterrupt:
            if debug:
                raise
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapper


def check_device(name: str | None, *, what: str = "--device") -> str | None:
    """Validate a torch device string before any work: a name torch knows, and for CUDA a machine
    that has it (index in range). Returns ``name`` unchanged (None passes)."""
    if name is None:
        return None
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{what} {name!r}: not a device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} {name!r}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{what} {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ConfigError(f"{what} {name!r}: unsupported device type {dev.type!r} (use cpu or cuda)")
    return name


def positive_finite(value: float | None, what: str) -> float | None:
    """``value`` when it is a finite number > 0 (None passes); else a :class:`ConfigError` naming ``what``."""
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what} must be a finite number > 0, got {value}")
    return value
