"""Bad invocations of the spot_core CLIs (train, demo, evaluate, prepare, actrectut): rows of
``tests/test_bad_inputs.py`` (see ``tests/bad_case.py`` for the row type and what each asserts)."""

from __future__ import annotations

from bad_case import Case

CASES: list[Case] = []
