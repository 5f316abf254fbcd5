"""Long streams as data: feature streams read from files, one ``[N, C]`` array per stream.

A stream is one long recording (hours of snippets) that the runtime pushes through a detector
chunk by chunk. :func:`read_stream` reads and checks one file; :func:`load_streams` reads a file
or a folder of them (one stream per file, named after the file), keeping the good streams and
reporting the bad files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .features import FeatureError, load_features

__all__ = ["STREAM_SUFFIXES", "load_streams", "read_stream"]

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
