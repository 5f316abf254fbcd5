"""Batched Soft-NMS kernel (kernels/soft_nms.py) vs the PyTorch reference (spot_core.nms.soft_nms)
and the fused detection path (kernels/pipeline.py) vs ``detect(*model(x))``.

``test_kernel_*`` tests run on CUDA when a GPU is present, else in the Triton interpreter in a
child process (see tests/conftest.py). Segments are small integers and scores multiples of 1/64,
so IoUs and the first picks are exact in every dtype; ties are built in on purpose.
"""

from __future__ import annotations

import pytest
import torch
from conftest import INTERPRETED, run_kernel_tests_in_interpreter

from kernels.mask_decode import triton_available
from kernels.pipeline import detect_from_hidden, fused_detect
from kernels.soft_nms import MAX_N, soft_nms, soft_nms_op
from spot_core.config import DecodeConfig, SpotConfig
from spot_core.decode import detect
from spot_core.model import SPOT
from spot_core.nms import soft_nms as soft_nms_torch
from spot_core.nms import soft_nms_reference

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not importable")


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available() or INTERPRETED, reason="kernel tests run in this process")
def test_interpreter_subprocess() -> None:
    run_kernel_tests_in_interpreter(__file__)


def _props(B: int, N: int, K: int, seed: int, p_valid: float = 0.7) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 40, (B, N, 1), generator=gen).float()
    seg = torch.cat([start, start + torch.randint(0, 12, (B, N, 1), generator=gen).float()], dim=-1)
    scores = torch.randint(1, 65, (B, N), generator=gen).float() / 64  # many ties
    labels = torch.randint(0, K, (B, N), generator=gen)
    valid = torch.rand(B, N, generator=gen) < p_valid
    return seg, scores, labels, valid


def _check_same(got: tuple, want: tuple) -> None:
    seg, sc, lab, val, idx = (x.cpu() for x in got)
    w_seg, w_sc, w_lab, w_val, w_idx = want
    assert torch.equal(val, w_val)
    assert torch.equal(idx, w_idx)  # same kept set, same order
    assert torch.equal(lab, w_lab.long())
    assert torch.equal(seg, w_seg.float())
    torch.testing.assert_close(sc, w_sc, rtol=2e-6, atol=1e-7)


def _run(kernel_device: str, props: tuple, **kw) -> None:
    want = soft_nms_torch(*props, **kw)
    got = soft_nms(*(x.to(kernel_device) for x in props), backend="triton", **kw)
    _check_same(got, want)


# ------------------------------------------------------------------------------------ kernel parity
@needs_triton
@pytest.mark.parametrize("class_aware", [False, True])
@pytest.mark.parametrize(("N", "D"), [(1, 1), (7, 3), (7, 12), (140, 100), (300, 50)])
def test_kernel_matches_reference_grid(kernel_device: str, N: int, D: int, class_aware: bool) -> None:
    _run(kernel_device, _props(3, N, 4, seed=N + D), sigma=0.1, max_detections=D, class_aware=class_aware)


@needs_triton
def test_kernel_matches_plain_python_spec(kernel_device: str) -> None:
    props = _props(4, 33, 3, seed=5)
    got = soft_nms(*(x.to(kernel_device) for x in props), sigma=0.5, max_detections=20, backend="triton")
    want = soft_nms_reference(*props, sigma=0.5, max_detections=20)
    _check_same(got, want)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_kernel_dtypes(kernel_device: str, dtype: torch.dtype) -> None:
    seg, sc, lab, val = _props(2, 40, 3, seed=3)
    _run(kernel_device, (seg.to(dtype), sc.to(dtype), lab, val), sigma=0.3, max_detections=30)


@needs_triton
def test_kernel_empty_sets_ties_and_padding(kernel_device: str) -> None:
    seg, sc, lab, val = _props(4, 16, 2, seed=8)
    val[0] = False  # row 0: empty proposal set -> all padding
    sc[1] = 0.5  # row 1: all tied, disjoint segments (IoU 0): picks in index order
    seg[1] = torch.stack([torch.arange(16) * 3.0, torch.arange(16) * 3.0 + 2], dim=-1)
    val[1] = True
    seg[2, :, 1] = seg[2, :, 0]  # row 2: zero-length segments (union 0 -> IoU 0)
    _run(kernel_device, (seg, sc, lab, val), sigma=0.1, max_detections=20)
    got = soft_nms(*(x.to(kernel_device) for x in (seg, sc, lab, val)), sigma=0.1, max_detections=20)
    assert not got[3][0].any() and (got[4][0] == -1).all()
    assert got[4][1, :16].tolist() == list(range(16)) and (got[4][1, 16:] == -1).all()


@needs_triton
def test_kernel_no_candidates_and_empty_batch(kernel_device: str) -> None:
    _run(kernel_device, _props(2, 0, 2, seed=1), sigma=0.1, max_detections=5)
    _run(kernel_device, _props(0, 9, 2, seed=1), sigma=0.1, max_detections=5)
    _run(kernel_device, _props(2, 9, 2, seed=1), sigma=0.1, max_detections=0)


@needs_triton
def test_kernel_non_contiguous_and_int32_labels(kernel_device: str) -> None:
    seg, sc, lab, val = _props(6, 30, 3, seed=4)
    kw = {"sigma": 0.2, "max_detections": 10, "class_aware": True}
    want = soft_nms_torch(seg[::2], sc[::2], lab[::2], val[::2], **kw)
    seg_t = seg.to(kernel_device).transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous
    got = soft_nms(
        seg_t[::2], sc.to(kernel_device)[::2], lab.int().to(kernel_device)[::2], val.to(kernel_device)[::2],
        backend="triton", **kw,
    )  # fmt: skip
    _check_same(got, want)


@needs_triton
@pytest.mark.parametrize("preset", ["toy", "anet"])
def test_kernel_fused_path_matches_detect(
    kernel_device: str, preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the reference in true fp32 on GPUs
    cfg = SpotConfig.preset(preset)
    if preset == "anet":  # a smaller ANet-shaped model: the interpreter is slow
        cfg = cfg.override(["model.feat_dim=64", "model.mask_hidden=32"])
    torch.manual_seed(0)
    model = SPOT(cfg.model).eval()
    # quantise the weights and inputs the mask row depends on, so mask values are exact in fp32
    with torch.no_grad():
        model.mask_out.weight.copy_((model.mask_out.weight * 64).round() / 64)
    model = model.to(kernel_device)
    x = torch.randn(3, cfg.model.feat_dim, cfg.model.num_snippets).to(kernel_device)
    vl = torch.tensor([cfg.model.num_snippets, cfg.model.num_snippets // 2, 5]).to(kernel_device)
    with torch.no_grad():
        want = detect(*model(x), cfg.decode, valid_len=vl)  # the reference, same device and model outputs
        got = fused_detect(model, x, cfg.decode, valid_len=vl, backend="triton")
    assert torch.equal(got.valid, want.valid)
    assert torch.equal(got.labels, want.labels)
    assert torch.equal(got.segments, want.segments)
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ CPU-only tests
@pytest.mark.parametrize("preset", ["toy", "anet"])
@pytest.mark.parametrize("external", [False, True])
def test_fused_path_reference_backend_equals_detect(preset: str, external: bool) -> None:
    cfg = SpotConfig.preset(preset)
    torch.manual_seed(1)
    model = SPOT(cfg.model).eval()
    x = torch.randn(4, cfg.model.feat_dim, cfg.model.num_snippets)
    kw = {}
    if external:
        kw = {"video_class": torch.tensor([0, 1, 2, 0]), "video_score": torch.tensor([0.9, 0.5, 0.1, 1.0])}
    with torch.no_grad():
        want = detect(*model(x), cfg.decode, **kw)
        got = fused_detect(model, x, cfg.decode, backend="reference", **kw)
    for g, w in zip(got, want, strict=True):
        if g.is_floating_point():
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(g, w)
    assert got.valid.any()


def test_fused_path_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="agree on B and T"):
        detect_from_hidden(torch.zeros(2, 3, 10), torch.zeros(2, 4, 9), torch.zeros(9, 4), DecodeConfig())


def test_auto_on_cpu_is_the_reference() -> None:
    props = _props(3, 50, 3, seed=2)
    _check_same(
        soft_nms(*props, sigma=0.1, max_detections=10), soft_nms_torch(*props, sigma=0.1, max_detections=10)
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"segments": torch.zeros(2, 5)}, r"segments must be \[B, N, 2\]"),
        ({"scores": torch.zeros(2, 4)}, r"scores must be \[B, N\]"),
        ({"labels": torch.zeros(2, 5)}, "labels must be an integer"),
        ({"sigma": 0.0}, "sigma must be > 0"),
        ({"max_detections": -1}, "max_detections must be >= 0"),
        ({"backend": "x"}, "unknown backend"),
    ],
)
def test_launcher_rejects_bad_inputs(change: dict, match: str) -> None:
    seg, sc, lab, val = _props(2, 5, 2, seed=0)
    args = {"segments": seg, "scores": sc, "labels": lab, "valid": val, "sigma": 0.1, "max_detections": 3}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        soft_nms(**args)


def test_triton_backend_refuses_what_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    props = _props(1, 5, 2, seed=0)
    if not torch.cuda.is_available():
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET|not importable"):
            soft_nms(*props, sigma=0.1, max_detections=3, backend="triton")
    big = _props(1, MAX_N + 1, 2, seed=0)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="MAX_N|not importable"):
        soft_nms(*big, sigma=0.1, max_detections=3, backend="triton")
    with pytest.raises(RuntimeError, match="float32/16|not importable"):
        soft_nms(props[0].double(), *props[1:], sigma=0.1, max_detections=3, backend="triton")


def test_custom_op_matches_reference_and_passes_opcheck() -> None:
    props = _props(2, 12, 3, seed=6)
    op = soft_nms_op()
    out = op(*props, 0.2, 6, True)
    _check_same(out, soft_nms_torch(*props, sigma=0.2, max_detections=6, class_aware=True))
    assert torch.ops.spot.soft_nms.default is not None
    torch.library.opcheck(
        op, (*props, 0.2, 6, True), test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static")
    )
