"""TensorRT engine build (export.trt): real parse + build with whatever backend is installed.

On our machines that is TensorRT-RTX (``pip install tensorrt-rtx``, in the ``dev`` extra), which
builds ahead of time on the CPU; nothing here runs an engine. Under CI (``CI=true``) a missing
backend fails instead of skipping, so CI can never pass by not building.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

pytest.importorskip("onnxscript")  # the dynamo exporter needs it

from export.onnx import export_onnx  # noqa: E402
from export.trt import BatchProfile, build_engine, main  # noqa: E402
from runtime.engine import (  # noqa: E402
    TrtBuildError,
    TrtUnavailableError,
    load_backend,
    read_engine_metadata,
    sidecar_path,
)
from runtime.onnx_model import OnnxModelError  # noqa: E402
from spot_core.config import SpotConfig  # noqa: E402
from spot_core.decode import num_proposals  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _backend():
    try:
        return load_backend()
    except TrtUnavailableError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{e} (CI: the dev extra installs tensorrt-rtx; this test must not skip)")
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory, make_model):
    """``{(preset, graph): path}``, built lazily: ANet exports take seconds each."""
    root = tmp_path_factory.mktemp("trt_onnx")
    cache: dict[tuple[str, str], object] = {}

    def get(preset: str, graph: str):
        if (preset, graph) not in cache:
            cfg = SpotConfig.preset(preset)
            model = make_model(cfg, 0)
            path = root / f"{preset}_{graph}.onnx"
            export_onnx(model, cfg, path, with_decode=graph == "decode", fp16=graph == "heads16")
            cache[preset, graph] = (cfg, path)
        return cache[preset, graph]

    return get


@pytest.mark.parametrize(
    "preset, graph",
    [
        ("toy", "heads"),
        ("toy", "decode"),
        ("actrectut", "heads"),  # the preset's model: backbone local + mask head offset (issue 14)
        pytest.param("actrectut", "decode", marks=pytest.mark.slow),
        pytest.param("anet", "heads", marks=pytest.mark.slow),
        pytest.param("anet", "decode", marks=pytest.mark.slow),
    ],
)
def test_build_real_engine(onnx_files, tmp_path, preset, graph):
    be = _backend()
    cfg, onnx_path = onnx_files(preset, graph)
    plan = tmp_path / "model.plan"
    prof = BatchProfile(1, 4, 16)
    build_engine(onnx_path, plan, profile=prof, workspace_mib=256)
    assert plan.stat().st_size > 0
    meta = read_engine_metadata(plan)
    m = cfg.model
    assert meta["backend"] == be.name and meta["backend_version"] == be.version
    assert meta["precision"] == "fp32"
    assert meta["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert meta["engine_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert meta["input_shapes"] == {
        "min": [1, m.feat_dim, m.num_snippets],
        "opt": [4, m.feat_dim, m.num_snippets],
        "max": [16, m.feat_dim, m.num_snippets],
    }
    assert meta["inputs"] == [
        {"name": "features", "dtype": "float32", "shape": [-1, m.feat_dim, m.num_snippets]}
    ]
    outs = {o["name"]: (o["dtype"], o["shape"]) for o in meta["outputs"]}
    if graph == "heads":
        assert outs == {
            "logits": ("float32", [-1, m.num_classes + 1, m.num_snippets]),
            "mask": ("float32", [-1, m.num_snippets, m.num_snippets]),
        }
    else:
        M = num_proposals(cfg.decode, m.num_snippets)
        assert outs == {
            "segments": ("float32", [-1, M, 2]),
            "scores": ("float32", [-1, M]),
            "labels": ("int64", [-1, M]),
            "valid": ("bool", [-1, M]),
        }
    assert meta["spot"]["config_hash"] == cfg.config_hash() and "config" not in meta["spot"]


def test_fp16_onnx_and_fp16_flag(onnx_files, tmp_path):
    be = _backend()
    _, half = onnx_files("toy", "heads16")
    plan = build_engine(half, tmp_path / "half.plan", fp16=True, profile=BatchProfile(1, 2, 4))
    meta = read_engine_metadata(plan)
    assert meta["precision"] == "fp16" and meta["inputs"][0]["dtype"] == "float16"
    assert {o["dtype"] for o in meta["outputs"]} == {"float16"}
    _, full = onnx_files("toy", "heads")
    if not hasattr(be.module.BuilderFlag, "FP16"):  # strongly typed only (TensorRT 11, TensorRT-RTX)
        with pytest.raises(TrtBuildError, match=r"strongly typed.*export\.onnx --fp16"):
            build_engine(full, tmp_path / "x.plan", fp16=True)
        assert not (tmp_path / "x.plan").exists()


def test_timing_cache(onnx_files, tmp_path):
    be = _backend()
    _, path = onnx_files("toy", "heads")
    cache = tmp_path / "timing.cache"
    if be.name == "tensorrt_rtx":
        with pytest.raises(TrtBuildError, match="TensorRT-RTX has no timing cache"):
            build_engine(path, tmp_path / "m.plan", timing_cache=cache)
        return
    build_engine(path, tmp_path / "m.plan", timing_cache=cache)  # full TensorRT: written, then reused
    assert cache.stat().st_size > 0
    build_engine(path, tmp_path / "m2.plan", timing_cache=cache)
    assert read_engine_metadata(tmp_path / "m2.plan")["timing_cache"] == str(cache)


def test_bad_onnx_refused(onnx_files, tmp_path):
    import onnx

    _, good = onnx_files("toy", "heads")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(OnnxModelError, match=r"cut\.onnx: corrupt or truncated"):
        build_engine(cut, tmp_path / "m.plan")
    bare = onnx.load(str(good))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(OnnxModelError, match=r"bare\.onnx: not a SPOT ONNX export"):
        build_engine(tmp_path / "bare.onnx", tmp_path / "m.plan")
    with pytest.raises(OnnxModelError, match="not found"):
        build_engine(tmp_path / "absent.onnx", tmp_path / "m.plan")
    with pytest.raises(TrtBuildError, match="1 <= min <= opt <= max"):
        BatchProfile(4, 2, 8)
    assert not (tmp_path / "m.plan").exists()


def test_no_tensorrt_refused(onnx_files, tmp_path, monkeypatch, capsys):
    _, path = onnx_files("toy", "heads")
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)  # import raises ImportError
    monkeypatch.setitem(__import__("sys").modules, "tensorrt_rtx", None)
    with pytest.raises(TrtUnavailableError, match="pip install tensorrt-rtx"):
        load_backend()
    assert main([str(path), "--out", str(tmp_path / "m.plan")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no TensorRT Python module") and err.count("\n") == 1
    assert not (tmp_path / "m.plan").exists()


def test_cli(onnx_files, tmp_path, capsys):
    _backend()
    _, path = onnx_files("toy", "decode")
    out = tmp_path / "cli.plan"
    argv = [str(path), "--out", str(out), "--min-batch", "1", "--opt-batch", "2", "--max-batch", "8"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    side = json.loads(sidecar_path(out).read_text())
    assert side["batch_profile"] == {"min": 1, "opt": 2, "max": 8} and side["onnx_file"] == path.name
    assert main([str(path), "--out", str(out), "--min-batch", "3", "--opt-batch", "2"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([str(path), "--out", str(out), "--min-batch", "3", "--opt-batch", "2", "--overwrite"]) == 2
    assert "min <= opt" in capsys.readouterr().err
