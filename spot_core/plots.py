"""Timeline plots: ground truth vs detections, one row pair per video."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .data.annotations import AnnotationSet


def plot_timelines(
    gt: AnnotationSet,
    results: dict[str, list[dict]],
    video_ids: Sequence[str],
    out_path: str | Path,
    *,
    min_score: float = 0.1,
    max_dets: int = 15,
    title: str | None = None,
) -> Path:
    """Draw ground truth (top lane) and the best detections (bottom lane, alpha = score) per video.

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
    fig, axes = plt.subplots(n, 1, figsize=(12, 1.5 * n + 0.8), squeeze=False)
    for ax, vid in zip(axes[:, 0], video_ids, strict=False):
        video = gt.videos[vid]
        for inst in video.instances:
            ax.barh(
                1, inst.end - inst.start, left=inst.start, height=0.8, color=color.get(inst.label, "grey")
            )
        dets = sorted(results.get(vid, []), key=lambda d: -d["score"])
        dets = [d for d in dets if d["score"] >= min_score][:max_dets]
        for d in dets:
            s, e = d["segment"]
            ax.barh(
                0,
                e - s,
                left=s,
                height=0.8,
                color=color.get(d["label"], "grey"),
                alpha=float(min(1.0, 0.25 + d["score"])),
                edgecolor="black",
                linewidth=0.3,
            )
        ax.set_xlim(0, video.duration)
        ax.set_yticks([0, 1], ["detected", "ground truth"])
        ax.set_ylabel(vid, rotation=0, ha="right", va="center", fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    handles = [Patch(color=color[c], label=c) for c in classes]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(classes), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, y=0.995, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
