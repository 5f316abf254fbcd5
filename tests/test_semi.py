"""Pretraining and semi-supervised fine-tuning: pretext inputs, losses, refinement, training stages.

Loss tests use hand-built tensors (values checked against formulas written out here); the end-to-end
tests train on 16 generated videos for 1 + 2 epochs, a second or two each on one CPU thread.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spot_core import training as training_mod
from spot_core.checkpoint import load_train_state
from spot_core.config import ConfigError, LossConfig, SemiConfig, SpotConfig
from spot_core.data.annotations import AnnotationError, apply_split_file, load_annotations
from spot_core.data.synthetic import generate_dataset
from spot_core.losses import pseudo_targets, unlabeled_loss
from spot_core.pretext import (
    clip_order_loss,
    drop_input,
    minmax_normalise,
    random_foreground,
    reconstruction_loss,
    runs_mask,
    swap_halves,
)
from spot_core.refinement import boundary_bands, easy_snippets, info_nce, refinement_loss
from spot_core.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")

OVERRIDES = ["train.batch_size=6", "train.lr=0.01"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """Runs [s, e) of a 1-D bool tensor."""
    out, start = [], None
    for i, v in enumerate(row.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i))
            start = None
    return out


# ------------------------------------------------------------------------------------------ pretext
def test_runs_mask_blocks():
    fg = torch.tensor([[False, True, True, False, True, True, True]])
    m = runs_mask(fg)[0]
    want = torch.zeros(7, 7)
    want[1:3, 1:3] = 1
    want[4:7, 4:7] = 1
    assert torch.equal(m, want)
    assert torch.equal(runs_mask(torch.zeros(2, 5, dtype=torch.bool)), torch.zeros(2, 5, 5))


def test_minmax_normalise_per_channel_over_real_snippets():
    x = torch.tensor([[[1.0, 3.0, 5.0, 100.0], [2.0, 2.0, 4.0, -9.0]]])  # [1, 2, 4]
    valid = torch.tensor([[True, True, True, False]])
    y = minmax_normalise(x, valid, eps=0.0)
    assert torch.allclose(y, torch.tensor([[[0.0, 0.5, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]]]))


def test_random_foreground_segments_targets_and_padding():
    b, c, t = 64, 3, 40
    x = torch.randn(b, c, t, generator=gen(1))
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[:8, 30:] = False  # padded windows
    x_fg, m, fg = random_foreground(x, valid, min_len=5, generator=gen(2))
    assert x_fg.shape == x.shape and m.shape == (b, t, t) and fg.shape == (b, t)
    assert not (fg & ~valid).any()
    norm = minmax_normalise(x, valid)
    assert torch.equal(x_fg, norm * fg.unsqueeze(1))
    assert torch.equal(m, runs_mask(fg))
    assert torch.equal(torch.diagonal(m, dim1=1, dim2=2).bool(), fg)
    counts = []
    for i in range(b):
        r = runs(fg[i])
        assert 1 <= len(r) <= 2
        assert all(e - s >= 5 for s, e in r)
        counts.append(len(r))
    assert set(counts) == {1, 2}  # both one and two segments occur
    # seeded: same generator seed -> same draw; another seed -> another
    again = random_foreground(x, valid, generator=gen(2))
    assert all(torch.equal(a, b_) for a, b_ in zip((x_fg, m, fg), again, strict=True))
    assert not torch.equal(random_foreground(x, valid, generator=gen(3))[2], fg)


def test_drop_input_modes():
    x = torch.ones(4, 8, 50)
    s = drop_input(x, 0.5, "snippet", gen())
    col = s[:, 0, :]
    assert torch.equal(s, col.unsqueeze(1).expand_as(s))  # whole snippets
    assert 0 < (col == 0).float().mean() < 1
    ch = drop_input(x, 0.5, "channel", gen())
    assert torch.equal(ch, ch[:, :, :1].expand_as(ch))  # whole channels
    el = drop_input(x, 0.2, "element", gen())
    assert set(el.unique().tolist()) == {0.0, 1.0}  # no rescaling
    assert drop_input(x, 0.0, "snippet") is x
    with pytest.raises(ValueError, match="drop mode"):
        drop_input(x, 0.1, "pixel")


def test_reconstruction_loss_value_and_padding():
    emb = torch.zeros(1, 2, 3, requires_grad=True)
    target = torch.tensor([[[1.0, 2.0, 50.0], [3.0, 0.0, 50.0]]])
    valid = torch.tensor([[True, True, False]])
    loss = reconstruction_loss(emb, target, valid)
    assert loss.item() == pytest.approx(((1 + 9) / 2 + (4 + 0) / 2) / 2)
    loss.backward()
    assert emb.grad[..., 2].abs().sum() == 0 and emb.grad[..., :2].abs().sum() > 0
    assert reconstruction_loss(emb, target, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def test_swap_halves_and_clip_order_loss():
    x = torch.arange(5 * 7, dtype=torch.float32).view(5, 1, 7)
    xo, lab = swap_halves(x, gen(4))
    assert lab.sum().item() == 2  # B // 2 swapped
    for i in range(5):
        want = torch.cat([x[i, :, 3:], x[i, :, :3]], 1) if lab[i] else x[i]
        assert torch.equal(xo[i], want)
    assert torch.equal(swap_halves(x, gen(4))[1], lab)
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    label = torch.tensor([1, 0])
    # 2-way softmax CE == binary cross entropy of sigmoid(l1 - l0)
    z = logits[:, 1] - logits[:, 0]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, label.float())
    assert clip_order_loss(logits, label).item() == pytest.approx(bce.item(), rel=1e-6)


# ------------------------------------------------------------------------------------ pseudo-labels
def test_pseudo_targets_and_unlabeled_loss():
    k1, t = 3, 4
    logits = torch.full((1, k1, t), -10.0)
    logits[0, 0, 0] = 10.0  # confident class 0
    logits[0, 2, 1] = 10.0  # confident background
    logits[0, :, 2] = torch.tensor([0.0, 0.1, 0.0])  # not confident
    logits[0, 1, 3] = 10.0  # confident but padding
    mask = torch.tensor([[0.1, 0.69, 0.7, 0.95]]).expand(t, t).unsqueeze(0).clone()
    valid = torch.tensor([[True, True, True, False]])
    out = {"logits": logits.clone().requires_grad_(), "mask": mask.clone().requires_grad_()}
    cls, keep, m_t = pseudo_targets(out, valid)
    assert cls[0, :2].tolist() == [0, 2]
    assert keep.tolist() == [[True, True, False, False]]
    assert m_t[0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    losses = unlabeled_loss(out, valid, LossConfig())
    assert losses["confident"].item() == pytest.approx(2 / 3)
    losses["loss"].backward()
    assert out["logits"].grad[0, :, 2].abs().sum() == 0  # ignored snippet: no classification gradient
    assert out["mask"].grad.abs().sum() > 0
    # nothing confident: the class term is 0, the loss finite
    flat = {"logits": torch.zeros(2, k1, t, requires_grad=True), "mask": torch.full((2, t, t), 0.5)}
    lf = unlabeled_loss(flat, None, LossConfig())
    assert lf["cls"].item() == 0.0 and math.isfinite(lf["loss"].item())


# ---------------------------------------------------------------------------------------- refinement
def test_boundary_bands_hand_built():
    prof = torch.full((1, 20), 0.1)
    prof[0, 4:16] = 0.9  # foreground 4..15
    inner, outer = boundary_bands(prof, None, 4, 8)
    # kornia's even kernels: size 4 reaches 2 left / 1 right, size 8 reaches 4 left / 3 right
    assert torch.nonzero(inner[0]).flatten().tolist() == [6, 7, 13, 14]
    assert torch.nonzero(outer[0]).flatten().tolist() == [0, 1, 17, 18]
    # foreground touching the window edge: the edge is no boundary (geodesic border)
    edge = torch.full((1, 20), 0.1)
    edge[0, :12] = 0.9
    inner, _ = boundary_bands(edge, None, 4, 8)
    assert torch.nonzero(inner[0]).flatten().tolist() == [9, 10]
    # constant profile (all background or all foreground): no bands
    for v in (0.0, 1.0):
        i, o = boundary_bands(torch.full((2, 20), v), None)
        assert not i.any() and not o.any()
    # padding is neither band
    valid = torch.ones(1, 20, dtype=torch.bool)
    valid[0, 17:] = False
    i, o = boundary_bands(prof, valid)
    assert not (o & ~valid).any() and 17 not in torch.nonzero(o[0]).flatten().tolist()


def test_info_nce_value():
    tau = 0.07
    q = torch.tensor([[1.0, 0.0, 0.0]])
    neg = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [5.0, 0.0, 0.0]]])
    w = torch.tensor([[1.0, 1.0, 0.0]])  # the third negative is absent
    pos = torch.tensor([[0.1, 1.0, 0.0]])
    got = info_nce(q, 3 * pos, neg, w, tau)
    c = 0.1 / math.sqrt(1.01)  # cosine of q and pos; the two present negatives are orthogonal to q
    want = -math.log(math.exp(c / tau) / (math.exp(c / tau) + 2.0))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_easy_snippets_top_k_without_drop():
    logits = torch.zeros(1, 3, 8)
    logits[0, 1, :] = torch.arange(8.0)  # foreground class 1 rises over time
    logits[0, 2, :] = -torch.arange(8.0)  # background falls
    emb = torch.arange(8.0).view(1, 1, 8).expand(1, 2, 8)
    valid = torch.ones(1, 8, dtype=torch.bool)
    valid[0, 7] = False
    e = easy_snippets(logits, emb, valid, k=2, drop=0.0)
    assert sorted(e["fg"][0, :, 0].tolist()) == [5.0, 6.0]  # 7 is padding
    assert sorted(e["bg"][0, :, 0].tolist()) == [0.0, 1.0]
    assert e["fg_mean"][0].tolist() == [5.5, 5.5]


def _refine_inputs(b: int = 3, c: int = 6, t: int = 32, seed: int = 0):
    g = gen(seed)
    logits = torch.randn(b, 4, t, generator=g)
    mask = torch.full((b, t, t), 0.05)
    mask[:, 8:20, 8:20] = 0.95
    mask = mask + 0.01 * torch.rand(b, t, t, generator=g)
    emb = torch.randn(b, c, t, generator=g, requires_grad=True)
    return logits, mask, emb


def test_refinement_loss_gradient_determinism_and_edge_cases():
    logits, mask, emb = _refine_inputs()
    loss = refinement_loss(logits, mask, emb, None, generator=gen(5))
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0 and torch.isfinite(emb.grad).all()
    again = refinement_loss(logits, mask, emb, None, generator=gen(5))
    assert again.item() == loss.item()
    # all-background / all-foreground windows: no band, loss 0 and finite gradients
    t = mask.shape[1]
    for level, cls in ((0.0, 3), (1.0, 0)):
        lg = torch.full((2, 4, t), -5.0)
        lg[:, cls] = 5.0
        e = torch.randn(2, 6, t, requires_grad=True)
        out = refinement_loss(lg, torch.full((2, t, t), level), e, None, generator=gen(1))
        out.backward()
        assert out.item() == 0.0 and torch.isfinite(e.grad).all()
    # padded window with every snippet padding: finite
    v = torch.zeros(3, t, dtype=torch.bool)
    assert refinement_loss(logits, mask, emb, v, generator=gen(1)).item() == 0.0


# -------------------------------------------------------------------------------------------- config
def test_semi_config_validation():
    base = SpotConfig.preset("toy")
    assert base.semi == SemiConfig()
    with pytest.raises(ConfigError, match="labeled_fraction"):
        base.override(["semi.labeled_fraction=0"])
    with pytest.raises(ConfigError, match="exclusive"):
        base.override(["semi.labeled_fraction=0.5", "semi.split_file=x.csv"])
    with pytest.raises(ConfigError, match="band_outer"):
        base.override(["semi.band_outer=4"])
    # a supervised config's resume hash does not see the semi section (old states still resume)
    assert "semi" not in training_mod._resume_config(base)
    assert "semi" in training_mod._resume_config(base.override(["semi.pretrain_epochs=1"]))


def test_unlabeled_batch_size_rule():
    s = SemiConfig()
    assert training_mod.unlabeled_batch_size(100, 10, 90, s) == 24  # capped at 24
    assert training_mod.unlabeled_batch_size(100, 60, 40, s) == 24  # round(100*0.4/2.4)*4
    assert training_mod.unlabeled_batch_size(6, 4, 12, s) == 12  # round(6*0.75/1)*4 = 16 -> 12 windows
    assert training_mod.unlabeled_batch_size(6, 15, 1, s) == 1
    assert training_mod.unlabeled_batch_size(6, 4, 12, SemiConfig(unlabeled_batch_size=3)) == 3


# ------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("semi_data")
    return generate_dataset(d, SpotConfig.preset("toy"), num_train=16, num_val=4)


def semi_args(data: Path, out: Path, epochs: int, *extra: str, pretrain: int = 1) -> list[str]:
    return [
        "--preset",
        "toy",
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        *extra,
        "--set",
        f"train.epochs={epochs}",
        f"semi.pretrain_epochs={pretrain}",
        *OVERRIDES,
    ]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def semi_run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("semi_run") / "out"
    assert train_main(semi_args(data_dir, out, 2, "--labeled-fraction", "0.25")) == 0
    return out


def test_semi_run_writes_everything_with_finite_losses(semi_run):
    for name in ("config.yaml", "best.safetensors", "last.safetensors", "pretrain.safetensors",
                 "train_state.pt", "metrics.jsonl", "val_predictions.json"):  # fmt: skip
        assert (semi_run / name).is_file(), name
    rows = metrics(semi_run)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("pretrain", 0), ("finetune", 0), ("finetune", 1)]
    assert {"loss_loss", "loss_mask", "loss_recon", "loss_order"} == {
        k for k in rows[0] if k.startswith("loss_")
    }
    assert "val_average_mAP" not in rows[0]
    for r in rows[1:]:
        for k in (
            "loss_loss",
            "loss_cls",
            "loss_mask",
            "loss_u_loss",
            "loss_recon",
            "loss_order",
            "loss_refine",
        ):
            assert math.isfinite(r[k]), (k, r)
        assert 0.0 <= r["val_average_mAP"] <= 1.0
    cfg = SpotConfig.from_yaml(semi_run / "config.yaml")
    assert cfg.semi.labeled_fraction == 0.25 and cfg.semi.pretrain_epochs == 1
    state = load_train_state(semi_run / "train_state.pt")
    assert (state["stage"], state["pretrain_epoch"], state["epoch"]) == ("finetune", 1, 2)


def test_flags_change_what_runs(data_dir, semi_run, tmp_path):
    out = tmp_path / "noflags"
    assert (
        train_main(semi_args(data_dir, out, 1, "--labeled-fraction", "0.25", "--no-pretrain", "--no-refine"))
        == 0
    )
    rows = metrics(out)
    assert [r["stage"] for r in rows] == ["finetune"]
    assert "loss_refine" not in rows[0] and "loss_u_loss" in rows[0]
    assert not (out / "pretrain.safetensors").exists()
    # --no-pretrain changes the weights fine-tuning starts from
    pre = load_file(str(semi_run / "pretrain.safetensors"))
    assert any(not torch.equal(v, load_file(str(out / "last.safetensors"))[k]) for k, v in pre.items())


def test_classifier_is_frozen_in_pretraining(data_dir, semi_run):
    init = SpotConfig.preset("toy")
    torch.manual_seed(init.train.seed)
    from spot_core.model import SPOT

    fresh = SPOT(init.model).state_dict()
    pre = load_file(str(semi_run / "pretrain.safetensors"))
    for k in ("classifier.weight", "classifier.bias"):
        assert torch.equal(pre[k], fresh[k]), k
    assert not torch.equal(pre["mask_conv.weight"], fresh["mask_conv.weight"])


def test_semi_resume_equals_uninterrupted_run(data_dir, semi_run, tmp_path):
    out = tmp_path / "resumed"
    assert train_main(semi_args(data_dir, out, 1, "--labeled-fraction", "0.25")) == 0
    assert train_main(semi_args(data_dir, out, 2, "--labeled-fraction", "0.25", "--resume")) == 0
    a, b = load_file(str(semi_run / "last.safetensors")), load_file(str(out / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in metrics(out)]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in metrics(semi_run)]


def test_split_file(data_dir, tmp_path):
    aset = load_annotations(data_dir / "annotations.json")
    lines = ["video,numFrame,seconds,fps,rfps,subset,featureFrame"]
    train_ids = sorted(k for k, v in aset.videos.items() if v.base_subset == "training")
    for i, vid in enumerate(train_ids):
        lines.append(f"{vid},10,1.0,10,10,{'training' if i < 4 else 'training_unlabel'},10")
    csv = tmp_path / "split.csv"
    csv.write_text("\n".join(lines) + "\n")
    split = apply_split_file(aset, csv)
    assert sum(v.labeled for k, v in split.videos.items() if k in train_ids) == 4
    out = tmp_path / "split_run"
    assert train_main(semi_args(data_dir, out, 1, "--split", str(csv), "--no-refine", pretrain=0)) == 0
    assert "loss_u_loss" in metrics(out)[0]
    bad = tmp_path / "bad.csv"
    bad.write_text(lines[0] + f"\n{train_ids[0]},10,1.0,10,10,validation,10\n")
    with pytest.raises(AnnotationError, match="training in the annotations"):
        apply_split_file(aset, bad)


def test_resume_inside_pretraining(data_dir, tmp_path, monkeypatch):
    cfg = SpotConfig.preset("toy").override(
        ["train.epochs=1", "semi.pretrain_epochs=2", "semi.labeled_fraction=0.25", *OVERRIDES]
    )
    full = tmp_path / "full"
    training_mod.train(cfg, data_dir, full, progress=False)

    out = tmp_path / "crashed"
    real = training_mod.save_train_state

    def crash_on_second(path, state):
        if state["pretrain_epoch"] == 2:
            raise KeyboardInterrupt("killed after the second pretraining epoch")
        return real(path, state)

    monkeypatch.setattr(training_mod, "save_train_state", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        training_mod.train(cfg, data_dir, out, progress=False)
    monkeypatch.setattr(training_mod, "save_train_state", real)
    state = load_train_state(out / "train_state.pt")
    assert (state["stage"], state["pretrain_epoch"], state["epoch"]) == ("pretrain", 1, 0)
    training_mod.train(cfg, data_dir, out, resume=True, progress=False)
    a, b = load_file(str(full / "last.safetensors")), load_file(str(out / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [(r["stage"], r["epoch"]) for r in metrics(out)] == [
        ("pretrain", 0),
        ("pretrain", 1),
        ("finetune", 0),
    ]


# ------------------------------------------------------------------- the 10%-label fix (issue 3)
def test_unlabeled_loss_takes_targets_from_the_teacher():
    """pseudo_view "corrupted": targets from the clean forward (teacher), loss on the corrupted one."""
    k1, t = 3, 4
    teacher = {"logits": torch.full((1, k1, t), -10.0), "mask": torch.full((1, t, t), 0.9)}
    teacher["logits"][0, 0] = 10.0  # confident class 0 everywhere
    student = {"logits": torch.zeros(1, k1, t, requires_grad=True), "mask": torch.full((1, t, t), 0.5)}
    own = unlabeled_loss(student, None, LossConfig())  # flat student: nothing confident, class term 0
    assert own["cls"].item() == 0.0
    taught = unlabeled_loss(student, None, LossConfig(), teacher=teacher)
    assert taught["confident"].item() == 1.0
    ce = math.log(3.0) * (1 - 1 / 3) ** 2  # focal CE of a uniform prediction against class 0
    assert taught["cls"].item() == pytest.approx(ce, rel=1e-5)
    taught["loss"].backward()
    assert student["logits"].grad[0, 0].lt(0).all()  # pushed toward the teacher's class


def test_rampup_and_new_semi_options():
    assert training_mod.rampup(5, 0) == 1.0
    assert training_mod.rampup(0, 10) == pytest.approx(math.exp(-5 * 0.9**2))
    assert training_mod.rampup(9, 10) == 1.0 and training_mod.rampup(50, 10) == 1.0
    vals = [training_mod.rampup(e, 10) for e in range(10)]
    assert vals == sorted(vals)
    assert SemiConfig().pseudo_view == "corrupted"
    with pytest.raises(ConfigError, match="pseudo_view"):
        SpotConfig.preset("toy").override(["semi.pseudo_view=teacher"])
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        SpotConfig.preset("toy").override(["train.steps_per_epoch=0"])


def test_steps_per_epoch_gives_that_many_steps(data_dir, tmp_path, monkeypatch):
    """With few labelled windows an epoch is still ``steps_per_epoch`` optimiser steps (labelled and
    unlabelled batch each), in both the supervised and the semi-supervised loops."""
    calls = {"semi": 0}
    real = training_mod.semi_step

    def counting(*a, **kw):
        calls["semi"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(training_mod, "semi_step", counting)
    out = tmp_path / "steps"
    args = semi_args(data_dir, out, 2, "--labeled-fraction", "0.25", pretrain=0)
    assert train_main([*args, "train.steps_per_epoch=5"]) == 0  # appended to the trailing --set list
    assert calls["semi"] == 2 * 5
    cfg = SpotConfig.from_yaml(out / "config.yaml")
    assert cfg.train.steps_per_epoch == 5


def test_a_ramp_longer_than_the_run_is_a_warning(data_dir, tmp_path, caplog):
    """The actrectut / stream presets ramp over 10 epochs; a shorter run (--set train.epochs=8)
    that keeps it is told that the pseudo-label terms never reach their weight."""
    args = semi_args(data_dir, tmp_path / "ramp", 1, "--labeled-fraction", "0.25", pretrain=0)
    with caplog.at_level("WARNING", logger="spot_core.training"):
        assert train_main([*args, "semi.rampup_epochs=3", "train.steps_per_epoch=2"]) == 0
    assert "semi.rampup_epochs (3) > train.epochs (1)" in caplog.text


# ----------------------------------------------------------------- bad input (issue 3)
def test_label_split_edge_cases_are_clear(data_dir, tmp_path, caplog):
    """fraction 0 is refused; fraction 1 leaves no unlabelled set (stage 2 = supervised loop, said
    in the log); classes without a labelled snippet are named in a warning."""
    with pytest.raises(ConfigError, match=r"labeled_fraction must be in \(0, 1\]"):
        SpotConfig.preset("toy").override(["semi.labeled_fraction=0"])
    out = tmp_path / "all"
    with caplog.at_level("WARNING", logger="spot_core.training"):
        assert train_main(semi_args(data_dir, out, 1, "--labeled-fraction", "1.0", pretrain=0)) == 0
    assert "left no unlabelled windows" in caplog.text
    assert all("u_loss" not in r for r in metrics(out))  # the supervised loop ran
    caplog.clear()
    with caplog.at_level("WARNING", logger="spot_core.training"):
        assert (
            train_main(semi_args(data_dir, tmp_path / "few", 1, "--labeled-fraction", "0.05", pretrain=0))
            == 0
        )
    assert "have no labelled training snippet" in caplog.text


def _background_batch(cfg: SpotConfig, b: int = 2) -> dict[str, torch.Tensor]:
    """A seeded batch of ``b`` all-background windows of ``cfg``'s shape."""
    c, t, k = cfg.model.feat_dim, cfg.model.num_snippets, cfg.model.num_classes
    return {
        "features": torch.randn(b, c, t, generator=torch.Generator().manual_seed(0)),
        "valid_mask": torch.ones(b, t, dtype=torch.bool),
        "cls_target": torch.full((b, t), k),
        "mask_target": torch.zeros(b, t, t),
    }


def test_ema_teacher_gives_the_pseudo_labels(make_model):
    """semi.teacher: ema: the unlabelled batch's targets come from the teacher given to semi_step (a
    sure teacher keeps every snippet, an undecided one none); without a teacher, from the model."""
    cfg = SpotConfig.preset("toy").override(["semi.teacher=ema", "train.ema_decay=0.9"])
    model = make_model(cfg, 0).train()
    batch = _background_batch(cfg)
    k = cfg.model.num_classes

    class Teacher(torch.nn.Module):
        def __init__(self, logit: float) -> None:
            super().__init__()
            self.logit = logit

        def forward(self, xu):
            logits = torch.zeros(xu.shape[0], k + 1, xu.shape[2])
            logits[:, 0] = self.logit  # class 0 everywhere, sure (10) or undecided (0)
            return logits, torch.zeros(xu.shape[0], xu.shape[2], xu.shape[2])

    gen = torch.Generator().manual_seed(0)
    sure = training_mod.semi_step(model, batch, batch, cfg, gen, teacher=Teacher(10.0))
    unsure = training_mod.semi_step(model, batch, batch, cfg, gen, teacher=Teacher(0.0))
    assert sure["u_confident"] == 1.0 and unsure["u_confident"] == 0.0
    with pytest.raises(ConfigError, match="semi.teacher must be"):
        SpotConfig.preset("toy").override(["semi.teacher=peer"])
    with pytest.raises(ConfigError, match="needs train.ema_decay"):
        SpotConfig.preset("toy").override(["semi.teacher=ema"])


def test_class_gated_pseudo_mask_rows():
    """semi.pseudo_mask=class: kept foreground rows keep their thresholded row, kept background rows
    get an empty one, unkept rows get no mask gradient; the offset head's extents learn too."""
    k1, t = 3, 4
    logits = torch.full((1, k1, t), -10.0)
    logits[0, 0, 0] = 10.0  # confident class 0
    logits[0, 2, 1] = 10.0  # confident background
    logits[0, :, 2] = torch.tensor([0.0, 0.1, 0.0])  # not confident
    logits[0, 0, 3] = 10.0  # confident class 0
    mask = torch.tensor([[0.1, 0.69, 0.7, 0.95]]).expand(t, t).unsqueeze(0).clone()
    out = {"logits": logits.clone().requires_grad_(), "mask": mask.clone().requires_grad_()}
    gated = unlabeled_loss(out, None, LossConfig(), gate="class")
    gated["loss"].backward()
    g = out["mask"].grad[0]
    assert g[2].abs().sum() == 0  # unkept row: no mask loss
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0 and g[3].abs().sum() > 0
    # the background row is pushed down everywhere (empty target), the foreground row 0 up on its box
    assert (g[1] > 0).all()
    assert g[0, 3] < 0 and g[0, 0] > 0
    plain = unlabeled_loss({k: v.detach() for k, v in out.items()}, None, LossConfig())
    assert not torch.isclose(gated["mask"], plain["mask"])
    with pytest.raises(ValueError, match="gate"):
        unlabeled_loss(out, None, LossConfig(), gate="nope")
    # offset head: the extent loss reaches the foreground rows through the corrupted view
    cfg = SpotConfig.preset("actrectut")
    cfg = cfg.override(["model.num_snippets=16", "model.attn_window=4", "semi.pseudo_mask=class"])
    from spot_core.model import SPOT

    model = SPOT(cfg.model)
    view = model.head_outputs(model.embed(torch.randn(2, cfg.model.feat_dim, 16)))
    assert set(view) == {"logits", "mask", "extent"}
    src = {k: v.detach() for k, v in view.items()}
    src["mask"] = torch.ones_like(src["mask"])  # every kept row's box: the whole window
    src["logits"] = torch.zeros_like(src["logits"])
    src["logits"][:, 0] = 5.0  # every snippet confidently class 0
    loss = unlabeled_loss(view, None, cfg.loss, teacher=src, gate="class")["loss"]
    loss.backward()
    assert model.mask_box.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="pseudo_mask"):
        SpotConfig.preset("actrectut").override(["semi.pseudo_mask=classes"])


def test_eval_teacher_targets_come_from_the_dropout_free_forward(make_model, monkeypatch):
    """semi.teacher: eval: the unlabelled targets are the current weights' eval-mode forward (no
    dropout), the model is back in training mode after; "self" takes the training-mode forward."""
    cfg = SpotConfig.preset("toy").override(["semi.teacher=eval", "model.embed_dropout=0.5"])
    model = make_model(cfg, 0).train()
    batch = _background_batch(cfg)
    x = batch["features"]
    seen = []
    real = training_mod.unlabeled_loss
    monkeypatch.setattr(
        training_mod, "unlabeled_loss", lambda *a, **kw: seen.append(kw.get("teacher")) or real(*a, **kw)
    )
    torch.manual_seed(0)
    training_mod.semi_step(model, batch, batch, cfg, torch.Generator().manual_seed(0))
    assert model.training
    model.eval()
    with torch.no_grad():
        lg, mk = model(x)
    model.train()
    assert torch.equal(seen[0]["logits"], lg) and torch.equal(seen[0]["mask"], mk)
    torch.manual_seed(0)
    training_mod.semi_step(model, batch, batch, cfg.override(["semi.teacher=self"]), torch.Generator())
    assert not torch.allclose(seen[1]["logits"], lg)  # the training-mode forward, with dropout
