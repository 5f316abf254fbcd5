"""Training loop: progress, loss logging, validation mAP per epoch, safe checkpoints, resume.

Two stages (DESIGN.md section 4, switches in ``cfg.semi``):

1. pretraining, ``semi.pretrain_epochs`` epochs over all training windows with the labels unused and
   the classifier frozen (:func:`pretrain_step`: random-foreground mask, reconstruction, clip
   order); no validation; ``pretrain.safetensors`` after each epoch;
2. fine-tuning, ``train.epochs`` epochs over the labelled windows. When the training set has
   unlabelled windows (``semi.labeled_fraction`` / ``semi.split_file`` / the annotation file), each
   step also takes an unlabelled batch (:func:`semi_step`); otherwise it is the supervised loop,
   bit-identical to a run without the ``semi`` section.

``metrics.jsonl`` rows carry ``"stage"`` (``pretrain`` / ``finetune``) when stage 1 or unlabelled
data is used; ``train_state.pt`` records ``stage``, ``pretrain_epoch`` (finished stage-1 epochs)
and ``epoch`` (finished stage-2 epochs), so a resume continues in either stage.

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
(StepLR steps per epoch; the per-epoch seeds use the epoch index only); under
``train.lr_schedule: cosine`` the epoch count sets every epoch's learning rate, so there it must match
too. Any other difference (model,
data, loss, optimiser, decode, classes) is refused with a :class:`CheckpointError` naming the keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from .augment import WeightEMA, attach_ema, time_warp
from .checkpoint import CheckpointError, load_train_state, save_model, save_train_state
from .config import SemiConfig, SpotConfig
from .data.annotations import AnnotationSet, apply_split_file, split_labels
from .data.datasets import WindowDataset, load_dataset
from .data.windows import Window
from .distributed import DDPModel, DistContext, ddp_model, shard_loader
from .distributed import context as dist_context
from .errors import SpotError
from .evaluation import PROTOCOLS, evaluate_detection
from .inference import predict_windows
from .losses import mask_loss, supervised_loss, unlabeled_loss
from .model import SPOT
from .outputs import write_json_atomic, write_text_atomic
from .pretext import clip_order_loss, drop_input, random_foreground, reconstruction_loss, swap_halves
from .refinement import refinement_loss

log = logging.getLogger(__name__)


class DivergedError(SpotError, FloatingPointError):
    """The training loss became NaN or infinite (the message names the epoch)."""


#: the files of a training run in its folder: a fresh run removes those an earlier run left
#: (``spot_core.train`` refuses such a folder without ``--overwrite``)
RUN_FILES = (
    "train_state.pt",
    "last.safetensors",
    "best.safetensors",
    "pretrain.safetensors",
    "metrics.jsonl",
    "val_predictions.json",
    "config.yaml",
    "stream_features.json",
    "self_training.json",
)


@dataclass
class TrainResult:
    """What a training run produced."""

    out_dir: Path
    best_map: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


# config keys a resumed run may change (see the module docstring); not train.epochs under the cosine
# schedule, whose learning rate at every epoch depends on it
RESUME_MAY_CHANGE = ("train.epochs",)

# config keys added after resume states were first written: left out of the resume hash at their
# defaults, so those states still resume
_ADDED_LATER = {
    "model": (
        "backbone", "hidden_dim", "stem_layers", "num_layers", "attn_window", "conv_kernel", "mlp_ratio",
        "input_dropout", "abs_pos", "cls_head", "head_layers", "mask_head", "mask_dim",
    ),
    "data": ("train_stride",),
    "train": ("ema_decay", "optimizer", "time_warp", "lr_schedule"),
    "loss": ("label_smoothing", "extent_weight"),
    "semi": ("pretrain_steps_per_epoch", "self_train_rounds", "self_train_score", "teacher", "pseudo_mask"),
    "decode": ("stitch",),
}  # fmt: skip


def _resume_config(cfg: SpotConfig) -> dict:
    """The config as a dict with the keys of :data:`RESUME_MAY_CHANGE` removed (and the ``semi``
    section when it is all defaults, so states of supervised runs written before it existed resume)."""
    d = json.loads(json.dumps(cfg.to_dict()))
    if cfg.semi == SemiConfig():
        d.pop("semi", None)
    if cfg.train.steps_per_epoch is None:  # added later: states written before it still resume
        d["train"].pop("steps_per_epoch", None)
    if cfg.train.autocast == "off":  # likewise
        d["train"].pop("autocast", None)
    for section, keys in _ADDED_LATER.items():  # likewise, at their defaults
        defaults = getattr(SpotConfig(), section)
        for key in keys:
            if section in d and getattr(getattr(cfg, section), key) == getattr(defaults, key):
                d[section].pop(key, None)
    for key in RESUME_MAY_CHANGE:
        if key == "train.epochs" and cfg.train.lr_schedule == "cosine":
            continue
        *path, last = key.split(".")
        node = d
        for p in path:
            node = node[p]
        node.pop(last, None)
    return d


def resume_hash(cfg: SpotConfig) -> str:
    """Hash of the config that must match for ``--resume`` (everything but ``train.epochs``, which
    counts too under the cosine schedule)."""
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
    kind = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    opt = kind(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if cfg.train.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.train.epochs)
    else:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.train.lr_step, gamma=cfg.train.lr_gamma)
    return opt, sched


def run_epoch(
    model: SPOT,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    cfg: SpotConfig,
    step: Callable[[dict[str, torch.Tensor], torch.device], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    *,
    desc: str,
    where: str,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader``, the epoch of every stage (supervised, pretext, semi-supervised).

    ``step(batch, device)`` returns the loss to back-propagate and the loss terms to log (``"loss"``:
    the total); then one :func:`optimizer_step`. Returns the mean of each loss term; a non-finite
    total raises ``FloatingPointError`` naming ``where`` (e.g. ``"epoch 3"``).
    """
    model.train()
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    n = 0
    bar = tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False)
    for batch in bar:
        loss, losses = step(batch, device)
        optimizer_step(model, opt, loss, cfg)
        _accumulate(sums, losses, where)
        n += 1
        bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
    return {k: v / max(n, 1) for k, v in sums.items()}


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
    warp = _warp_gen(cfg, epoch)

    def step(batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, dict]:
        if cfg.train.time_warp > 0:
            batch = time_warp(batch, cfg.train.time_warp, warp)
        x = batch["features"].to(device)
        with _autocast(cfg, device):
            out = model.forward_train(x)
            losses = supervised_loss(
                out,
                batch["cls_target"].to(device),
                batch["mask_target"].to(device),
                batch["valid_mask"].to(device),
                cfg.loss,
            )
        loss = losses["loss"]
        if isinstance(model, DDPModel):  # DDP needs a gradient for every parameter each step
            loss = loss + 0.0 * out["clip_order"].sum()
        return loss, losses

    return run_epoch(
        model, loader, opt, cfg, step, desc=f"epoch {epoch}", where=f"epoch {epoch}", progress=progress
    )


def _warp_gen(cfg: SpotConfig, epoch: int) -> torch.Generator:
    """The time-warp generator of a fine-tuning epoch, seeded from ``(train.seed, epoch)``."""
    return torch.Generator().manual_seed(epoch_seed(cfg.train.seed, epoch) * 4 + 3)


def classifier_parameters(model: SPOT) -> list[torch.nn.Parameter]:
    """The classification head's parameters (frozen during pretraining)."""
    mods = [model.classifier] + ([model.cls_stack] if hasattr(model, "cls_stack") else [])
    return [p for m in mods for p in m.parameters()]


def _autocast(cfg: SpotConfig, device: torch.device) -> Any:
    """``torch.autocast`` to bf16 when ``train.autocast == "bf16"`` (a no-op context otherwise)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.autocast == "bf16")


def _accumulate(sums: dict[str, float], losses: dict[str, torch.Tensor], where: str) -> None:
    total = float(losses["loss"].detach())
    if not math.isfinite(total):
        raise DivergedError(f"loss became {total} at {where} (lower train.lr, or set train.grad_clip)")
    for k, v in losses.items():
        sums[k] = sums.get(k, 0.0) + float(v.detach())


def optimizer_step(model: SPOT, opt: torch.optim.Optimizer, loss: torch.Tensor, cfg: SpotConfig) -> None:
    """Back-propagate ``loss`` and take one optimiser step (gradients clipped to ``train.grad_clip``)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    opt.step()


def pretrain_step(
    model: SPOT, x: torch.Tensor, valid: torch.Tensor, cfg: SpotConfig, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """Stage-1 losses of one batch (labels unused). x: [B, C, T], valid: [B, T].

    ``mask``: the mask head on the random-foreground input against its segments' mask;
    ``recon``: reconstruction of x from its element-dropped copy; ``order``: clip order on the clean
    and the random-foreground inputs together.
    """
    sc = cfg.semi
    x_fg, m_t, _ = random_foreground(
        x,
        valid,
        min_len=sc.pretrain_min_len,
        max_frac=sc.pretrain_max_frac,
        max_segments=sc.pretrain_max_segments,
        generator=gen,
    )
    msk = mask_loss(model.forward_train(x_fg)["mask"], m_t, valid, cfg.loss)
    emb_d = model.embed(drop_input(x, sc.pretrain_drop, "element", gen))
    rec = reconstruction_loss(model.reconstruct(emb_d), x, valid)
    xo, lab = swap_halves(torch.cat([x, x_fg], 0), gen)
    order = clip_order_loss(model.clip_order(model.embed(xo)), lab)
    total = sc.pretrain_mask_weight * msk + sc.pretrain_recon_weight * rec + sc.pretrain_order_weight * order
    return {"loss": total, "mask": msk.detach(), "recon": rec.detach(), "order": order.detach()}


def pretrain_one_epoch(
    model: SPOT,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    cfg: SpotConfig,
    *,
    epoch: int,
    gen: torch.Generator,
    progress: bool = True,
) -> dict[str, float]:
    """One stage-1 pass over all training windows with the classifier frozen. Mean of each loss term."""
    frozen = classifier_parameters(model)
    for prm in frozen:
        prm.requires_grad_(False)

    def step(batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, dict]:
        x, valid = batch["features"].to(device), batch["valid_mask"].to(device)
        with _autocast(cfg, device):
            losses = pretrain_step(model, x, valid, cfg, gen)
        return losses["loss"], losses

    try:
        return run_epoch(
            model, loader, opt, cfg, step, desc=f"pretrain {epoch}", where=f"pretrain epoch {epoch}",
            progress=progress,
        )  # fmt: skip
    finally:
        for prm in frozen:
            prm.requires_grad_(True)


def rampup(epoch: int, rampup_epochs: int) -> float:
    """Sigmoid-shaped ramp-up ``exp(-5 (1 - e)^2)``, ``e = min(1, (epoch + 1) / rampup_epochs)``
    (Laine & Aila 2017); 1.0 when ``rampup_epochs`` is 0."""
    if rampup_epochs <= 0:
        return 1.0
    e = min(1.0, (epoch + 1) / rampup_epochs)
    return math.exp(-5.0 * (1.0 - e) ** 2)


def semi_step(
    model: SPOT,
    lab: dict[str, torch.Tensor],
    unl: dict[str, torch.Tensor],
    cfg: SpotConfig,
    gen: torch.Generator,
    ramp: float = 1.0,
    teacher: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Stage-2 losses of a labelled and an unlabelled batch (tensors already on the device).

    ``teacher`` (``semi.teacher: ema``: the weight average, eval mode) gives the pseudo-label
    targets of the unlabelled batch; None: with ``semi.teacher: eval`` the model's own weights in
    eval mode (no dropout), else the model's own training-mode forward on the clean input (the original).

    total = supervised(lab) + ramp * unlabeled_weight * pseudo-label loss(unl)
            + recon_weight * (recon(lab) + recon(unl)) + ramp * refine_weight * (refine(lab) + refine(unl))
            + order_weight * clip order(lab and unl together)

    ``ramp`` (:func:`rampup`) scales the two terms built from the model's own predictions.
    """
    sc = cfg.semi
    xl, vl, xu, vu = lab["features"], lab["valid_mask"], unl["features"], unl["valid_mask"]
    bl = xl.shape[0]
    out = model.forward_train(torch.cat([xl, xu], 0))
    out_l = {k: v[:bl] for k, v in out.items()}
    out_u = {k: v[bl:] for k, v in out.items()}
    sup = supervised_loss(out_l, lab["cls_target"], lab["mask_target"], vl, cfg.loss)
    x_all = torch.cat([xl, xu], 0)
    emb = model.embed(drop_input(x_all, sc.recon_drop, sc.recon_drop_mode, gen))
    if teacher is not None:
        with torch.no_grad():
            lg_t, mk_t = teacher(xu)
        src = {"logits": lg_t.detach(), "mask": mk_t.detach()}
    elif sc.teacher == "eval":  # the current weights without dropout: targets from the clean forward
        model.eval()
        with torch.no_grad():
            lg_t, mk_t = model.heads(model.embed(xu))
        model.train()
        src = {"logits": lg_t.detach(), "mask": mk_t.detach()}
        teacher = model  # marks the targets as given (below)
    else:
        src = out_u
    thr = dict(cls_threshold=sc.cls_threshold, mask_threshold=sc.mask_threshold, gate=sc.pseudo_mask)
    if sc.pseudo_view == "corrupted":
        if sc.pseudo_mask == "class":  # with the offset head's extents, for the gated extent loss
            view = model.head_outputs(emb[bl:])
        else:  # the mask loss only (the original)
            lg_c, mk_c = model.heads(emb[bl:])
            view = {"logits": lg_c, "mask": mk_c}
        uns = unlabeled_loss(view, vu, cfg.loss, teacher=src, **thr)
    elif teacher is not None:
        uns = unlabeled_loss(out_u, vu, cfg.loss, teacher=src, **thr)
    else:
        uns = unlabeled_loss(out_u, vu, cfg.loss, **thr)
    x_rec = model.reconstruct(emb)
    rec = reconstruction_loss(x_rec[:bl], xl, vl) + reconstruction_loss(x_rec[bl:], xu, vu)
    xo, lab_o = swap_halves(x_all, gen)
    order = clip_order_loss(model.clip_order(model.embed(xo)), lab_o)
    total = (
        sup["loss"]
        + ramp * sc.unlabeled_weight * uns["loss"]
        + sc.recon_weight * rec
        + sc.order_weight * order
    )
    losses = {
        "cls": sup["cls"],
        "mask": sup["mask"],
        "u_loss": uns["loss"].detach(),
        "u_cls": uns["cls"],
        "u_mask": uns["mask"],
        "u_confident": uns["confident"],
        "recon": rec.detach(),
        "order": order.detach(),
    }
    if sc.refine:
        kw = dict(
            temperature=sc.temperature,
            k_easy=sc.k_easy,
            k_hard=sc.k_hard,
            easy_drop=sc.easy_drop,
            inner=sc.band_inner,
            outer=sc.band_outer,
            generator=gen,
        )
        ref = refinement_loss(out_l["logits"], out_l["mask"], out_l["embedding"], vl, **kw)
        ref = ref + refinement_loss(out_u["logits"], out_u["mask"], out_u["embedding"], vu, **kw)
        total = total + ramp * sc.refine_weight * ref
        losses["refine"] = ref.detach()
    return {"loss": total, **losses}


def _labeled_loader(dataset: WindowDataset, cfg: SpotConfig, gen: torch.Generator) -> DataLoader:
    """One fine-tuning epoch of labelled batches: one shuffled pass (``train.steps_per_epoch`` unset),
    or exactly ``steps_per_epoch`` full batches drawn from reshuffled passes over the windows (so a
    small labelled set gets as many optimiser steps per epoch as a large one)."""
    tr = cfg.train
    if tr.steps_per_epoch is None:
        return DataLoader(
            dataset, batch_size=tr.batch_size, shuffle=True, generator=gen, num_workers=tr.num_workers
        )
    sampler = RandomSampler(dataset, num_samples=tr.steps_per_epoch * tr.batch_size, generator=gen)
    return DataLoader(dataset, batch_size=tr.batch_size, sampler=sampler, num_workers=tr.num_workers)


def _pretrain_loader(dataset: WindowDataset, cfg: SpotConfig, gen: torch.Generator) -> DataLoader:
    """One stage-1 epoch: one shuffled pass over all windows, or ``semi.pretrain_steps_per_epoch``
    full batches drawn from reshuffled passes."""
    tr, steps = cfg.train, cfg.semi.pretrain_steps_per_epoch
    if steps is None:
        return DataLoader(
            dataset, batch_size=tr.batch_size, shuffle=True, generator=gen, num_workers=tr.num_workers
        )
    sampler = RandomSampler(dataset, num_samples=steps * tr.batch_size, generator=gen)
    return DataLoader(dataset, batch_size=tr.batch_size, sampler=sampler, num_workers=tr.num_workers)


def _forever(loader: DataLoader):
    """Batches of ``loader``, starting a new pass whenever one ends."""
    while True:
        yield from loader


def train_semi_one_epoch(
    model: SPOT,
    loader: DataLoader,
    unlabeled: DataLoader,
    opt: torch.optim.Optimizer,
    cfg: SpotConfig,
    *,
    epoch: int,
    gen: torch.Generator,
    progress: bool = True,
    teacher: torch.nn.Module | None = None,
) -> dict[str, float]:
    """One stage-2 pass over the labelled windows; each step also takes the next unlabelled batch
    (the unlabelled loader restarts when it runs out, as in the original). Mean of each loss term.
    ``teacher``: see :func:`semi_step`."""
    unl_iter = _forever(unlabeled)
    warp = _warp_gen(cfg, epoch)

    def step(batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, dict]:
        if cfg.train.time_warp > 0:
            batch = time_warp(batch, cfg.train.time_warp, warp)
        lab = {k: v.to(device) for k, v in batch.items()}
        unl = {k: v.to(device) for k, v in next(unl_iter).items()}
        with _autocast(cfg, device):
            losses = semi_step(model, lab, unl, cfg, gen, rampup(epoch, cfg.semi.rampup_epochs), teacher)
        return losses["loss"], losses

    return run_epoch(
        model,
        loader,
        opt,
        cfg,
        step,
        desc=f"epoch {epoch}",
        where=f"fine-tune epoch {epoch}",
        progress=progress,
    )


def unlabeled_batch_size(batch_size: int, num_labeled: int, num_unlabeled: int, semi: SemiConfig) -> int:
    """Unlabelled windows per step. ``semi.unlabeled_batch_size`` when set, else the original's rule
    ``min(max(round(B u / (4 (1 - u))) * 4, 4), 24)`` with u the unlabelled fraction of the training
    windows; never more than the unlabelled windows there are."""
    if semi.unlabeled_batch_size is not None:
        size = semi.unlabeled_batch_size
    else:
        u = num_unlabeled / max(num_labeled + num_unlabeled, 1)
        size = min(max(round(batch_size * u / (4 * (1.0 - u))) * 4, 4), 24)
    return max(1, min(size, num_unlabeled))


def label_split(cfg: SpotConfig):
    """The ``relabel`` function of :func:`load_dataset` for ``cfg.semi`` (None: labels as in the file)."""
    sc = cfg.semi
    if sc.labeled_fraction is not None:
        return lambda aset: split_labels(aset, sc.labeled_fraction, seed=sc.split_seed)
    if sc.split_file is not None:
        return lambda aset: apply_split_file(aset, sc.split_file)
    return None


def _aug_seed(seed: int, stage: str, epoch: int) -> int:
    """Seed of the generator for random inputs and mining (apart from dropout and shuffling)."""
    return epoch_seed(seed, epoch) * 4 + (1 if stage == "pretrain" else 2)


def pretrain_seed(seed: int, epoch: int) -> int:
    """Dropout / shuffling seed of pretraining epoch ``epoch`` (fine-tune epochs use :func:`epoch_seed`)."""
    return epoch_seed(seed, -1 - epoch)


def validate(
    model: SPOT, windows: list[Window], gt: AnnotationSet, cfg: SpotConfig, *, progress: bool = False
) -> tuple[dict, dict]:
    """Detections on the validation windows and their mAP against ``gt``."""
    durations = gt.durations()
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
    """Train SPOT on the training windows of ``data_dir``; validate every fine-tuning epoch.

    Stage 1 (``cfg.semi.pretrain_epochs`` epochs, all training windows, labels unused) pretrains
    with the pretext tasks; stage 2 (``cfg.train.epochs``) is the supervised loop, or the
    semi-supervised one when the training set has unlabelled windows (``cfg.semi``).
    """
    train_set, train_windows = load_dataset(data_dir, cfg, "training", relabel=label_split(cfg))
    val_set, val_windows = load_dataset(data_dir, cfg, "validation")
    if not cfg.class_names:
        cfg = cfg.replace(class_names=tuple(train_set.classes))
    if not any(w.labeled and w.has_targets for w in train_windows):
        raise ValueError(f"{data_dir}: no labelled training windows")
    return train_on_windows(
        cfg, train_windows, val_set, val_windows, out_dir, resume=resume, progress=progress, device=device
    )


def train_on_windows(
    cfg: SpotConfig,
    train_windows: list[Window],
    val_set: AnnotationSet | None,
    val_windows: list[Window],
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
    validate_every: int = 1,
    epoch_hook: Callable[[SPOT, int], dict[str, float]] | None = None,
) -> TrainResult:
    """The training loop of :func:`train` on windows built by the caller (e.g. :mod:`spot_core.actrectut`).

    ``train_windows``: labelled windows (``labeled and has_targets``) are trained on, unlabelled ones
    are used by the semi-supervised stage when ``cfg.semi.use_unlabeled``. Validation on
    ``val_windows`` against ``val_set`` runs every ``validate_every`` fine-tuning epochs and after the
    last one (``validate_every=0`` or no validation windows: never; ``best.safetensors`` is then not
    written and ``best_map`` stays -1). ``cfg.class_names`` must be set by the caller.
    ``epoch_hook(model, epoch)`` (diagnostics, e.g. ``benchmarks.curves``): called after each
    fine-tuning epoch's validation with the model that epoch would save (the weight average when
    ``train.ema_decay`` is set); the numbers it returns join that epoch's row of ``metrics.jsonl``.
    It must not train or reseed anything (each epoch reseeds itself, so it cannot change the run).

    Steps: :func:`split_training_windows`, :func:`build_run`, :func:`pretrain_stage` (stage 1) and
    :func:`finetune_stage` (stage 2); each epoch of either stage runs :func:`run_epoch` and ends in
    :func:`save_checkpoint`.
    """
    out = Path(out_dir)
    if cfg.semi.self_train_rounds and any(not w.labeled for w in train_windows):
        if epoch_hook is not None:
            raise ValueError(
                "epoch_hook follows one training run; self-training (semi.self_train_rounds) runs several"
            )
        return self_train(
            cfg, train_windows, val_set, val_windows, out,
            resume=resume, progress=progress, device=device, validate_every=validate_every,
        )  # fmt: skip
    labeled, unlabeled = split_training_windows(cfg, train_windows, num_val=len(val_windows))
    run = build_run(cfg, out, resume=resume, progress=progress, device=device)
    pretrain_stage(run, train_windows)
    finetune_stage(
        run, labeled, unlabeled, val_set, val_windows, validate_every=validate_every, epoch_hook=epoch_hook
    )
    return TrainResult(
        out, run.best_map, run.best_epoch, [r for r in run.history if r.get("stage") != "pretrain"]
    )


def self_train(
    cfg: SpotConfig,
    train_windows: list[Window],
    val_set: AnnotationSet | None,
    val_windows: list[Window],
    out: Path,
    *,
    resume: bool,
    progress: bool,
    device: str,
    validate_every: int,
) -> TrainResult:
    """``semi.self_train_rounds`` (:mod:`spot_core.self_training`): the teacher (the configured
    training) in ``out/round0``, then each round's student on the labelled windows plus the
    unlabelled videos pseudo-labelled by the previous model; the last student in ``out``. A resumed
    run resumes the round it stopped in (finished rounds are loaded, not retrained)."""
    from .checkpoint import load_model
    from .self_training import infer_train_stride, pseudo_label_windows, round_dir, student_config

    rounds = cfg.semi.self_train_rounds
    labeled = [w for w in train_windows if w.labeled and w.has_targets]
    unlabeled = [w for w in train_windows if not w.labeled]
    stride = infer_train_stride(unlabeled)
    kw = dict(progress=progress, device=device, validate_every=validate_every)

    def sub_run(c: SpotConfig, windows: list[Window], d: Path) -> TrainResult:
        again = resume and (d / "train_state.pt").exists()
        return train_on_windows(c, windows, val_set, val_windows, d, resume=again, **kw)

    log.info("self-training: round 0 (the teacher) in %s", round_dir(out, 0))
    res = sub_run(cfg.override(["semi.self_train_rounds=0"]), train_windows, round_dir(out, 0))
    summaries = []
    for r in range(1, rounds + 1):
        teacher, tcfg = load_model(res.out_dir / "last.safetensors", map_location=device)
        pseudo, summary = pseudo_label_windows(teacher, tcfg, unlabeled, train_stride=stride)
        summaries.append({"round": r, **summary})
        d = out if r == rounds else round_dir(out, r)
        log.info("self-training: round %d (student) in %s", r, d)
        res = sub_run(student_config(cfg), labeled + pseudo, d)
    write_json_atomic(out / "self_training.json", {"rounds": summaries})
    return res


def split_training_windows(
    cfg: SpotConfig, train_windows: list[Window], *, num_val: int
) -> tuple[list[Window], list[Window]]:
    """The labelled windows (``labeled and has_targets``) and the unlabelled ones stage 2 uses
    (none unless ``cfg.semi.use_unlabeled``); logs the counts and warns about classes never labelled."""
    labeled = [w for w in train_windows if w.labeled and w.has_targets]
    if not labeled:
        raise ValueError("no labelled training windows")
    unlabeled = [w for w in train_windows if not w.labeled] if cfg.semi.use_unlabeled else []
    log.info(
        "train windows: %d labelled of %d%s; val windows: %d",
        len(labeled),
        len(train_windows),
        f" ({len(unlabeled)} unlabelled used)" if unlabeled else "",
        num_val,
    )
    if cfg.semi.use_unlabeled and (cfg.semi.labeled_fraction or cfg.semi.split_file) and not unlabeled:
        log.warning("semi-supervised split left no unlabelled windows: stage 2 is the supervised loop")
    seen = {int(c) for w in labeled for c in np.unique(w.cls_target)}
    missing = [cfg.class_name(k) for k in range(cfg.model.num_classes) if k not in seen]
    if missing:
        log.warning(
            "%d of %d classes have no labelled training snippet (%s%s): the model is never taught them "
            "(pseudo-labels can still name them)",
            len(missing), cfg.model.num_classes, ", ".join(missing[:5]), ", ..." if len(missing) > 5 else "",
        )  # fmt: skip
    return labeled, unlabeled


@dataclass
class TrainRun:
    """One run's model, optimiser and bookkeeping, shared by its stages (built by :func:`build_run`).

    Only the main rank (``dc.is_main``; every rank when single-process) writes files and validates.
    """

    cfg: SpotConfig
    out: Path
    model: SPOT
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    dc: DistContext
    device: str
    progress: bool
    start_pre: int = 0  # stage-1 epochs finished before this process started
    start_epoch: int = 0  # stage-2 epochs finished before this process started
    best_map: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    ema_state: dict | None = None  # the saved weight average, loaded when stage 2 starts
    ema: WeightEMA | None = None  # the weight average of stage 2 (train.ema_decay), built when it starts

    @property
    def main(self) -> bool:
        return self.dc.is_main

    @property
    def final(self) -> SPOT:
        """What validation and the stage-2 checkpoints see: the weight average when there is one."""
        return self.model if self.ema is None else self.ema.module

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"


def build_run(cfg: SpotConfig, out: Path, *, resume: bool, progress: bool, device: str) -> TrainRun:
    """Build step: seed ``train.seed``, the model and its optimiser (restored from ``train_state.pt``
    when ``resume``), ``config.yaml``, and ``metrics.jsonl`` (a fresh run starts a new log; a resumed
    one keeps exactly the epochs in the saved state)."""
    dc = dist_context()
    torch.manual_seed(cfg.train.seed)
    model = SPOT(cfg.model).to(device)
    opt, sched = make_optimizer(model, cfg)
    run = TrainRun(cfg, out, model, opt, sched, dc, device, progress)
    if resume:
        run.start_epoch, run.best_map, run.best_epoch, run.history, run.start_pre = _resume(
            out, model, opt, sched, cfg
        )
        run.ema_state = _resume_ema(out, cfg)
        log.info("resumed from %s at pretrain epoch %d, epoch %d", out, run.start_pre, run.start_epoch)
    if run.main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:  # a fresh run: nothing of an earlier run in the folder may pass for its own
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        cfg.to_yaml(out / "config.yaml")
        write_text_atomic(run.metrics_path, "".join(json.dumps(row) + "\n" for row in run.history))
    return run


def record_epoch(run: TrainRun, row: dict) -> None:
    """Append an epoch's row to the history and to ``metrics.jsonl`` (before ``train_state.pt``, so a
    resume drops it if need be). The log is the one output appended rather than replaced: a resume
    rewrites it (atomically) from the history in the state, so a torn last line never survives."""
    run.history.append(row)
    if run.main:
        with run.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def save_checkpoint(run: TrainRun, pre_done: int, epoch_next: int) -> None:
    """Checkpoint step: ``train_state.pt`` after ``pre_done`` stage-1 and ``epoch_next`` stage-2
    epochs (model, optimiser, scheduler, best metric, history, the weight average); main rank only."""
    if not run.main:
        return
    cfg = run.cfg
    save_train_state(
        run.out / "train_state.pt",
        {
            "stage": "pretrain" if pre_done < cfg.semi.pretrain_epochs else "finetune",
            "pretrain_epoch": pre_done,
            "epoch": epoch_next,
            "best_map": run.best_map,
            "best_epoch": run.best_epoch,
            "model": {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()},
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "config_hash": resume_hash(cfg),
            "config": json.dumps(_resume_config(cfg)),
            "history": json.dumps(run.history),
            **({"ema": run.ema.state_dict()} if run.ema is not None else {}),
        },
    )


def pretrain_stage(run: TrainRun, train_windows: list[Window]) -> None:
    """Stage 1: the remaining ``semi.pretrain_epochs`` epochs over all training windows (labels unused)."""
    if run.start_pre >= run.cfg.semi.pretrain_epochs:
        return
    dataset = WindowDataset(train_windows)
    for epoch in range(run.start_pre, run.cfg.semi.pretrain_epochs):
        pretrain_epoch(run, dataset, epoch)


def pretrain_epoch(run: TrainRun, dataset: WindowDataset, epoch: int) -> None:
    """One stage-1 epoch, reseeded from ``(train.seed, epoch)`` (:func:`pretrain_seed`): train, log,
    ``pretrain.safetensors``, ``train_state.pt``."""
    cfg, dc = run.cfg, run.dc
    t0 = time.perf_counter()
    torch.manual_seed(pretrain_seed(cfg.train.seed, epoch))
    loader = _pretrain_loader(
        dataset, cfg, torch.Generator().manual_seed(pretrain_seed(cfg.train.seed, epoch))
    )
    aug = torch.Generator().manual_seed(_aug_seed(cfg.train.seed, "pretrain", epoch))
    for prm in classifier_parameters(run.model):  # frozen before DDP is built: it syncs the rest
        prm.requires_grad_(False)
    runner = ddp_model(run.model, dc, run.device)
    losses = pretrain_one_epoch(
        runner,
        shard_loader(loader, dc),
        run.opt,
        cfg,
        epoch=epoch,
        gen=aug,
        progress=run.progress and run.main,
    )
    losses = dc.mean(losses)
    row = {
        "stage": "pretrain",
        "epoch": epoch,
        **{f"loss_{k}": v for k, v in losses.items()},
        "lr": run.opt.param_groups[0]["lr"],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    record_epoch(run, row)
    if run.main:
        log.info("pretrain epoch %d loss %.4f (%.1fs)", epoch, losses["loss"], row["seconds"])
        save_model(run.out / "pretrain.safetensors", run.model, cfg, pretrain_epoch=epoch)
    save_checkpoint(run, epoch + 1, 0)


def start_finetune(run: TrainRun) -> None:
    """Stage 2's optimiser and weight average: fresh Adam moments after pretraining
    (``semi.reset_optimizer``), then the EMA of ``train.ema_decay`` (its saved state on resume)."""
    cfg = run.cfg
    if cfg.semi.reset_optimizer and cfg.semi.pretrain_epochs > 0 and run.start_epoch == 0:
        # stage 2 starts from the pretrained weights with fresh Adam moments (a resume at this
        # boundary holds stage 1's optimiser and resets it here too, so it replays exactly)
        run.opt, run.sched = make_optimizer(run.model, cfg)
    if run.start_epoch < cfg.train.epochs or run.ema_state is not None:
        run.ema = attach_ema(run.model, run.opt, cfg.train.ema_decay)
        if run.ema is not None and run.ema_state is not None:
            run.ema.load_state_dict(run.ema_state)


def finetune_stage(
    run: TrainRun,
    labeled: list[Window],
    unlabeled: list[Window],
    val_set: AnnotationSet | None,
    val_windows: list[Window],
    *,
    validate_every: int,
    epoch_hook: Callable[[SPOT, int], dict[str, float]] | None = None,
) -> None:
    """Stage 2: the remaining ``train.epochs`` epochs, supervised or (with unlabelled windows)
    semi-supervised; each is trained, validated, logged and checkpointed (``epoch_hook``: see
    :func:`train_on_windows`)."""
    cfg = run.cfg
    start_finetune(run)
    dataset = WindowDataset(labeled)
    unl_dataset = WindowDataset(unlabeled) if unlabeled else None
    bs_u = 0
    if unlabeled:
        bs_u = unlabeled_batch_size(cfg.train.batch_size, len(labeled), len(unlabeled), cfg.semi)
        if cfg.semi.rampup_epochs > cfg.train.epochs and run.main:
            log.warning(
                "semi.rampup_epochs (%d) > train.epochs (%d): the pseudo-label and refinement terms never "
                "reach their weight; set semi.rampup_epochs to about half of train.epochs",
                cfg.semi.rampup_epochs,
                cfg.train.epochs,
            )
    runner = ddp_model(run.model, run.dc, run.device) if run.start_epoch < cfg.train.epochs else run.model
    for epoch in range(run.start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        losses = finetune_epoch(run, runner, dataset, unl_dataset, bs_u, epoch)
        run.sched.step()
        preds, res = validate_epoch(run, val_set, val_windows, epoch, validate_every=validate_every)
        row = {
            **({"stage": "finetune"} if cfg.semi.pretrain_epochs or unl_dataset is not None else {}),
            "epoch": epoch,
            **{f"loss_{k}": v for k, v in losses.items()},
            **({"val_average_mAP": res["average_mAP"]} if res is not None else {}),
            **(epoch_hook(run.final, epoch) if epoch_hook is not None and run.main else {}),
            "lr": run.opt.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        record_epoch(run, row)
        log.info(
            "epoch %d loss %.4f val mAP %.4f (%.1fs)",
            epoch,
            losses.get("loss", float("nan")),
            res["average_mAP"] if res is not None else float("nan"),
            row["seconds"],
        )
        checkpoint_epoch(run, epoch, preds, res)


def finetune_epoch(
    run: TrainRun,
    runner: SPOT,
    dataset: WindowDataset,
    unl_dataset: WindowDataset | None,
    bs_u: int,
    epoch: int,
) -> dict[str, float]:
    """One stage-2 epoch, reseeded from ``(train.seed, epoch)``: :func:`train_one_epoch`, or
    :func:`train_semi_one_epoch` with ``bs_u`` unlabelled windows per step. Loss terms averaged over ranks."""
    cfg, dc = run.cfg, run.dc
    torch.manual_seed(epoch_seed(cfg.train.seed, epoch))
    gen = torch.Generator().manual_seed(epoch_seed(cfg.train.seed, epoch))
    loader = shard_loader(_labeled_loader(dataset, cfg, gen), dc)
    progress = run.progress and run.main
    if unl_dataset is None:
        losses = train_one_epoch(runner, loader, run.opt, cfg, epoch=epoch, progress=progress)
    else:
        aug_seed = _aug_seed(cfg.train.seed, "finetune", epoch)
        unl_loader = DataLoader(
            unl_dataset,
            batch_size=bs_u,
            shuffle=True,
            generator=torch.Generator().manual_seed(aug_seed + 1),
            num_workers=cfg.train.num_workers,
            drop_last=True,
        )
        aug = torch.Generator().manual_seed(aug_seed)
        losses = train_semi_one_epoch(
            runner,
            loader,
            shard_loader(unl_loader, dc),
            run.opt,
            cfg,
            epoch=epoch,
            gen=aug,
            progress=progress,
            teacher=run.ema.module if cfg.semi.teacher == "ema" and run.ema is not None else None,
        )
    return dc.mean(losses)


def validate_epoch(
    run: TrainRun,
    val_set: AnnotationSet | None,
    val_windows: list[Window],
    epoch: int,
    *,
    validate_every: int,
) -> tuple[dict | None, dict | None]:
    """Validate step: :func:`validate` on the main rank every ``validate_every`` fine-tuning epochs and
    after the last one; ``(None, None)`` otherwise."""
    do_val = run.main and bool(val_windows) and val_set is not None and validate_every > 0
    do_val = do_val and ((epoch + 1) % validate_every == 0 or epoch + 1 == run.cfg.train.epochs)
    return validate(run.final, val_windows, val_set, run.cfg) if do_val else (None, None)


def checkpoint_epoch(run: TrainRun, epoch: int, preds: dict | None, res: dict | None) -> None:
    """Checkpoint step of a fine-tuning epoch: ``best.safetensors`` and ``val_predictions.json`` on a
    new best mAP, ``last.safetensors``, then ``train_state.pt``."""
    cfg = run.cfg
    if res is not None and res["average_mAP"] > run.best_map:
        run.best_map, run.best_epoch = res["average_mAP"], epoch
        save_model(run.out / "best.safetensors", run.final, cfg, epoch=epoch, val_average_mAP=run.best_map)
        write_json_atomic(run.out / "val_predictions.json", preds)
    last_map = res["average_mAP"] if res is not None else float("nan")
    if run.main:
        save_model(run.out / "last.safetensors", run.final, cfg, epoch=epoch, val_average_mAP=last_map)
    save_checkpoint(run, cfg.semi.pretrain_epochs, epoch + 1)


def _resume_ema(out: Path, cfg: SpotConfig) -> dict | None:
    """The stage-2 weight average saved in ``train_state.pt`` (None when there is none)."""
    if cfg.train.ema_decay is None:
        return None
    state = load_train_state(out / "train_state.pt")
    return state.get("ema")


def _resume(out: Path, model: SPOT, opt, sched, cfg: SpotConfig) -> tuple[int, float, int, list[dict], int]:
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
            # states written before pretraining existed: it was done (there was none)
            int(state.get("pretrain_epoch", cfg.semi.pretrain_epochs)),
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # a state dict of another shape or version
        raise CheckpointError(
            f"{path}: incomplete or inconsistent resume state ({type(e).__name__}: {e})"
        ) from None
