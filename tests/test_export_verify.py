"""export.verify: rows against eager fp32, a row that must fail, skips with reasons, CLI, bad input."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxscript")  # the dynamo exporter needs it
pytest.importorskip("onnxruntime")

from export.verify import ROW_KEYS, TOLERANCES, Inputs, Reference, compare, main, verify  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"num_random": 3, "batch_size": 2}


@pytest.fixture(scope="module")
def files(toy_files):
    """The toy checkpoint, its ONNX, an ONNX of other weights and a tiny dataset (``tests/conftest.py``)."""
    return toy_files


def _by(rows, backend, precision="fp32"):
    [r] = [r for r in rows if r["backend"] == backend and r["precision"] == precision]
    return r


def _check_new_keys(r):
    """``elementwise_outside`` (int) and ``scale_ratio`` (float) in a measured row, None in a skipped one."""
    assert "elementwise_outside" in r and "scale_ratio" in r
    if r["status"] == "skipped" and r["max_abs"] is None:
        assert r["elementwise_outside"] is None and r["scale_ratio"] is None
        return
    assert isinstance(r["elementwise_outside"], int) and r["elementwise_outside"] >= 0
    assert isinstance(r["scale_ratio"], float) and r["scale_ratio"] >= 0.0
    if r["precision"] == "fp32":  # judged per element: a pass means no element outside
        assert (r["elementwise_outside"] == 0) == ("elements)" not in r["reason"])
    if r["precision"] in ("fp16", "bf16"):  # judged normwise: the per-element count is never the reason
        assert "elements)" not in r["reason"]


def test_eager_and_onnxruntime_pass_with_map(files):
    fams = ("eager", "onnxruntime")
    rows = verify(files["ckpt"], onnx=files["onnx"], data=files["data"], backends=fams, **FAST)
    for r in rows:
        assert tuple(r) == ROW_KEYS
        assert r["status"] in ("passed", "failed", "skipped")
        assert (r["status"] == "passed") == (r["reason"] == "")
        _check_new_keys(r)
    eager, ort = _by(rows, "eager"), _by(rows, "onnxruntime-cpu")
    for r in (eager, ort):
        assert r["status"] == "passed", r
        assert r["detections_equal"] is True and r["max_abs"] < 1e-5 and r["cosine"] > 0.99999
        assert r["elementwise_outside"] == 0 and r["scale_ratio"] < 1e-5
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
    _check_new_keys(r)
    assert r["elementwise_outside"] > 0 and r["scale_ratio"] > 1e-3
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
    assert r["elementwise_outside"] is None and r["scale_ratio"] is None


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
        for k in ("max_abs", "max_rel", "scale_ratio", "cosine", "map", "map_delta"):
            assert r[k] is None or isinstance(r[k], float)
        assert r["elementwise_outside"] is None or isinstance(r["elementwise_outside"], int)
        assert r["detections_equal"] in (None, True, False)
        _check_new_keys(r)
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
    for r in rows:
        _check_new_keys(r)
    assert fp32["elementwise_outside"] == 0 and 0 < bf16["scale_ratio"] < 0.05
    if bf16["status"] == "failed":
        assert "max abs diff" in bf16["reason"] or "mAP delta" in bf16["reason"]


def test_compare_tolerances():
    ref = (torch.ones(2, 3, 4), torch.full((2, 4, 4), 0.5))
    near = (ref[0] + 5e-4, ref[1] - 5e-4)
    assert compare(near, ref, "fp16")["bad_outputs"] == []
    m = compare(near, ref, "fp32")
    assert [b.split()[0] for b in m["bad_outputs"]] == ["logits", "mask"]
    assert m["max_abs"] == pytest.approx(5e-4, rel=1e-3)
    nan = (ref[0].clone().fill_(float("nan")), ref[1])
    assert "logits not finite" in compare(nan, ref, "fp32")["bad_outputs"]
    m = compare(nan, ref, "bf16")
    assert m["bad_outputs"] == ["logits not finite"] and m["elementwise_outside"] == 24
    assert m["scale_ratio"] == float("inf")


# A logit far from zero (4), small ones (0.01, 1) and a mask: bf16 / fp16 bound atol + rtol * max|ref|
# = 1e-3 + 1e-2 * 4 = 0.041 on logits and 1e-3 + 1e-2 * 0.5 = 0.006 on mask.
_REF = (torch.tensor([[4.0, 0.01, -2.0, 1.0]]), torch.tensor([[0.5, 0.25]]))


def _got(i: int, delta: float, out: int = 0):
    got = [t.clone() for t in _REF]
    got[out][0, i] += delta
    return tuple(got)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_compare_normwise_passes_error_on_small_ref(precision):
    """(a) An error at a small |ref| that breaks the per-element rule but not the normwise one passes."""
    for i, delta in ((1, 0.02), (3, 0.03), (0, 0.04)):  # outside 1e-3 + 1e-2 * |ref| only for i = 1, 3
        m = compare(_got(i, delta), _REF, precision)
        assert m["bad_outputs"] == [], (i, delta)
        assert m["elementwise_outside"] == (0 if i == 0 else 1)
        assert m["max_abs"] == pytest.approx(delta, rel=1e-5)
        assert m["scale_ratio"] == pytest.approx(delta / 4.0, rel=1e-5)
        assert m["cosine"] > 0.999
    two = (_got(1, 0.02)[0], _got(1, 0.005, out=1)[1])  # one logit and one mask element
    m = compare(two, _REF, precision)
    assert m["bad_outputs"] == [] and m["elementwise_outside"] == 2
    assert m["scale_ratio"] == pytest.approx(0.005 / 0.5, rel=1e-4)  # the larger over the outputs


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_compare_normwise_fails_above_scale_bound(precision):
    """(b) An error above atol + rtol * max|ref| fails, naming the output and the bound."""
    m = compare(_got(0, 0.05), _REF, precision)
    assert m["bad_outputs"] == ["logits: max abs diff 0.05 > 1e-3 + 1e-2 * max|ref| (4)"]
    assert m["elementwise_outside"] == 1
    m = compare(_got(1, 0.007, out=1), _REF, precision)  # mask bound 0.006: max|ref| is the mask's own
    assert m["bad_outputs"] == ["mask: max abs diff 0.007 > 1e-3 + 1e-2 * max|ref| (0.5)"]
    both = (_got(2, -0.05)[0], _got(0, 0.01, out=1)[1])
    assert [b.split(":")[0] for b in compare(both, _REF, precision)["bad_outputs"]] == ["logits", "mask"]


def test_compare_fp32_and_int8_stay_per_element():
    """(c) fp32 fails per element where the normwise rule (1e-5 + 1e-4 * 4 = 4.1e-4) would pass."""
    m = compare(_got(1, 2e-4), _REF, "fp32")
    assert m["bad_outputs"] == ["logits (1 of 4 elements)"] and m["elementwise_outside"] == 1
    assert m["scale_ratio"] == pytest.approx(5e-5, rel=1e-3)  # well inside the normwise bound
    assert compare(_got(0, 2e-4), _REF, "fp32")["bad_outputs"] == []  # 2e-4 <= 1e-5 + 1e-4 * 4
    # int8 counts with its TOLERANCES entry (1e-2 + 1e-1 * |ref|): 0.05 at ref 0.01 is outside
    tol = TOLERANCES["int8"]
    assert 0.05 > tol["atol"] + tol["rtol"] * 0.01
    m = compare(_got(1, 0.05), _REF, "int8")
    assert m["elementwise_outside"] == 1 and m["bad_outputs"] == ["logits (1 of 4 elements)"]


def test_rows_judged_normwise_for_reduced_precision_only(files):
    """Rows of the real reference (toy model, random windows): bf16 / fp16 normwise, fp32 per element."""
    from spot_core.checkpoint import load_model

    model, cfg = load_model(files["ckpt"])
    ref = Reference(model, cfg, Inputs(cfg, num_random=2, seed=0, data=None), 2)
    logits, mask = ref.out
    flat = logits.abs().flatten()
    i = int(flat.argmin())  # the smallest |logit|: per-element bound ~1e-3, normwise ~1e-3 + 1e-2 * max
    bound = 1e-3 + 1e-2 * float(flat.max())
    small = logits.clone().flatten()
    small[i] += 0.5 * bound
    out = (small.view_as(logits), mask)
    for p in ("bf16", "fp16"):
        r = ref.check("eager", p, out)
        assert r["status"] == "passed" and r["reason"] == "", r
        assert r["elementwise_outside"] == 1
        assert r["scale_ratio"] == pytest.approx(0.5 * bound / float(flat.max()), rel=1e-4)
    r = ref.check("eager", "fp32", out)
    assert r["status"] == "failed" and r["elementwise_outside"] == 1
    assert f"logits (1 of {logits.numel()} elements) outside atol 1e-05 + rtol 0.0001" in r["reason"]
    big = mask.clone()
    big[0, 0, 0] += 0.02  # mask max|ref| < 1: bound < 0.011
    r = ref.check("eager", "bf16", (logits, big))
    assert r["status"] == "failed" and r["reason"].startswith(
        "mask: max abs diff 0.02 > 1e-3 + 1e-2 * max|ref| ("
    )
    assert "logits" not in r["reason"] and r["elementwise_outside"] == 1


def test_actrectut_preset_model_passes_eager_and_onnxruntime(tmp_path, make_model):
    """The ``actrectut`` preset's model (backbone local + mask head offset, issue 14): its checkpoint
    and heads ONNX verify as the toy one does (random features; no data set for this window)."""
    from export.onnx import export_onnx
    from spot_core.checkpoint import save_model
    from spot_core.config import SpotConfig

    cfg = SpotConfig.preset("actrectut")
    assert (cfg.model.backbone, cfg.model.mask_head) == ("local", "offset")
    model = make_model(cfg, 0)
    ckpt = save_model(tmp_path / "model.safetensors", model, cfg)
    onnx = export_onnx(model, cfg, tmp_path / "model.onnx")
    rows = verify(ckpt, onnx=onnx, backends=("eager", "onnxruntime"), **FAST)
    for r in (_by(rows, "eager"), _by(rows, "onnxruntime-cpu")):
        assert r["status"] == "passed", r
        assert r["detections_equal"] is True and r["max_abs"] < 1e-4 and r["cosine"] > 0.99999
        _check_new_keys(r)
