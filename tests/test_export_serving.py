"""Triton model repository (export.serving), validated against Triton's ModelConfig protobuf schema.

The schema comes from ``tritonclient[grpc]`` (``tritonclient.grpc.model_config_pb2``, in the ``dev``
extra); without it the schema tests skip, and under CI (``CI=true``) they fail instead.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("onnxscript")  # the dynamo exporter needs it

from export.onnx import export_onnx  # noqa: E402
from export.serving import ServingError, ServingOptions, main, model_repository  # noqa: E402
from runtime.onnx_model import OnnxModelError  # noqa: E402
from spot_core.config import SpotConfig  # noqa: E402
from spot_core.decode import num_proposals  # noqa: E402


def _schema():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"tritonclient[grpc] missing ({e}); CI installs the dev extra, this must not skip")
        pytest.skip(f"Triton ModelConfig schema unavailable: {e} (pip install 'tritonclient[grpc]')")
    return text_format, model_config_pb2


def _parse(model_dir):
    text_format, mc = _schema()
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig()), mc


@pytest.fixture(scope="module")
def toy_onnx(tmp_path_factory, make_model):
    torch.set_num_threads(1)
    cfg = SpotConfig.preset("toy")
    model = make_model(cfg, 0)
    root = tmp_path_factory.mktemp("serving_onnx")
    heads = export_onnx(model, cfg, root / "heads.onnx")
    dec = export_onnx(model, cfg, root / "dec.onnx", with_decode=True)
    return cfg, heads, dec


def test_onnx_repository_matches_schema(toy_onnx, tmp_path):
    cfg, heads, dec = toy_onnx
    m = cfg.model
    opts = ServingOptions(
        max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_us=250, instances=2
    )
    model_dir = model_repository(tmp_path / "repo", onnx=heads, options=opts)
    assert model_dir == tmp_path / "repo" / "spot_heads"
    assert (model_dir / "1" / "model.onnx").read_bytes() == heads.read_bytes()
    c, mc = _parse(model_dir)
    assert (c.name, c.platform, c.max_batch_size) == ("spot_heads", "onnxruntime_onnx", 16)
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in c.input] == [
        ("features", "TYPE_FP32", [m.feat_dim, m.num_snippets])
    ]
    assert [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in c.output] == [
        ("logits", "TYPE_FP32", [m.num_classes + 1, m.num_snippets]),
        ("mask", "TYPE_FP32", [m.num_snippets, m.num_snippets]),
    ]
    assert list(c.dynamic_batching.preferred_batch_size) == [4, 8]
    assert c.dynamic_batching.max_queue_delay_microseconds == 250
    assert len(c.instance_group) == 1 and c.instance_group[0].count == 2
    assert c.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert c.parameters["spot.config_hash"].string_value == cfg.config_hash()
    assert json.loads(c.parameters["spot.class_names"].string_value) == list(cfg.class_names)
    assert json.loads((model_dir / "spot.json").read_text())["spot"]["num_classes"] == m.num_classes

    d = model_repository(tmp_path / "repo", onnx=dec, options=ServingOptions(instance_kind="cpu"))
    c, mc = _parse(d)
    M = num_proposals(cfg.decode, m.num_snippets)
    assert c.name == "spot_heads_decode" and c.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in c.output] == [
        ("segments", "TYPE_FP32", [M, 2]),
        ("scores", "TYPE_FP32", [M]),
        ("labels", "TYPE_INT64", [M]),
        ("valid", "TYPE_BOOL", [M]),
    ]


def test_engine_repository(toy_onnx, tmp_path):
    from export.trt import BatchProfile, build_engine
    from runtime.engine import TrtUnavailableError

    _, _, dec = toy_onnx
    try:
        plan = build_engine(dec, tmp_path / "dec.plan", profile=BatchProfile(1, 4, 8))
    except TrtUnavailableError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(str(e))
        pytest.skip(str(e))
    d = model_repository(
        tmp_path / "repo", engine=plan, name="spot_trt", options=ServingOptions(max_batch_size=8)
    )
    c, mc = _parse(d)
    assert (c.platform, c.max_batch_size) == ("tensorrt_plan", 8)
    assert (d / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert [o.name for o in c.output] == ["segments", "scores", "labels", "valid"]
    assert json.loads((d / "spot.json").read_text())["engine"]["batch_profile"]["max"] == 8
    with pytest.raises(ServingError, match="exceeds the engine profile's max batch 8"):
        model_repository(tmp_path / "r2", engine=plan, options=ServingOptions(max_batch_size=16))
    with pytest.raises(ServingError, match="GPU instances only"):
        model_repository(tmp_path / "r2", engine=plan, options=ServingOptions(instance_kind="cpu"))


def test_bad_requests(toy_onnx, tmp_path, capsys):
    _, heads, _ = toy_onnx
    repo = tmp_path / "repo"
    model_repository(repo, onnx=heads)
    with pytest.raises(ServingError, match="model folder exists"):
        model_repository(repo, onnx=heads)
    model_repository(repo, onnx=heads, overwrite=True)
    with pytest.raises(ServingError, match="exactly one"):
        model_repository(repo)
    with pytest.raises(ServingError, match="preferred batch sizes"):
        ServingOptions(max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ServingError, match="model name"):
        model_repository(repo, onnx=heads, name="a b")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(heads.read_bytes()[:500])
    with pytest.raises(OnnxModelError, match=r"cut\.onnx: corrupt"):
        model_repository(repo, onnx=cut, name="cut")
    (tmp_path / "orphan.plan").write_bytes(b"x")
    with pytest.raises(OnnxModelError, match="engine sidecar"):
        model_repository(repo, engine=tmp_path / "orphan.plan")
    assert not (repo / "cut").exists()

    assert main(["--onnx", str(heads), "--out", str(tmp_path / "cli"), "--max-batch-size", "4"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "spot_heads")
    assert main(["--onnx", str(heads), "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "exists" in err and err.count("\n") == 1
