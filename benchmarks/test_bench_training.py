"""One training step of each stage, pytest-benchmark (issue 7): CPU, one torch thread, random data.

``pytest benchmarks/test_bench_training.py --benchmark-only``. Presets ``toy`` (the embedded data's
sizes) and ``anet`` (C=400, T=100, K=200; batch 16 here instead of the preset's 100 to keep the
suite short). Each benchmark is one optimiser step (forward, losses, backward, Adam):

* ``supervised``: the stage-2 step without unlabelled data (labelled batch);
* ``pretrain``: a stage-1 step (random foreground, reconstruction, clip order; classifier frozen);
* ``semi``: a stage-2 step with a labelled and an unlabelled batch (pseudo-labels, reconstruction,
  contrastive refinement, clip order).

``extra_info`` records windows per second (labelled + unlabelled windows of the step / median).
"""

from __future__ import annotations

import pytest
import torch

from spot_core.config import SpotConfig
from spot_core.losses import supervised_loss
from spot_core.model import SPOT
from spot_core.training import make_optimizer, optimizer_step, pretrain_step, semi_step

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = {"toy": 16, "anet": 16}


def _batch(cfg: SpotConfig, n: int, gen: torch.Generator, labeled: bool) -> dict[str, torch.Tensor]:
    m = cfg.model
    T, K = m.num_snippets, m.num_classes
    cls = torch.full((n, T), K, dtype=torch.long)
    mask = torch.zeros(n, T, T)
    for i in range(n):  # one instance per window
        a = int(torch.randint(0, T // 2, (1,), generator=gen))
        b = a + int(torch.randint(2, T // 2, (1,), generator=gen))
        cls[i, a:b] = int(torch.randint(0, K, (1,), generator=gen))
        mask[i, a:b, a:b] = 1.0
    return {
        "features": torch.randn(n, m.feat_dim, T, generator=gen),
        "cls_target": cls,
        "mask_target": mask,
        "valid_mask": torch.ones(n, T, dtype=torch.bool),
        "labeled": torch.full((n,), labeled),
    }


def _setup(preset: str):
    cfg = SpotConfig.preset(preset)
    torch.manual_seed(0)
    model = SPOT(cfg.model).train()
    opt, _ = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    n = BATCH[preset]
    return cfg, model, opt, gen, _batch(cfg, n, gen, True), _batch(cfg, n, gen, False)


def _record(benchmark, windows: int) -> None:
    med = benchmark.stats.stats.median
    benchmark.extra_info.update({"windows_per_step": windows, "windows_per_s": windows / med, "threads": 1})


@pytest.mark.parametrize("preset", ["toy", "anet"])
def test_supervised_step(benchmark, preset):
    cfg, model, opt, _, lab, _ = _setup(preset)

    def step():
        out = model.forward_train(lab["features"])
        losses = supervised_loss(out, lab["cls_target"], lab["mask_target"], lab["valid_mask"], cfg.loss)
        optimizer_step(model, opt, losses["loss"], cfg)

    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    _record(benchmark, lab["features"].shape[0])


@pytest.mark.parametrize("preset", ["toy", "anet"])
def test_pretrain_step(benchmark, preset):
    cfg, model, opt, gen, lab, _ = _setup(preset)
    for p in model.classifier.parameters():
        p.requires_grad_(False)

    def step():
        losses = pretrain_step(model, lab["features"], lab["valid_mask"], cfg, gen)
        optimizer_step(model, opt, losses["loss"], cfg)

    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    _record(benchmark, lab["features"].shape[0])


@pytest.mark.parametrize("preset", ["toy", "anet"])
def test_semi_step(benchmark, preset):
    cfg, model, opt, gen, lab, unl = _setup(preset)

    def step():
        losses = semi_step(model, lab, unl, cfg, gen, 1.0)
        optimizer_step(model, opt, losses["loss"], cfg)

    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    _record(benchmark, lab["features"].shape[0] + unl["features"].shape[0])
