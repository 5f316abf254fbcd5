"""Supervised training loop: progress, loss logging, validation mAP per epoch, safe checkpoints, resume.

Determinism on CPU: every epoch reseeds the global torch RNG (dropout) and the shuffling generator
from ``(train.seed, epoch)``, so a run resumed at an epoch boundary replays exactly the same batches
and dropout masks as an uninterrupted run.

Files written to ``out_dir``: ``config.yaml``, ``last.safetensors`` / ``best.safetensors`` (model
weights + config in the safetensors metadata), ``train_state.pt`` (model weights, optimiser,
scheduler, epoch, best metric, history; loadable with ``weights_only=True``), ``metrics.jsonl`` (one
line per epoch) and ``val_predictions.json`` (the best epoch's detections).

Crash safety and resume: each epoch writes ``metrics.jsonl``, then the checkpoints, and last
``train_state.pt``, the single file (written atomically) that ``--resume`` restarts from: it holds the
model weights as well, so a crash between two writes can never pair weights of one epoch with the
optimiser of another. A resumed run rewrites ``metrics.jsonl`` from the history in ``train_state.pt``
(dropping any line of an epoch that finished after the last saved state), so no line is duplicated
or lost; a fresh run starts a new ``metrics.jsonl``.

Resuming checks that the config matches the one the state was written with, **ignoring
``train.epochs``**, so a finished run can be continued with a longer schedule
(``--resume --set train.epochs=N``). That is exact because nothing else depends on the epoch count
(StepLR steps per epoch; the per-epoch seeds use the epoch index only). Any other difference (model,
data, loss, optimiser, decode, classes) is refused with a :class:`CheckpointError` naming the keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import CheckpointError, load_train_state, save_model, save_train_state
from .config import SpotConfig
from .data.annotations import AnnotationSet
from .data.datasets import WindowDataset, load_dataset
from .data.windows import Window
from .evaluation import PROTOCOLS, evaluate_detection
from .inference import predict_windows
from .losses import supervised_loss
from .model import SPOT

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced."""

    out_dir: Path
    best_map: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


# config keys a resumed run may change (see the module docstring). If a schedule that depends on the
# total number of epochs (e.g. cosine) is ever added, train.epochs must leave this set.
RESUME_MAY_CHANGE = ("train.epochs",)


def _resume_config(cfg: SpotConfig) -> dict:
    """The config as a dict with the keys of :data:`RESUME_MAY_CHANGE` removed."""
    d = json.loads(json.dumps(cfg.to_dict()))
    for key in RESUME_MAY_CHANGE:
        *path, last = key.split(".")
        node = d
        for p in path:
            node = node[p]
        node.pop(last, None)
    return d


def resume_hash(cfg: SpotConfig) -> str:
    """Hash of the config that must match for ``--resume`` (everything but ``train.epochs``)."""
    blob = json.dumps(_resume_config(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, with both values."""
    out = []
    for k in sorted(set(old) | set(new)):
        key = f"{prefix}{k}"
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_config_diff(a, b, key + "."))
        elif a != b:
            out.append(f"{key}: {a!r} in the state vs {b!r} now")
    return out


def make_optimizer(
    model: SPOT, cfg: SpotConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.train.lr_step, gamma=cfg.train.lr_gamma)
    return opt, sched


def train_one_epoch(
    model: SPOT,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    cfg: SpotConfig,
    *,
    epoch: int,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over the labelled windows. Returns the mean of each loss term."""
    model.train()
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    n = 0
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False)
    for batch in bar:
        x = batch["features"].to(device)
        out = model.forward_train(x)
        losses = supervised_loss(
            out,
            batch["cls_target"].to(device),
            batch["mask_target"].to(device),
            batch["valid_mask"].to(device),
            cfg.loss,
        )
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        if not math.isfinite(losses["loss"].item()):
            raise FloatingPointError(f"loss became {losses['loss'].item()} at epoch {epoch}")
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n += 1
        bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
    return {k: v / max(n, 1) for k, v in sums.items()}


def validate(
    model: SPOT, windows: list[Window], gt: AnnotationSet, cfg: SpotConfig, *, progress: bool = False
) -> tuple[dict, dict]:
    """Detections on the validation windows and their mAP against ``gt``."""
    durations = {v.video_id: v.duration for v in gt.videos.values()}
    preds = predict_windows(model, windows, cfg, durations=durations, progress=progress)
    res = evaluate_detection(gt, preds["results"], PROTOCOLS[cfg.data.protocol], subset=None)
    return preds, res.to_dict()


def train(
    cfg: SpotConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
) -> TrainResult:
    """Train SPOT with the labelled training windows of ``data_dir``; validate every epoch."""
    out = Path(out_dir)
    train_set, train_windows = load_dataset(data_dir, cfg, "training")
    val_set, val_windows = load_dataset(data_dir, cfg, "validation")
    if not cfg.class_names:
        cfg = cfg.replace(class_names=tuple(train_set.classes))
    labeled = [w for w in train_windows if w.labeled and w.has_targets]
    if not labeled:
        raise ValueError(f"{data_dir}: no labelled training windows")
    log.info(
        "train windows: %d labelled of %d; val windows: %d",
        len(labeled),
        len(train_windows),
        len(val_windows),
    )

    torch.manual_seed(cfg.train.seed)
    model = SPOT(cfg.model).to(device)
    opt, sched = make_optimizer(model, cfg)
    start_epoch, best_map, best_epoch, history = 0, -1.0, -1, []
    state_path = out / "train_state.pt"
    if resume:
        start_epoch, best_map, best_epoch, history = _resume(out, model, opt, sched, cfg)
        log.info("resumed from %s at epoch %d", out, start_epoch)
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")

    dataset = WindowDataset(labeled)
    metrics_path = out / "metrics.jsonl"
    # a fresh run starts a new log; a resumed one keeps exactly the epochs in the saved state
    metrics_path.write_text("".join(json.dumps(row) + "\n" for row in history))
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(cfg.train.seed, epoch))
        gen = torch.Generator().manual_seed(epoch_seed(cfg.train.seed, epoch))
        loader = DataLoader(
            dataset,
            batch_size=cfg.train.batch_size,
            shuffle=True,
            generator=gen,
            num_workers=cfg.train.num_workers,
            drop_last=False,
        )
        losses = train_one_epoch(model, loader, opt, cfg, epoch=epoch, progress=progress)
        sched.step()
        preds, res = validate(model, val_windows, val_set, cfg)
        row = {
            "epoch": epoch,
            **{f"loss_{k}": v for k, v in losses.items()},
            "val_average_mAP": res["average_mAP"],
            "lr": opt.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        history.append(row)
        with metrics_path.open("a") as f:  # before train_state.pt: a resume drops it if need be
            f.write(json.dumps(row) + "\n")
        log.info(
            "epoch %d loss %.4f val mAP %.4f (%.1fs)",
            epoch,
            losses.get("loss", float("nan")),
            res["average_mAP"],
            row["seconds"],
        )
        if res["average_mAP"] > best_map:
            best_map, best_epoch = res["average_mAP"], epoch
            save_model(out / "best.safetensors", model, cfg, epoch=epoch, val_average_mAP=best_map)
            (out / "val_predictions.json").write_text(json.dumps(preds))
        save_model(out / "last.safetensors", model, cfg, epoch=epoch, val_average_mAP=res["average_mAP"])
        save_train_state(
            state_path,
            {
                "epoch": epoch + 1,
                "best_map": best_map,
                "best_epoch": best_epoch,
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "config_hash": resume_hash(cfg),
                "config": json.dumps(_resume_config(cfg)),
                "history": json.dumps(history),
            },
        )
    return TrainResult(out, best_map, best_epoch, history)


def _resume(out: Path, model: SPOT, opt, sched, cfg: SpotConfig) -> tuple[int, float, int, list[dict]]:
    from .checkpoint import check_state, load_model

    path = out / "train_state.pt"
    state = load_train_state(path)
    stored = state.get("config_hash")
    # states written before train.epochs was exempt stored the full config hash: accept that too
    if stored not in (resume_hash(cfg), cfg.config_hash()):
        diff = []
        if isinstance(state.get("config"), str):
            diff = _config_diff(json.loads(state["config"]), _resume_config(cfg))
        detail = "; ".join(diff[:8]) if diff else f"hash {stored} vs {resume_hash(cfg)}"
        raise CheckpointError(
            f"{path}: was written with a different config ({detail}); resume with the same config "
            f"(only {', '.join(RESUME_MAY_CHANGE)} may change)"
        )
    try:
        if "model" in state:
            weights = state["model"]
            check_state(model.state_dict(), weights, str(path))
            model.load_state_dict(weights)
        else:  # older states: weights from last.safetensors
            loaded, _ = load_model(out / "last.safetensors", cfg)
            model.load_state_dict(loaded.state_dict())
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        return (
            int(state["epoch"]),
            float(state["best_map"]),
            int(state["best_epoch"]),
            json.loads(state["history"]),
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # a state dict of another shape or version
        raise CheckpointError(
            f"{path}: incomplete or inconsistent resume state ({type(e).__name__}: {e})"
        ) from None
