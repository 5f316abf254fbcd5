"""Long streams as data: raw recordings, snippet features, labelled pieces.

A stream is one long recording (hours of snippets) that the runtime pushes through a detector
chunk by chunk. :func:`read_stream` reads and checks one file; :func:`load_streams` reads a file
or a folder of them (one stream per file, named after the file), keeping the good streams and
reporting the bad files; :func:`as_chunk` checks one chunk pushed into a live stream.

Raw recordings (multichannel samples ``[S, ch]`` at any rate) become snippet features through a
:class:`StreamFeaturizer` (samples per snippet, per-snippet statistics, standardisation fitted on
the training streams only), which training stores beside the model so that inference applies the
same one (:meth:`StreamFeaturizer.for_model`; :class:`RawChunker` for live samples). Labelled
pieces: :func:`split_pieces` cuts long training streams at background into pieces and keeps the
labels of a seeded fraction of them (``--labeled-fraction`` of ``spot_core.train`` on long
streams). Raw recordings + annotations -> a dataset folder: ``python -m spot_core.data.prepare``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .annotations import AnnotationSet, Instance, Video
from .features import STREAM_STATS, FeatureError, load_features, read_npy_header, snippetize_stream
from .windows import FeatureStats

__all__ = [
    "DEFAULT_STATS",
    "FEATURIZER_FILE",
    "SNIPPET_STATS",
    "STREAM_SUFFIXES",
    "ChunkError",
    "PieceSplit",
    "RawChunker",
    "StreamFeaturizer",
    "as_chunk",
    "cut_pieces",
    "draw_labeled",
    "forbidden_cuts",
    "join_runs",
    "load_streams",
    "read_stream",
    "snippet_features",
    "split_pieces",
    "sub_video",
]

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
    if not f.is_file():
        raise FeatureError(f"{f}: feature file not found")
    hdr = read_npy_header(f)  # checked before mapping: empty, truncated, huge claimed shape
    shape, dtype = hdr.shape, hdr.dtype
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise FeatureError(f"{f}: expected a 2-D [snippets >= 1, channels >= 1] array, got shape {shape}")
    if feat_dim is not None and shape[1] != feat_dim:
        raise FeatureError(f"{f}: {shape[1]} channels per snippet, the model expects {feat_dim}")
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise FeatureError(f"{f}: expected a real numeric array, got dtype {dtype}")
    try:
        return np.load(f, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise FeatureError(f"{f}: not a plain numeric .npy file ({e})") from None


def stream_id_for(stem: str, ids: Sequence[str]) -> str:
    """The annotated id a recording's file stem names: the id it equals or starts with (then
    followed by ``_``, ``-`` or ``.``; the longest such id wins), else the stem itself
    (``subject1_gesture_data`` -> ``subject1_gesture``)."""
    hits = [i for i in ids if stem == i or (stem.startswith(i) and stem[len(i)] in "_-.")]
    return max(hits, key=len) if hits else stem


def load_streams(
    path: str | Path, feat_dim: int
) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Path]]:
    """``{stream id: features [N, C]}`` from a file or a folder, ``{file: error}`` for unusable files
    and ``{stream id: file}``.

    A folder contributes its ``.npy`` and ``.csv`` files in name order (none is an error); each is
    read by :func:`read_stream`. A file that fails (empty, truncated, a hostile ``.npy`` header,
    wrong width, NaN...), or a second file for the same stream id, is reported in the errors and
    the other streams go on: a folder of streams to *score* is not all or nothing (a *dataset*
    folder is: :mod:`spot_core.data.features`).
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
    if x.dtype.kind not in "fiu":  # float, signed or unsigned integer (not bool, complex, object...)
        raise ChunkError(f"chunk must be real numbers, got dtype {x.dtype}")
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        with np.errstate(over="ignore"):
            x = np.ascontiguousarray(x, dtype=np.float32)
    # fast path: the sum of finite values is finite unless it overflows; only then look closer
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(x, axis=None)
    if np.isfinite(total):
        return x
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.argmin(finite.all(axis=1)))
        col = int(np.argmin(finite[row]))
        raise ChunkError(f"non-finite value {x[row, col]} in channel {col} (chunk row {row})", row)
    return x


# ------------------------------------------------------------------------------ raw recordings
#: the per-snippet statistics a raw stream can be summarised by (columns grouped by statistic)
SNIPPET_STATS: dict[str, Any] = {
    "mean": lambda b: b.mean(1),
    "std": lambda b: b.std(1),
    "min": lambda b: b.min(1),
    "max": lambda b: b.max(1),
    "rms": lambda b: np.sqrt((b * b).mean(1)),
    "range": lambda b: b.max(1) - b.min(1),
}
DEFAULT_STATS = STREAM_STATS
#: the featuriser stored beside a checkpoint (and in a prepared dataset folder)
FEATURIZER_FILE = "stream_features.json"


def _check_stats(stats: Sequence[str]) -> tuple[str, ...]:
    stats = tuple(stats)
    unknown = [s for s in stats if s not in SNIPPET_STATS]
    if unknown or not stats:
        raise FeatureError(
            f"unknown snippet statistics {unknown or '(none)'}: choose from {list(SNIPPET_STATS)}"
        )
    return stats


def snippet_features(
    samples: np.ndarray, samples_per_snippet: int, stats: Sequence[str] = DEFAULT_STATS
) -> np.ndarray:
    """Raw stream ``[S, ch]`` -> snippet features ``[S // m, len(stats) * ch]`` float32.

    Column ``k * ch + c`` is statistic ``stats[k]`` (:data:`SNIPPET_STATS`) of channel c over the
    snippet's ``m`` samples (computed in float64; a trailing partial snippet is dropped). The default
    ``mean | std | min | max`` is :func:`spot_core.data.features.snippetize_stream` itself."""
    stats = tuple(stats)
    unknown = [s for s in stats if s not in SNIPPET_STATS]
    if unknown or not stats:
        raise FeatureError(
            f"unknown snippet statistics {unknown or '(none)'}; choose from {list(SNIPPET_STATS)}"
        )
    if stats == DEFAULT_STATS:
        return snippetize_stream(samples, samples_per_snippet)
    x = np.asarray(samples)
    first = snippetize_stream(x, samples_per_snippet)  # the same checks (shape, length, finite)
    n, ch = first.shape[0], x.shape[1]
    blocks = x[: n * samples_per_snippet].astype(np.float64).reshape(n, samples_per_snippet, ch)
    return np.concatenate([SNIPPET_STATS[s](blocks) for s in stats], axis=1).astype(np.float32)


@dataclass(frozen=True, eq=False)
class StreamFeaturizer:
    """Raw samples ``[S, ch]`` -> standardised snippet features ``[S // m, len(stats) * ch]``.

    ``samples_per_snippet`` (m) and ``stats`` choose the snippet summary (:func:`snippet_features`);
    ``sample_rate`` (samples per second) gives the snippet rate ``sample_rate / m``; ``mean`` /
    ``std`` (``[len(stats) * ch]``, fitted by :meth:`fit` on training streams only) standardise.
    Saved as JSON (:meth:`save`, :data:`FEATURIZER_FILE`) beside the checkpoint so that inference
    applies exactly the training-time transform (:meth:`for_model`)."""

    samples_per_snippet: int = 8
    stats: tuple[str, ...] = DEFAULT_STATS
    sample_rate: float | None = None
    channels: int | None = None
    mean: np.ndarray | None = None  # [C] float32
    std: np.ndarray | None = None  # [C] float32

    def __post_init__(self) -> None:
        if self.samples_per_snippet < 1:
            raise FeatureError(f"samples per snippet must be >= 1, got {self.samples_per_snippet}")
        if self.sample_rate is not None and not self.sample_rate > 0:
            raise FeatureError(f"sample rate must be > 0, got {self.sample_rate}")
        unknown = [s for s in self.stats if s not in SNIPPET_STATS]
        if unknown or not self.stats:
            raise FeatureError(
                f"unknown snippet statistics {unknown or '(none)'}; choose from {list(SNIPPET_STATS)}"
            )

    @property
    def snippet_rate(self) -> float | None:
        """Snippets per second (None when the sample rate is unknown)."""
        return None if self.sample_rate is None else self.sample_rate / self.samples_per_snippet

    @property
    def feat_dim(self) -> int | None:
        """C, the width of the snippet features (None before the channels are known)."""
        return None if self.channels is None else self.channels * len(self.stats)

    def snippets(self, samples: np.ndarray) -> np.ndarray:
        """Unstandardised snippet features ``[S // m, C]`` of a raw stream ``[S, ch]``."""
        x = np.asarray(samples)
        if self.channels is not None and (x.ndim != 2 or x.shape[1] != self.channels):
            raise FeatureError(f"raw stream of shape {x.shape}: expected [samples, {self.channels} channels]")
        return snippet_features(x, self.samples_per_snippet, self.stats)

    def standardise(self, feats: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` per channel (unchanged when not fitted)."""
        if self.mean is None or self.std is None:
            return np.ascontiguousarray(feats, dtype=np.float32)
        return FeatureStats(self.mean, self.std).apply(feats)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Standardised snippet features ``[S // m, C]`` of a raw stream ``[S, ch]``."""
        return self.standardise(self.snippets(samples))

    def fit(self, train_snippets: Iterable[np.ndarray]) -> StreamFeaturizer:
        """A copy standardising with the per-channel mean / std of ``train_snippets`` (each the
        unstandardised ``[N, C]`` of one *training* stream)."""
        arrays = list(train_snippets)
        if not arrays:
            raise FeatureError("no training streams to fit the standardisation on")
        st = FeatureStats.fit(arrays)
        ch = arrays[0].shape[1] // len(self.stats)
        return dataclasses.replace(self, channels=ch, mean=st.mean, std=st.std)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "spot-stream-features-v1",
            "samples_per_snippet": self.samples_per_snippet,
            "stats": list(self.stats),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "mean": None if self.mean is None else [float(v) for v in self.mean],
            "std": None if self.std is None else [float(v) for v in self.std],
        }

    @staticmethod
    def from_dict(d: dict[str, Any], where: str = "featurizer") -> StreamFeaturizer:
        if not isinstance(d, dict) or d.get("format") != "spot-stream-features-v1":
            raise FeatureError(f"{where}: not a stream featuriser file (format spot-stream-features-v1)")
        try:
            mean = None if d["mean"] is None else np.asarray(d["mean"], dtype=np.float32)
            std = None if d["std"] is None else np.asarray(d["std"], dtype=np.float32)
            for name, v in (("mean", mean), ("std", std)):
                if v is not None and (v.ndim != 1 or not np.isfinite(v).all()):
                    raise ValueError(f"{name!r} must be a list of finite numbers")
            return StreamFeaturizer(
                int(d["samples_per_snippet"]), tuple(d["stats"]), d["sample_rate"], d["channels"], mean, std
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FeatureError(f"{where}: invalid stream featuriser ({e})") from None

    def save(self, path: str | Path) -> Path:
        """Write the featuriser as JSON (atomically)."""
        from ..outputs import write_json_atomic

        return write_json_atomic(path, self.to_dict(), indent=1)

    @staticmethod
    def load(path: str | Path) -> StreamFeaturizer:
        from .annotations import parse_json

        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FeatureError(f"{path}: stream featuriser file not found") from None
        except OSError as e:
            raise FeatureError(f"{path}: unreadable stream featuriser ({e.strerror or e})") from None
        return StreamFeaturizer.from_dict(parse_json(data, path, FeatureError), str(path))

    @staticmethod
    def for_model(model_file: str | Path) -> StreamFeaturizer:
        """The featuriser stored beside a checkpoint (``<folder>/stream_features.json``)."""
        f = Path(model_file).parent / FEATURIZER_FILE
        if not f.is_file():
            raise FeatureError(
                f"{f}: not found; raw recordings need the featuriser that training stored beside the model "
                "(train on a folder written by python -m spot_core.data.streams)"
            )
        return StreamFeaturizer.load(f)


class RawChunker:
    """Live raw samples -> standardised snippets: :meth:`push` any number of samples ``[n, ch]``; it
    returns the snippets completed so far (a partial snippet waits for the next push), the same rows
    as the featuriser on the whole stream."""

    def __init__(self, featurizer: StreamFeaturizer) -> None:
        self.f = featurizer
        self._rest: np.ndarray | None = None

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Snippets ``[k, C]`` completed by these samples (k >= 0)."""
        x = np.asarray(samples)
        if self._rest is not None and self._rest.shape[0]:
            x = np.concatenate([self._rest, x.astype(self._rest.dtype, copy=False)])
        m = self.f.samples_per_snippet
        n = x.shape[0] // m
        self._rest = x[n * m :].copy()
        if n == 0:
            return np.zeros((0, self.f.feat_dim or 0), dtype=np.float32)
        return self.f(x[: n * m])


# ------------------------------------------------------------------------------ labelled pieces
def forbidden_cuts(video: Video, num_snippets: int, rate: float) -> np.ndarray:
    """``[N + 1]`` bool: snippet boundary c may not be a cut (an instance covers or touches a snippet
    on both sides of it: c in ``[floor(start * rate), ceil(end * rate)]``)."""
    bad = np.zeros(num_snippets + 1, dtype=bool)
    for inst in video.instances:
        a = max(int(math.floor(inst.start * rate)), 0)
        b = min(int(math.ceil(inst.end * rate)), num_snippets)
        if b >= a:
            bad[a : b + 1] = True
    return bad


def cut_pieces(video: Video, num_snippets: int, piece_sec: float, rate: float) -> list[tuple[int, int]]:
    """Cut ``[0, N)`` snippets into pieces of about ``piece_sec``: ``[(a, b), ...]`` covering the stream.

    Each cut is the allowed boundary (:func:`forbidden_cuts`: in background) nearest to
    ``k * piece_sec``; a piece is at least half a piece long, so the last piece takes the remainder
    (up to 1.5 pieces).
    """
    n = num_snippets
    step = piece_sec * rate
    bad = forbidden_cuts(video, n, rate)
    ok = np.flatnonzero(~bad)
    cuts = [0]
    k = 1
    while k * step < n:
        target = k * step
        k += 1
        lo, hi = cuts[-1] + 0.5 * step, n - 0.5 * step
        cand = ok[(ok >= lo) & (ok <= hi)]
        if cand.size == 0:
            continue
        c = int(cand[np.argmin(np.abs(cand - target))])
        if c > cuts[-1]:
            cuts.append(c)
    cuts.append(n)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def draw_labeled(num_pieces: int, fraction: float, seed: int) -> list[int]:
    """Indices (sorted) of the pieces that keep their labels: a seeded random ``round(fraction * n)``,
    at least one."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    k = min(num_pieces, max(1, round(fraction * num_pieces)))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(num_pieces, size=k, replace=False))


def sub_video(video: Video, a: int, b: int, name: str, subset: str, labeled: bool, rate: float) -> Video:
    """Snippets ``[a, b)`` of a stream as a video of its own (instances shifted to its start)."""
    t0, t1 = a / rate, b / rate
    inst = [
        Instance(i.start - t0, i.end - t0, i.label) for i in video.instances if i.start >= t0 and i.end <= t1
    ]
    return Video(
        video_id=name,
        duration=t1 - t0,
        subset=subset,
        instances=inst,
        labeled=labeled,
        fps=rate,
        num_frames=b - a,
    )


def join_runs(pieces: list[tuple[int, int]], status: list[bool]) -> list[tuple[int, int, bool]]:
    """Consecutive pieces of the same status joined: ``[(a, b, status), ...]``."""
    out: list[tuple[int, int, bool]] = []
    for (a, b), s in zip(pieces, status, strict=True):
        if out and out[-1][2] == s and out[-1][1] == a:
            out[-1] = (out[-1][0], b, s)
        else:
            out.append((a, b, s))
    return out


@dataclass
class PieceSplit:
    """Training streams cut into labelled / unlabelled runs (:func:`split_pieces`)."""

    annotations: AnnotationSet  # one video per run (subset training / training_unlabel)
    features: dict[str, np.ndarray]  # [n, C] per run
    pieces: dict[str, list[tuple[int, int]]]  # per stream: its pieces (snippets)
    labeled: list[tuple[str, int]]  # (stream, piece index) of the pieces that keep labels


def split_pieces(
    streams: Mapping[str, tuple[Video, np.ndarray, float]],
    classes: Sequence[str],
    fraction: float,
    seed: int = 0,
    piece_sec: float = 60.0,
) -> PieceSplit:
    """Cut every training stream ``{id: (video, features [N, C], snippet rate)}`` into pieces of
    about ``piece_sec`` at background (:func:`cut_pieces`), keep the labels of a seeded fraction of
    all pieces (:func:`draw_labeled` over the pieces of all streams, in stream order), and join
    consecutive pieces of the same status into one training video (``<id>/runNN``)."""
    pieces = {sid: cut_pieces(v, f.shape[0], piece_sec, r) for sid, (v, f, r) in streams.items()}
    flat = [(sid, i) for sid, p in pieces.items() for i in range(len(p))]
    if not flat:
        raise ValueError("no training streams to cut into pieces")
    keep = {flat[j] for j in draw_labeled(len(flat), fraction, seed)}
    videos: dict[str, Video] = {}
    feats: dict[str, np.ndarray] = {}
    for sid, (v, f, r) in streams.items():
        status = [(sid, i) in keep for i in range(len(pieces[sid]))]
        for j, (a, b, s) in enumerate(join_runs(pieces[sid], status)):
            name = f"{sid}/run{j:02d}"
            videos[name] = sub_video(v, a, b, name, "training" if s else "training_unlabel", s, r)
            feats[name] = f[a:b]
    return PieceSplit(AnnotationSet(videos, list(classes)), feats, pieces, sorted(keep))
