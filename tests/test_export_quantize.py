"""export.quantize: int8 ONNX runs, keeps its metadata, is judged by verify; bad inputs; bf16 CPU graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript")  # the dynamo exporter needs it
pytest.importorskip("onnxruntime")

from export.onnx import export_onnx  # noqa: E402
from export.quantize import QuantizeError, bf16_cpu_model, main, quantize_onnx  # noqa: E402
from export.verify import INT8_MAX_MAP_DELTA, INT8_MIN_COSINE, verify  # noqa: E402
from runtime.onnx_model import OnnxRunner, read_onnx_metadata  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _ops(path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load_model(str(path)).graph.node}


@pytest.fixture(scope="module")
def files(toy_files, tmp_path_factory):
    """The toy files (``tests/conftest.py``) with the dynamic int8 ONNX of the model and of other weights."""
    d = tmp_path_factory.mktemp("quant")
    int8 = quantize_onnx(toy_files["onnx"], d / "model_int8.onnx")
    other = quantize_onnx(toy_files["other"], d / "other_int8.onnx")
    return {**toy_files, "fp32": toy_files["onnx"], "int8": int8, "other": other}


def test_dynamic_int8_runs_and_keeps_metadata(files, make_features):
    cfg, model = files["cfg"], files["model"]
    src, q = read_onnx_metadata(files["fp32"]), read_onnx_metadata(files["int8"])
    assert q["precision"] == "int8" and src["precision"] == "fp32"
    for k in ("format", "version", "graph", "feat_dim", "num_snippets", "num_classes", "class_names"):
        assert q[k] == src[k], k
    assert q["config_hash"] == cfg.config_hash() and q["config"] == src["config"]
    info = json.loads(q["quantization"])
    assert info["mode"] == "dynamic" and info["op_types"] == ["MatMul"] and info["per_channel"] is True
    assert len(q["source_sha256"]) == 64
    assert {"MatMulInteger", "DynamicQuantizeLinear"} & _ops(files["int8"])  # really quantized
    runner = OnnxRunner(files["int8"], cfg, intra_op_threads=1)
    assert runner.input_dtype == "float32"
    for b in (1, 3):  # dynamic batch survived quantization
        x = make_features(cfg, b, seed=b)
        out = runner(x)
        with torch.no_grad():
            ref = [t.double().numpy().ravel() for t in model(x)]
        for name, r in zip(("logits", "mask"), ref, strict=True):
            got = out[name].astype(np.float64).ravel()
            assert out[name].shape[0] == b
            cos = float(got @ r / (np.linalg.norm(got) * np.linalg.norm(r)))
            assert cos > 0.99, (name, cos)
        assert np.abs(out["logits"].astype(np.float64).ravel() - ref[0]).max() > 1e-5  # not the fp32 graph


def test_static_int8_calibrates_on_training_windows(files, tmp_path, make_features):
    out = quantize_onnx(files["fp32"], tmp_path / "static.onnx", static=True, calibration=files["data"])
    info = json.loads(read_onnx_metadata(out)["quantization"])
    assert info["mode"] == "static-qdq" and info["calibration"]["subset"] == "training"
    assert info["calibration"]["windows"] == 3  # the 3 training videos, rescale mode: one window each
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out)
    y = OnnxRunner(out, files["cfg"], intra_op_threads=1)(make_features(files["cfg"], 2))
    assert np.isfinite(y["logits"]).all() and y["mask"].shape[0] == 2


def test_verify_judges_int8_rows(files):
    kw = {"backends": ("onnxruntime",), "num_random": 3, "batch_size": 2}
    [r] = [
        r
        for r in verify(files["ckpt"], onnx=files["int8"], data=files["data"], **kw)
        if r["backend"] == "onnxruntime-cpu"
    ]
    assert r["precision"] == "int8" and r["map_delta"] is not None and r["cosine"] is not None
    ok = abs(r["map_delta"]) <= INT8_MAX_MAP_DELTA and r["cosine"] >= INT8_MIN_COSINE
    assert r["status"] == ("passed" if ok else "failed"), r
    assert (r["status"] == "passed") == (r["reason"] == "")
    # without --data the mAP cannot be measured: skipped, with the reason and the metrics
    [r] = [r for r in verify(files["ckpt"], onnx=files["int8"], **kw) if r["backend"] == "onnxruntime-cpu"]
    assert r["status"] == "skipped" and "--data" in r["reason"] and r["max_abs"] > 0
    # another model's int8 graph fails (cosine floor)
    [r] = [r for r in verify(files["ckpt"], onnx=files["other"], **kw) if r["backend"] == "onnxruntime-cpu"]
    assert r["status"] == "failed" and "cosine" in r["reason"]


def test_bad_inputs(files, tmp_path, capsys):
    cfg, model = files["cfg"], files["model"]
    with pytest.raises(QuantizeError, match="not found"):
        quantize_onnx(tmp_path / "absent.onnx", tmp_path / "q.onnx")
    cut = tmp_path / "cut.onnx"
    data = files["fp32"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(QuantizeError, match="corrupt or truncated"):
        quantize_onnx(cut, tmp_path / "q.onnx")
    dec = export_onnx(model, cfg, tmp_path / "dec.onnx", with_decode=True)
    with pytest.raises(QuantizeError, match=r"graph 'heads\+decode'.*heads graphs"):
        quantize_onnx(dec, tmp_path / "q.onnx")
    import onnx

    proto = onnx.load_model(str(files["fp32"]))  # an fp16 export's metadata (the check reads it)
    for prop in proto.metadata_props:
        if prop.key == "spot.precision":
            prop.value = "fp16"
    half = tmp_path / "half.onnx"
    onnx.save_model(proto, str(half))
    with pytest.raises(QuantizeError, match="precision 'fp16'"):
        quantize_onnx(half, tmp_path / "q.onnx")
    with pytest.raises(QuantizeError, match="precision 'int8'"):  # no double quantization
        quantize_onnx(files["int8"], tmp_path / "q.onnx")
    with pytest.raises(QuantizeError, match="--static needs --calibration"):
        quantize_onnx(files["fp32"], tmp_path / "q.onnx", static=True)
    with pytest.raises(QuantizeError, match="--calibration"):
        quantize_onnx(files["fp32"], tmp_path / "q.onnx", static=True, calibration=tmp_path / "no_data")
    assert not (tmp_path / "q.onnx").exists()
    capsys.readouterr()
    assert main([str(dec), "--out", str(tmp_path / "q.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "heads+decode" in err and err.count("\n") == 1
    assert main([str(files["fp32"]), "--out", str(tmp_path / "cli.onnx")]) == 0
    assert read_onnx_metadata(tmp_path / "cli.onnx")["precision"] == "int8"


def test_bf16_cpu_graph(files, make_features):
    cfg, model = files["cfg"], files["model"]
    x = make_features(cfg, 3)
    with torch.no_grad():
        ref = model(x)
    same = bf16_cpu_model(model, cfg, torch.float32)(x)  # the layout alone: fp32 tolerance
    for g, r in zip(same, ref, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
    low = bf16_cpu_model(model, cfg)
    assert low.w_qkv.dtype == torch.bfloat16 and low.w_mconv.dtype == torch.bfloat16
    for b in (1, 3):
        out = low(x[:b])
        for g, r in zip(out, ref, strict=True):
            assert g.dtype == torch.float32
            g64, r64 = g.double().flatten(), r[:b].double().flatten()
            assert float(g64 @ r64 / (g64.norm() * r64.norm())) > 0.999
            assert (g64 - r64).abs().max() > 0  # really bf16
    with pytest.raises(ValueError, match=r"\[B, C=32, T=64\]"):
        low(torch.zeros(2, 32, 10))
    # windows run in steps of `chunk`: any step size gives the same outputs (within bf16 noise of
    # the matmul blocking), in input order
    full = bf16_cpu_model(model, cfg, chunk=3)(x)
    for chunk in (1, 2):
        for g, r in zip(bf16_cpu_model(model, cfg, chunk=chunk)(x), full, strict=True):
            torch.testing.assert_close(g, r, atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        bf16_cpu_model(model, cfg, chunk=0)
