"""Long streams as data: feature streams read from files, one ``[N, C]`` array per stream.

A stream is one long recording (hours of snippets) that the runtime pushes through a detector
chunk by chunk. :func:`read_stream` reads and checks one file; :func:`load_streams` reads a file
or a folder of them (one stream per file, named after the file), keeping the good streams and
reporting the bad files; :func:`as_chunk` checks one chunk pushed into a live stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .features import FeatureError, load_features

__all__ = ["STREAM_SUFFIXES", "ChunkError", "as_chunk", "load_streams", "read_stream"]

#: file suffixes read as streams
STREAM_SUFFIXES = (".npy", ".csv")


def read_stream(file: str | Path, feat_dim: int | None = None) -> np.ndarray:
    """One stream ``[N, C]`` from a ``.npy`` or ``.csv`` file; :class:`FeatureError` naming the file.

    ``.npy`` files are memory-mapped (a 10-hour stream is not read into memory at once; NaN/Inf is
    found chunk by chunk while streaming) and must hold a real 2-D array with at least one row;
    ``.csv`` files are read whole by :func:`spot_core.data.features.load_features`. ``feat_dim``,
    when given, is the number of channels ``C`` the model expects.
    """
    f = Path(file)
    if f.suffix.lower() != ".npy":
        return load_features(f, expected_dim=feat_dim)
    try:
        arr = np.load(f, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise FeatureError(f"{f}: not a plain numeric .npy file ({e})") from None
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise FeatureError(f"{f}: expected a 2-D [snippets >= 1, channels] array, got shape {arr.shape}")
    if feat_dim is not None and arr.shape[1] != feat_dim:
        raise FeatureError(f"{f}: {arr.shape[1]} channels per snippet, the model expects {feat_dim}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise FeatureError(f"{f}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


def load_streams(
    path: str | Path, feat_dim: int
) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Path]]:
    """``{stream id: features [N, C]}`` from a file or a folder, ``{file: error}`` for unusable files
    and ``{stream id: file}``.

    A folder contributes its ``.npy`` and ``.csv`` files in name order (none is an error); each is
    read by :func:`read_stream`. A file that fails, or a second file for the same stream id, is
    reported in the errors and the other streams go on.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in STREAM_SUFFIXES)
        if not files:
            raise FeatureError(f"{path}: no .npy or .csv feature files in the folder")
    elif path.is_file():
        files = [path]
    else:
        raise FeatureError(f"{path}: feature file or folder not found")
    streams: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    sources: dict[str, Path] = {}
    for f in files:
        try:
            if f.stem in streams:
                raise FeatureError(f"{f}: a second file for stream {f.stem!r}")
            streams[f.stem] = read_stream(f, feat_dim)
            sources[f.stem] = f
        except FeatureError as e:
            errors[str(f)] = str(e)
    return streams, errors, sources


class ChunkError(FeatureError):
    """A chunk that cannot join a stream; ``row`` is the chunk row at fault (0: the whole chunk)."""

    def __init__(self, message: str, row: int = 0) -> None:
        super().__init__(message)
        self.row = row


def as_chunk(features: Any, feat_dim: int) -> np.ndarray:
    """A chunk of a stream, ``[n, C]`` real numbers (n >= 0), as contiguous float32; checked whole
    before anything is stored. :class:`ChunkError` names the problem (shape, channels, dtype, or
    the channel and row of the first NaN/Inf)."""
    C = feat_dim
    x = np.asarray(features)
    if x.ndim != 2:
        raise ChunkError(f"a chunk must be [n, C={C}], got shape {x.shape}")
    if x.shape[1] != C:
        raise ChunkError(f"chunk has {x.shape[1]} channels per snippet, the model expects {C}")
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ChunkError(f"chunk must be real numbers, got dtype {x.dtype}")
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.argmin(finite.all(axis=1)))
        col = int(np.argmin(finite[row]))
        raise ChunkError(f"non-finite value {x[row, col]} in channel {col} (chunk row {row})", row)
    return x
