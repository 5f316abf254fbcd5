"""export.verify: rows against eager fp32, a row that must fail, skips with reasons, CLI, bad input."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxscript")  # the dynamo exporter needs it
pytest.importorskip("onnxruntime")

from export.onnx import export_onnx  # noqa: E402
from export.verify import ROW_KEYS, compare, main, verify  # noqa: E402
from spot_core.checkpoint import save_model  # noqa: E402
from spot_core.config import SpotConfig  # noqa: E402
from spot_core.data.synthetic import generate_dataset  # noqa: E402
from spot_core.model import SPOT  # noqa: E402

FAST = {"num_random": 3, "batch_size": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(cfg: SpotConfig, seed: int) -> SPOT:
    torch.manual_seed(seed)
    return SPOT(cfg.model).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random-weight toy checkpoint, its ONNX, an ONNX of other weights, a tiny dataset folder."""
    d = tmp_path_factory.mktemp("verify")
    cfg = SpotConfig.preset("toy")
    model = _model(cfg, 0)
    ckpt = save_model(d / "model.safetensors", model, cfg)
    onnx = export_onnx(model, cfg, d / "model.onnx")
    other = export_onnx(_model(cfg, 1), cfg, d / "other.onnx")
    data = generate_dataset(d / "data", cfg, num_train=3, num_val=2, seed=0)
    return {"cfg": cfg, "ckpt": ckpt, "onnx": onnx, "other": other, "data": data, "dir": d}


def _by(rows, backend, precision="fp32"):
    [r] = [r for r in rows if r["backend"] == backend and r["precision"] == precision]
    return r


def test_eager_and_onnxruntime_pass_with_map(files):
    fams = ("eager", "onnxruntime")
    rows = verify(files["ckpt"], onnx=files["onnx"], data=files["data"], backends=fams, **FAST)
    for r in rows:
        assert tuple(r) == ROW_KEYS
        assert r["status"] in ("passed", "failed", "skipped")
        assert (r["status"] == "passed") == (r["reason"] == "")
    eager, ort = _by(rows, "eager"), _by(rows, "onnxruntime-cpu")
    for r in (eager, ort):
        assert r["status"] == "passed", r
        assert r["detections_equal"] is True and r["max_abs"] < 1e-5 and r["cosine"] > 0.99999
        assert r["map"] is not None and abs(r["map_delta"]) < 1e-9
    # reduced precision rows: judged (cosine and mAP delta reported) or skipped with a reason, never silent
    for p in ("bf16", "fp16"):
        r = _by(rows, "eager", p)
        judged = r["cosine"] is not None and r["map_delta"] is not None
        assert (r["status"] == "skipped" and r["reason"]) or judged
    import onnxruntime as ort_mod

    if "CUDAExecutionProvider" not in ort_mod.get_available_providers():
        r = _by(rows, "onnxruntime-cuda")
        assert r["status"] == "skipped" and "CUDAExecutionProvider" in r["reason"]


def test_onnx_of_other_weights_fails(files):
    rows = verify(files["ckpt"], onnx=files["other"], backends=("onnxruntime",), **FAST)
    r = _by(rows, "onnxruntime-cpu")
    assert r["status"] == "failed"
    assert "outside atol 1e-05" in r["reason"] and r["max_abs"] > 1e-3
    argv = ["--checkpoint", str(files["ckpt"]), "--onnx", str(files["other"]), "--backends", "onnxruntime"]
    assert main([*argv, "--random", "2"]) == 1


def test_missing_backends_are_skipped_with_reason(files):
    rows = verify(files["ckpt"], backends=("onnxruntime", "tensorrt"), **FAST)
    assert {r["status"] for r in rows} == {"skipped"}
    assert _by(rows, "onnxruntime-cpu")["reason"] == "no --onnx file given"
    assert _by(rows, "tensorrt")["reason"] == "no --engine file given"
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: a fake engine would be run, not skipped")
    cfg = files["cfg"]
    engine = files["dir"] / "fake.plan"
    engine.write_bytes(b"not an engine")
    m = cfg.model
    spot = {"graph": "heads", "feat_dim": m.feat_dim, "num_snippets": m.num_snippets}
    spot["num_classes"] = m.num_classes
    side = {"format": "spot-trt-v1", "precision": "fp32", "batch_profile": {"max": 8}, "spot": spot}
    (files["dir"] / "fake.plan.json").write_text(json.dumps(side))
    r = _by(verify(files["ckpt"], engine=engine, backends=("tensorrt",), **FAST), "tensorrt")
    assert r["status"] == "skipped" and "no CUDA GPU" in r["reason"]
    assert r["max_abs"] is None and r["detections_equal"] is None


def test_cli_json_schema(files, tmp_path, capsys):
    out = tmp_path / "rows.json"
    argv = ["--checkpoint", str(files["ckpt"]), "--onnx", str(files["onnx"]), "--json", str(out)]
    assert main([*argv, "--backends", "onnxruntime,tensorrt", "--random", "2"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("backend") and "onnxruntime-cpu" in table
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and len(rows) == 4
    for r in rows:
        assert set(r) == set(ROW_KEYS)
        assert isinstance(r["backend"], str) and r["precision"] in ("fp32", "fp16", "bf16", "int8")
        assert r["status"] in ("passed", "failed", "skipped") and isinstance(r["reason"], str)
        for k in ("max_abs", "max_rel", "cosine", "map", "map_delta"):
            assert r[k] is None or isinstance(r[k], float)
        assert r["detections_equal"] in (None, True, False)
    assert _by(rows, "onnxruntime-cpu")["status"] == "passed"


def test_bad_input_exit_2(files, tmp_path, capsys):
    import onnx

    ck = str(files["ckpt"])
    assert main(["--checkpoint", str(tmp_path / "absent.safetensors")]) == 2
    assert main(["--checkpoint", ck, "--onnx", str(tmp_path / "absent.onnx")]) == 2
    assert main(["--checkpoint", ck, "--engine", str(tmp_path / "absent.plan")]) == 2
    assert main(["--checkpoint", ck, "--data", str(tmp_path / "no_data")]) == 2
    assert main(["--checkpoint", ck, "--backends", "magic"]) == 2
    proto = onnx.load_model(str(files["onnx"]))
    for p in proto.metadata_props:
        if p.key == "spot.num_classes":
            p.value = "3"
    bad = tmp_path / "k3.onnx"
    onnx.save_model(proto, str(bad))
    capsys.readouterr()
    assert main(["--checkpoint", ck, "--onnx", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "K (model.num_classes)" in err


def test_edge_cpu_rows(files):
    """The CPU edge graph (export.quantize.bf16_cpu_model): fp32 layout passes, bf16 is judged."""
    rows = verify(files["ckpt"], data=files["data"], backends=("edge",), **FAST)
    assert [(r["backend"], r["precision"]) for r in rows] == [("edge-cpu", "fp32"), ("edge-cpu", "bf16")]
    fp32, bf16 = rows
    assert fp32["status"] == "passed" and fp32["max_abs"] < 1e-5 and fp32["detections_equal"] is True
    assert bf16["status"] in ("passed", "failed") and bf16["cosine"] > 0.999 and bf16["max_abs"] > 0
    assert bf16["map_delta"] is not None
    if bf16["status"] == "failed":
        assert "outside atol 0.001" in bf16["reason"] or "mAP delta" in bf16["reason"]


def test_compare_tolerances():
    ref = (torch.ones(2, 3, 4), torch.full((2, 4, 4), 0.5))
    near = (ref[0] + 5e-4, ref[1] - 5e-4)
    assert compare(near, ref, "fp16")["bad_outputs"] == []
    m = compare(near, ref, "fp32")
    assert [b.split()[0] for b in m["bad_outputs"]] == ["logits", "mask"]
    assert m["max_abs"] == pytest.approx(5e-4, rel=1e-3)
    nan = (ref[0].clone().fill_(float("nan")), ref[1])
    assert "logits not finite" in compare(nan, ref, "fp32")["bad_outputs"]
