"""The project's error family: every error a user can cause (a bad file, option, config or stream)
is a :class:`SpotError`, so each CLI catches one class and prints one line (exit status 2,
:func:`spot_core.cli.report_error`)."""

from __future__ import annotations

__all__ = ["SpotError"]


class SpotError(Exception):
    """Base of the project's errors; the message names the file, option or stream at fault."""
