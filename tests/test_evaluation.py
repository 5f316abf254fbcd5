"""Tests of the detection evaluator (spot_core.evaluation and the spot_core.evaluate CLI).

The fast, vectorised evaluator is compared with ``_reference_evaluate`` below: a slow loop that
follows the official ActivityNet ``compute_average_precision_detection`` step by step (our own code,
written from its semantics), on hypothesis-generated inputs with distinct scores. Hand-computed cases
pin the quirks (NaN tIoU of zero-length segments, duplicates, videos without ground truth, ties).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spot_core.data.annotations import AnnotationSet, Instance, Video
from spot_core.evaluate import main as cli_main
from spot_core.evaluation import (
    PROTOCOLS,
    EvaluationError,
    evaluate_detection,
    interpolated_ap,
    load_ground_truth,
    load_predictions,
    segment_iou,
)

ANET = PROTOCOLS["activitynet"]
THUMOS = PROTOCOLS["thumos"]


# ----------------------------------------------------------------------------------------- reference
def _ref_tiou(ps: float, pe: float, gs: float, ge: float) -> float:
    """Official segment_iou for one pair, in plain floats (same operations, same order)."""
    inter = min(pe, ge) - max(ps, gs)
    if inter < 0:
        inter = 0.0
    union = (ge - gs) + (pe - ps) - inter
    if union == 0:
        return math.nan  # 0 / 0 (inter is 0 whenever union is 0)
    return inter / union


def _desc_key(x: float) -> float:
    """Sort key putting NaN above every number (numpy argsort puts NaN last; reversed: first)."""
    return math.inf if math.isnan(x) else x


def _reference_evaluate(gt: AnnotationSet, predictions: dict, thresholds, subset: str | None) -> np.ndarray:
    """AP[t, k] by the official algorithm, one prediction and one candidate at a time."""
    classes: list[str] = []
    rows: list[tuple[str, float, float, str]] = []  # (video, start, end, label) in DataFrame order
    for v in gt.videos.values():
        if subset is not None and v.subset != subset:
            continue
        for inst in v.instances:
            if inst.label not in classes:
                classes.append(inst.label)
            rows.append((v.video_id, inst.start, inst.end, inst.label))
    ap = np.zeros((len(thresholds), len(classes)))
    for k, c in enumerate(classes):
        gt_c = [r for r in rows if r[3] == c]
        npos = len(gt_c)
        preds = [
            (vid, r["segment"][0], r["segment"][1], r["score"])
            for vid, items in predictions.items()
            for r in items
            if r["label"] == c
        ]
        if not preds:
            continue  # AP 0
        # score.argsort()[::-1], ties: higher original index first
        order = sorted(range(len(preds)), key=lambda i: (_desc_key(preds[i][3]), i), reverse=True)
        locked = [[False] * npos for _ in thresholds]
        tp = [[0.0] * len(preds) for _ in thresholds]
        fp = [[0.0] * len(preds) for _ in thresholds]
        for idx, i in enumerate(order):
            vid, ps, pe, _ = preds[i]
            cands = [j for j in range(npos) if gt_c[j][0] == vid]  # this video's ground truth, in order
            if not cands:
                for t in range(len(thresholds)):
                    fp[t][idx] = 1.0
                continue
            tiou = [_ref_tiou(ps, pe, gt_c[j][1], gt_c[j][2]) for j in cands]
            pref = sorted(range(len(cands)), key=lambda q: (_desc_key(tiou[q]), q), reverse=True)
            for t, thr in enumerate(thresholds):
                for q in pref:
                    if tiou[q] < thr:  # False for NaN: a NaN candidate matches
                        fp[t][idx] = 1.0
                        break
                    if locked[t][cands[q]]:
                        continue
                    tp[t][idx] = 1.0
                    locked[t][cands[q]] = True
                    break
                if tp[t][idx] == 0.0 and fp[t][idx] == 0.0:
                    fp[t][idx] = 1.0
        for t in range(len(thresholds)):
            prec, rec, ctp, cfp = [], [], 0.0, 0.0
            for a, b in zip(tp[t], fp[t], strict=True):
                ctp += a
                cfp += b
                rec.append(ctp / npos)
                prec.append(ctp / (ctp + cfp))
            mprec = [0.0, *prec, 0.0]
            mrec = [0.0, *rec, 1.0]
            for i in range(len(mprec) - 2, -1, -1):
                mprec[i] = max(mprec[i], mprec[i + 1])
            ap[t, k] = sum(
                (mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]
            )
    return ap


def _aset(videos: dict[str, tuple[str, list[tuple[float, float, str]]]]) -> AnnotationSet:
    """AnnotationSet from ``{video: (subset, [(start, end, label)])}``."""
    vs = {
        vid: Video(vid, 100.0, sub, [Instance(float(s), float(e), lab) for s, e, lab in insts])
        for vid, (sub, insts) in videos.items()
    }
    labels = sorted({i.label for v in vs.values() for i in v.instances})
    return AnnotationSet(vs, labels)


def _pred(s: float, e: float, label: str, score: float) -> dict:
    return {"segment": [s, e], "label": label, "score": score}


# ---------------------------------------------------------------------------- property: vs reference
_TIMES = st.sampled_from([0.0, 0.5, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0])
_VIDS = ["a", "b", "c", "d"]
_GT_LABELS = ["x", "y", "z"]


@st.composite
def _cases(draw):
    videos = {}
    for vid in _VIDS[: draw(st.integers(1, 4))]:
        sub = draw(st.sampled_from(["validation", "validation", "training"]))
        insts = draw(st.lists(st.tuples(_TIMES, _TIMES, st.sampled_from(_GT_LABELS)), max_size=6))
        # mostly ordered segments, some zero-length (s == e) and reversed ones kept as drawn
        insts = [(min(s, e), max(s, e), lab) if i % 4 else (s, e, lab) for i, (s, e, lab) in enumerate(insts)]
        videos[vid] = (sub, insts)
    all_gt = [(vid, s, e, lab) for vid, (_, insts) in videos.items() for s, e, lab in insts]
    items = []  # (video, start, end, label)
    for _ in range(draw(st.integers(0, 25))):
        if all_gt and draw(st.booleans()):  # near a ground-truth instance (copy, or endpoints moved)
            vid, s, e, lab = all_gt[draw(st.integers(0, len(all_gt) - 1))]
            s, e = (
                s + draw(st.sampled_from([0.0, 0.0, -0.5, 1.0])),
                e + draw(st.sampled_from([0.0, 0.0, 0.5, -1.0])),
            )
            items.append((vid, s, e, lab))
            continue
        vid = draw(st.sampled_from([*_VIDS, "ghost"]))  # "ghost" (and undrawn videos): no ground truth
        s, e = draw(_TIMES), draw(_TIMES)
        if draw(st.booleans()):
            s, e = min(s, e), max(s, e)
        items.append((vid, s, e, draw(st.sampled_from([*_GT_LABELS, "unknown"]))))
    scores = draw(st.permutations(range(len(items))))
    preds: dict[str, list[dict]] = {}
    for (vid, s, e, lab), sc in zip(items, scores, strict=True):
        preds.setdefault(vid, []).append(_pred(s, e, lab, sc / 7.0 + 0.01))
    thr = draw(st.sampled_from([ANET, THUMOS, (0.1, 0.5), (0.0, 0.3, 1.0)]))
    return _aset(videos), preds, thr


@settings(max_examples=250, deadline=None)
@given(_cases())
def test_matches_loop_reference(case):
    gt, preds, thr = case
    has_class = any(v.subset == "validation" and v.instances for v in gt.videos.values())
    if not has_class:
        with pytest.raises(EvaluationError, match="no annotated instance"):
            evaluate_detection(gt, preds, thr, subset="validation")
        return
    res = evaluate_detection(gt, preds, thr, subset="validation")
    ref = _reference_evaluate(gt, preds, thr, "validation")
    assert res.ap.shape == ref.shape
    np.testing.assert_allclose(res.ap, ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.mAP, ref.mean(axis=1), rtol=0, atol=1e-9)
    assert abs(res.average_mAP - ref.mean(axis=1).mean()) < 1e-9
    # labels that are not ground-truth classes of the subset ("unknown", or only in training) are dropped
    n_unknown = sum(r["label"] not in res.classes for items in preds.values() for r in items)
    assert res.num_dropped == n_unknown


# ----------------------------------------------------------------------------- hand-computed cases
def test_greedy_matching_hand_computed():
    # One class, GT g0 = [0, 10], g1 = [20, 30] in video v1.
    # p3 [0, 9] (0.95): tIoU(g0) = 0.9;  p1 [0, 10] (0.9): tIoU(g0) = 1;  p2 [21, 30] (0.8): tIoU(g1) = 0.9.
    # thr 0.5 : p3 takes g0 (TP), p1 finds g0 taken, g1 at 0 < 0.5 -> FP, p2 takes g1 (TP).
    #           precision 1, 1/2, 2/3; recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # thr 0.95: p3 FP (0.9 < 0.95), p1 TP, p2 FP -> precision 0, 1/2, 1/3; recall 0, 1/2, 1/2
    #           -> AP = 1/2 * 1/2 = 1/4.
    gt = _aset({"v1": ("validation", [(0, 10, "a"), (20, 30, "a")])})
    preds = {"v1": [_pred(0, 10, "a", 0.9), _pred(21, 30, "a", 0.8), _pred(0, 9, "a", 0.95)]}
    res = evaluate_detection(gt, preds, [0.5, 0.95])
    np.testing.assert_allclose(res.ap[:, 0], [5 / 6, 1 / 4], atol=1e-12)
    assert res.average_mAP == pytest.approx((5 / 6 + 1 / 4) / 2, abs=1e-12)

    # A top-scored prediction for a video without ground truth is a false positive:
    # thr 0.5: FP, TP, FP, TP -> precision 0, 1/2, 1/3, 1/2; recall 0, 1/2, 1/2, 1
    # -> envelope 1/2 everywhere -> AP = 1/2 * 1/2 + 1/2 * 1/2 = 1/2.
    preds["ghost"] = [_pred(0, 10, "a", 0.99)]
    res = evaluate_detection(gt, preds, [0.5])
    assert res.ap[0, 0] == pytest.approx(0.5, abs=1e-12)

    # A second class with ground truth but no prediction has AP 0 and halves the mAP.
    gt2 = _aset({"v1": ("validation", [(0, 10, "a"), (20, 30, "a")]), "v2": ("validation", [(1, 2, "b")])})
    res2 = evaluate_detection(gt2, preds, [0.5])
    assert res2.classes == ["a", "b"]
    np.testing.assert_allclose(res2.ap[0], [0.5, 0.0], atol=1e-12)
    assert res2.mAP[0] == pytest.approx(0.25, abs=1e-12)


def test_zero_length_nan_tiou_counts_as_match():
    # tIoU of two zero-length segments is 0/0 = NaN even when they are far apart; the official loop
    # never rejects NaN (NaN < thr is False), so the prediction is a true positive at every threshold.
    assert math.isnan(segment_iou(np.array([[7.0, 7.0]]), np.array([[5.0, 5.0]]))[0])
    gt = _aset({"v": ("validation", [(5, 5, "a")])})
    res = evaluate_detection(gt, {"v": [_pred(7, 7, "a", 0.5)]}, ANET)
    np.testing.assert_allclose(res.mAP, 1.0)
    # A real segment around a zero-length ground truth has tIoU 0 (0 / its length): a false positive.
    res = evaluate_detection(gt, {"v": [_pred(4, 6, "a", 0.5)]}, ANET)
    np.testing.assert_allclose(res.mAP, 0.0)
    # NaN candidates are tried first: [3, 3] has tIoU 0 with g0 = [0, 10] and NaN with g1 = [5, 5], so it
    # takes g1 and leaves g0 to [0, 10]: both true positives.
    gt = _aset({"v": ("validation", [(0, 10, "a"), (5, 5, "a")])})
    res = evaluate_detection(gt, {"v": [_pred(3, 3, "a", 0.9), _pred(0, 10, "a", 0.8)]}, [0.5])
    assert res.ap[0, 0] == pytest.approx(1.0, abs=1e-12)


def test_duplicated_ground_truth_is_kept():
    # Two identical instances: one prediction recovers half the recall, two recover all of it.
    gt = _aset({"v": ("validation", [(0, 10, "a"), (0, 10, "a")])})
    one = evaluate_detection(gt, {"v": [_pred(0, 10, "a", 0.9)]}, [0.5])
    assert one.ap[0, 0] == pytest.approx(0.5, abs=1e-12)
    two = evaluate_detection(gt, {"v": [_pred(0, 10, "a", 0.9), _pred(0, 10, "a", 0.8)]}, [0.5])
    assert two.ap[0, 0] == pytest.approx(1.0, abs=1e-12)
    assert two.num_ground_truth == 2


def test_tie_breaking_higher_index_first():
    # Candidates g0 = [1, 4] and g1 = [2, 5] tie at tIoU 2/3 for p = [2, 4]: the later one (g1) wins.
    # q = [2, 5] then finds g1 taken and g0 at tIoU 0.5 < 0.6: false positive. AP = 1/2 at 0.6.
    # (With "lower index first" q would take g1 and the AP would be 1.)
    gt = _aset({"v": ("validation", [(1, 4, "a"), (2, 5, "a")])})
    res = evaluate_detection(gt, {"v": [_pred(2, 4, "a", 0.9), _pred(2, 5, "a", 0.8)]}, [0.6])
    assert res.ap[0, 0] == pytest.approx(0.5, abs=1e-12)
    # Tied scores: the prediction later in input order is ranked first.
    # p0 [0, 10] and p1 [0, 6] both 0.5, GT [0, 10]: p1 first -> tIoU 0.6 takes the GT at 0.5, p0 is FP:
    # precision 1, 1/2; recall 1, 1 -> AP 1 at 0.5; at 0.7 p1 FP, p0 TP -> AP 1/2.
    gt = _aset({"v": ("validation", [(0, 10, "a")])})
    res = evaluate_detection(gt, {"v": [_pred(0, 10, "a", 0.5), _pred(0, 6, "a", 0.5)]}, [0.5, 0.7])
    np.testing.assert_allclose(res.ap[:, 0], [1.0, 0.5], atol=1e-12)


def test_subset_selection_and_class_order():
    gt = _aset(
        {
            "t1": ("training", [(0, 5, "only_train")]),
            "v1": ("validation", [(0, 5, "b"), (6, 9, "a")]),
            "v2": ("validation", [(0, 5, "c")]),
        }
    )
    res = evaluate_detection(gt, {"v1": [_pred(0, 5, "b", 0.9)]}, [0.5])
    assert res.classes == ["b", "a", "c"]  # order of first appearance in the subset
    np.testing.assert_allclose(res.ap[0], [1.0, 0.0, 0.0])
    res = evaluate_detection(gt, {"t1": [_pred(0, 5, "only_train", 0.9)]}, [0.5], subset="training")
    assert res.classes == ["only_train"] and res.mAP[0] == 1.0
    with pytest.raises(EvaluationError, match="subsets present"):
        evaluate_detection(gt, {}, [0.5], subset="testing")


def test_unknown_labels_are_dropped_with_a_warning(caplog):
    gt = _aset({"v": ("validation", [(0, 10, "a")])})
    preds = {"v": [_pred(0, 10, "nope", 0.99), _pred(0, 10, "a", 0.5), _pred(0, 1, "nope2", 0.4)]}
    with caplog.at_level(logging.WARNING, logger="spot_core.evaluation"):
        res = evaluate_detection(gt, preds, [0.5])
    assert res.num_dropped == 2 and res.num_predictions == 1
    assert res.ap[0, 0] == 1.0  # the dropped top-scored prediction does not count as a false positive
    assert "dropped 2 prediction" in caplog.text and "'nope'" in caplog.text


def test_v_prefix_mismatch_is_an_error():
    gt = _aset({"v_abc": ("validation", [(0, 10, "a")])})
    with pytest.raises(EvaluationError, match="after adding a 'v_' prefix"):
        evaluate_detection(gt, {"abc": [_pred(0, 10, "a", 0.5)]}, [0.5])
    gt = _aset({"abc": ("validation", [(0, 10, "a")])})
    with pytest.raises(EvaluationError, match="after removing a 'v_' prefix"):
        evaluate_detection(gt, {"v_abc": [_pred(0, 10, "a", 0.5)]}, [0.5])
    # One matching id is enough: the others are just false positives (as officially).
    res = evaluate_detection(gt, {"abc": [_pred(0, 10, "a", 0.5)], "v_abc": [_pred(0, 10, "a", 0.9)]}, [0.5])
    assert res.ap[0, 0] == pytest.approx(0.5)


def test_interpolated_ap_and_tiou_primitives():
    # precision 1, 0.5, 2/3 at recall 0.5, 0.5, 1 -> 0.5 * 1 + 0.5 * 2/3
    assert interpolated_ap(np.array([1, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == pytest.approx(5 / 6)
    assert interpolated_ap(np.array([0.0]), np.array([0.0])) == 0.0
    iou = segment_iou(
        np.array([[0.0, 10.0], [0.0, 10.0], [5.0, 6.0]]), np.array([[5.0, 15.0], [20, 30], [0, 10]])
    )
    np.testing.assert_allclose(iou, [5 / 15, 0.0, 0.1])


# ----------------------------------------------------------------------------------- bad input, CLI
def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _anet_json(db: dict) -> dict:
    return {"version": "VERSION 1.3", "taxonomy": [], "database": db}


@pytest.fixture
def small_files(tmp_path):
    gt = _write(
        tmp_path / "gt.json",
        _anet_json(
            {
                "v1": {
                    "subset": "validation",
                    "duration": 40.0,
                    "annotations": [{"segment": [0, 10], "label": "a"}],
                },
                "v2": {
                    "subset": "validation",
                    "duration": 40.0,
                    "annotations": [{"segment": [5, 8], "label": "b"}],
                },
                "t1": {
                    "subset": "training",
                    "duration": 40.0,
                    "annotations": [{"segment": [1, 2], "label": "a"}],
                },
            }
        ),
    )
    pred = _write(
        tmp_path / "pred.json",
        {
            "version": "VERSION 1.3",
            "external_data": {},
            "results": {
                "v1": [_pred(0, 9, "a", 0.7), _pred(20, 30, "a", 0.9)],
                "v2": [_pred(5, 8, "b", 0.3)],
            },
        },
    )
    return gt, pred


def test_cli_json_and_table(small_files, capsys):
    gt, pred = small_files
    assert cli_main(["--gt", str(gt), "--pred", str(pred), "--protocol", "activitynet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = evaluate_detection(load_ground_truth(gt), load_predictions(pred), ANET)
    assert out["average_mAP"] == pytest.approx(expected.average_mAP, abs=1e-12)
    assert list(out["mAP"]) == [f"{t:.2f}" for t in ANET]
    # class a: [20,30] (0.9) FP then [0,9] (tIoU 0.9) TP -> AP 1/2 up to 0.9, 0 at 0.95; class b: AP 1
    assert out["mAP"]["0.50"] == pytest.approx(0.75) and out["mAP"]["0.95"] == pytest.approx(0.5)
    assert cli_main(["--gt", str(gt), "--pred", str(pred), "--protocol", "thumos"]) == 0
    text = capsys.readouterr().out
    assert "0.30" in text and "0.70" in text and "75.00%" in text and "avg" in text


def test_cli_thumos_csv(tmp_path, capsys):
    rows = [
        "video,type,type_idx,start,end,startFrame,endFrame",
        "video_x,Diving,26,1.0,3.0,30,90",
        "video_x,Ambiguous,0,2.0,4.0,60,120",
        "video_y,Diving,26,5.0,9.0,150,270",
    ]
    preds = {"video_x": [_pred(1.0, 3.0, "Diving", 0.9)], "video_y": [_pred(5.0, 6.0, "Diving", 0.8)]}
    pred = _write(tmp_path / "pred.json", {"results": preds})
    for name, extra in [("val_gt.csv", []), ("test_gt.csv", ["--subset", "test"]), ("gt.csv", [])]:
        (tmp_path / name).write_text("\n".join(rows) + "\n")
        args = ["--gt", str(tmp_path / name), "--pred", str(pred), "--protocol", "thumos", "--json", *extra]
        assert cli_main(args) == 0, name
        out = json.loads(capsys.readouterr().out)
        # Ambiguous is not a class; video_y's prediction has tIoU 1/4: AP 1/2 at every threshold
        assert out["num_classes"] == 1 and out["num_ground_truth"] == 2
        assert out["average_mAP"] == pytest.approx(0.5)


def test_official_json_read_as_leniently_as_official(tmp_path):
    # No duration, no taxonomy/version, a reversed segment: the official code scores this file.
    gt = _write(
        tmp_path / "gt.json",
        {"database": {"v": {"subset": "validation", "annotations": [{"segment": [10, 0], "label": "a"}]}}},
    )
    aset = load_ground_truth(gt)
    assert aset.videos["v"].instances == [Instance(10.0, 0.0, "a")]
    # tIoU of [10, 0] with itself: inter 0, union -20 -> -0.0 < thr: false positive, AP 0.
    res = evaluate_detection(aset, {"v": [_pred(10, 0, "a", 1.0)]}, [0.5])
    assert res.ap[0, 0] == 0.0


@pytest.mark.parametrize(
    ("pred_content", "message"),
    [
        ("{not json", "malformed JSON"),
        ('{"version": 1}', "no 'results' key"),
        ('{"results": []}', "'results' must map"),
        (
            '{"results": {"v1": [{"segment": [1], "label": "a", "score": 1}]}}',
            "'segment' must be two numbers",
        ),
        ('{"results": {"v1": [{"segment": ["a", "b"], "label": "a", "score": 1}]}}', "two numbers"),
        ('{"results": {"v1": [{"segment": [1, 2, 3], "label": "a", "score": 1}]}}', "two numbers"),
        ('{"results": {"v1": [{"segment": [1, 2], "label": "a"}]}}', "missing 'score'"),
        (
            '{"results": {"v1": [{"segment": [1, 2], "label": "a", "score": "high"}]}}',
            "'score' must be a number",
        ),
        ('{"results": {"v1": {"segment": [1, 2]}}}', "expected a list"),
    ],
)
def test_cli_bad_predictions_exit_2(small_files, tmp_path, capsys, pred_content, message):
    gt, _ = small_files
    bad = tmp_path / "bad_pred.json"
    bad.write_text(pred_content)
    assert cli_main(["--gt", str(gt), "--pred", str(bad), "--protocol", "activitynet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and message in err
    assert "Traceback" not in err


def test_cli_bad_ground_truth_exit_2(small_files, tmp_path, capsys):
    _, pred = small_files
    cases = {
        "missing.json": None,
        "broken.json": "[1, 2",
        "noseg.json": json.dumps(
            _anet_json({"v1": {"subset": "validation", "annotations": [{"label": "a"}]}})
        ),
        "badseg.json": json.dumps(
            _anet_json({"v1": {"subset": "validation", "annotations": [{"segment": [1, "x"], "label": "a"}]}})
        ),
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        assert cli_main(["--gt", str(path), "--pred", str(pred), "--protocol", "thumos"]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(path) in err, (name, err)
    # an empty subset is a clear error too
    assert (
        cli_main(["--gt", str(small_files[0]), "--pred", str(pred), "--protocol", "thumos", "--subset", "x"])
        == 2
    )
    assert "no annotated instance in subset 'x'" in capsys.readouterr().err


def test_cli_missing_prediction_file(small_files, tmp_path, capsys):
    gt, _ = small_files
    missing = tmp_path / "nope.json"
    assert cli_main(["--gt", str(gt), "--pred", str(missing), "--protocol", "thumos"]) == 2
    assert f"error: {missing}: prediction file not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- timing
def _synthetic(seed: int = 0, n_videos: int = 4728, n_pred: int = 100, n_cls: int = 200):
    """ActivityNet-scale input: ~1.5 GT per video, 100 predictions per video near the GT."""
    rng = np.random.default_rng(seed)
    classes = [f"class_{i}" for i in range(n_cls)]
    videos, preds = {}, {}
    for i in range(n_videos):
        vid = f"v_{i:06d}"
        dur = float(rng.uniform(20, 200))
        cls = classes[rng.integers(n_cls)]
        inst = []
        for _ in range(1 + rng.poisson(0.5)):
            s = float(rng.uniform(0, 0.8 * dur))
            inst.append(Instance(s, float(min(dur, s + rng.uniform(1, 0.5 * dur))), cls))
        videos[vid] = Video(vid, dur, "validation", inst)
        base = rng.integers(0, len(inst), n_pred)
        s0 = np.array([inst[b].start for b in base])
        e0 = np.array([inst[b].end for b in base])
        s = s0 + rng.normal(0, 0.15, n_pred) * (e0 - s0)
        e = e0 + rng.normal(0, 0.15, n_pred) * (e0 - s0)
        lab = np.where(rng.random(n_pred) < 0.7, cls, np.array(classes)[rng.integers(n_cls, size=n_pred)])
        preds[vid] = [
            _pred(float(a), float(b), str(c), float(x))
            for a, b, c, x in zip(s, e, lab, rng.random(n_pred), strict=True)
        ]
    return AnnotationSet(videos, classes), preds


@pytest.mark.slow
def test_speed_activitynet_scale(tmp_path):
    gt, preds = _synthetic()
    pred_path = _write(tmp_path / "pred.json", {"results": preds})
    t0 = time.perf_counter()
    loaded = load_predictions(pred_path)
    res = evaluate_detection(gt, loaded, ANET)
    elapsed = time.perf_counter() - t0
    print(f"\nsynthetic ActivityNet scale: load + evaluate 472,800 predictions in {elapsed:.2f} s")
    assert res.num_predictions == 4728 * 100 and len(res.classes) == 200
    assert 0.0 < res.average_mAP < 1.0
    assert elapsed < 10.0, f"evaluation of 472,800 predictions took {elapsed:.1f} s"


# ---------------------------------------------------------------------------------------- real data
def _read_anet_validation(shared: Path) -> AnnotationSet:
    """anet_anno_action.json + video_info_new.csv, read directly (independent of the shared reader)."""
    data = json.loads((shared / "activitynet" / "anet_anno_action.json").read_text())
    with (shared / "activitynet" / "video_info_new.csv").open(newline="") as f:
        subsets = {r["video"]: r["subset"] for r in csv.DictReader(f)}
    videos = {
        vid: Video(
            vid,
            float(v["duration_second"]),
            subsets[vid],
            [Instance(float(a["segment"][0]), float(a["segment"][1]), a["label"]) for a in v["annotations"]],
        )
        for vid, v in data.items()
    }
    return AnnotationSet(videos, sorted({i.label for v in videos.values() for i in v.instances}))


def _read_thumos(path: Path, subset: str) -> AnnotationSet:
    videos: dict[str, Video] = {}
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            v = videos.setdefault(r["video"], Video(r["video"], 0.0, subset))
            if r["type"] != "Ambiguous":
                v.instances.append(Instance(float(r["start"]), float(r["end"]), r["type"]))
    return AnnotationSet(videos, sorted({i.label for v in videos.values() for i in v.instances}))


def _self_predictions(gt: AnnotationSet, subset: str, keep=lambda inst, seen: True) -> dict:
    """Every kept ground-truth instance as a prediction, with distinct scores."""
    preds: dict[str, list[dict]] = {}
    n = 0
    for v in gt.videos.values():
        if v.subset != subset:
            continue
        seen: Counter = Counter()
        for inst in v.instances:
            if keep(inst, seen):
                n += 1
                preds.setdefault(v.video_id, []).append(
                    _pred(inst.start, inst.end, inst.label, 1.0 - n * 1e-6)
                )
            seen[(inst.start, inst.end, inst.label)] += 1
    return preds


def _check_self_evaluation(gt: AnnotationSet, subset: str, thr):
    # 1. Predictions = all ground-truth instances, distinct scores: every prediction has tIoU exactly 1
    #    with its own instance (x / x), and only an identical (duplicated) instance also reaches 1, so
    #    the greedy matching pairs each prediction with one copy; a zero-length prediction has tIoU NaN
    #    (0/0) with every zero-length instance of its class and video, which counts as a match, and 0
    #    with everything else. No ground truth is reversed. So every prediction is a true positive,
    #    precision is 1 throughout, recall ends at 1: AP = 1 for every class and threshold.
    res = evaluate_detection(gt, _self_predictions(gt, subset), thr, subset=subset)
    np.testing.assert_allclose(res.ap, 1.0, rtol=0, atol=1e-12)
    assert res.num_predictions == res.num_ground_truth

    # 2. Drop the second copy of each duplicate and every zero-length instance: the remaining
    #    predictions are still all true positives (precision 1), but recall stops at kept / npos, so
    #    AP_k = kept_k / npos_k exactly, at every threshold.
    def keep(inst, seen):
        return inst.end != inst.start and seen[(inst.start, inst.end, inst.label)] == 0

    preds = _self_predictions(gt, subset, keep)
    res = evaluate_detection(gt, preds, thr, subset=subset)
    npos = Counter(i.label for v in gt.videos.values() if v.subset == subset for i in v.instances)
    kept = Counter(r["label"] for items in preds.values() for r in items)
    expected = np.array([kept[c] / npos[c] for c in res.classes])
    np.testing.assert_allclose(res.ap, np.broadcast_to(expected, res.ap.shape), rtol=0, atol=1e-12)
    assert res.average_mAP == pytest.approx(expected.mean(), abs=1e-12)
    return res, npos, kept


@pytest.mark.real_data
def test_real_activitynet_validation_self_evaluation(shared_data):
    gt = _read_anet_validation(shared_data)
    res, npos, kept = _check_self_evaluation(gt, "validation", ANET)
    # ActivityNet v1.3 validation: 4,728 videos, 7,293 instances, 200 classes; 3 zero-length
    # instances and 17 exact duplicates are what the second check drops.
    assert len(res.classes) == 200 and res.num_ground_truth == 7293
    assert sum(npos.values()) - sum(kept.values()) == 3 + 17
    assert res.average_mAP < 1.0


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("name", "subset"), [("val_Annotation.csv", "validation"), ("test_Annotation.csv", "test")]
)
def test_real_thumos_self_evaluation(shared_data, name, subset):
    gt = _read_thumos(shared_data / "thumos14" / name, subset)
    res, npos, kept = _check_self_evaluation(gt, subset, THUMOS)
    assert len(res.classes) == 20  # Ambiguous is not a class
    assert kept == npos  # THUMOS14 has no zero-length or duplicated (non-ambiguous) instance


@pytest.mark.real_data
def test_real_cli_spot_layout(shared_data, tmp_path, capsys):
    # anet_anno_action.json keys are v_<id>; the subset comes from video_info_new.csv beside it.
    gt = _read_anet_validation(shared_data)
    preds = _self_predictions(gt, "validation")
    pred_path = _write(tmp_path / "pred.json", {"results": preds})
    anno = str(shared_data / "activitynet" / "anet_anno_action.json")
    assert cli_main(["--gt", anno, "--pred", str(pred_path), "--protocol", "activitynet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["average_mAP"] == pytest.approx(1.0, abs=1e-12) and out["num_ground_truth"] == 7293
    # ids without the v_ prefix do not silently score 0
    stripped = _write(tmp_path / "stripped.json", {"results": {k[2:]: v for k, v in preds.items()}})
    assert cli_main(["--gt", anno, "--pred", str(stripped), "--protocol", "activitynet"]) == 2
    assert "'v_' prefix" in capsys.readouterr().err


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("name", "extra"), [("val_Annotation.csv", []), ("test_Annotation.csv", ["--subset", "test"])]
)
def test_real_cli_thumos_csv(shared_data, tmp_path, capsys, name, extra):
    path = shared_data / "thumos14" / name
    subset = "test" if extra else "validation"
    preds = _self_predictions(_read_thumos(path, subset), subset)
    pred_path = _write(tmp_path / "pred.json", {"results": preds})
    assert (
        cli_main(["--gt", str(path), "--pred", str(pred_path), "--protocol", "thumos", "--json", *extra]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["average_mAP"] == pytest.approx(1.0, abs=1e-12) and out["num_classes"] == 20
    assert list(out["mAP"]) == ["0.30", "0.40", "0.50", "0.60", "0.70"]


@pytest.mark.real_data
@pytest.mark.slow
def test_real_activitynet_speed(shared_data):
    # 100 predictions per validation video, near the ground truth, 30% with another class.
    gt = _read_anet_validation(shared_data)
    rng = np.random.default_rng(0)
    classes = gt.classes
    preds = {}
    for v in gt.videos.values():
        if v.subset != "validation":
            continue
        ref = v.instances or [Instance(0.0, v.duration, classes[0])]
        base = rng.integers(0, len(ref), 100)
        out = []
        for b, u, w, x in zip(
            base, rng.normal(0, 0.1, 100), rng.normal(0, 0.1, 100), rng.random(100), strict=True
        ):
            inst = ref[b]
            length = inst.end - inst.start
            lab = inst.label if rng.random() < 0.7 else classes[rng.integers(len(classes))]
            out.append(_pred(inst.start + u * length, inst.end + w * length, lab, float(x)))
        preds[v.video_id] = out
    t0 = time.perf_counter()
    res = evaluate_detection(gt, preds, ANET)
    elapsed = time.perf_counter() - t0
    print(f"\nActivityNet validation ground truth: evaluate 472,800 predictions in {elapsed:.2f} s")
    assert res.num_predictions == 4728 * 100
    assert 0.0 < res.average_mAP < 1.0
    assert elapsed < 10.0, f"{elapsed:.1f} s"
