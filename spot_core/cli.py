"""Helpers shared by the command-line entry points (config selection, logging, error reports)."""

from __future__ import annotations

import argparse
import functools
import logging
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


def reports_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a CLI ``main``: a :class:`SpotError` it raises is reported by :func:`report_error`
    (one line, exit status 2) instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except SpotError as e:
            return report_error(e)

    return wrapper
