"""Backend sessions (runtime.session): batch invariance, metadata checks, backends agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from runtime.session import (
    EagerSession,
    OnnxSession,
    SessionError,
    TensorRTSession,
    check_config_matches,
    model_config,
    open_session,
)
from spot_core import __version__
from spot_core.checkpoint import save_model
from spot_core.config import SpotConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(make_model):
    cfg = SpotConfig.preset("toy").replace(class_names=tuple(f"act{i}" for i in range(6)))
    return make_model(cfg, 0, sharpen=5), cfg


@pytest.fixture(scope="module")
def files(toy, tmp_path_factory):
    from export.onnx import export_onnx

    model, cfg = toy
    d = tmp_path_factory.mktemp("session")
    ckpt = save_model(d / "model.safetensors", model, cfg)
    onnx = export_onnx(model, cfg, d / "model.onnx")
    return {"ckpt": ckpt, "onnx": onnx, "dir": d}


def _x(cfg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, cfg.model.feat_dim, cfg.model.num_snippets, generator=g)


def test_padded_session_is_batch_invariant(toy):
    """pad=True: a window's outputs are the same bits whatever shares its batch and wherever it sits."""
    model, cfg = toy
    s = EagerSession(model, cfg, batch_size=8)
    x = _x(cfg, 13)
    ref_l, ref_m = s.forward(x)
    assert s.model_calls == 2  # 8 + 5 padded to 8
    for lo, hi in ((0, 1), (3, 4), (5, 12), (12, 13), (2, 10)):
        l, m = s.forward(x[lo:hi])
        assert torch.equal(l, ref_l[lo:hi]) and torch.equal(m, ref_m[lo:hi])
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(1))
    l, m = s.forward(x[perm])
    assert torch.equal(l, ref_l[perm]) and torch.equal(m, ref_m[perm])


def test_unpadded_session_is_the_model(toy):
    model, cfg = toy
    s = EagerSession(model, cfg, batch_size=64, pad=False)
    x = _x(cfg, 5)
    with torch.no_grad():
        want = model(x)
    got = s.forward(x)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_detect_shapes_and_valid_len(toy):
    model, cfg = toy
    s = EagerSession(model, cfg, batch_size=4)
    det = s.detect(_x(cfg, 3), [64, 10, 1])
    D = cfg.decode.max_detections
    assert det.segments.shape == (3, D, 2) and det.scores.shape == (3, D)
    segs = det.segments[1][det.valid[1]]
    assert segs.numel() > 0 and float(segs.max()) <= 10  # padded snippets masked
    with pytest.raises(ValueError, match=r"features must be \[B, C=32, T=64\]"):
        s.forward(torch.zeros(2, 31, 64))


def test_onnxruntime_matches_eager(toy, files):
    model, cfg = toy
    x = _x(cfg, 6)
    e = EagerSession(model, cfg, batch_size=4)
    o = open_session(files["onnx"], cfg=cfg, batch_size=4)
    assert isinstance(o, OnnxSession) and o.describe()["provider"] == "cpu"
    le, me = e.forward(x)
    lo, mo = o.forward(x)
    assert torch.allclose(lo, le, atol=1e-5, rtol=1e-4) and torch.allclose(mo, me, atol=1e-5, rtol=1e-4)
    de, do = e.detect(x), o.detect(x)
    assert torch.equal(de.valid, do.valid) and torch.equal(de.labels, do.labels)
    assert torch.equal(de.segments, do.segments)


def test_open_checkpoint_with_its_config(toy, files):
    model, cfg = toy
    s = open_session(files["ckpt"])
    assert isinstance(s, EagerSession) and s.cfg == cfg
    x = _x(cfg, 2)
    assert torch.equal(s.forward(x)[0], EagerSession(model, cfg).forward(x)[0])


def test_mismatched_model_is_refused(toy, files):
    _, cfg = toy
    other_k = cfg.replace(class_names=()).override(["model.num_classes=5"])
    with pytest.raises(SessionError, match=r"K \(model.num_classes\): model 6 vs config 5"):
        open_session(files["ckpt"], cfg=other_k)
    with pytest.raises(SessionError, match=r"K \(model.num_classes\)"):
        open_session(files["onnx"], cfg=other_k)
    renamed = cfg.replace(class_names=tuple(f"x{i}" for i in range(6)))
    with pytest.raises(SessionError, match="class names differ"):
        open_session(files["ckpt"], cfg=renamed)
    with pytest.raises(SessionError, match="class names differ"):
        OnnxSession(files["onnx"], renamed)
    with pytest.raises(SessionError, match="graph 'heads\\+decode'"):
        check_config_matches("m.onnx", cfg, feat_dim=32, num_snippets=64, num_classes=6, graph="heads+decode")


def test_bad_model_files(toy, files, tmp_path):
    _, cfg = toy
    with pytest.raises(SessionError, match="model file not found"):
        open_session(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SessionError, match="junk.safetensors"):
        open_session(junk)
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    with pytest.raises(SessionError, match="unknown model file type"):
        open_session(other)
    with pytest.raises(SessionError, match="backend 'onnxruntime' needs a .onnx file"):
        open_session(files["ckpt"], backend="onnxruntime")
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"\x00garbage")
    with pytest.raises(SessionError, match="bad.onnx"):
        open_session(bad_onnx, cfg=cfg)


def test_missing_provider_is_refused_not_downgraded(toy, files):
    import onnxruntime as ort

    _, cfg = toy
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(SessionError, match="has no CUDAExecutionProvider"):
        OnnxSession(files["onnx"], cfg, provider="cuda")


def _sidecar(engine, cfg, **spot):
    meta = {
        "feat_dim": cfg.model.feat_dim,
        "num_snippets": cfg.model.num_snippets,
        "num_classes": cfg.model.num_classes,
        "class_names": json.dumps(list(cfg.class_names)),
        "version": __version__,
        "graph": "heads",
    }
    meta.update(spot)
    side = {"format": "spot-trt-v1", "backend": "tensorrt", "batch_profile": {"min": 1, "opt": 8, "max": 32}}
    side["spot"] = meta
    engine.write_bytes(b"engine")
    engine.with_name(engine.name + ".json").write_text(json.dumps(side))


def test_tensorrt_engine_metadata_checked_first(toy, tmp_path):
    _, cfg = toy
    eng = tmp_path / "model.plan"
    _sidecar(eng, cfg, num_snippets=100, version="0.0.1")
    with pytest.raises(SessionError, match=r"T \(model.num_snippets\): model 100 vs config 64.*version"):
        TensorRTSession(eng, cfg)
    _sidecar(eng, cfg)
    with pytest.raises(SessionError, match=r"batch_size 64 outside the engine's profile \[1, 32\]"):
        TensorRTSession(eng, cfg, batch_size=64)
    if not torch.cuda.is_available():
        with pytest.raises(SessionError, match="no CUDA GPU"):
            TensorRTSession(eng, cfg, batch_size=8)
    (tmp_path / "model.plan.json").unlink()
    with pytest.raises(SessionError, match="sidecar"):
        TensorRTSession(eng, cfg)


def test_model_config_from_onnx_and_engine(toy, files):
    _, cfg = toy
    assert model_config(files["onnx"]) == cfg
    eng = files["dir"] / "model.plan"
    _sidecar(eng, cfg)
    side = json.loads(eng.with_name("model.plan.json").read_text())
    side["onnx_file"] = "model.onnx"
    eng.with_name("model.plan.json").write_text(json.dumps(side))
    assert model_config(eng) == cfg


@pytest.mark.slow
def test_compiled_session_matches_eager(toy):
    from runtime.session import CompiledSession

    model, cfg = toy
    x = _x(cfg, 5)
    c = CompiledSession(model, cfg, batch_size=4)
    lc, mc = c.forward(x)
    le, me = EagerSession(model, cfg, batch_size=4).forward(x)
    assert torch.allclose(lc, le, atol=1e-5, rtol=1e-4) and torch.allclose(mc, me, atol=1e-5, rtol=1e-4)
    # static shapes: still batch-invariant (one compile, every call padded to 4)
    l1, _ = c.forward(x[2:3])
    assert torch.equal(l1, lc[2:3])


def test_np_input_accepted(toy):
    model, cfg = toy
    s = EagerSession(model, cfg, batch_size=2)
    x = _x(cfg, 2)
    assert torch.equal(s.forward(x.numpy())[0], s.forward(x)[0])
    assert np.isfinite(s.forward(x)[1].numpy()).all()


def test_edge_session_is_the_bf16_cpu_model(toy, files):
    """backend="edge": the bf16 CPU edge model of the checkpoint, close to eager, batch-invariant."""
    from export.quantize import bf16_cpu_model
    from runtime.session import EdgeSession

    model, cfg = toy
    s = open_session(files["ckpt"], backend="edge", batch_size=4)
    assert isinstance(s, EdgeSession) and s.describe()["precision"] == "bf16"
    x = _x(cfg, 6)
    le, me = s.forward(x)
    with torch.no_grad():
        want = bf16_cpu_model(model, cfg)(torch.cat([x, x.new_zeros(2, *x.shape[1:])]))  # padded to 8
    assert torch.equal(le, want[0][:6]) and torch.equal(me, want[1][:6])
    ref_l, ref_m = EagerSession(model, cfg, batch_size=4).forward(x)
    for g, r in ((le, ref_l), (me, ref_m)):
        assert (g - r).abs().max() <= 1e-3 + 1e-2 * r.abs().max()  # export.verify's bf16 bound
        assert not torch.equal(g, r)  # really bf16
    l1, m1 = s.forward(x[3:4])  # another position, other batch-mates: same bits
    assert torch.equal(l1, le[3:4]) and torch.equal(m1, me[3:4])
    for dev in ("meta", "cuda"):  # CPU only, said before whether this machine has the device
        with pytest.raises(SessionError, match="CPU only"):
            EdgeSession(model, cfg, device=dev)
    with pytest.raises(SessionError, match="needs a .safetensors file"):
        open_session(files["onnx"], backend="edge")


@pytest.mark.parametrize("backend", ["onnxruntime", "compile", "edge"])
def test_other_backends_stream_exactly(toy, files, backend):
    """Padded onnxruntime / compiled / edge sessions are batch-invariant too: streamed == offline."""
    from runtime.detector import StreamDetector
    from runtime.offline import offline_detect

    model, cfg = toy
    s = open_session(
        files["onnx"] if backend == "onnxruntime" else files["ckpt"], backend=backend, batch_size=4
    )
    rng = np.random.default_rng(0)
    feats = {
        "a": rng.standard_normal((150, 32), dtype=np.float32),
        "b": rng.standard_normal((70, 32), dtype=np.float32),
    }
    det = StreamDetector(s, stride=24, snippet_rate=2.0)
    for sid in feats:
        det.open(sid)
    for i in range(0, 150, 11):
        for sid, f in feats.items():
            if i < len(f):
                det.push(sid, f[i : i + 11])
    for sid, f in feats.items():
        want = offline_detect(s, f, stride=24, snippet_rate=2.0, video_id=sid)["results"][sid]
        assert det.close_json(sid)[0] == want
