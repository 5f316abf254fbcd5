"""Writing outputs safely: every file goes through a temporary file in its own folder and a rename.

A failed or interrupted run therefore never truncates an existing output: the old file stays under
its name until the new one is complete (flushed to disk) and renamed over it. The helpers here are
the only way the CLIs write JSON, ONNX, engines, checkpoints, shards and plots.

Also here: the checks a CLI makes on its output paths *before* a long run (:func:`check_output`),
the refusal to replace an earlier result without ``--overwrite`` (:func:`refuse_overwrite`), and the
digest files that let a later step verify what it loads (:func:`write_digest`, :func:`verify_digest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import SpotError

__all__ = [
    "DigestError",
    "OutputError",
    "atomic_write",
    "check_output",
    "digest_path",
    "refuse_overwrite",
    "sha256_file",
    "verify_digest",
    "write_bytes_atomic",
    "write_digest",
    "write_json_atomic",
    "write_text_atomic",
]


class OutputError(SpotError, ValueError):
    """An output path cannot be written (a folder, a read-only place) or would replace a result."""


class DigestError(SpotError, ValueError):
    """A file does not match the digest recorded when it was written (truncated or modified)."""


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it and rename it to ``path``.

    The temporary file is removed when ``write`` fails or the run is interrupted (any exception,
    KeyboardInterrupt included); ``path`` is then unchanged. An ``OSError`` while writing (a full
    disk) becomes an :class:`OutputError` that names ``path``. A symlink at ``path`` is replaced by
    the new file (its target is never written through).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"{path}: cannot write here ({e.strerror})") from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600; an output gets what open() would give
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a quota, an I/O error: name the output, not the temporary
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: could not be written ({e.strerror or e}); it is unchanged") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _mode_for(path: Path) -> int:
    """The permission bits of the file ``path`` replaces, else ``0o666`` less the umask."""
    try:
        if path.is_file() and not path.is_symlink():
            return path.stat().st_mode & 0o777
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = None) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (NaN / Inf refused: they are not JSON)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def check_output(path: str | Path | None, *, what: str = "--out", folder: bool = False) -> None:
    """Fail early (before any work) when ``path`` cannot be written: it is a folder where a file is
    expected (or a file where a folder is), or its folder is missing and cannot be made, or is not
    writable. ``None`` passes (no output asked for)."""
    if path is None:
        return
    p = Path(path)
    if folder:
        if p.exists() and not p.is_dir():
            raise OutputError(f"{what} {p}: is a file, expected a folder")
        parent = p if p.exists() else _first_existing(p)
    else:
        if p.is_dir():
            raise OutputError(f"{what} {p}: is a folder, expected a file path")
        parent = _first_existing(p.parent)
    if not parent.is_dir():
        raise OutputError(f"{what} {p}: {parent} is not a folder")
    # a real probe, not os.access: root passes os.access on read-only file systems (/proc, a
    # read-only mount) and the write would fail only after the work
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".spot-probe-")
    except OSError as e:
        raise OutputError(f"{what} {p}: {parent} is not writable ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def _first_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def refuse_overwrite(
    path: str | Path, overwrite: bool, *, what: str = "--out", hint: str = "--overwrite"
) -> None:
    """Raise :class:`OutputError` when ``path`` exists (a non-empty folder, or a file) and
    ``overwrite`` is false, so that an earlier result is never replaced by accident."""
    p = Path(path)
    if overwrite or not (p.exists() or p.is_symlink()):
        return
    if p.is_dir() and not any(p.iterdir()):
        return
    raise OutputError(f"{what} {p}: already exists; pass {hint} to replace it")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_path(path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.sha256``: the digest file written beside an output."""
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def write_digest(path: str | Path) -> Path:
    """Write ``<sha256>  <name>`` (the ``sha256sum`` format) beside ``path``; returns the digest file."""
    p = Path(path)
    return write_text_atomic(digest_path(p), f"{sha256_file(p)}  {p.name}\n")


def verify_digest(path: str | Path, expected: str | None = None, *, size: int | None = None) -> bool:
    """Check ``path`` against ``expected`` (hex sha256) or, when None, its digest file.

    Returns False when there is nothing to check against (no digest recorded: files written before
    digests existed, or by other tools), True when it matches. A mismatch raises :class:`DigestError`
    naming the file. ``size``: the recorded byte count, checked first (cheap, catches truncation).
    """
    p = Path(path)
    if size is not None and p.stat().st_size != size:
        raise DigestError(
            f"{p}: {p.stat().st_size} bytes, the recorded size is {size} (truncated or replaced)"
        )
    if expected is None:
        d = digest_path(p)
        if not d.is_file():
            return False
        try:
            expected = d.read_text(encoding="utf-8").split()[0]
        except (UnicodeDecodeError, IndexError):
            raise DigestError(f"{d}: not a sha256 digest file") from None
    if sha256_file(p) != expected.lower():
        raise DigestError(f"{p}: sha256 does not match the recorded digest (file modified or corrupt)")
    return True
