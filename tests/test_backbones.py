"""Backbones and mask heads (issue 14): shapes, the properties each one promises, training with them,
and the rest of the stack (ONNX, fused path, streaming, edge refusal) on the new default."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from spot_core.augment import WeightEMA, time_warp
from spot_core.config import SPOT_ORIGINAL_ACTRECTUT, ConfigError, SpotConfig
from spot_core.decode import detect
from spot_core.model import SPOT
from spot_core.pretext import swap_halves

pytestmark = pytest.mark.usefixtures("one_thread")

LOCAL = [
    "model.backbone=local",
    "model.mask_head=pairwise",
    "model.cls_head=conv",
    "model.hidden_dim=16",
    "model.num_heads=2",
    "model.num_layers=2",
    "model.attn_window=3",
    "model.mask_hidden=12",
    "model.mask_dim=8",
]


def toy_local(*extra: str) -> SpotConfig:
    return SpotConfig.preset("toy").override([*LOCAL, *extra])


@pytest.mark.parametrize("backbone", ["spot", "local", "conv"])
@pytest.mark.parametrize("mask_head", ["spot", "pairwise", "offset"])
@pytest.mark.parametrize("cls_head", ["linear", "conv"])
@pytest.mark.parametrize("t", [1, 7, 20])
def test_every_backbone_and_head_keeps_the_contract(backbone, mask_head, cls_head, t):
    sets = [f"model.backbone={backbone}", f"model.mask_head={mask_head}", f"model.cls_head={cls_head}",
            f"model.num_snippets={t}", "model.hidden_dim=16", "model.num_heads=2",
            "model.abs_pos=true"]  # fmt: skip
    cfg = SpotConfig.preset("toy").override(sets)
    torch.manual_seed(0)
    m = SPOT(cfg.model).eval()
    x = torch.randn(3, cfg.model.feat_dim, t)
    logits, mask = m(x)
    assert logits.shape == (3, cfg.model.num_classes + 1, t)
    assert mask.shape == (3, t, t) and ((mask >= 0) & (mask <= 1)).all()
    out = m.forward_train(x)
    assert out["embedding"].shape == (3, cfg.model.embed_dim, t)
    assert m.reconstruct(out["embedding"]).shape == x.shape
    assert out["clip_order"].shape == (3, 2)


def test_spot_backbone_parameters_unchanged():
    """The ``spot`` backbone is the original: exactly the original's tensors, no new ones."""
    m = SPOT(SpotConfig.preset("anet").model)
    names = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert names == {
        "embedding.w_q.weight": (1600, 400),
        "embedding.w_k.weight": (1600, 400),
        "embedding.w_v.weight": (1600, 400),
        "embedding.proj.weight": (400, 1600),
        "embedding.proj.bias": (400,),
        "embedding.norm.weight": (400,),
        "embedding.norm.bias": (400,),
        "classifier.weight": (201, 400, 1),
        "classifier.bias": (201,),
        "mask_conv.weight": (256, 400, 3),
        "mask_conv.bias": (256,),
        "mask_out.weight": (100, 256, 1),
        "order_conv.weight": (1, 400, 3),
        "order_conv.bias": (1,),
        "order_fc.weight": (2, 100),
        "order_fc.bias": (2,),
    }
    x = torch.randn(2, 400, 100)
    m.eval()
    assert torch.equal(m.reconstruct(m.embed(x)), m.embed(x))  # reconstruction reads the embedding itself


def test_pairwise_head_is_the_formula_and_translation_equivariant():
    cfg = toy_local()
    torch.manual_seed(1)
    m = SPOT(cfg.model).eval()
    with torch.no_grad():
        m.mask_rel_bias.normal_()
    T, H = cfg.model.num_snippets, cfg.model.mask_hidden
    h = torch.randn(2, H, T)
    got = m.mask_logits(h)
    q = m.mask_q(h) / math.sqrt(cfg.model.mask_dim)
    k = m.mask_k(h)
    t, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    want = torch.einsum("bdt,bdj->btj", q, k) + m.mask_rel_bias[j - t + T - 1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # shifting the hidden map by s shifts the affinity: mask[t + s, j + s] == mask[t, j]
    s = 5
    shifted = m.mask_logits(torch.roll(h, s, dims=2))
    torch.testing.assert_close(shifted[:, s:, s:], got[:, : T - s, : T - s], atol=1e-5, rtol=1e-5)


def test_local_attention_sees_only_its_window():
    """A change at snippet 0 reaches at most stem_layers + num_layers * attn_window snippets."""
    cfg = toy_local("model.embed_dropout=0.0", "model.attn_dropout=0.0")
    torch.manual_seed(2)
    m = SPOT(cfg.model).eval()
    x = torch.randn(1, cfg.model.feat_dim, cfg.model.num_snippets)
    y = x.clone()
    y[:, :, 0] += 10.0
    e1, e2 = m.embed(x), m.embed(y)
    reach = cfg.model.stem_layers + cfg.model.num_layers * cfg.model.attn_window
    diff = (e1 - e2).abs().amax(dim=1)[0]
    assert diff[: reach + 1].max() > 1e-3
    assert diff[reach + 1 :].max() == 0


def test_window_norm_ignores_a_recording_offset():
    cfg = toy_local("model.window_norm=true")
    m = SPOT(cfg.model).eval()
    x = torch.randn(2, cfg.model.feat_dim, cfg.model.num_snippets)
    offset = torch.randn(1, cfg.model.feat_dim, 1) * 3
    for a, b in zip(m(x), m(x + offset), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_clip_order_cannot_be_read_from_the_position_code():
    """The position code is added inside the network, after the pretext swaps the input's halves:
    a window whose content does not change in time looks the same swapped or not."""
    cfg = toy_local("model.abs_pos=true")
    m = SPOT(cfg.model).eval()
    x = torch.randn(4, cfg.model.feat_dim, 1).expand(4, cfg.model.feat_dim, cfg.model.num_snippets)
    xo, label = swap_halves(x.contiguous(), torch.Generator().manual_seed(0))
    assert label.sum() == 2
    logits = m.clip_order(m.embed(xo))
    torch.testing.assert_close(logits, m.clip_order(m.embed(x.contiguous())))


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="model.backbone"):
        toy_local("model.backbone=transformer")
    with pytest.raises(ConfigError, match="model.mask_head"):
        toy_local("model.mask_head=absolute")
    with pytest.raises(ConfigError, match="hidden_dim"):
        toy_local("model.hidden_dim=15")
    with pytest.raises(ConfigError, match="conv_kernel"):
        toy_local("model.conv_kernel=4")
    with pytest.raises(ConfigError, match="ema_decay"):
        toy_local("train.ema_decay=1.0")
    with pytest.raises(ConfigError, match="train_stride"):
        toy_local("data.train_stride=0")
    with pytest.raises(ConfigError, match="pretrain_steps_per_epoch"):
        toy_local("semi.pretrain_steps_per_epoch=0")


def test_actrectut_original_overrides_give_the_original_model():
    cfg = SpotConfig.preset("actrectut").override(list(SPOT_ORIGINAL_ACTRECTUT))
    m = cfg.model
    assert (m.backbone, m.mask_head, m.cls_head, m.abs_pos, cfg.train.ema_decay, cfg.decode.top_k) == (
        "spot", "spot", "linear", False, None, 10,
    )  # fmt: skip
    assert len(cfg.decode.class_thresholds) == 9


# ------------------------------------------------------------------------------------- training
def test_weight_ema_warm_up_and_average():
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = WeightEMA(lin, decay=0.999)
    want = 0.0
    for n in range(1, 6):
        with torch.no_grad():
            lin.weight.fill_(float(n))
        ema.update(lin)
        d = min(0.999, (1 + n) / (10 + n))
        want = d * want + (1 - d) * n
        assert ema.module.weight.item() == pytest.approx(want, rel=1e-6)
    copy = WeightEMA(lin, 0.999)
    copy.load_state_dict(ema.state_dict())
    assert copy.steps == 5 and torch.equal(copy.module.weight, ema.module.weight)


def _batch(t: int = 32, k: int = 3) -> dict[str, torch.Tensor]:
    from spot_core.data.windows import build_targets

    cls, mask, _ = build_targets([(3, 9, 0), (14, 20, 2), (24, 30, 1)], t, k)
    valid = torch.zeros(2, t, dtype=torch.bool)
    valid[0, :] = True
    valid[1, :25] = True
    return {
        "features": torch.randn(2, 5, t),
        "cls_target": torch.from_numpy(np.stack([cls, cls])),
        "mask_target": torch.from_numpy(np.stack([mask, mask])),
        "valid_mask": valid,
        "index": torch.arange(2),
    }


def test_time_warp_keeps_targets_consistent():
    b = _batch()
    assert time_warp(b, 0.0, torch.Generator()) is b
    for seed in range(5):
        w = time_warp(b, 0.3, torch.Generator().manual_seed(seed))
        m, c, v = w["mask_target"], w["cls_target"], w["valid_mask"]
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        diag = torch.diagonal(m, dim1=1, dim2=2).bool()
        assert torch.equal(diag & v, (c != 3) & v)  # mask diagonal == foreground, on valid snippets
        assert not (v & ~b["valid_mask"].any(dim=1, keepdim=True)).any()
        assert (
            torch.isfinite(w["features"]).all()
            and (w["features"][~v[:, None, :].expand_as(w["features"])] == 0).all()
        )
        assert torch.equal(w["index"], b["index"])


def test_semi_supervised_recipe_with_the_local_backbone(tmp_path):
    """Pretext, pseudo-labels, refinement and EMA run with a new backbone; the checkpoints hold the
    weight average, not the live weights."""
    from safetensors.torch import load_file

    from spot_core.checkpoint import load_train_state
    from spot_core.data.synthetic import generate_dataset
    from spot_core.train import main as train_main

    data = generate_dataset(tmp_path / "data", SpotConfig.preset("toy"), num_train=12, num_val=3)
    out = tmp_path / "run"
    sets = [*LOCAL, "train.epochs=2", "semi.pretrain_epochs=1", "semi.pretrain_steps_per_epoch=2",
            "train.ema_decay=0.9", "train.steps_per_epoch=3", "train.batch_size=4", "model.window_norm=true",
            "loss.label_smoothing=0.1", "train.time_warp=0.2"]  # fmt: skip
    argv = ["--preset", "toy", "--data", str(data), "--out", str(out), "--no-progress",
            "--labeled-fraction", "0.25", "--set", *sets]  # fmt: skip
    assert train_main(argv) == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("stage") for r in rows] == ["pretrain", "finetune", "finetune"]
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss_"))
    assert "loss_refine" in rows[-1] and "loss_u_loss" in rows[-1]
    state = load_train_state(out / "train_state.pt")
    last = load_file(out / "last.safetensors")
    ema = {k[2:]: v for k, v in state["ema"].items() if k.startswith("w.")}
    assert all(torch.equal(last[k], ema[k]) for k in last)
    assert any(not torch.equal(last[k], state["model"][k]) for k in last)
    # resume finishes the same run (the EMA comes back from train_state.pt)
    more = [s.replace("train.epochs=2", "train.epochs=3") for s in sets]
    assert train_main([*argv[: argv.index("--set")], "--resume", "--set", *more]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


# --------------------------------------------------------------------------------------- the stack
@pytest.mark.parametrize("mask_head", ["spot", "pairwise", "offset"])
def test_onnx_export_of_the_new_default_at_two_batch_sizes(tmp_path, make_model, make_features, mask_head):
    pytest.importorskip("onnxscript")
    from export.onnx import export_onnx
    from runtime.onnx_model import OnnxRunner

    cfg = SpotConfig.preset("actrectut").override([f"model.mask_head={mask_head}"])
    model = make_model(cfg, 0)
    path = export_onnx(model, cfg, tmp_path / "m.onnx")
    dec = export_onnx(model, cfg, tmp_path / "d.onnx", with_decode=True)
    for b in (1, 3):
        x = make_features(cfg, b)
        got = OnnxRunner(path, cfg, intra_op_threads=1)(x)
        with torch.no_grad():
            logits, mask = model(x)
        np.testing.assert_allclose(got["logits"], logits.numpy(), atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(got["mask"], mask.numpy(), atol=1e-5, rtol=1e-4)
        props = OnnxRunner(dec, cfg, intra_op_threads=1)(x)
        assert props["segments"].shape[0] == b


@pytest.mark.parametrize("mask_head", ["pairwise", "spot", "offset"])
def test_fused_path_follows_the_new_heads(make_model, make_features, mask_head):
    from kernels.pipeline import fused_detect

    cfg = toy_local(
        "model.window_norm=true", "decode.top_k=64", f"model.mask_head={mask_head}", "model.abs_pos=true"
    )
    model = make_model(cfg, 3, sharpen=5.0)
    x = make_features(cfg, 4)
    with torch.no_grad():
        want = detect(*model(x), cfg.decode)
    got = fused_detect(model, x, cfg.decode, backend="reference")
    assert torch.equal(got.valid, want.valid) and torch.equal(got.labels, want.labels)
    torch.testing.assert_close(got.segments, want.segments)
    torch.testing.assert_close(got.scores, want.scores, atol=1e-6, rtol=1e-5)
    assert want.valid.any()


@pytest.mark.parametrize(("mask_head", "vote"), [("pairwise", "null"), ("offset", "null"), ("offset", "0.5")])
def test_streaming_equals_offline_with_the_new_backbone(make_model, mask_head, vote):
    from runtime.detector import StreamDetector
    from runtime.offline import offline_detect
    from runtime.session import EagerSession

    cfg = toy_local(
        "model.window_norm=true", "decode.top_k=64", f"model.mask_head={mask_head}", f"decode.vote_iou={vote}"
    )
    model = make_model(cfg, 4, sharpen=5.0)
    session = EagerSession(model, cfg, batch_size=3)
    f = np.random.default_rng(0).standard_normal((150, cfg.model.feat_dim), dtype=np.float32)
    want = offline_detect(session, f, stride=16, snippet_rate=2.0, video_id="a")["results"]["a"]
    assert want
    if vote != "null":  # box voting moved some boundaries (and nothing else)
        plain_cfg = cfg.override(["decode.vote_iou=null"])
        plain = offline_detect(EagerSession(model, plain_cfg, batch_size=3), f, stride=16,
                               snippet_rate=2.0, video_id="a")["results"]["a"]  # fmt: skip
        assert [e["segment"] for e in plain] != [e["segment"] for e in want]
        assert [(e["label"], e["score"]) for e in plain] == [(e["label"], e["score"]) for e in want]
    for chunk in (1, 7, 64):
        det = StreamDetector(session, stride=16, snippet_rate=2.0)
        det.open("a")
        for i in range(0, len(f), chunk):
            det.push("a", f[i : i + chunk])
        entries, _ = det.close_json("a")
        assert entries == want


def test_edge_graph_refuses_other_models(make_model):
    from runtime.edge import bf16_cpu_model

    cfg = toy_local()
    with pytest.raises(ValueError, match="backbone 'local'"):
        bf16_cpu_model(make_model(cfg, 0), cfg)


def test_train_stride_makes_training_crops_only(tmp_path):
    from spot_core.data.datasets import load_dataset
    from spot_core.data.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "d", SpotConfig.preset("toy"), num_train=3, num_val=2)
    cfg = SpotConfig.preset("toy").override(["data.mode=window", "data.stride=16", "model.num_snippets=16"])
    dense = cfg.override(["data.train_stride=4"])
    n_train = len(load_dataset(data, cfg, "training")[1])
    n_dense = len(load_dataset(data, dense, "training")[1])
    assert n_dense > 3 * n_train
    assert len(load_dataset(data, dense, "validation")[1]) == len(load_dataset(data, cfg, "validation")[1])


def test_offset_head_rows_are_boxes_relative_to_each_snippet():
    """``offset``: row t is above 0.5 exactly on t - ds_t < j < t + de_t, and shifting the input
    shifts the extents with it (no absolute columns: translation-equivariant away from the edges)."""
    from spot_core.model import OFFSET_SCALE

    cfg = toy_local("model.mask_head=offset", "model.abs_pos=false")
    torch.manual_seed(0)
    model = SPOT(cfg.model).eval()
    T = cfg.model.num_snippets
    with torch.no_grad():
        model.mask_box.weight.zero_()
        model.mask_box.bias.copy_(torch.tensor([3.0, 5.5]) / OFFSET_SCALE)  # ds = 3, de = 5.5 everywhere
        x = torch.randn(1, cfg.model.feat_dim, T)
        _, mask = model(x)
    j = torch.arange(T)
    for t in (0, 10, T - 1):
        inside = (j > t - 3) & (j < t + 5.5)
        assert torch.equal(mask[0, t] > 0.5, inside)
    with torch.no_grad():  # a learnt head: its extents move with the content, not with the column
        model.mask_box.reset_parameters()
        ds, de = model.mask_extent(model.mask_hidden(model.embed(x)))
        shifted = torch.roll(x, 8, dims=2)
        ds2, de2 = model.mask_extent(model.mask_hidden(model.embed(shifted)))
    mid = slice(20, T - 28)  # away from the zero padding of the convs and the window edges
    torch.testing.assert_close(ds2[0, 8:][mid], ds[0, :-8][mid], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(de2[0, 8:][mid], de[0, :-8][mid], atol=1e-4, rtol=1e-4)
