"""Fused mask decode (kernels/mask_decode.py): Triton kernel vs PyTorch reference vs decode_windows.

Kernel tests (``test_kernel_*``) run on CUDA when a GPU is present, else on CPU in the Triton
interpreter. The interpreter needs ``TRITON_INTERPRET=1`` before ``import triton`` (triton's own
``tl.zeros``, ``tl.max``, ... are ``triton.jit`` functions decorated at import), which a test
cannot guarantee in a shared pytest process: without a GPU, :func:`test_interpreter_subprocess`
reruns the ``test_kernel_*`` tests in a child pytest with the variable set, and the in-process
copies skip (or run directly when the variable was set before pytest started). Everything skips,
with the reason, when triton is not importable.

Inputs are quantised (h in multiples of 1/4, W2 in multiples of 1/8, exact in fp16 and bf16) so
the row logits are exact in float32 and every mask value is far from every threshold: run
boundaries must then match exactly, across backends and dtypes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import INTERPRETED, run_kernel_tests_in_interpreter

from kernels.mask_decode import (
    MaskProposals,
    decode_inputs,
    mask_decode,
    mask_decode_op,
    mask_decode_reference,
    triton_available,
)
from spot_core.config import DecodeConfig
from spot_core.decode import decode_windows

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not importable")
MODES = ("filled", "anchored")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available() or INTERPRETED, reason="kernel tests run in this process")
def test_interpreter_subprocess() -> None:
    run_kernel_tests_in_interpreter(__file__)


def _quantised(B: int, H: int, T: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.randint(0, 4, (B, H, T), generator=gen).float() * 0.25  # h >= 0 (after the ReLU)
    w2 = torch.randint(-8, 9, (T, H), generator=gen).float() * 0.125
    return h, w2


def _case(B: int, H: int, T: int, k: int, K: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, w2 = _quantised(B, H, T, gen)
    return {
        "h": h,
        "w2": w2,
        "top": torch.randint(0, T, (B, k), generator=gen),
        "probs": torch.softmax(torch.randn(B, K + 1, T, generator=gen), dim=1),
        "labels": torch.randint(0, K, (B, k), generator=gen),
        "scale": torch.rand(B, generator=gen),
        "valid_len": torch.randint(0, T + 1, (B,), generator=gen),
    }


def _assert_same(got: MaskProposals, want: MaskProposals) -> None:
    assert torch.equal(got.valid.cpu(), want.valid.cpu())
    assert torch.equal(got.segments.cpu(), want.segments.cpu())
    assert torch.equal(got.labels.cpu(), want.labels.cpu())
    torch.testing.assert_close(got.scores.cpu(), want.scores.cpu(), rtol=1e-5, atol=1e-6)


def _run_both(
    case: dict, cfg: DecodeConfig, device: str, dtype: torch.dtype = torch.float32
) -> MaskProposals:
    args = {n: x.to(device) for n, x in case.items()}
    args["h"] = args["h"].to(dtype)
    got = mask_decode(
        args["h"], args["w2"], args["top"], args["probs"], cfg,
        labels=args["labels"], scale=args["scale"], valid_len=args["valid_len"], backend="triton",
    )  # fmt: skip
    want = mask_decode_reference(
        args["h"], args["w2"], args["top"], args["probs"], cfg,
        labels=args["labels"], scale=args["scale"], valid_len=args["valid_len"],
    )  # fmt: skip
    _assert_same(got, want)
    return want


# ------------------------------------------------------------------------------------ kernel parity
@needs_triton
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("T", "k"), [(1, 3), (7, 9), (100, 3), (129, 2)])  # k > T for T = 1, 7
def test_kernel_matches_reference_grid(kernel_device: str, mode: str, T: int, k: int) -> None:
    cfg = DecodeConfig(mask_segment=mode)
    H = 40 if T == 129 else 24  # T = 129: three H blocks of 16, the last one partial
    props = _run_both(_case(B=2, H=H, T=T, k=k, K=3, seed=T * 7 + k), cfg, kernel_device)
    assert props.valid.shape == (2, k, len(cfg.mask_thresholds))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_kernel_matches_reference_dtypes(kernel_device: str, mode: str, dtype: torch.dtype) -> None:
    cfg = DecodeConfig(mask_segment=mode, min_len_frac=0.1)
    props = _run_both(_case(B=2, H=16, T=33, k=4, K=4, seed=11), cfg, kernel_device, dtype)
    assert props.valid.any() and not props.valid.all()


@needs_triton
@pytest.mark.parametrize("mode", MODES)
def test_kernel_all_below_all_above_and_ties(kernel_device: str, mode: str) -> None:
    B, T = 3, 12
    cfg = DecodeConfig(mask_thresholds=(0.0, 0.5, 0.9), mask_segment=mode, min_len_frac=0.0)
    w2 = torch.zeros(T, 2)
    w2[:, 0], w2[:, 1] = 1.0, -1.0
    h = torch.zeros(B, 2, T)
    h[0, 1] = 200.0  # window 0: z = -200, sigmoid underflows to 0: below every threshold
    h[1, 0] = 8.0  # window 1: z = 8, sigmoid 0.99966: above every threshold
    pattern = torch.tensor([1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0], dtype=torch.bool)  # equal runs: ties
    h[2, 0] = torch.where(pattern, 8.0, 0.0)
    h[2, 1] = torch.where(pattern, 0.0, 8.0)
    case = {
        "h": h,
        "w2": w2,
        "top": torch.tensor([[0, 5, 11], [0, 5, 11], [0, 4, 8]]),
        "probs": torch.full((B, 3, T), 1.0 / 3),
        "labels": torch.ones(B, 3, dtype=torch.long),
        "scale": torch.ones(B),
        "valid_len": torch.full((B,), T),
    }
    props = MaskProposals(*(x.cpu() for x in _run_both(case, cfg, kernel_device)))
    assert not props.valid[0].any()
    assert props.valid[1].all()
    assert (props.segments[1] == torch.tensor([0.0, T])).all()
    # window 2 at thresholds 0.5 and 0.9 (at 0.0 every snippet is on: sigmoid(-8) > 0)
    if mode == "filled":  # [first, last + 1); the score uses the earliest longest run, [0, 1]
        assert (props.segments[2, :, 1:] == torch.tensor([0.0, 11.0])).all()
        assert (props.segments[2, :, 0] == torch.tensor([0.0, T])).all()
    else:  # the run containing each top snippet: 0 -> [0, 2), 4 -> [3, 5), 8 -> [7, 9)
        want = torch.tensor([[0.0, 2.0], [3.0, 5.0], [7.0, 9.0]])
        assert torch.equal(props.segments[2, :, 1], want) and torch.equal(props.segments[2, :, 2], want)
    assert props.valid[2].all()


@needs_triton
def test_kernel_non_contiguous_and_int32_indices(kernel_device: str) -> None:
    case = _case(B=3, H=8, T=20, k=4, K=2, seed=5)
    cfg = DecodeConfig()
    want = mask_decode_reference(
        case["h"], case["w2"], case["top"], case["probs"], cfg,
        labels=case["labels"], scale=case["scale"], valid_len=case["valid_len"],
    )  # fmt: skip
    d = kernel_device
    h = case["h"].transpose(1, 2).contiguous().transpose(1, 2).to(d)  # [B, H, T] view, strides (HT, 1, H)
    w2 = case["w2"].t().contiguous().t().to(d)
    probs = torch.stack([case["probs"], case["probs"]], -1).flatten(-2).to(d)[..., ::2]  # strided time axis
    got = mask_decode(
        h, w2, case["top"].int().to(d).t().contiguous().t(), probs, cfg,
        labels=case["labels"].int().to(d), scale=case["scale"].to(d),
        valid_len=case["valid_len"].int().to(d), backend="triton",
    )  # fmt: skip
    assert not h.is_contiguous() and not w2.is_contiguous() and not probs.is_contiguous()
    _assert_same(got, want)


@needs_triton
def test_kernel_empty_batch(kernel_device: str) -> None:
    case = _case(B=2, H=4, T=6, k=3, K=2, seed=0)
    case = {n: x[:0] for n, x in case.items() if n != "w2"} | {"w2": case["w2"]}
    props = _run_both(case, DecodeConfig(), kernel_device)
    assert props.valid.shape == (0, 3, len(DecodeConfig().mask_thresholds))


@needs_triton
def test_kernel_nan_counts_as_off(kernel_device: str) -> None:
    case = _case(B=2, H=8, T=16, k=3, K=2, seed=3)
    case["h"][0, :, 5] = float("nan")  # column 5 of every row of window 0 is NaN
    case["valid_len"] = torch.full((2,), 16)
    _run_both(case, DecodeConfig(min_len_frac=0.0), kernel_device)  # filled: holes are filled
    props = _run_both(case, DecodeConfig(min_len_frac=0.0, mask_segment="anchored"), kernel_device)
    assert torch.isfinite(props.scores).all()
    seg = props.segments[0][props.valid[0]]
    assert len(seg) and not ((seg[:, 0] <= 5) & (seg[:, 1] > 5)).any()  # no run crosses the NaN column


@needs_triton
def test_kernel_with_decode_inputs_matches_decode_windows(kernel_device: str) -> None:
    _check_decode_parity(backend="triton", device=kernel_device, mode="anchored", seed=1)
    _check_decode_parity(backend="triton", device=kernel_device, mode="filled", seed=2, class_mode="snippet")


# ------------------------------------------------------------------------------------ reference vs decode
def _check_decode_parity(
    backend: str, device: str, mode: str, seed: int, class_mode: str = "window", external: bool = False
) -> None:
    gen = torch.Generator().manual_seed(seed)
    B, H, T, K = 3, 16, 40, 5
    h, w2 = _quantised(B, H, T, gen)
    logits = torch.randn(B, K + 1, T, generator=gen) * 2
    valid_len = torch.tensor([T, 17, 1])
    extra = {}
    if external:
        extra = {
            "video_class": torch.randint(0, K, (B,), generator=gen),
            "video_score": torch.rand(B, generator=gen),
        }
    cfg = DecodeConfig(mask_segment=mode, class_mode=class_mode, min_len_frac=0.05)
    mask = torch.sigmoid(torch.einsum("th,bhu->btu", w2, h))  # the model's mask [B, T, T]
    props = decode_windows(logits, mask, cfg, valid_len=valid_len, **extra)
    top, probs, labels, scale = decode_inputs(logits, cfg, valid_len=valid_len, **extra)
    d = device
    got = mask_decode(
        h.to(d), w2.to(d), top.to(d), probs.to(d), cfg, labels=labels.to(d),
        scale=None if scale is None else scale.to(d), valid_len=valid_len.to(d), backend=backend,
    )  # fmt: skip
    k = top.shape[1]
    nm = len(cfg.mask_thresholds)
    want = MaskProposals(
        props.segments[:, : k * nm].reshape(B, k, nm, 2),
        props.scores[:, : k * nm].reshape(B, k, nm),
        props.labels[:, : k * nm].reshape(B, k, nm),
        props.valid[:, : k * nm].reshape(B, k, nm),
    )
    _assert_same(got, want)
    assert want.valid.any()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("class_mode", ["window", "snippet"])
@pytest.mark.parametrize("external", [False, True])
def test_reference_matches_decode_windows(mode: str, class_mode: str, external: bool) -> None:
    for seed in range(3):
        _check_decode_parity("reference", "cpu", mode, seed, class_mode, external)


@pytest.mark.parametrize("mode", MODES)
def test_reference_matches_decode_windows_on_random_model(mode: str) -> None:
    from spot_core.config import ModelConfig
    from spot_core.model import SPOT

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    small = {
        "feat_dim": 16,
        "num_snippets": 25,
        "num_classes": 4,
        "num_heads": 2,
        "d_head": 8,
        "mask_hidden": 12,
    }
    torch.manual_seed(0)
    model = SPOT(ModelConfig(**{n: v for n, v in small.items() if n in fields})).eval()
    cfg = DecodeConfig(mask_segment=mode, top_k=30)  # top_k > T: k = T
    x = torch.randn(4, 16, 25)
    with torch.no_grad():
        emb = model.embed(x)
        logits, mask = model.heads(emb)
        h = model.mask_hidden(emb)
    props = decode_windows(logits, mask, cfg)
    top, probs, labels, scale = decode_inputs(logits, cfg)
    got = mask_decode(h, model.mask_weight.detach(), top, probs, cfg, labels=labels, scale=scale)
    k, nm = top.shape[1], len(cfg.mask_thresholds)
    assert k == 25
    assert torch.equal(got.valid.reshape(4, -1), props.valid[:, : k * nm])
    assert torch.equal(got.segments.reshape(4, -1, 2), props.segments[:, : k * nm])
    assert torch.equal(got.labels.reshape(4, -1), props.labels[:, : k * nm])
    torch.testing.assert_close(got.scores.reshape(4, -1), props.scores[:, : k * nm], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ launcher checks
def _args() -> dict:
    case = _case(B=2, H=4, T=6, k=3, K=2, seed=0)
    return {
        "h": case["h"],
        "w2": case["w2"],
        "top": case["top"],
        "probs": case["probs"],
        "labels": case["labels"],
    }


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"top": torch.tensor([[0, 1, 6], [0, 0, 0]])}, "top indices"),
        ({"top": torch.tensor([[0, 1, -1], [0, 0, 0]])}, "top indices"),
        (
            {"top": torch.zeros(2, 0, dtype=torch.long), "labels": torch.zeros(2, 0, dtype=torch.long)},
            "k = 0",
        ),
        ({"w2": torch.zeros(7, 4)}, r"w2 must be \[T, H\]"),
        ({"labels": torch.full((2, 3), 3)}, "labels must be in"),
        ({"top": torch.zeros(2, 3)}, "integer"),
        ({"h": torch.zeros(2, 6)}, r"h must be \[B, H, T\]"),
    ],
)
def test_launcher_rejects_bad_inputs(change: dict, match: str) -> None:
    a = {**_args(), **change}
    with pytest.raises(ValueError, match=match):
        mask_decode(a["h"], a["w2"], a["top"], a["probs"], DecodeConfig(), labels=a["labels"])


def test_launcher_backend_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    a = _args()
    with pytest.raises(ValueError, match="unknown backend"):
        mask_decode(a["h"], a["w2"], a["top"], a["probs"], DecodeConfig(), labels=a["labels"], backend="x")  # type: ignore[arg-type]
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET|not importable"):
        mask_decode(
            a["h"], a["w2"], a["top"], a["probs"], DecodeConfig(), labels=a["labels"], backend="triton"
        )


def test_auto_on_cpu_is_the_reference() -> None:
    a = _args()
    cfg = DecodeConfig()
    got = mask_decode(a["h"], a["w2"], a["top"], a["probs"], cfg, labels=a["labels"])
    want = mask_decode_reference(a["h"], a["w2"], a["top"], a["probs"], cfg, labels=a["labels"])
    _assert_same(got, want)


def test_custom_op_matches_reference_and_passes_opcheck() -> None:
    case = _case(B=2, H=8, T=12, k=3, K=2, seed=9)
    cfg = DecodeConfig(mask_segment="anchored", min_len_frac=0.1)
    op = mask_decode_op()
    args = (
        case["h"],
        case["w2"],
        case["top"],
        case["probs"],
        case["labels"],
        case["scale"],
        case["valid_len"],
    )
    out = op(*args, list(cfg.mask_thresholds), cfg.min_len_frac, True)
    want = mask_decode_reference(
        case["h"], case["w2"], case["top"], case["probs"], cfg,
        labels=case["labels"], scale=case["scale"], valid_len=case["valid_len"],
    )  # fmt: skip
    _assert_same(MaskProposals(*out[:4]), want)
    rows = torch.sigmoid(torch.einsum("bkh,bhu->bku", case["w2"][case["top"]], case["h"]))
    torch.testing.assert_close(out[4], rows)
    assert torch.ops.spot.mask_decode.default is not None
    torch.library.opcheck(
        op, (*args, list(cfg.mask_thresholds), cfg.min_len_frac, True),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
    )  # fmt: skip


@needs_triton
def test_kernel_device_guard_without_host_checks(kernel_device: str) -> None:
    """check_ranges=False (the fused path, the custom op): bad indices give invalid rows, no OOB read."""
    case = {n: x.to(kernel_device) for n, x in _case(B=2, H=8, T=10, k=3, K=2, seed=4).items()}
    case["top"][0, 1] = 10  # == T
    case["top"][1, 0] = -1
    case["labels"][1, 2] = 99  # >= C
    case["valid_len"] = torch.tensor([10, 25], device=kernel_device)  # > T: clamped
    cfg = DecodeConfig(mask_thresholds=(0.0,))
    got = mask_decode(
        case["h"], case["w2"], case["top"], case["probs"], cfg, labels=case["labels"],
        valid_len=case["valid_len"], backend="triton", check_ranges=False,
    )  # fmt: skip
    assert not got.valid[0, 1].any() and not got.valid[1, 0].any() and not got.valid[1, 2].any()
    assert (got.scores[0, 1] == 0).all() and (got.segments[1, 0] == 0).all()
    assert got.valid[0, 0].all() and got.valid[1, 1].all()  # threshold 0: every valid row is on
