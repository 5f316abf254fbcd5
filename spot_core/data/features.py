"""Per-video snippet feature files and raw sensor streams.

A feature file holds one video: ``[N, C]`` (N snippets, C channels), either

- ``.npy``: a 2-D numeric array, or
- ``.csv``: the layout SPOT reads, a header row (``f0,f1,...``) then one row of C numbers per
  snippet (a file whose first row is numeric is read as having no header).

:func:`load_features` always returns float32 ``[N, C]`` and raises :class:`FeatureError` naming the
file for: a missing file, wrong ndim or dtype, zero snippets, a dimension other than the expected C,
non-numeric or ragged csv rows, a csv that is not UTF-8 text, NaN/Inf (with the first bad row).

A ``.npy`` file's header is checked before any data is read (:func:`read_npy_header`): the magic
and version, a plain (non-object, non-structured) dtype, and a shape whose byte count is exactly
what the file holds after its header. An empty file, a truncated one, or a header claiming a huge
shape is a :class:`FeatureError` and nothing is allocated for it; nothing is ever unpickled.

Bad files in a folder: a *dataset* (training, evaluation, ``prepare``) is all or nothing: the first
unusable file stops the run with one error naming it, before any output is written. A folder of
*streams* to score (:func:`spot_core.data.streams.load_streams`) reports each bad file and goes on
with the others.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from spot_core.errors import SpotError

from .annotations import Video

logger = logging.getLogger(__name__)

FEATURE_EXTS = ("npy", "csv")


class FeatureError(SpotError, ValueError):
    """A feature file is missing or unusable. The message names the file."""


def _check(
    arr: np.ndarray, path: Path, expected_dim: int | None, first_line: int | None = None
) -> np.ndarray:
    """Validate ``[N, C]`` and cast to float32; ``first_line``: file line of row 0 (csv)."""
    if arr.ndim != 2:
        raise FeatureError(f"{path}: expected a 2-D [snippets, channels] array, got shape {arr.shape}")
    real = np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    if arr.dtype == np.bool_ or not real:
        raise FeatureError(f"{path}: expected a real numeric array, got dtype {arr.dtype}")
    n, c = arr.shape
    if n == 0:
        raise FeatureError(f"{path}: zero snippets (shape {arr.shape})")
    if c == 0:
        raise FeatureError(f"{path}: zero channels (shape {arr.shape})")
    if expected_dim is not None and c != expected_dim:
        raise FeatureError(f"{path}: {c} channels per snippet, expected {expected_dim}")
    with np.errstate(over="ignore"):  # reported below as a non-finite value
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        row = int(np.argmin(finite.all(axis=1)))
        col = int(np.argmin(finite[row]))
        raise FeatureError(
            f"{path}: non-finite value {float(arr[row, col])} in row {row} (snippet"
            + (f", line {row + first_line}" if first_line is not None else "")
            + f"), channel {col}"
            + (" (float32 overflow)" if np.isfinite(arr[row, col]) else "")
        )
    return out


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header says (:func:`read_npy_header`)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # bytes before the data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


#: the longest ``.npy`` header read (numpy's own limit for untrusted files)
MAX_NPY_HEADER = 10_000


def read_npy_header(path: str | Path) -> NpyHeader:
    """Read and check a ``.npy`` header without reading the data; :class:`FeatureError` naming
    the file when it is empty, not a ``.npy`` file (magic, version 1.0 / 2.0, header syntax),
    holds objects (pickle) or a structured dtype, or when the data the header describes (shape x
    item size) is not exactly the bytes after the header (truncated file, or a header claiming a
    huge shape: refused before anything is allocated)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise FeatureError(f"{path}: empty file (0 bytes), not a .npy array")
        with path.open("rb") as f:
            try:
                version = npy_format.read_magic(f)
            except ValueError:
                raise FeatureError(f"{path}: not a .npy file (no NUMPY magic string)") from None
            read = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
            if version not in read:
                raise FeatureError(f"{path}: unsupported .npy format version {version[0]}.{version[1]}")
            try:
                shape, fortran, dtype = read[version](f, max_header_size=MAX_NPY_HEADER)
            except Exception as e:  # noqa: BLE001 - numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError...
                reason = " ".join(str(e).split())[:200]
                raise FeatureError(f"{path}: corrupt .npy header ({type(e).__name__}: {reason})") from None
            offset = f.tell()
    except OSError as e:
        raise FeatureError(f"{path}: cannot read ({e.strerror or e})") from None
    if dtype.hasobject:
        raise FeatureError(f"{path}: .npy array of Python objects (dtype {dtype}); only numbers are read")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise FeatureError(f"{path}: structured .npy dtype {dtype}; expected plain numbers")
    if any(d < 0 for d in shape):
        raise FeatureError(f"{path}: negative size in the .npy shape {shape}")
    hdr = NpyHeader(tuple(int(d) for d in shape), dtype, bool(fortran), offset)
    if hdr.nbytes != size - offset:
        raise FeatureError(
            f"{path}: the header says shape {hdr.shape} of {dtype} ({hdr.nbytes} bytes of data) but the "
            f"file holds {size - offset} bytes after it (truncated or corrupt)"
        )
    return hdr


def save_npy_atomic(path: str | Path, arr: np.ndarray) -> Path:
    """``np.save`` through :func:`spot_core.outputs.atomic_write` (no pickle): a crash never leaves
    a truncated ``.npy`` under the final name."""
    from spot_core.outputs import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to the temporary name
            np.save(f, np.asarray(arr), allow_pickle=False)

    return atomic_write(path, write)


def _load_npy(path: Path) -> np.ndarray:
    """A checked ``.npy`` file read whole (its header first: :func:`read_npy_header`)."""
    read_npy_header(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise FeatureError(f"{path}: not a plain numeric .npy file: {e}") from None


def _load_csv(path: Path) -> tuple[np.ndarray, int]:
    """The csv's numbers and the file line number of the first data row."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise FeatureError(f"{path}: not a UTF-8 text csv (byte {e.start}: {e.reason})") from None
    except csv.Error as e:
        raise FeatureError(f"{path}: malformed csv ({e})") from None
    rows = [r for r in rows if r]  # tolerate a trailing blank line
    if not rows:
        raise FeatureError(f"{path}: empty csv file")
    header_lines = 0
    try:
        [float(x) for x in rows[0]]
    except ValueError:
        header_lines = 1  # a header such as f0,f1,...
    data = rows[header_lines:]
    if not data:
        raise FeatureError(f"{path}: zero snippets (header only)")
    width = len(rows[0])
    for i, r in enumerate(data):
        if len(r) != width:
            raise FeatureError(
                f"{path}: row {i} (line {i + 1 + header_lines}) has {len(r)} values, expected {width}"
            )
    try:
        return np.asarray(data, dtype=np.float64), 1 + header_lines
    except ValueError:
        for i, r in enumerate(data):
            for j, x in enumerate(r):
                try:
                    float(x)
                except ValueError:
                    raise FeatureError(
                        f"{path}: row {i} (line {i + 1 + header_lines}), column {j}: non-numeric value {x!r}"
                    ) from None
        raise


def load_features(path: str | Path, *, expected_dim: int | None = None) -> np.ndarray:
    """One video's features as float32 ``[N, C]`` from a ``.npy`` or ``.csv`` file."""
    path = Path(path)
    if not path.is_file():
        raise FeatureError(f"{path}: feature file not found")
    ext = path.suffix.lower().lstrip(".")
    if ext == "npy":
        arr = _load_npy(path)
    elif ext == "csv":
        arr, first_line = _load_csv(path)
        return _check(arr, path, expected_dim, first_line)
    else:
        raise FeatureError(f"{path}: unsupported feature file type {path.suffix!r}; use .npy or .csv")
    return _check(arr, path, expected_dim)


class FeatureStore(Mapping[str, np.ndarray]):
    """Video id -> features ``[N, C]`` float32, read from ``<root>/<video_id>.<ext>`` on access.

    ``transform`` (optional) is applied to every loaded array, e.g.
    ``lambda x: snippetize_stream(x, 8)`` for raw sensor streams. :meth:`for_video` also honours
    :attr:`Video.feature_file` (a file name relative to ``root``). Nothing is cached.
    """

    def __init__(
        self,
        root: str | Path,
        ext: str = "npy",
        *,
        expected_dim: int | None = None,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.root = Path(root)
        self.ext = ext.lower().lstrip(".")
        if self.ext not in FEATURE_EXTS:
            raise FeatureError(f"unsupported feature extension {ext!r}; use one of {FEATURE_EXTS}")
        if not self.root.is_dir():
            raise FeatureError(f"{self.root}: feature folder not found")
        self.expected_dim = expected_dim
        self.transform = transform

    def path(self, video_id: str) -> Path:
        return self.root / f"{video_id}.{self.ext}"

    def _load(self, path: Path) -> np.ndarray:
        if self.transform is None:
            return load_features(path, expected_dim=self.expected_dim)
        arr = self.transform(load_features(path))
        return _check(np.asarray(arr), path, self.expected_dim)

    def __getitem__(self, video_id: str) -> np.ndarray:
        path = self.path(video_id)
        if not path.is_file():
            raise KeyError(f"{path}: feature file not found for video {video_id!r}")
        return self._load(path)

    def load(self, video_id: str) -> np.ndarray:
        """Like ``store[video_id]`` but raises :class:`FeatureError` (not KeyError) when missing."""
        path = self.path(video_id)
        if not path.is_file():
            raise FeatureError(f"{path}: feature file not found for video {video_id!r}")
        return self._load(path)

    def for_video(self, video: Video) -> np.ndarray:
        """The video's features: ``video.feature_file`` under ``root`` when set, else by id."""
        if video.feature_file:
            path = self.root / video.feature_file
            if not path.is_file():
                raise FeatureError(f"{path}: feature file of video {video.video_id!r} not found")
            return self._load(path)
        return self.load(video.video_id)

    def has_video(self, video: Video) -> bool:
        if video.feature_file:
            return (self.root / video.feature_file).is_file()
        return self.path(video.video_id).is_file()

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and self.path(video_id).is_file()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(p.stem for p in self.root.glob(f"*.{self.ext}")))

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob(f"*.{self.ext}"))

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r}, ext={self.ext!r})"


STREAM_STATS = ("mean", "std", "min", "max")


def snippetize_stream(samples: np.ndarray, samples_per_snippet: int) -> np.ndarray:
    """Raw multichannel stream ``[S, ch]`` -> snippet features ``[N, 4*ch]`` float32.

    Snippet i covers samples ``[i*m, (i+1)*m)`` with ``m = samples_per_snippet``;
    ``N = S // m`` (a trailing partial snippet is dropped, so a stream's snippet i is the same
    whatever comes after it). Columns are grouped by statistic: ``[mean(ch) | std(ch) | min(ch) |
    max(ch)]``, i.e. column ``k*ch + c`` is statistic k (:data:`STREAM_STATS`) of channel c; std is the
    population std (ddof 0). Computed in float64.
    """
    x = np.asarray(samples)
    if x.ndim != 2:
        raise FeatureError(f"stream must be [samples, channels], got shape {x.shape}")
    if samples_per_snippet < 1:
        raise FeatureError(f"samples_per_snippet must be >= 1, got {samples_per_snippet}")
    n = x.shape[0] // samples_per_snippet
    if n == 0:
        raise FeatureError(
            f"stream of {x.shape[0]} samples is shorter than one snippet ({samples_per_snippet} samples)"
        )
    if not np.isfinite(x).all():
        row = int(np.argmin(np.isfinite(x).all(axis=1)))
        raise FeatureError(f"stream has a non-finite value at sample {row}")
    blocks = x[: n * samples_per_snippet].astype(np.float64).reshape(n, samples_per_snippet, x.shape[1])
    stats = [blocks.mean(1), blocks.std(1), blocks.min(1), blocks.max(1)]
    return np.concatenate(stats, axis=1).astype(np.float32)
