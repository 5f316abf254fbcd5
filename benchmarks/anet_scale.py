"""Real scale (issue 3, item 7): the semi-supervised recipe on the real ActivityNet annotations.

``python -m benchmarks.anet_scale --shared ../shared/data [--out runs/anet_scale] [--json FILE]``

No ActivityNet features can be downloaded here, so the features are synthetic, but everything
else is the real data set: the 9,649 training and 4,728 validation videos of
``anet_anno_action.json`` / ``video_info_new.csv`` with their real durations, segments and 200
classes, and the SPOT paper's 10 % split (``video_info_new_0.9.csv``: 966 labelled, 8,683
unlabelled training videos). Each video becomes one rescaled window of T = 100 snippets with
C = 400 features (the ``anet`` preset): a per-video background (a random mix of shared background
directions plus noise) and, inside each real segment, its class's fixed random prototype (plus
one shared "actionness" direction) with soft boundaries. The features are generated once, in
memory (float32, about 2.3 GB for 14,377 windows), and the windows are built directly from them:
no files, no per-item parsing.

It then runs the ``anet`` preset's semi-supervised training (stage 1 pretext pretraining over
every training window, stage 2 fine-tuning on the labelled windows with pseudo-labelled
unlabelled batches) for ``--pretrain-epochs`` and ``--epochs`` epochs (default 1 each) on the CPU
and validates on the 4,728 validation windows with the ActivityNet protocol (mAP at tIoU
0.5:0.05:0.95). Reported: windows per second of each stage (windows seen / wall seconds of the
epoch, from the run's metrics), of the data path alone (one shuffled pass of the training windows
through the DataLoader), of validation, the peak resident memory of the process, and the average
mAP. The figures are what one epoch of each stage reaches, not a
trained model's.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spot_core.cli import report_error, reports_errors, setup_logging
from spot_core.config import SpotConfig
from spot_core.data.annotations import AnnotationSet, read_spot_bsn
from spot_core.data.windows import Window, build_targets, snippet_span
from spot_core.outputs import write_text_atomic

log = logging.getLogger("benchmarks.anet_scale")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_anet(shared: Path) -> AnnotationSet:
    d = shared / "activitynet"
    return read_spot_bsn(
        d / "anet_anno_action.json",
        d / "video_info_new.csv",
        d / "video_info_new_0.9.csv",
        d / "action_name.csv",
    )


def synth_windows(aset: AnnotationSet, cfg: SpotConfig, seed: int = 0) -> tuple[list[Window], list[Window]]:
    """``(train, validation)`` windows: one rescaled window per video, synthetic features (module doc)."""
    from spot_core.data.annotations import clean_instances

    rng = np.random.default_rng(seed)
    T, C, K = cfg.model.num_snippets, cfg.model.feat_dim, cfg.model.num_classes
    protos = rng.standard_normal((K, C)).astype(np.float32)
    actionness = rng.standard_normal(C).astype(np.float32)
    bg_basis = (rng.standard_normal((8, C)) / np.sqrt(8)).astype(np.float32)
    index = aset.class_index()
    centres = np.arange(T, dtype=np.float32) + 0.5
    train, val = [], []
    for video in aset.videos.values():
        if video.base_subset not in ("training", "validation"):
            continue
        duration = video.feature_duration
        sec = duration / T
        x = (rng.standard_normal(8).astype(np.float32) @ bg_basis)[None, :] * 0.8
        x = x + 0.6 * rng.standard_normal((T, C)).astype(np.float32)
        spans = []
        for inst in clean_instances(video, duration):
            span = snippet_span(inst.start, inst.end, 0.0, sec, T)
            if span is None:
                continue
            c = index[inst.label]
            s, e = inst.start / sec, inst.end / sec
            env = np.clip(centres - s + 0.5, 0, 1) * np.clip(e - centres + 0.5, 0, 1)  # soft 1-snippet edges
            x += env[:, None] * (rng.uniform(0.6, 1.2) * protos[c] + 0.5 * actionness)[None, :]
            spans.append((*span, c))
        labeled = bool(video.labeled)  # training_unlabel: False; its segments shape the features only
        cls, mask, seg = build_targets(spans if labeled else [], T, K, trim=cfg.data.trim_targets)
        w = Window(
            video_id=video.video_id,
            features=x.astype(np.float32),
            valid=T,
            t_start=0.0,
            snippet_sec=sec,
            cls_target=cls,
            mask_target=mask,
            labeled=labeled,
            has_targets=labeled,
            segments=seg,
        )
        (train if video.base_subset == "training" else val).append(w)
    return train, val


def run(
    shared: Path,
    out: Path,
    *,
    epochs: int,
    pretrain_epochs: int,
    threads: int,
    seed: int,
    limit: int | None = None,
) -> dict[str, Any]:
    from spot_core.checkpoint import load_model
    from spot_core.training import train_on_windows, unlabeled_batch_size, validate

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    aset = load_anet(shared)
    if limit is not None:  # a smoke test: the first `limit` videos of each part
        keep = {}
        for part in ("training", "training_unlabel", "validation"):
            keep.update(
                {k: v for k, v in list((k, v) for k, v in aset.videos.items() if v.subset == part)[:limit]}
            )
        aset = AnnotationSet(keep, list(aset.classes))
    cfg = SpotConfig.preset("anet").override(
        [f"train.epochs={epochs}", f"semi.pretrain_epochs={pretrain_epochs}", f"train.seed={seed}",
         "semi.use_unlabeled=true"]
    )  # fmt: skip
    cfg = cfg.replace(class_names=tuple(aset.classes))
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_w, val_w = synth_windows(aset, cfg, seed)
    t_synth = time.perf_counter() - t0
    val_set = aset.select("validation")
    rss_data = _peak_rss_mib()
    n_lab = sum(w.labeled and w.has_targets for w in train_w)
    log.info("%d training windows (%d labelled), %d validation windows; %.0f MiB", len(train_w), n_lab,
             len(val_w), rss_data)  # fmt: skip
    # the data path alone: one shuffled pass of the training windows through the loader
    from torch.utils.data import DataLoader

    from spot_core.data.datasets import WindowDataset

    loader = DataLoader(WindowDataset(train_w), batch_size=cfg.train.batch_size, shuffle=True)
    t0 = time.perf_counter()
    seen = sum(int(b["features"].shape[0]) for b in loader)
    loader_wps = seen / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    train_on_windows(cfg, train_w, val_set, val_w, out, progress=True, validate_every=0)
    t_train = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    n_unl = len(train_w) - n_lab
    bs_u = unlabeled_batch_size(cfg.train.batch_size, n_lab, n_unl, cfg.semi)
    steps = cfg.train.steps_per_epoch or math.ceil(n_lab / cfg.train.batch_size)
    stages = []
    for r in rows:
        if r.get("stage") == "pretrain":
            n = len(train_w)
        else:  # each step: a labelled batch and an unlabelled one
            n = (
                n_lab + steps * bs_u
                if cfg.train.steps_per_epoch is None
                else steps * (cfg.train.batch_size + bs_u)
            )
        stages.append({"stage": r.get("stage"), "epoch": r["epoch"], "seconds": r["seconds"], "windows": n,
                       "windows_per_s": round(n / r["seconds"], 1),
                       "loss": r.get("loss_loss")})  # fmt: skip
    model, _ = load_model(out / "last.safetensors")
    t0 = time.perf_counter()
    _, res = validate(model, val_w, val_set, cfg)
    t_val = time.perf_counter() - t0
    return {
        "what": "SPOT anet preset, semi-supervised, real ActivityNet annotations + 10% split, "
        "synthetic features",
        "command": "python -m benchmarks.anet_scale",
        "threads": threads,
        "cpu": platform.processor() or "?",
        "videos": {"train": len(train_w), "train_labeled": n_lab, "validation": len(val_w)},
        "seconds": {
            "load_annotations": round(t_load, 1),
            "synthesize": round(t_synth, 1),
            "train_total": round(t_train, 1),
            "validate": round(t_val, 1),
        },
        "validation_windows_per_s": round(len(val_w) / t_val, 1),
        "loader_only_windows_per_s": round(loader_wps, 1),
        "peak_rss_mib_after_data": round(rss_data, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "epochs": stages,
        "val_average_mAP": res["average_mAP"],
        "val_mAP_per_tiou": res.get("mAP"),
    }


@reports_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.anet_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default="../shared/data", help="the shared data folder")
    ap.add_argument("--out", default="runs/anet_scale", help="run folder")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--pretrain-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="smoke test: only the first N videos of each subset")
    args = ap.parse_args(argv)
    setup_logging(1)
    if not (Path(args.shared) / "activitynet").is_dir():
        return report_error(f"{args.shared}/activitynet not found")
    rep = run(Path(args.shared), Path(args.out), epochs=args.epochs, pretrain_epochs=args.pretrain_epochs,
              threads=args.threads, seed=args.seed, limit=args.limit)  # fmt: skip
    text = json.dumps(rep, indent=1, default=str)
    if args.json:
        write_text_atomic(args.json, text)
    print(text[-3000:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
