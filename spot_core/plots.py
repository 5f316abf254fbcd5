"""Timeline plots: ground truth vs detections, one row pair per video."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .data.annotations import AnnotationSet
from .outputs import atomic_write


def plot_timelines(
    gt: AnnotationSet,
    results: dict[str, list[dict]],
    video_ids: Sequence[str],
    out_path: str | Path,
    *,
    min_score: float = 0.1,
    max_dets: int = 6,
    title: str | None = None,
) -> Path:
    """Draw ground truth (top lane) and the best detections (one lane each, score written) per video.

    ``results`` is the ``"results"`` mapping of an ActivityNet result JSON. Colours are per class and
    shared by both lanes, so a correct detection sits under a bar of its own colour.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    classes = list(gt.classes)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    color = {c: cmap(i % cmap.N) for i, c in enumerate(classes)}
    n = len(video_ids)
    fig, axes = plt.subplots(n, 1, figsize=(12, (0.6 + 0.3 * max_dets) * n + 1.0), squeeze=False)
    for ax, vid in zip(axes[:, 0], video_ids, strict=True):
        video = gt.videos[vid]
        top = max_dets + 0.5  # ground truth lane above the detection lanes
        for inst in video.instances:
            ax.barh(
                top, inst.end - inst.start, left=inst.start, height=0.9, color=color.get(inst.label, "grey")
            )
        dets = sorted(results.get(vid, []), key=lambda d: -d["score"])
        dets = [d for d in dets if d["score"] >= min_score][:max_dets]
        for rank, d in enumerate(dets):  # one thin lane per detection, best on top
            s, e = d["segment"]
            y = max_dets - 1 - rank
            ax.barh(
                y,
                e - s,
                left=s,
                height=0.7,
                color=color.get(d["label"], "grey"),
                edgecolor="black",
                linewidth=0.3,
            )
            ax.text(e, y, f" {d['score']:.2f}", va="center", fontsize=7)
        ax.set_xlim(0, video.duration * 1.06)
        ax.set_ylim(-0.6, top + 0.6)
        ax.set_yticks([top, (max_dets - 1) / 2], ["ground truth", f"top {max_dets} detections"])
        ax.set_title(vid, fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("time (s)")
    handles = [Patch(color=color[c], label=c) for c in classes]
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(classes), 6), fontsize=8, frameon=False)
    out_path = Path(out_path)
    fmt = out_path.suffix.lstrip(".") or "png"  # from the final name: the temporary file has none
    try:
        atomic_write(out_path, lambda tmp: fig.savefig(tmp, dpi=110, format=fmt))
    finally:
        plt.close(fig)
    return out_path
