"""Data-parallel training with PyTorch's own engine: DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node N -m spot_core.train ...`` starts N processes; :func:`init_from_env`
joins them (gloo on CPU, NCCL on GPUs; one GPU per rank, ``cuda:LOCAL_RANK``). The training loop
(:mod:`spot_core.training`) then:

* builds every data loader exactly as one process would (same seeds, so the same global batches
  in the same order) and gives each rank its contiguous slice of each global batch
  (:class:`RankSlicedBatchSampler`, the distributed sampler of the labelled, unlabelled and
  pretraining loaders). ``train.batch_size`` stays the *global* batch; a global batch smaller than
  the number of ranks (a last partial one) is skipped on every rank;
* runs each step's model calls through one :class:`~torch.nn.parallel.DistributedDataParallel`
  wrapper (:func:`ddp_model`), which averages the gradients across ranks during ``backward``. A
  step calls several of the model's methods (``forward_train``, ``embed``, ``heads``,
  ``clip_order``), so the wrapper's ``forward`` dispatches by method name and DDP runs with
  ``static_graph=True`` (several forwards before one backward; the same parameters used every
  step of a stage); a fresh wrapper is built per stage, after stage 1 freezes the classifier;
* averages the logged loss terms over the ranks (:meth:`DistContext.mean`), writes checkpoints,
  metrics and validation from rank 0 only, and reads the resume state on every rank.

Equivalence to one process at the same global batch: gradients are averaged per-rank means, which
equals the gradient of the global-batch mean for losses that are means over windows of equal-sized
slices; losses normalised by batch-level counts (the balanced mask BCE, the dice term) and the
random draws of augmentations and dropout (drawn per slice) differ, so loss curves agree within a
tolerance, not bit for bit (measured in tests/test_ddp.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

__all__ = ["DistContext", "RankSlicedBatchSampler", "context", "ddp_model", "init_from_env", "shard_loader"]


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (every rank gets the same dict)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist(), strict=True)}

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def context() -> DistContext:
    """The current process group as a :class:`DistContext` (a single process when none)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext()


def init_from_env() -> DistContext:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return context()


class RankSlicedBatchSampler(Sampler[list[int]]):
    """This rank's contiguous slice of each global batch of ``batch_sampler``.

    Slices as ``torch.tensor_split`` does (sizes differ by at most one); a global batch with fewer
    indices than ranks is skipped on every rank, so every rank takes the same number of steps.
    """

    def __init__(self, batch_sampler: Any, rank: int, world: int) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside [0, {world})")
        self.batch_sampler, self.rank, self.world = batch_sampler, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            batch = list(batch)
            if len(batch) < self.world:
                continue
            n, r, w = len(batch), self.rank, self.world
            start = r * (n // w) + min(r, n % w)
            yield batch[start : start + n // w + (1 if r < n % w else 0)]

    def __len__(self) -> int:
        bs = self.batch_sampler  # computed, never iterated: iterating would advance its generator
        size, drop = getattr(bs, "batch_size", None), getattr(bs, "drop_last", None)
        if size is None or drop is None:
            return len(bs)
        n = len(bs.sampler)
        full = n // size if size >= self.world else 0
        rem = n % size
        return full + int(bool(rem) and not drop and rem >= self.world)


def shard_loader(loader: DataLoader, ctx: DistContext) -> DataLoader:
    """``loader`` with each global batch sliced for this rank (the loader itself when single-process)."""
    if not ctx.enabled:
        return loader
    return DataLoader(
        loader.dataset,
        batch_sampler=RankSlicedBatchSampler(loader.batch_sampler, ctx.rank, ctx.world),
        num_workers=loader.num_workers,
    )


class _Calls(nn.Module):
    """``forward(name, *args)`` = ``model.<name>(*args)``: one DDP entry point for every method."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, name: str, *args: Any) -> Any:
        return getattr(self.model, name)(*args)


class DDPModel:
    """The model with its forward-like methods routed through DistributedDataParallel; every other
    attribute (``parameters``, ``train``, ``classifier``...) is the model's own."""

    ROUTED = ("forward_train", "embed", "heads", "head_outputs", "clip_order", "mask_hidden", "reconstruct")

    def __init__(self, model: nn.Module, ddp: nn.parallel.DistributedDataParallel) -> None:
        self._model, self._ddp = model, ddp

    def __getattr__(self, name: str) -> Any:
        if name in DDPModel.ROUTED:
            return lambda *args: self._ddp(name, *args)
        return getattr(self._model, name)


def ddp_model(model: nn.Module, ctx: DistContext, device: torch.device | str) -> Any:
    """``model`` itself when single-process, else a :class:`DDPModel` over a fresh DDP wrapper
    (built now: only parameters that require grad at this point are synchronised)."""
    if not ctx.enabled:
        return model
    dev = torch.device(device)
    ids: Sequence[int] | None = [dev.index or 0] if dev.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(_Calls(model), device_ids=ids, static_graph=True)
    return DDPModel(model, ddp)
