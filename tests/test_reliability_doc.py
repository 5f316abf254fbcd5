"""docs/reliability.md lists exactly the rows of the bad-invocation table (tests/test_bad_inputs.py)."""

from __future__ import annotations

import re
from pathlib import Path

from cases_core import CASES as CORE
from cases_runtime import CASES as RUNTIME

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


def test_doc_table_lists_every_case():
    rows = re.findall(r"^\| \d+ \| `([^`]+)` \| `([^`]+)` \|", DOC.read_text(), flags=re.M)
    doc = {case_id: cli for case_id, cli in rows}
    cases = {c.id: c.argv[1] for c in [*CORE, *RUNTIME]}
    assert len(rows) == len(doc), "a case is listed twice"
    assert doc == cases, {
        "only in the doc": sorted(doc.keys() - cases),
        "not in the doc": sorted(cases.keys() - doc),
    }
