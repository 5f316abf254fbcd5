"""Bad invocations of the spot_core CLIs (train, demo, evaluate, prepare, actrectut): rows of
``tests/test_bad_inputs.py`` (see ``tests/bad_case.py`` for the row type and what each asserts).

Groups are issue 17's "Found" items: 3 no silent overwrite of a run or dataset, 5 hostile ``.npy``
files, 6 one-line errors instead of tracebacks, 7 NaN / Inf / duplicate keys the evaluator must
reject, 8 config values checked by element type and range before any work, 9 messages that name the
file or key; "extra": what users try besides (empty folders, wrong widths, unknown labels, reversed
segments, bad ``--set``, label fractions out of range, an ``--out`` under a file). Every training
row fails before the first epoch.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from bad_case import Case
from numpy.lib import format as npy_format

TRAIN = ("-m", "spot_core.train", "--preset", "toy", "--no-progress")
TRAIN_DATA = (*TRAIN, "--data", "{data}", "--out", "{tmp}/run")
ONE_EPOCH = ("--set", "train.epochs=1")
DEMO = ("-m", "spot_core.demo", "--no-progress", "--out", "{tmp}/demo")
EVAL = ("-m", "spot_core.evaluate", "--protocol", "thumos")
PREPARE = ("-m", "spot_core.data.prepare", "--recordings", "{features}", "--no-progress")
ACT = ("-m", "spot_core.actrectut")
FEATURE = "train_0001.npy"  # a training video's features in the toy dataset


# ------------------------------------------------------------------------------------------- setups
def _earlier_run(tmp: Path) -> None:
    """A finished run's files at ``tmp/run`` (a real checkpoint, a state and a log)."""
    run = tmp / "run"
    run.mkdir()
    (run / "last.safetensors").write_bytes((tmp / "model.safetensors").read_bytes())
    (run / "train_state.pt").write_bytes(b"earlier state")
    (run / "metrics.jsonl").write_text('{"epoch": 0, "loss_loss": 1.0}\n')


def _feature(tmp: Path) -> Path:
    return tmp / "data" / "features" / FEATURE


def _zero_bytes(tmp: Path) -> None:
    _feature(tmp).write_bytes(b"")


def _npy_header(shape: tuple, descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _huge_shape(tmp: Path) -> None:
    """A header claiming 10^9 x 32 float32 (128 GB) over 64 bytes of data."""
    _feature(tmp).write_bytes(_npy_header((10**9, 32)) + b"\0" * 64)


def _truncated(tmp: Path) -> None:
    f = _feature(tmp)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _object_dtype(tmp: Path) -> None:
    _feature(tmp).write_bytes(_npy_header((2, 32), "|O") + b"\x80\x04N." * 16)


def _not_npy(tmp: Path) -> None:
    _feature(tmp).write_bytes(b"this is not an array\n" * 10)


def _afile(tmp: Path) -> None:
    (tmp / "afile").write_bytes(b"not a folder\n")


def _python_tag_yaml(tmp: Path) -> None:
    (tmp / "bad.yaml").write_text('name: !!python/object/apply:os.system ["echo pwned"]\n')


def _bad_threshold_yaml(tmp: Path) -> None:
    (tmp / "bad.yaml").write_text("name: toy\ndecode:\n  mask_thresholds: [a, b]\n")


def _eval_files(gt_segment: str = "[1, 3]", pred: str | None = None, gt_extra: str = ""):
    """An ActivityNet ground truth (videos v1, v2) and a prediction file, as raw JSON text."""

    def setup(tmp: Path) -> None:
        (tmp / "gt.json").write_text(
            '{"database": {"v1": {"subset": "validation", "duration": 10, "annotations": '
            '[{"segment": [1, 3], "label": "a"}]}, "v2": {"subset": "validation", "duration": 10, '
            f'"annotations": [{{"segment": {gt_segment}, "label": "a"}}]}}{gt_extra}}}}}\n'
        )
        (tmp / "pred.json").write_text(
            pred or '{"results": {"v1": [{"segment": [1, 3], "label": "a", "score": 0.9}]}}\n'
        )

    return setup


def _dup_gt_video(tmp: Path) -> None:
    _eval_files(gt_extra=', "v1": {"subset": "validation", "duration": 10, "annotations": []}')(tmp)


def _annotations(tmp: Path) -> dict:
    return json.loads((tmp / "data" / "annotations.json").read_text())


def _write_annotations(tmp: Path, d: dict) -> None:
    (tmp / "data" / "annotations.json").write_text(json.dumps(d, indent=1))


def _first_segment(value: list) -> object:
    def setup(tmp: Path) -> None:
        d = _annotations(tmp)
        next(iter(d["database"].values()))["annotations"][0]["segment"] = value
        _write_annotations(tmp, d)

    return setup


def _unknown_label(tmp: Path) -> None:
    d = _annotations(tmp)
    next(iter(d["database"].values()))["annotations"][0]["label"] = "zzz_not_a_class"
    _write_annotations(tmp, d)


def _duplicate_class(tmp: Path) -> None:
    d = _annotations(tmp)
    d["classes"][1] = d["classes"][0]
    _write_annotations(tmp, d)


def _nan_duration(tmp: Path) -> None:
    d = _annotations(tmp)
    first = next(iter(d["database"]))
    d["database"][first]["duration"] = float("nan")  # json writes the non-standard NaN token
    _write_annotations(tmp, d)


def _latin1_csv_features(tmp: Path) -> None:
    """The toy features as csv files (the dataset reads csv when there is no .npy), one of them
    with a Latin-1 byte that is not UTF-8."""
    for f in sorted((tmp / "data" / "features").glob("*.npy")):
        x = np.load(f)
        text = ",".join(f"f{i}" for i in range(x.shape[1])) + "\n"
        text += "\n".join(",".join(f"{v:.6f}" for v in row) for row in x) + "\n"
        data = text.encode()
        if f.name == FEATURE:
            data = data.replace(b"f0,", b"f\xe9,", 1)
        f.with_suffix(".csv").write_bytes(data)
        f.unlink()


def _narrow_features(tmp: Path) -> None:
    """Every feature file 16 channels wide (the toy preset takes 32)."""
    for f in (tmp / "data" / "features").glob("*.npy"):
        np.save(f, np.load(f)[:, :16])


def _mixed_widths(tmp: Path) -> None:
    np.save(_feature(tmp), np.load(_feature(tmp))[:, :16])


def _empty_dataset(tmp: Path) -> None:
    (tmp / "emptyd").mkdir()


def _no_feature_files(tmp: Path) -> None:
    for f in (tmp / "data" / "features").glob("*.npy"):
        f.unlink()


def _latin1_thumos_csv(tmp: Path) -> None:
    (tmp / "val_anno.csv").write_bytes(b"video,type,start,end\nv1,Caf\xe9,1.0,3.0\n")
    (tmp / "pred.json").write_text('{"results": {}}\n')


# --------------------------------------------------------------------------------------------- rows
CASES: list[Case] = [
    # 3: a run (or a dataset) is never replaced by accident
    Case("train_out_holds_run", "3", (*TRAIN_DATA, *ONE_EPOCH),
         r"--out .*run: holds a training run .*--resume.*--overwrite", _earlier_run),
    Case("actrectut_out_holds_run", "3", (*ACT, "--data", "{tmp}/nope", "--out", "{tmp}/run"),
         r"holds a training run", _earlier_run),
    Case("prepare_out_holds_dataset", "3",
         (*PREPARE, "--annotations", "{data}/annotations.json", "--out", "{data}"),
         r"--out .*data: holds a dataset already; pass --overwrite"),
    # 5: hostile arrays (each stops the dataset with one line naming the file)
    Case("train_zero_byte_npy", "5", (*TRAIN_DATA, *ONE_EPOCH), rf"{FEATURE}: empty file \(0 bytes\)",
         _zero_bytes),
    Case("train_huge_shape_npy", "5", (*TRAIN_DATA, *ONE_EPOCH),
         rf"{FEATURE}: the header says shape \(1000000000, 32\).*truncated or corrupt", _huge_shape),
    Case("train_truncated_npy", "5", (*TRAIN_DATA, *ONE_EPOCH), rf"{FEATURE}: .*truncated or corrupt",
         _truncated),
    Case("train_object_npy", "5", (*TRAIN_DATA, *ONE_EPOCH), rf"{FEATURE}: .npy array of Python objects",
         _object_dtype),
    Case("train_not_npy", "5", (*TRAIN_DATA, *ONE_EPOCH), rf"{FEATURE}: not a .npy file", _not_npy),
    # 6: tracebacks before; one line now
    Case("train_device_banana", "6", (*TRAIN_DATA, "--device", "banana", *ONE_EPOCH),
         r"--device 'banana': not a device"),
    Case("train_device_cuda_missing", "6", (*TRAIN_DATA, "--device", "cuda:99", *ONE_EPOCH),
         r"--device 'cuda:99': (CUDA is not available|this machine has \d+ CUDA device)"),
    Case("train_yaml_python_tag", "6",
         ("-m", "spot_core.train", "--config", "{tmp}/bad.yaml", "--data", "{data}", "--out", "{tmp}/run"),
         r"bad\.yaml: YAML tag not allowed", _python_tag_yaml),
    Case("demo_bad_set", "6", (*DEMO, "--set", "train.epochs=abc"), r"train\.epochs: expected an integer"),
    Case("demo_bad_preset", "6", (*DEMO, "--preset", "nope"), r"unknown preset 'nope'"),
    Case("demo_out_is_file", "6", ("-m", "spot_core.demo", "--out", "{tmp}/afile"),
         r"--out .*afile: is a file, expected a folder", _afile),
    Case("demo_set_whole_section", "6", (*DEMO, "--set", "train={{}}"), r"'train' is a section"),
    Case("demo_set_not_yaml", "6", (*DEMO, "--set", "train.lr=[1"), r"train\.lr=\[1.*not valid YAML"),
    # 7: the evaluator rejects what would change the mAP silently
    Case("evaluate_nan_gt_segment", "7", (*EVAL, "--gt", "{tmp}/gt.json", "--pred", "{tmp}/pred.json"),
         r"gt\.json: video 'v2', annotation 0: 'segment' must be two finite numbers, got \[NaN, 3\]",
         _eval_files(gt_segment="[NaN, 3]")),
    Case("evaluate_nan_score", "7", (*EVAL, "--gt", "{tmp}/gt.json", "--pred", "{tmp}/pred.json"),
         r"pred\.json: video 'v1', prediction 1: .*score NaN must be finite",
         _eval_files(pred='{"results": {"v1": [{"segment": [1, 3], "label": "a", "score": 0.9}, '
                          '{"segment": [4, 6], "label": "a", "score": NaN}]}}')),
    Case("evaluate_inf_segment", "7", (*EVAL, "--gt", "{tmp}/gt.json", "--pred", "{tmp}/pred.json"),
         r"video 'v1', prediction 0: segment \[1.0, Infinity\]",
         _eval_files(pred='{"results": {"v1": [{"segment": [1, Infinity], "label": "a", "score": 1}]}}')),
    Case("evaluate_duplicate_pred_video", "7", (*EVAL, "--gt", "{tmp}/gt.json", "--pred", "{tmp}/pred.json"),
         r"pred\.json: duplicate key 'v1'",
         _eval_files(pred='{"results": {"v1": [], "v1": [{"segment": [1, 3], "label": "a", "score": 1}]}}')),
    Case("evaluate_duplicate_gt_video", "7", (*EVAL, "--gt", "{tmp}/gt.json", "--pred", "{tmp}/pred.json"),
         r"gt\.json: duplicate key 'v1'", _dup_gt_video),
    # 8: config values checked by element type and range before training starts
    Case("train_mask_thresholds_strings", "8", (*TRAIN_DATA, "--set", "decode.mask_thresholds=[a,b]"),
         r"decode\.mask_thresholds\[0\]: expected a number, got 'a'"),
    Case("train_class_threshold_out_of_range", "8",
         (*TRAIN_DATA, "--set", "decode.class_thresholds=[0.5,2]"),
         r"decode\.class_thresholds\[1\] must be in \[0, 1\], got 2\.0"),
    Case("train_nested_threshold_list", "8", (*TRAIN_DATA, "--set", "decode.mask_thresholds=[[0.1],[2,3]]"),
         r"decode\.mask_thresholds\[0\]: expected a number"),
    Case("train_lr_nan", "8", (*TRAIN_DATA, "--set", "train.lr=.nan"),
         r"train\.lr: expected a finite number"),
    Case("train_lr_negative", "8", (*TRAIN_DATA, "--set", "train.lr=-1"), r"train\.lr must be > 0"),
    Case("train_yaml_bad_threshold", "8",
         ("-m", "spot_core.train", "--config", "{tmp}/bad.yaml", "--data", "{data}", "--out", "{tmp}/run"),
         r"bad\.yaml: decode\.mask_thresholds\[0\]: expected a number", _bad_threshold_yaml),
    # 9: messages that name the file or key
    Case("train_csv_not_utf8", "9", (*TRAIN_DATA, *ONE_EPOCH),
         r"train_0001\.csv: not a UTF-8 text csv", _latin1_csv_features),
    Case("evaluate_thumos_csv_not_utf8", "9",
         (*EVAL, "--gt", "{tmp}/val_anno.csv", "--pred", "{tmp}/pred.json"),
         r"val_anno\.csv: not a UTF-8 text csv", _latin1_thumos_csv),
    Case("train_duplicate_class", "9", (*TRAIN_DATA, *ONE_EPOCH),
         r"annotations\.json: 'classes': duplicated class names", _duplicate_class),
    Case("evaluate_null_score", "9", (*EVAL, "--gt", "{tmp}/gt.json", "--pred", "{tmp}/pred.json"),
         r"video 'v1', prediction 0: 'score' must be a number, got null",
         _eval_files(pred='{"results": {"v1": [{"segment": [1, 3], "label": "a", "score": null}]}}')),
    Case("evaluate_ragged_segment", "9", (*EVAL, "--gt", "{tmp}/gt.json", "--pred", "{tmp}/pred.json"),
         r"video 'v1', prediction 1: 'segment' must be two numbers",
         _eval_files(pred='{"results": {"v1": [{"segment": [1, 3], "label": "a", "score": 1}, '
                          '{"segment": [1, [2, 3]], "label": "a", "score": 1}]}}')),
    Case("train_nan_duration", "9", (*TRAIN_DATA, *ONE_EPOCH), r"annotations\.json: video .*duration must be "
         r"finite, got NaN", _nan_duration),
    # extra: what users try besides
    Case("train_empty_dataset_folder", "extra", (*TRAIN, "--data", "{tmp}/emptyd", "--out", "{tmp}/run"),
         r"emptyd/annotations\.json: not found", _empty_dataset),
    Case("train_no_feature_files", "extra", (*TRAIN_DATA, *ONE_EPOCH),
         r"features: no .npy or .csv feature files", _no_feature_files),
    Case("train_wrong_feature_width", "extra", (*TRAIN_DATA, *ONE_EPOCH),
         r"model\.feat_dim=32 \(the features have 16 channels\)", _narrow_features),
    Case("train_mixed_feature_widths", "extra", (*TRAIN_DATA, *ONE_EPOCH),
         r"feature files of different widths", _mixed_widths),
    Case("train_unknown_label", "extra", (*TRAIN_DATA, *ONE_EPOCH),
         r"annotations\.json: video .*label 'zzz_not_a_class' is not in the class list", _unknown_label),
    Case("train_reversed_segment", "extra", (*TRAIN_DATA, *ONE_EPOCH), r"reversed segment",
         _first_segment([9.0, 2.0])),
    Case("train_negative_segment", "extra", (*TRAIN_DATA, *ONE_EPOCH), r"segment start -1\.0 < 0",
         _first_segment([-1.0, 2.0])),
    Case("train_non_numeric_set", "extra", (*TRAIN_DATA, "--set", "train.batch_size=many"),
         r"train\.batch_size: expected an integer, got 'many'"),
    Case("train_unknown_config_key", "extra", (*TRAIN_DATA, "--set", "train.epoch=3"),
         r"unknown key 'train\.epoch'"),
    Case("train_labeled_fraction_0", "extra", (*TRAIN_DATA, "--labeled-fraction", "0", *ONE_EPOCH),
         r"semi\.labeled_fraction must be in \(0, 1\]"),
    Case("train_labeled_fraction_2", "extra", (*TRAIN_DATA, "--labeled-fraction", "2", *ONE_EPOCH),
         r"semi\.labeled_fraction must be in \(0, 1\]"),
    Case("train_piece_sec_nan", "extra", (*TRAIN_DATA, "--piece-sec", "nan", *ONE_EPOCH),
         r"--piece-sec must be a finite number > 0"),
    Case("train_out_under_a_file", "extra",
         (*TRAIN, "--data", "{data}", "--out", "{tmp}/afile/run", *ONE_EPOCH),
         r"--out .*afile/run: .*afile is not a folder", _afile),
    # read-only outputs: chmod does not stop root (CI), a path on /proc does (no file can be made there)
    Case("train_out_read_only", "extra", (*TRAIN, "--data", "{data}", "--out", "/proc/spot_run", *ONE_EPOCH),
         r"--out /proc/spot_run: /proc is not writable"),
    Case("demo_out_read_only", "extra", ("-m", "spot_core.demo", "--no-progress", "--out", "/proc/spot_demo"),
         r"--out /proc/spot_demo: /proc is not writable"),
    Case("train_resume_without_state", "extra",
         (*TRAIN, "--data", "{data}", "--out", "{tmp}/fresh", "--resume"),
         r"train_state\.pt: resume state not found"),
    Case("prepare_out_is_file", "extra",
         (*PREPARE, "--annotations", "{data}/annotations.json", "--out", "{tmp}/afile"),
         r"--out .*afile: is a file, expected a folder", _afile),
    Case("actrectut_missing_data", "extra", (*ACT, "--data", "{tmp}/nope"),
         r"nope/gesture\.json: annotation file not found"),
]  # fmt: skip
