"""Issue 17: bad invocations of every CLI, run as subprocesses (table in docs/reliability.md).

Each row of :data:`CASES` (``tests/cases_core.py``: training, data, evaluation, config, demo;
``tests/cases_runtime.py``: streaming, batch, export) asserts its exit status, one ``error:`` line
naming the problem, no traceback, and that every file that existed before the run is
byte-identical afterwards (:func:`bad_case.run_case`).
"""

from __future__ import annotations

import pytest
from bad_case import run_case
from cases_core import CASES as CORE
from cases_runtime import CASES as RUNTIME

CASES = [*CORE, *RUNTIME]


def test_table_is_large_and_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert len(CASES) >= 40
    missing = {str(g) for g in range(1, 10)} - {c.group for c in CASES}
    assert not missing, f"groups of issue 17 without a row: {sorted(missing)}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_invocation(case, tmp_path, toy_files):
    run_case(case, tmp_path, toy_files)
