"""Timeline plot of a stream's detections: one panel per stream, detections packed into lanes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _lanes(dets: Sequence[Mapping], gap: float = 0.0) -> list[int]:
    """Greedy interval packing: the first lane whose last segment ends ``gap`` before this one starts."""
    ends: list[float] = []
    lanes = []
    for d in dets:
        s, e = d["segment"]
        for i, last in enumerate(ends):
            if last + gap <= s:
                ends[i] = e
                lanes.append(i)
                break
        else:
            ends.append(e)
            lanes.append(len(ends) - 1)
    return lanes


def plot_format(path: str | Path, *, what: str = "--plot") -> str:
    """The image format of ``path`` from its suffix (``png`` when it has none); an
    :class:`spot_core.outputs.OutputError` naming ``what`` when matplotlib cannot write it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    from spot_core.outputs import OutputError

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    known = FigureCanvasBase.get_supported_filetypes()
    if fmt not in known:
        raise OutputError(
            f"{what} {path}: unknown image format {fmt!r} (use one of {', '.join(sorted(known))})"
        )
    return fmt


def plot_stream_timeline(
    results: Mapping[str, Sequence[Mapping]],
    out_path: str | Path,
    *,
    class_names: Sequence[str],
    durations: Mapping[str, float] | None = None,
    min_score: float = 0.05,
    max_dets: int = 40,
    max_streams: int = 8,
    title: str | None = None,
) -> Path:
    """Draw the best ``max_dets`` detections (score >= ``min_score``) of up to ``max_streams`` streams.

    ``results``: the ``"results"`` mapping of an ActivityNet result JSON. Colour = class, opacity =
    score (written at the right end of each bar). Returns the written path (PNG, or the format of
    its suffix), written atomically (:func:`spot_core.outputs.write_bytes_atomic`).
    """
    from spot_core.outputs import write_bytes_atomic

    data = render_stream_timeline(
        results,
        plot_format(out_path, what="plot"),
        class_names=class_names,
        durations=durations,
        min_score=min_score,
        max_dets=max_dets,
        max_streams=max_streams,
        title=title,
    )
    return write_bytes_atomic(out_path, data)


def render_stream_timeline(
    results: Mapping[str, Sequence[Mapping]],
    fmt: str = "png",
    *,
    class_names: Sequence[str],
    durations: Mapping[str, float] | None = None,
    min_score: float = 0.05,
    max_dets: int = 40,
    max_streams: int = 8,
    title: str | None = None,
) -> bytes:
    """The image bytes (format ``fmt``) of :func:`plot_stream_timeline`'s figure, nothing written."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ids = list(results)[:max_streams]
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    color = {c: cmap(i % cmap.N) for i, c in enumerate(class_names)}
    n = max(len(ids), 1)
    fig, axes = plt.subplots(n, 1, figsize=(12, 1.6 * n + 1.0), squeeze=False)
    used = set()
    for ax, sid in zip(axes[:, 0], ids, strict=False):
        dets = sorted(results[sid], key=lambda d: -d["score"])
        dets = [d for d in dets if d["score"] >= min_score][:max_dets]
        dets.sort(key=lambda d: d["segment"][0])
        end = (durations or {}).get(sid) or max((d["segment"][1] for d in dets), default=1.0)
        lanes = _lanes(dets, gap=0.05 * end)  # room for the score text
        for d, lane in zip(dets, lanes, strict=True):
            s, e = d["segment"]
            ax.barh(
                lane,
                e - s,
                left=s,
                height=0.8,
                color=color.get(d["label"], "grey"),
                alpha=0.35 + 0.65 * min(max(d["score"], 0.0), 1.0),
                edgecolor="black",
                linewidth=0.3,
            )
            ax.text(e, lane, f" {d['score']:.2f}", va="center", fontsize=6)
            used.add(d["label"])
        ax.set_xlim(0, end * 1.04)
        ax.set_ylim(-0.6, max(lanes, default=0) + 0.6)
        ax.set_yticks([])
        ax.set_ylabel(sid, rotation=0, ha="right", va="center", fontsize=8)
    if len(ids) == 0:
        axes[0, 0].text(0.5, 0.5, "no detections", ha="center", va="center")
    axes[-1, 0].set_xlabel("time (s)")
    handles = [Patch(color=color[c], label=c) for c in class_names if c in used]
    if handles:
        fig.legend(handles=handles, loc="upper right", fontsize=7, ncol=min(len(handles), 6))
    fig.suptitle(
        title or f"detections (best {max_dets} per stream, score >= {min_score})",
        fontsize=10,
        x=0.01,
        ha="left",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=110)
    finally:
        plt.close(fig)
    return buf.getvalue()
