"""Reference model, losses and checkpoints."""

from __future__ import annotations

import pytest
import torch

from spot_core.checkpoint import CheckpointError, load_model, save_model
from spot_core.config import ModelConfig, SpotConfig
from spot_core.losses import balanced_bce, dice_loss, focal_cross_entropy, supervised_loss
from spot_core.model import SPOT


@pytest.mark.parametrize(
    "mc",
    [
        ModelConfig(feat_dim=8, num_snippets=1, num_classes=1, num_heads=1, head_dim=4, mask_hidden=3),
        ModelConfig(feat_dim=12, num_snippets=7, num_classes=3, num_heads=3, head_dim=None, mask_hidden=5),
        ModelConfig(feat_dim=32, num_snippets=64, num_classes=6, num_heads=2, head_dim=32, mask_hidden=64),
    ],
)
def test_shapes_follow_config(mc: ModelConfig) -> None:
    torch.manual_seed(0)
    m = SPOT(mc).eval()
    x = torch.randn(3, mc.feat_dim, mc.num_snippets)
    logits, mask = m(x)
    assert logits.shape == (3, mc.num_classes + 1, mc.num_snippets)
    assert mask.shape == (3, mc.num_snippets, mc.num_snippets)
    assert ((mask >= 0) & (mask <= 1)).all()
    out = m.forward_train(x)
    assert out["embedding"].shape == x.shape
    assert out["clip_order"].shape == (3, 2)
    # The mask is sigmoid(W2 @ h): the decomposition the fused kernel relies on.
    h = m.mask_hidden(m.embed(x))
    assert h.shape == (3, mc.mask_hidden, mc.num_snippets)
    rebuilt = torch.sigmoid(torch.einsum("tj,bjs->bts", m.mask_weight, h))
    torch.testing.assert_close(rebuilt, mask, atol=1e-6, rtol=1e-5)


def test_anet_preset_sizes() -> None:
    cfg = SpotConfig.preset("anet")
    m = SPOT(cfg.model)
    assert m.embedding.w_q.weight.shape == (4 * 400, 400)
    assert m.classifier.weight.shape == (201, 400, 1)
    assert m.mask_out.weight.shape == (100, 256, 1)
    assert m.order_fc.weight.shape == (2, 100)


def test_bad_input_shape_is_clear() -> None:
    m = SPOT(SpotConfig.preset("toy").model)
    with pytest.raises(ValueError, match=r"C=32, T=64"):
        m(torch.randn(2, 31, 64))
    with pytest.raises(ValueError, match=r"got \[2, 32\]"):
        m(torch.randn(2, 32))


def test_embedding_is_permutation_equivariant_in_eval() -> None:
    # No positional encoding in the embedding: permuting snippets permutes its output.
    mc = ModelConfig(feat_dim=8, num_snippets=5, num_classes=2, num_heads=2, head_dim=4, mask_hidden=4)
    m = SPOT(mc).eval()
    x = torch.randn(2, 8, 5)
    perm = torch.tensor([4, 2, 0, 1, 3])
    torch.testing.assert_close(m.embed(x)[:, :, perm], m.embed(x[:, :, perm]), atol=1e-5, rtol=1e-5)


def test_losses_behave() -> None:
    t = torch.zeros(2, 6, 6)
    t[:, 1:4, 1:4] = 1
    assert dice_loss(t, t) < 1e-6
    assert dice_loss(1 - t, t) > 0.9
    assert balanced_bce(t * 0.98 + 0.01, t) < balanced_bce(torch.full_like(t, 0.5), t)
    logits = torch.zeros(2, 3, 6)
    target = torch.full((2, 6), 2)
    logits[:, 2] = 5.0
    good = focal_cross_entropy(logits, target)
    bad = focal_cross_entropy(-logits, target)
    assert good < 1e-4 < bad
    # Padded snippets do not count.
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[:, 4:] = False
    logits2 = logits.clone()
    logits2[:, :, 4:] = torch.randn(2, 3, 2) * 10
    assert torch.isclose(
        focal_cross_entropy(logits, target, valid), focal_cross_entropy(logits2, target, valid)
    )


def test_supervised_loss_backward() -> None:
    cfg = SpotConfig.preset("toy")
    m = SPOT(cfg.model)
    x = torch.randn(2, 32, 64)
    cls_t = torch.randint(0, 7, (2, 64))
    mask_t = (torch.rand(2, 64, 64) > 0.5).float()
    out = supervised_loss(m.forward_train(x), cls_t, mask_t, None, cfg.loss)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert m.classifier.weight.grad is not None and m.mask_out.weight.grad is not None


def test_checkpoint_roundtrip_and_mismatch(tmp_path) -> None:
    cfg = SpotConfig.preset("toy")
    m = SPOT(cfg.model).eval()
    p = save_model(tmp_path / "m.safetensors", m, cfg, epoch=3)
    m2, cfg2 = load_model(p)
    assert cfg2 == cfg
    x = torch.randn(1, 32, 64)
    torch.testing.assert_close(m(x)[0], m2(x)[0])
    other = cfg.override(["model.num_classes=5"])
    with pytest.raises(
        CheckpointError, match=r"classifier.weight: checkpoint \[7, 32, 1\] vs config \[6, 32, 1\]"
    ):
        load_model(p, other)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(p.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def test_extent_loss_is_zero_at_the_instance_and_pulls_towards_it():
    from spot_core.losses import extent_loss

    T = 12
    tgt = torch.zeros(1, T, T)
    tgt[0, 2:6, 2:6] = 1.0  # one instance on snippets 2..5; other rows are background
    t = torch.arange(T, dtype=torch.float32)
    exact = torch.stack([t - 2 + 0.5, 5 - t + 0.5])[None]  # [1, 2, T]
    assert extent_loss(exact, tgt, None).item() == pytest.approx(0.0, abs=1e-6)
    assert extent_loss(exact * 0.5, tgt, None).item() == pytest.approx(0.5)  # half the length
    junk = exact.clone()
    junk[0, :, 7:] = 1e3  # background rows do not count
    assert extent_loss(junk, tgt, None).item() == pytest.approx(0.0, abs=1e-6)
    valid = torch.ones(1, T, dtype=torch.bool)
    valid[0, 2:6] = False  # no real foreground snippet: 0, with a graph
    assert extent_loss(exact * 0.5, tgt, valid).item() == 0.0
    empty = (-exact).requires_grad_(True)  # inverted boxes still get a gradient towards the target
    extent_loss(empty, tgt, None).backward()
    assert (empty.grad[0, :, 2:6] < 0).all()


def test_extent_loss_gradient_is_finite_when_a_background_rows_box_has_no_length():
    """A background row's (masked-out) GIoU once divided 0 by 0 in backward: every parameter NaN
    (an ActRecTut run diverged at a finite loss). Row 8 below: ds = 1, de = -1 made its union 0."""
    from spot_core.losses import extent_loss

    T = 12
    tgt = torch.zeros(1, T, T)
    tgt[0, 2:6, 2:6] = 1.0
    x = torch.zeros(1, 2, T)
    x[0, :, 2:6] = 1.0
    x[0, 0, 8], x[0, 1, 8] = 1.0, -1.0
    x.requires_grad_(True)
    loss = extent_loss(x, tgt, None)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert (x.grad[0, :, 8] == 0).all() and (x.grad[0, :, 2:6] != 0).any()


def test_offset_training_forward_equals_inference_forward():
    cfg = SpotConfig.preset("toy").override(["model.backbone=local", "model.mask_head=offset"])
    torch.manual_seed(0)
    model = SPOT(cfg.model).eval()
    x = torch.randn(2, cfg.model.feat_dim, cfg.model.num_snippets)
    with torch.no_grad():
        logits, mask = model(x)
        out = model.forward_train(x)
    assert torch.equal(out["logits"], logits) and torch.equal(out["mask"], mask)
    assert out["extent"].shape == (2, 2, cfg.model.num_snippets)
