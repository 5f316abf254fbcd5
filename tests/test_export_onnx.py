"""ONNX export (dynamo exporter) vs eager through onnxruntime; metadata checks; CLI; bad files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript")  # the dynamo exporter needs it

from export.onnx import OnnxExportError, export_onnx, main  # noqa: E402
from runtime.onnx_model import OnnxModelError, OnnxRunner, check_onnx_metadata, read_onnx_metadata  # noqa: E402
from spot_core.checkpoint import save_model  # noqa: E402
from spot_core.config import SpotConfig  # noqa: E402
from spot_core.decode import decode_windows, num_proposals  # noqa: E402
from spot_core.outputs import verify_digest  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FP32 = {"atol": 1e-5, "rtol": 1e-4}
FP16 = {"atol": 1e-3, "rtol": 1e-2}


@pytest.fixture(scope="module")
def toy(make_model):
    cfg = SpotConfig.preset("toy")
    return cfg, make_model(cfg)


@pytest.fixture(scope="module")
def heads_onnx(toy, tmp_path_factory):
    cfg, model = toy
    return export_onnx(model, cfg, tmp_path_factory.mktemp("onnx") / "heads.onnx")


def _run(path, cfg, x, **kw):
    return OnnxRunner(path, cfg, intra_op_threads=1)(x, **kw)


@pytest.mark.parametrize("b", [1, 3, 8])
def test_heads_match_eager(toy, heads_onnx, b, make_features):
    cfg, model = toy
    x = make_features(cfg, b)
    out = _run(heads_onnx, cfg, x)
    with torch.no_grad():
        logits, mask = model(x)
    assert out["logits"].shape == (b, cfg.model.num_classes + 1, cfg.model.num_snippets)
    np.testing.assert_allclose(out["logits"], logits.numpy(), **FP32)
    np.testing.assert_allclose(out["mask"], mask.numpy(), **FP32)


def test_metadata_and_mismatch_refused(toy, heads_onnx):
    cfg, _ = toy
    meta = check_onnx_metadata(heads_onnx, cfg)
    m = cfg.model
    assert (meta["feat_dim"], meta["num_snippets"], meta["num_classes"]) == (
        m.feat_dim,
        m.num_snippets,
        m.num_classes,
    )
    assert meta["graph"] == "heads" and meta["precision"] == "fp32"
    assert meta["config_hash"] == cfg.config_hash() and meta["version"]
    assert read_onnx_metadata(heads_onnx)["class_names"] == list(cfg.class_names)
    other = cfg.override(["model.feat_dim=48", "model.num_snippets=32", "model.num_classes=3"])
    with pytest.raises(OnnxModelError) as e:
        check_onnx_metadata(heads_onnx, other)
    for part in ("C (model.feat_dim)", "T (model.num_snippets)", "K (model.num_classes)", "heads.onnx"):
        assert part in str(e.value)
    with pytest.raises(OnnxModelError, match="version: file 0"):
        check_onnx_metadata(heads_onnx, cfg, version="99.0")
    with pytest.raises(OnnxModelError, match="does not match"):
        OnnxRunner(heads_onnx, other)


def test_truncated_and_missing_files(heads_onnx, tmp_path):
    bad = tmp_path / "cut.onnx"
    data = heads_onnx.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxModelError, match=r"cut\.onnx: corrupt or truncated"):
        read_onnx_metadata(bad)
    with pytest.raises(OnnxModelError, match="not found"):
        OnnxRunner(tmp_path / "absent.onnx")


def test_runner_refuses_wrong_dtype_and_shape(toy, heads_onnx, make_features):
    cfg, _ = toy
    runner = OnnxRunner(heads_onnx, cfg, intra_op_threads=1)
    with pytest.raises(ValueError, match="float32"):
        runner(make_features(cfg, 2).double())
    with pytest.raises(ValueError, match=r"\[B, C=32, T=64\]"):
        runner(torch.zeros(2, 32, 10))


def test_bad_export_requests(toy, tmp_path):
    cfg, model = toy
    with pytest.raises(OnnxExportError, match="opset 17"):
        export_onnx(model, cfg, tmp_path / "m.onnx", opset=17)
    with pytest.raises(ValueError, match=r"classifier\.weight: checkpoint \[7, 32, 1\] vs config"):
        export_onnx(model, cfg.override(["model.num_classes=4"]), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("decode_mode", ["toy", "window"])
def test_with_decode_matches_eager(toy, tmp_path, decode_mode, make_features):
    cfg, model = toy
    if decode_mode == "window":  # the ActivityNet decode path: window class, filled longest run
        cfg = dataclasses.replace(cfg, decode=SpotConfig.preset("anet").decode)
    path = export_onnx(model, cfg, tmp_path / "dec.onnx", with_decode=True)
    meta = check_onnx_metadata(path, cfg)
    M = num_proposals(cfg.decode, cfg.model.num_snippets)
    assert meta["graph"] == "heads+decode" and meta["num_proposals"] == M
    runner = OnnxRunner(path, cfg, intra_op_threads=1)
    for b in (1, 5):
        x = make_features(cfg, b, seed=b)
        out = runner(x)
        with torch.no_grad():
            ref = decode_windows(*model(x), cfg.decode)
        assert out["valid"].dtype == np.bool_ and out["labels"].dtype == np.int64
        assert out["segments"].shape == (b, M, 2)
        np.testing.assert_array_equal(out["valid"], ref.valid.numpy())
        assert ref.valid.any()  # the comparison is not vacuous
        np.testing.assert_array_equal(out["labels"], ref.labels.numpy())
        np.testing.assert_array_equal(out["segments"], ref.segments.numpy())
        np.testing.assert_allclose(out["scores"], ref.scores.numpy(), atol=1e-5, rtol=0)
    changed = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, top_k=3))
    with pytest.raises(OnnxModelError, match="decode.top_k"):
        check_onnx_metadata(path, changed)


def test_fp16_heads(toy, tmp_path, make_features):
    cfg, model = toy
    path = export_onnx(model, cfg, tmp_path / "half.onnx", fp16=True)
    runner = OnnxRunner(path, cfg, intra_op_threads=1)
    assert runner.input_dtype == "float16" and read_onnx_metadata(path)["precision"] == "fp16"
    x = make_features(cfg, 3)
    out = runner(x, cast=True)
    with torch.no_grad():
        ref = dict(zip(("logits", "mask"), model(x), strict=True))
    for name, r in ref.items():
        got = out[name]
        assert got.dtype == np.float16
        got, want = got.astype(np.float64).ravel(), r.double().numpy().ravel()
        cos = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
        assert cos >= 0.999, (name, cos)
        np.testing.assert_allclose(got, want, **FP16)


@pytest.mark.slow
def test_anet_heads_batch_2(tmp_path, make_features, make_model):
    cfg = SpotConfig.preset("anet")
    model = make_model(cfg)
    path = export_onnx(model, cfg, tmp_path / "anet.onnx")
    x = make_features(cfg, 2)
    out = _run(path, cfg, x)
    with torch.no_grad():
        logits, mask = model(x)
    np.testing.assert_allclose(out["logits"], logits.numpy(), **FP32)
    np.testing.assert_allclose(out["mask"], mask.numpy(), **FP32)


def test_cli(toy, tmp_path, capsys):
    cfg, model = toy
    ckpt = save_model(tmp_path / "m.safetensors", model, cfg)
    out = tmp_path / "cli.onnx"
    assert main(["--checkpoint", str(ckpt), "--out", str(out), "--preset", "toy"]) == 0
    assert out.is_file() and read_onnx_metadata(out)["num_classes"] == cfg.model.num_classes
    capsys.readouterr()

    before = out.read_bytes()
    assert main(["--checkpoint", str(ckpt), "--out", str(out), "--preset", "toy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists; pass --overwrite" in err and err.count("\n") == 1
    assert out.read_bytes() == before and verify_digest(out)

    argv = ["--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(out), "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not found" in err and err.count("\n") == 1
    assert out.read_bytes() == before

    argv = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--preset", "anet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "embedding.w_q.weight" in err and err.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()
