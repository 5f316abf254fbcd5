"""The bad-invocation table's row type and runner (issue 17; used by ``tests/test_bad_inputs.py``).

A :class:`Case` is one CLI invocation a user could get wrong. The runner builds a fresh folder,
lets the case's ``setup`` write its files there (it may copy the toy model, ONNX and dataset of
the ``toy_files`` fixture), records the bytes of every file in that folder, runs the command as a
subprocess and asserts: the exit status, no traceback, exactly one ``error:`` line on stderr that
matches the case's message, and every file that existed before is byte-identical afterwards.

Placeholders in ``argv`` (``str.format``): ``{tmp}`` the case's folder, ``{ckpt}`` ``{onnx}``
``{data}`` the toy checkpoint, heads ONNX and dataset folder *copied into* ``{tmp}`` (so that their
bytes are checked too), ``{features}`` that dataset's feature folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    id: str  # unique, used as the pytest id
    group: str  # issue 17's "Found" group ("1".."9") or "extra"
    argv: tuple[str, ...]  # after the interpreter, e.g. ("-m", "runtime.stream", "--model", "{ckpt}")
    message: str  # regex searched in the one "error: ..." line
    setup: Callable[[Path], None] | None = None  # writes extra files into the case's folder
    code: int = 2  # expected exit status
    timeout: float = 180.0
    env: tuple[tuple[str, str], ...] = ()  # extra environment variables


def place_toy_files(tmp: Path, toy: dict) -> dict[str, str]:
    """Copy the toy checkpoint / ONNX / dataset into ``tmp``; returns the placeholder values."""
    shutil.copy(toy["ckpt"], tmp / "model.safetensors")
    shutil.copy(toy["onnx"], tmp / "model.onnx")
    shutil.copytree(toy["data"], tmp / "data")
    return {
        "tmp": str(tmp),
        "ckpt": str(tmp / "model.safetensors"),
        "onnx": str(tmp / "model.onnx"),
        "data": str(tmp / "data"),
        "features": str(tmp / "data" / "features"),
    }


def snapshot(root: Path) -> dict[str, bytes]:
    """Bytes of every regular file under ``root`` (symlinks: their target path)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = b"-> " + os.readlink(p).encode()
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def run_case(case: Case, tmp: Path, toy: dict) -> subprocess.CompletedProcess:
    """Run one case in ``tmp`` and assert everything the table promises (see the module doc)."""
    values = place_toy_files(tmp, toy)
    if case.setup is not None:
        case.setup(tmp)
    before = snapshot(tmp)
    argv = [a.format(**values) for a in case.argv]
    env = {**os.environ, "PYTHONPATH": str(REPO), **dict(case.env)}
    env.pop("SPOT_DEBUG", None)
    res = subprocess.run(
        [sys.executable, *argv], cwd=tmp, env=env, capture_output=True, text=True, timeout=case.timeout
    )
    what = f"{' '.join(argv)}\nstdout:\n{res.stdout[-2000:]}\nstderr:\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, what
    assert res.returncode == case.code, f"exit {res.returncode}, expected {case.code}: {what}"
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, f"expected one 'error:' line, got {len(errors)}: {what}"
    assert re.search(case.message, errors[0]), f"{case.message!r} not in {errors[0]!r}"
    after = snapshot(tmp)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"pre-existing files changed or removed: {changed}: {what}"
    return res
