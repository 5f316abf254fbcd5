"""Streaming sliding-window detection over many concurrent streams (DESIGN.md section 5).

::

    det = StreamDetector(session, stride=50, snippet_rate=2.0)
    det.open("cam0")
    for chunk in chunks:                 # features [n, C], any n >= 0 (one snippet at a time included)
        early = det.push("cam0", chunk)  # preview detections (final=False) of any stream
    final = det.close("cam0")            # the exact result (final=True): equal to the offline output

Windows are exactly the offline windows (:func:`spot_core.data.windows.slide_video`); complete
windows of all streams share one FIFO queue and run in batches of ``session.batch_size`` (a partial
batch once its oldest window has waited ``max_delay_s``). :meth:`StreamDetector.close` returns the
offline output (:func:`runtime.offline.offline_detect`) bit for bit, through the same final merge
(:func:`runtime.merge.final_merge`); :meth:`StreamDetector.push` returns only previews, because no
detection is certain before the stream ends. Memory is bounded by the window and the open streams,
except the compact per-window detections the exact merge needs (16 bytes per detection). A bad
chunk raises :class:`StreamError` before anything of it is stored; a model failure drops only the
streams whose window fails. docs/runtime.md ("Stream detector", "Memory") gives the details, the
reasons and the measurements.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spot_core.cli import positive_finite
from spot_core.config import ConfigError, SpotConfig
from spot_core.data.streams import ChunkError, as_chunk
from spot_core.data.windows import window_starts
from spot_core.decode import results_json
from spot_core.errors import SpotError

from .merge import final_merge, local_soft_nms
from .session import Session

log = logging.getLogger(__name__)

__all__ = ["BYTES_PER_DETECTION", "Detection", "StreamDetector", "StreamError"]

#: compact storage of one decoded detection kept for the final merge: start, end (int32), score
#: (float32), label (int32)
BYTES_PER_DETECTION = 16
#: how many recently closed stream ids are remembered (to say "already closed" rather than "unknown")
CLOSED_IDS_KEPT = 10_000
#: how many per-window latencies ``record_latency`` keeps
LATENCIES_KEPT = 1_000_000
#: a stream's feature buffer holds this many windows' worth of snippets, so the spent rows are moved
#: out (one copy of < T rows) once every ~T / S windows instead of a shift after every window
BUFFER_WINDOWS = 2


class StreamError(SpotError, ValueError):
    """Bad input or state of one stream; ``stream_id`` and (for chunks) ``offset`` name where."""

    def __init__(self, stream_id: str, message: str, offset: int | None = None) -> None:
        where = f"stream {stream_id!r}" + (f" at snippet {offset}" if offset is not None else "")
        super().__init__(f"{where}: {message}")
        self.stream_id = stream_id
        self.offset = offset


@dataclass(frozen=True)
class Detection:
    """One detected action of a stream, times in seconds from the stream's first snippet."""

    stream_id: str
    start: float
    end: float
    label: str
    label_id: int
    score: float
    final: bool  # True: part of close()'s exact output; False: a preview from push()

    def to_json(self) -> dict[str, Any]:
        """The ActivityNet result entry ``{"label", "score", "segment"}``."""
        return {"label": self.label, "score": self.score, "segment": [self.start, self.end]}


@dataclass(slots=True)
class _Job:
    stream: _Stream
    index: int  # window index in the stream
    # [T, C] float32, zero padded beyond valid; None: still rows [row, row + T) of the stream's
    # buffer (copied out before the buffer moves them, :meth:`StreamDetector._compact`)
    features: np.ndarray | None
    valid: int
    t_enqueued: float
    row: int = 0

    def window(self) -> np.ndarray:
        """The window's features ``[T, C]`` (a view of the stream's buffer while it is there)."""
        if self.features is not None:
            return self.features
        return self.stream.buf[self.row : self.row + self.valid]


@dataclass(eq=False)  # identity semantics: streams are dict keys
class _Stream:
    sid: str
    rate: float
    sec: float
    buf: np.ndarray  # [BUFFER_WINDOWS * T, C] float32; rows [lo, fill) are snippets buf_start.. of the stream
    fill: int = 0
    lo: int = 0  # buffer row of snippet buf_start (rows before it are spent; compacted when full)
    buf_start: int = 0  # == next_window * stride (invariant)
    received: int = 0  # snippets accepted so far
    next_window: int = 0  # windows enqueued so far (the next one starts at next_window * stride)
    done: int = 0  # windows decoded so far (in order: one queue, FIFO)
    closing: bool = False
    error: str | None = None
    # per window, its decoded detections packed as int32 [n, 4]: start, end, score (float32 bits),
    # label (:func:`_unpack`): one array per window, 16 bytes per detection
    dets: list[np.ndarray] = field(default_factory=list)
    in_buffer: deque[_Job] = field(default_factory=deque)  # queued jobs whose features are buffer rows
    previewed_to: int = 0  # preview frontier (snippets): detections ending at or before it were previewed

    def stored_bytes(self) -> int:
        return sum(p.nbytes for p in self.dets)


def _unpack(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A window's packed detections ``int32 [n, 4]`` -> (seg ``int32 [n, 2]``, score ``float32 [n]``,
    label ``int32 [n]``)."""
    return p[:, :2], p[:, 2].view(np.float32), p[:, 3]


class StreamDetector:
    """Sliding-window SPOT detection over concurrent feature streams (see the module doc).

    Args:
        session: a :class:`runtime.session.Session` (any backend); its config gives C, T, K,
            the class names and the decode settings.
        window: T; must equal the model's window (``cfg.model.num_snippets``). Default: that.
        stride: S in snippets, ``1 <= S <= T``. Default ``cfg.data.stride``.
        snippet_rate: snippets per second, for times in seconds. Default ``cfg.data.snippet_rate``,
            else 1.0 (times in snippets). :meth:`open` can set it per stream. A rate that is not a
            finite number > 0 (0, NaN, Inf) is a :class:`spot_core.config.ConfigError`.
        max_delay_s: latency budget: a partial batch runs once its oldest window waited this long.
            0 (the default) runs every complete window within the call that completed it: lowest
            latency, but windows of different pushes never share a batch; ``math.inf`` runs only
            full batches (and the rest at :meth:`flush` / :meth:`close`), as for offline files.
        preview: compute preview detections in :meth:`push` (False: push returns ``[]``).
        record_latency: keep each window's latency (seconds from the push that completed it to
            its decoded detections) in :attr:`window_latencies` (the last ``LATENCIES_KEPT``).
    """

    def __init__(
        self,
        session: Session,
        *,
        window: int | None = None,
        stride: int | None = None,
        snippet_rate: float | None = None,
        max_delay_s: float = 0.0,
        preview: bool = True,
        record_latency: bool = False,
    ) -> None:
        cfg = session.cfg
        T = cfg.model.num_snippets
        if window is not None and window != T:
            raise ConfigError(f"window {window} != the model's window T = {T} (fixed by the mask head)")
        S = cfg.data.stride if stride is None else int(stride)
        window_starts(T, T, S)  # validates 1 <= S <= T
        rate = snippet_rate if snippet_rate is not None else (cfg.data.snippet_rate or 1.0)
        positive_finite(rate, "snippet_rate")
        if math.isnan(max_delay_s) or max_delay_s < 0:
            raise ConfigError(f"max_delay_s must be >= 0 (math.inf: full batches only), got {max_delay_s}")
        self.session = session
        self.cfg: SpotConfig = cfg
        self.window, self.stride, self.snippet_rate = T, S, float(rate)
        self.max_delay_s = float(max_delay_s)
        self.preview = preview
        self.names = cfg.names()
        self._streams: dict[str, _Stream] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()  # recent closed ids, for error messages
        self._queue: deque[_Job] = deque()
        self._outbox: list[Detection] = []  # previews not yet returned (e.g. produced inside close())
        self.windows_run = 0
        self.record_latency = bool(record_latency)
        self.window_latencies: deque[float] = deque(maxlen=LATENCIES_KEPT)

    # ------------------------------------------------------------------ stream lifecycle
    @property
    def open_streams(self) -> list[str]:
        return list(self._streams)

    def open(self, stream_id: str, *, snippet_rate: float | None = None) -> None:
        """Start a stream. Its id must not be open (a closed id may be reused)."""
        sid = str(stream_id)
        if sid in self._streams:
            raise StreamError(sid, "already open")
        rate = self.snippet_rate if snippet_rate is None else float(snippet_rate)
        if not (math.isfinite(rate) and rate > 0):
            raise StreamError(sid, f"snippet_rate must be a finite number > 0, got {snippet_rate}")
        buf = np.zeros((BUFFER_WINDOWS * self.window, self.cfg.model.feat_dim), dtype=np.float32)
        self._streams[sid] = _Stream(sid, rate, 1.0 / rate, buf)
        self._closed.pop(sid, None)

    def _get(self, stream_id: str) -> _Stream:
        sid = str(stream_id)
        st = self._streams.get(sid)
        if st is None:
            why = "already closed" if sid in self._closed else "unknown stream (not open; call open() first)"
            raise StreamError(sid, why)
        if st.error is not None:
            self.abort(sid)
            raise StreamError(sid, f"failed and was dropped: {st.error}")
        return st

    def abort(self, stream_id: str) -> None:
        """Drop a stream and its queued windows without output."""
        sid = str(stream_id)
        st = self._streams.pop(sid, None)
        self._queue = deque(j for j in self._queue if j.stream is not st)
        self._mark_closed(sid)

    def _mark_closed(self, sid: str) -> None:
        self._closed[sid] = None
        self._closed.move_to_end(sid)
        while len(self._closed) > CLOSED_IDS_KEPT:  # bounded: memory follows the open streams only
            self._closed.popitem(last=False)

    # ------------------------------------------------------------------ input
    def _validate(self, st: _Stream, features: Any) -> np.ndarray:
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        try:
            return as_chunk(features, self.cfg.model.feat_dim)
        except ChunkError as e:
            raise StreamError(st.sid, str(e), st.received + e.row) from None

    def push(self, stream_id: str, features: Any) -> list[Detection]:
        """Append ``features [n, C]`` (n >= 0) to a stream; run the windows that are due.

        Returns the preview detections (``final=False``) produced by this call, of any stream
        (each names its stream). Raises :class:`StreamError` for bad input, leaving the stream
        as it was.
        """
        st = self._get(stream_id)
        self._append(st, self._validate(st, features))
        return self.poll()

    def push_many(self, stream_ids: Sequence[str], features: Any) -> list[Detection]:
        """One chunk for each of several streams, then the windows that are due: a serving loop's call.

        ``features``: one chunk per id (a sequence of ``[n_i, C]``), or one array ``[M, n, C]`` for
        M ids (validated in one pass). Every chunk is checked before any is stored: a bad one raises
        :class:`StreamError` naming its stream and row, and no stream changes. The windows are those
        of pushing each chunk in turn, in the order given (the same final outputs); the scheduler
        runs once, after the last chunk, so a partial batch can take windows of all of them."""
        ids = [str(i) for i in stream_ids]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise StreamError(dup, "appears twice in one push_many call")
        streams = [self._get(i) for i in ids]
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        if isinstance(features, np.ndarray) and features.ndim == 3:
            if features.shape[0] != len(ids):
                raise StreamError(
                    ids[0] if ids else "?", f"{len(ids)} stream ids but features {features.shape}"
                )
            M, n, C = features.shape
            try:
                flat = as_chunk(features.reshape(M * n, C), self.cfg.model.feat_dim)
            except ChunkError as e:
                st = streams[e.row // n] if n else streams[0]
                raise StreamError(st.sid, str(e), st.received + (e.row % n if n else 0)) from None
            chunks = list(flat.reshape(M, n, C))
        else:
            chunks = list(features)
            if len(chunks) != len(ids):
                raise StreamError(ids[0] if ids else "?", f"{len(ids)} stream ids but {len(chunks)} chunks")
            chunks = [self._validate(st, x) for st, x in zip(streams, chunks, strict=True)]
        for st, x in zip(streams, chunks, strict=True):
            self._append(st, x)
        return self.poll()

    @staticmethod
    def _compact(st: _Stream) -> None:
        """Move the live rows [lo, fill) (fewer than T) to the buffer's front, first copying out the
        windows of queued jobs that still point into it."""
        for job in st.in_buffer:
            job.features = st.buf[job.row : job.row + job.valid].copy()
        st.in_buffer.clear()
        k = st.fill - st.lo
        st.buf[:k] = st.buf[st.lo : st.fill]
        st.lo, st.fill = 0, k

    def _append(self, st: _Stream, x: np.ndarray) -> None:
        """Store a checked chunk ``[n, C]`` and queue the windows it completes (running full batches)."""
        T, S = self.window, self.stride
        buf, cap = st.buf, st.buf.shape[0]
        pos, n = 0, x.shape[0]
        while pos < n:
            if st.fill == cap:
                self._compact(st)
            take = min(n - pos, cap - st.fill)
            buf[st.fill : st.fill + take] = x[pos : pos + take]
            st.fill += take
            st.received += take
            pos += take
            if st.fill - st.lo < T:
                continue
            now = time.perf_counter()
            while st.fill - st.lo >= T:  # window next_window is complete: [buf_start, buf_start + T)
                job = _Job(st, st.next_window, None, T, now, st.lo)  # read from the buffer at decode
                st.in_buffer.append(job)
                self._queue.append(job)
                st.next_window += 1
                st.lo += S
                st.buf_start += S
                if len(self._queue) >= self.session.batch_size:
                    self._run_batch()

    # ------------------------------------------------------------------ scheduling
    def poll(self) -> list[Detection]:
        """Run every full batch, and a partial one if its oldest window is older than ``max_delay_s``."""
        B = self.session.batch_size
        while self._queue and (
            len(self._queue) >= B or time.perf_counter() - self._queue[0].t_enqueued >= self.max_delay_s
        ):
            self._run_batch()
        return self._take_outbox()

    def flush(self) -> list[Detection]:
        """Run every queued window now, whatever the latency budget; the previews produced."""
        while self._queue:
            self._run_batch()
        return self._take_outbox()

    def _take_outbox(self) -> list[Detection]:
        out, self._outbox = self._outbox, []
        return out

    def _run_batch(self) -> None:
        B = self.session.batch_size
        jobs = [self._queue.popleft() for _ in range(min(B, len(self._queue)))]
        for j in jobs:  # FIFO per stream: a stream's oldest queued job is the first of its buffer ones
            ib = j.stream.in_buffer
            if ib and ib[0] is j:
                ib.popleft()  # its rows stay put until the stream's next append: read below
        jobs = [j for j in jobs if j.stream.error is None]
        if not jobs:
            return
        try:
            self._decode(jobs)
        except Exception as e:  # noqa: BLE001 - isolate the failing stream, keep the others
            log.info(
                "batch of %d windows failed (%s: %s); retrying one by one", len(jobs), type(e).__name__, e
            )
            for j in jobs:
                if j.stream.error is not None:
                    continue
                try:
                    self._decode([j])
                except Exception as e1:  # noqa: BLE001
                    j.stream.error = f"window {j.index} failed in the model: {type(e1).__name__}: {e1}"
                    # raised to the caller at the stream's next push() / close(): logged at debug only
                    log.debug("stream %r: %s", j.stream.sid, j.stream.error)
        if self.preview:
            touched = list(dict.fromkeys(j.stream for j in jobs if j.stream.error is None))
            self._outbox.extend(self._preview(touched))

    def _decode(self, jobs: Sequence[_Job]) -> None:
        expect: dict[int, int] = {}
        for j in jobs:  # one FIFO queue: a stream's windows are decoded in order
            want = expect.get(id(j.stream), j.stream.done)
            if j.index != want:
                raise RuntimeError(f"stream {j.stream.sid!r}: window {j.index} decoded out of order")
            expect[id(j.stream)] = want + 1
        x = np.stack([j.window().T for j in jobs])  # x: [b, C, T]
        det = self.session.detect(torch.from_numpy(x), [j.valid for j in jobs])  # [b, D]
        nvalid = det.valid.sum(dim=1).tolist()
        packed = np.empty((*det.scores.shape, 4), dtype=np.int32)  # [b, D, 4]: one copy per window below
        packed[..., :2] = det.segments.round().to(torch.int32).numpy()
        packed[..., 2] = det.scores.to(torch.float32).numpy().view(np.int32)
        packed[..., 3] = det.labels.to(torch.int32).numpy()
        for j, p, nv in zip(jobs, packed, nvalid, strict=True):
            j.stream.dets.append(p[:nv].copy())
            j.stream.done += 1
        self.windows_run += len(jobs)
        if self.record_latency:
            now = time.perf_counter()
            self.window_latencies.extend(now - j.t_enqueued for j in jobs)

    # ------------------------------------------------------------------ preview
    def _preview(self, streams: Sequence[_Stream]) -> list[Detection]:
        """Preview detections of newly settled spans (module doc): one batched Soft-NMS over the streams."""
        T, S, D = self.window, self.stride, self.cfg.decode.max_detections
        rows = []
        for st in streams:
            frontier = math.inf if st.closing else st.done * S  # no later window starts before it
            lo = st.previewed_to
            if frontier <= lo:
                continue
            first = max(0, (lo - 2 * T) // S)  # windows that may overlap a newly settled detection
            segs, scs, labs, new = [], [], [], []
            for w in range(first, st.done):
                s, c, lab = _unpack(st.dets[w])
                a = w * S
                segs.append(s.astype(np.float64) + a)
                scs.append(c)
                labs.append(lab)
                end = s[:, 1] + a
                new.append((end > lo) & (end <= frontier))
            st.previewed_to = frontier if frontier != math.inf else st.received
            if not segs:
                continue
            seg = np.concatenate(segs)
            if not np.concatenate(new).any():
                continue
            rows.append((st, seg, np.concatenate(scs), np.concatenate(labs), np.concatenate(new)))
        if not rows:
            return []
        picks = local_soft_nms([(seg, sc, lab) for _, seg, sc, lab, _ in rows], D, self.cfg.decode)
        out = []
        for (st, seg, _, lab, new), row_picks in zip(rows, picks, strict=True):
            for score, idx in row_picks:
                if new[idx]:
                    s, e = seg[idx]
                    out.append(self._detection(st.sid, s * st.sec, e * st.sec, int(lab[idx]), score, False))
        return out

    def _detection(self, sid: str, s: float, e: float, label: int, score: float, final: bool) -> Detection:
        return Detection(sid, float(s), float(e), self.names[label], int(label), float(score), final)

    # ------------------------------------------------------------------ close
    def close(self, stream_id: str, *, duration: float | None = None) -> list[Detection]:
        """End a stream: run its last (padded) window and every queued window, merge, return the final list.

        The result (``final=True``, score descending) equals :func:`runtime.offline.offline_detect`
        on the stream's whole feature sequence. ``duration`` (seconds) clips segments as
        :func:`spot_core.decode.results_json` does; it must be a finite number > 0 (else
        :class:`StreamError`, and the stream stays open). A stream with no snippet yields ``[]``.
        """
        return self.close_json(stream_id, duration=duration)[1]

    def close_json(
        self, stream_id: str, *, duration: float | None = None
    ) -> tuple[list[dict], list[Detection]]:
        """:meth:`close`, also returning the ActivityNet result entries of the stream."""
        st = self._get(stream_id)
        if duration is not None and not (math.isfinite(duration) and duration > 0):
            raise StreamError(st.sid, f"duration must be a finite number of seconds > 0, got {duration}")
        st.closing = True
        N, T, S = st.received, self.window, self.stride
        if N > 0:
            n_windows = len(window_starts(N, T, S))
            if n_windows > st.next_window:  # the last, partial window (zero padded, valid length masked)
                valid = N - st.buf_start
                assert n_windows == st.next_window + 1 and valid == st.fill - st.lo and 0 < valid < T
                feats = np.zeros((T, st.buf.shape[1]), dtype=np.float32)
                feats[:valid] = st.buf[st.lo : st.lo + valid]
                self._queue.append(_Job(st, st.next_window, feats, valid, time.perf_counter()))
                st.next_window += 1
        try:
            while self._queue:
                self._run_batch()
            # previews of the closing stream are superseded by its final list; keep the others'
            self._outbox = [d for d in self._outbox if d.stream_id != st.sid]
            if st.error is not None:
                raise StreamError(st.sid, f"failed: {st.error}")
            entries = self._final(st, duration)
        finally:
            del self._streams[st.sid]
            self._mark_closed(st.sid)
        idx = {n: i for i, n in enumerate(self.names)}
        dets = [
            Detection(st.sid, e["segment"][0], e["segment"][1], e["label"], idx[e["label"]], e["score"], True)
            for e in entries
        ]
        return entries, dets

    def _final(self, st: _Stream, duration: float | None) -> list[dict]:
        """The offline merge on the stored per-window detections (same tensors as offline)."""
        if not st.dets:
            return []
        fm = final_merge(
            [_unpack(p) for p in st.dets],
            self.stride,
            st.sec,
            self.cfg.decode,
            window=self.window,
            num_snippets=st.received,
        )
        merged = {st.sid: fm}
        dur = None if duration is None else {st.sid: duration}
        return results_json([st.sid], merged, self.names, dur)["results"].get(st.sid, [])

    # ------------------------------------------------------------------ introspection
    def memory(self) -> dict[str, int]:
        """Bytes held: feature buffers, queued windows, and the stored per-window detections."""
        return {
            "buffers": sum(st.buf.nbytes for st in self._streams.values()),
            "queued_windows": sum(j.features.nbytes for j in self._queue if j.features is not None),
            "stored_detections": sum(st.stored_bytes() for st in self._streams.values()),
        }
