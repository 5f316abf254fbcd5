"""Fuzzing the readers of untrusted files (issue 17): random bytes, mutated valid files and random
JSON values in valid layouts never raise anything but the project's :class:`SpotError` subclasses,
never take long (a deadline per example), and a ``.npy`` file never makes the reader allocate more
than its size suggests (a header claiming a huge shape is refused before anything is allocated).

Targets: :func:`spot_core.data.features.read_npy_header` / :func:`load_features` /
:func:`spot_core.data.streams.read_stream` (``.npy`` and ``.csv``), the annotation readers
(:func:`spot_core.data.annotations.load_annotations`: ActivityNet JSON, THUMOS csv) and the
evaluator's readers (:func:`spot_core.evaluation.load_ground_truth`, :func:`load_predictions`
followed by :func:`evaluate_detection`). About 15 s in all.
"""

from __future__ import annotations

import io
import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib import format as npy_format

from spot_core.data.annotations import load_annotations
from spot_core.data.features import load_features, read_npy_header
from spot_core.data.streams import read_stream
from spot_core.errors import SpotError
from spot_core.evaluation import PROTOCOLS, evaluate_detection, load_ground_truth, load_predictions

FUZZ = settings(
    max_examples=120,
    deadline=2000,  # ms per example: a reader that hangs or crawls fails here
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run (a CI failure reproduces)
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, byte) edits: 0 replace, 1 insert, 2 delete, 3 truncate."""
    b = bytearray(data)
    for kind, pos, byte in edits:
        if not b:
            break
        i = pos % len(b)
        if kind == 0:
            b[i] = byte
        elif kind == 1:
            b.insert(i, byte)
        elif kind == 2:
            del b[i]
        else:
            del b[i:]
    return bytes(b)


EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255)), max_size=6)


# ---------------------------------------------------------------------------------------------- .npy
def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _header(shape, descr: str = "<f4", fortran: bool = False) -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buf.getvalue()


VALID_NPY = [
    _npy(np.arange(24, dtype=np.float32).reshape(6, 4)),
    _npy(np.arange(10, dtype=np.int8).reshape(5, 2)),
    _npy(np.ones((3, 3), dtype=">f8")),
]


def _read_all(path: Path) -> None:
    """Every ``.npy`` reader on ``path``: only SpotError may come out, and the peak allocation
    stays within a few times the file's size (float32 of int8 data is 4x)."""
    size = path.stat().st_size
    tracemalloc.start()
    try:
        for read in (read_npy_header, load_features, read_stream):
            try:
                out = read(path)
                if isinstance(out, np.ndarray):
                    np.asarray(out[:1]).sum()  # touch a memory-mapped array
            except SpotError:
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 8 * size + (1 << 20), f"{peak} bytes allocated for a {size}-byte file"


@FUZZ
@given(data=st.binary(max_size=600))
def test_npy_random_bytes(scratch, data):
    path = scratch / "random.npy"
    path.write_bytes(data)
    _read_all(path)


@FUZZ
@given(which=st.sampled_from(range(len(VALID_NPY))), edits=EDITS)
def test_npy_mutated_valid_file(scratch, which, edits):
    path = scratch / "mutated.npy"
    path.write_bytes(_mutate(VALID_NPY[which], edits))
    _read_all(path)


@FUZZ
@given(
    shape=st.lists(st.integers(-5, 10**15), min_size=0, max_size=4).map(tuple),
    descr=st.sampled_from(["<f4", "<f8", "|i1", "<i8", "|b1", "<c8", "|O", "<U3", "|V8", "<m8[s]"]),
    fortran=st.booleans(),
    payload=st.integers(0, 512),
)
def test_npy_any_header(scratch, shape, descr, fortran, payload):
    """Headers of any shape (huge ones included) and dtype over a small payload: refused or read,
    never more memory than the payload suggests."""
    path = scratch / "header.npy"
    try:
        head = _header(shape, descr, fortran)
    except ValueError:  # numpy will not even write it
        return
    path.write_bytes(head + bytes(payload))
    _read_all(path)
    claimed = math.prod(shape) * np.dtype(descr).itemsize if all(d >= 0 for d in shape) else -1
    if claimed != payload:
        with pytest.raises(SpotError):
            read_npy_header(path)


def test_huge_claimed_shape_is_refused_before_allocation(scratch):
    path = scratch / "huge.npy"
    path.write_bytes(_header((10**9, 32)) + bytes(64))
    tracemalloc.start()
    try:
        with pytest.raises(SpotError, match=r"header says shape \(1000000000, 32\)"):
            load_features(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@FUZZ
@given(data=st.binary(max_size=400), edits=EDITS)
def test_csv_features_random_and_mutated(scratch, data, edits):
    valid = b"f0,f1,f2\n1,2,3\n4,5,6\n"
    path = scratch / "feats.csv"
    for blob in (data, _mutate(valid, edits)):
        path.write_bytes(blob)
        for read in (load_features, read_stream):
            try:
                read(path)
            except SpotError:
                pass


# ------------------------------------------------------------------------------- annotation readers
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def _num(lo: float, hi: float):
    """A number in ``[lo, hi]``, or NaN / +-Inf (JSON writes them as NaN / Infinity)."""
    return st.one_of(st.floats(lo, hi), st.sampled_from([math.nan, math.inf, -math.inf]))


def _maybe(value_strategy):
    """A field's value: usually a plausible one, sometimes any JSON value."""
    return st.one_of(value_strategy, JSON_VALUES)


ANNOTATION = st.fixed_dictionaries(
    {
        "segment": _maybe(st.lists(_num(-5, 50), min_size=2, max_size=2)),
        "label": _maybe(st.sampled_from(["a", "b", ""])),
    }
)
VIDEO = st.fixed_dictionaries(
    {
        "subset": _maybe(st.sampled_from(["training", "validation", "testing", "training_unlabel"])),
        "duration": _maybe(_num(-1, 100)),
        "annotations": _maybe(st.lists(ANNOTATION, max_size=3)),
    },
    optional={
        "fps": _maybe(st.floats(0, 60)),
        "num_frames": _maybe(st.integers(0, 10**20)),
        "feature_frames": _maybe(st.integers(0, 10**20)),
        "labeled": JSON_VALUES,
        "features": JSON_VALUES,
    },
)
ANET = st.fixed_dictionaries(
    {"database": _maybe(st.dictionaries(st.sampled_from(["v1", "v2", "v3"]), VIDEO, max_size=3))},
    optional={
        "classes": _maybe(st.lists(st.sampled_from(["a", "b", "c"]), max_size=4)),
        "version": JSON_VALUES,
    },
)
VALID_ANET = (
    b'{"version": "1.3", "classes": ["a", "b"], "database": {"v1": {"subset": "validation", "duration": 10.0,'
    b' "annotations": [{"segment": [1.0, 3.0], "label": "a"}, {"segment": [4, 6], "label": "b"}]},'
    b' "v2": {"subset": "training", "duration": 5, "annotations": []}}}'
)
VALID_PRED = (
    b'{"results": {"v1": [{"segment": [1.0, 3.0], "label": "a", "score": 0.9},'
    b' {"segment": [4, 6], "label": "b", "score": 0.1}], "v2": []}}'
)
PREDICTION = st.fixed_dictionaries(
    {
        "segment": _maybe(st.lists(_num(-5, 50), min_size=2, max_size=2)),
        "label": _maybe(st.sampled_from(["a", "b"])),
        "score": _maybe(st.floats(allow_nan=True, allow_infinity=True)),
    }
)
PREDICTIONS = st.fixed_dictionaries(
    {
        "results": _maybe(
            st.dictionaries(st.sampled_from(["v1", "v2", "zz"]), _maybe(st.lists(PREDICTION, max_size=3)))
        )
    }
)


def _annotations_only_spot_errors(path: Path) -> None:
    try:
        aset = load_annotations(path)
    except SpotError:
        return
    for v in aset.videos.values():  # what it returns is usable: finite, ordered segments
        assert math.isfinite(v.duration)
        for inst in v.instances:
            assert math.isfinite(inst.start) and math.isfinite(inst.end) and 0 <= inst.start <= inst.end


@FUZZ
@given(data=st.binary(max_size=600), edits=EDITS)
def test_annotation_json_random_and_mutated(scratch, data, edits):
    path = scratch / "annotations.json"
    for blob in (data, _mutate(VALID_ANET, edits)):
        path.write_bytes(blob)
        _annotations_only_spot_errors(path)


@FUZZ
@given(doc=ANET)
def test_annotation_json_random_values(scratch, doc):
    path = scratch / "annotations.json"
    path.write_text(json.dumps(doc))
    _annotations_only_spot_errors(path)


@FUZZ
@given(data=st.binary(max_size=400), edits=EDITS)
def test_thumos_csv_random_and_mutated(scratch, data, edits):
    valid = b"video,type,type_idx,start,end\nv1,a,1,1.0,3.0\nv1,Ambiguous,0,4,5\nv2,b,2,0.5,2\n"
    path = scratch / "val_anno.csv"
    for blob in (data, _mutate(valid, edits)):
        path.write_bytes(blob)
        _annotations_only_spot_errors(path)


# ---------------------------------------------------------------------------------- evaluator input
def _evaluate_only_spot_errors(gt_path: Path, pred_path: Path) -> None:
    try:
        gt = load_ground_truth(gt_path, subset="validation")
        preds = load_predictions(pred_path)
        res = evaluate_detection(gt, preds, PROTOCOLS["thumos"], subset="validation")
    except SpotError:
        return
    assert 0.0 <= res.average_mAP <= 1.0


@FUZZ
@given(gt=st.binary(max_size=300), pred=st.binary(max_size=300), e1=EDITS, e2=EDITS)
def test_evaluator_random_and_mutated(scratch, gt, pred, e1, e2):
    g, p = scratch / "gt.json", scratch / "pred.json"
    for gt_blob, pred_blob in ((gt, pred), (_mutate(VALID_ANET, e1), _mutate(VALID_PRED, e2))):
        g.write_bytes(gt_blob)
        p.write_bytes(pred_blob)
        _evaluate_only_spot_errors(g, p)


@FUZZ
@given(gt=ANET, pred=PREDICTIONS)
def test_evaluator_random_values(scratch, gt, pred):
    g, p = scratch / "gt.json", scratch / "pred.json"
    g.write_text(json.dumps(gt))
    p.write_text(json.dumps(pred))
    _evaluate_only_spot_errors(g, p)
