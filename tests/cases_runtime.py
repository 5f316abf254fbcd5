"""Bad invocations of the runtime and export CLIs (runtime.stream, runtime.batch, export.*): rows of
``tests/test_bad_inputs.py`` (see ``tests/bad_case.py`` for the row type and what each asserts).

Groups are issue 17's "Found" items: 1 non-finite or zero rates, 2 a failed run keeps the earlier
output (outputs checked before the work), 3 no silent overwrite of a model, 4 digests checked before
a model is used, 6 one-line errors instead of tracebacks, 9 an error printed once; "extra": what
users try besides (empty folders, wrong widths, bad ``--set``, symlinked outputs).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from bad_case import Case

STREAM = ("-m", "runtime.stream", "--model", "{ckpt}", "--no-progress")
BATCH = ("-m", "runtime.batch", "--model", "{ckpt}", "--features", "{features}", "--no-progress")
VERIFY = ("-m", "export.verify", "--checkpoint", "{ckpt}", "--random", "2")
PREVIOUS = b'{"version": "VERSION 1.3", "results": {"earlier": []}, "external_data": {}}\n'
C = 32  # the toy preset's feature width (model.feat_dim)


# ------------------------------------------------------------------------------------------- setups
def _previous_out(tmp: Path) -> None:
    """An earlier result at ``tmp/out.json`` that a failed run must leave as it was."""
    (tmp / "out.json").write_bytes(PREVIOUS)


def _bad_width_folder(tmp: Path) -> None:
    """A folder whose only feature file has 7 channels (the model takes 32), and an earlier result."""
    (tmp / "bad").mkdir()
    np.save(tmp / "bad" / "narrow.npy", np.zeros((100, 7), np.float32))
    _previous_out(tmp)


def _nan_stream(tmp: Path) -> None:
    """One stream of 200 snippets with a NaN at snippet 150 (after the first windows ran), an
    earlier result and an earlier plot."""
    x = np.random.default_rng(0).standard_normal((200, C)).astype(np.float32)
    x[150, 3] = np.nan
    np.save(tmp / "nan.npy", x)
    _previous_out(tmp)
    (tmp / "plot.png").write_bytes(b"\x89PNG earlier plot")


def _empty_folder(tmp: Path) -> None:
    (tmp / "empty").mkdir()


def _folder_named_out(tmp: Path) -> None:
    (tmp / "outdir").mkdir()


def _a_file(tmp: Path) -> None:
    (tmp / "afile").write_bytes(b"not a folder\n")


def _symlinked_out(tmp: Path) -> None:
    """``out.json`` is a symlink to ``target.json`` (an earlier result); the run fails."""
    _bad_width_folder(tmp)
    (tmp / "out.json").unlink()
    (tmp / "target.json").write_bytes(PREVIOUS)
    os.symlink("target.json", tmp / "out.json")


def _symlink_to_folder(tmp: Path) -> None:
    (tmp / "outdir").mkdir()
    os.symlink("outdir", tmp / "link.json")


def _existing_file(name: str):
    def setup(tmp: Path) -> None:
        (tmp / name).write_bytes(b"an earlier model\n")

    return setup


def _existing_repository(tmp: Path) -> None:
    (tmp / "repo" / "spot_heads" / "1").mkdir(parents=True)
    (tmp / "repo" / "spot_heads" / "config.pbtxt").write_text('name: "spot_heads"\n')


def _flip(path: Path) -> None:
    """Change one bit in the middle of ``path`` (in the weights of an ONNX model)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _onnx_bitflip(tmp: Path) -> None:
    """``model.onnx`` with its digest file recorded, then one bit of the model changed."""
    from spot_core.outputs import write_digest

    write_digest(tmp / "model.onnx")
    _flip(tmp / "model.onnx")


def _onnx_bitflip_with_out(tmp: Path) -> None:
    _onnx_bitflip(tmp)
    _previous_out(tmp)


def _engine(tmp: Path, *, cut: bool = False, flip: bool = False) -> None:
    """A stand-in engine ``m.plan`` and its sidecar (as export.trt writes it) recording the sha256
    and size of the engine's bytes; then the engine truncated (``cut``) or a bit changed (``flip``)."""
    from runtime.onnx_model import read_onnx_metadata

    meta = read_onnx_metadata(tmp / "model.onnx")
    data = bytes(range(256)) * 64
    T, K = meta["num_snippets"], meta["num_classes"]
    side = {
        "format": "spot-trt-v1",
        "backend": "tensorrt_rtx",
        "precision": "fp32",
        "onnx_file": "model.onnx",
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "engine_bytes": len(data),
        "batch_profile": {"min": 1, "opt": 8, "max": 32},
        "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, meta["feat_dim"], T]}],
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": [-1, K + 1, T]},
            {"name": "mask", "dtype": "float32", "shape": [-1, T, T]},
        ],
        "spot": {k: v for k, v in meta.items() if k != "config"},
    }
    if cut:
        data = data[: len(data) // 2]
    if flip:
        data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    (tmp / "m.plan").write_bytes(data)
    (tmp / "m.plan.json").write_text(json.dumps(side, indent=2) + "\n")


def _engine_cut(tmp: Path) -> None:
    _engine(tmp, cut=True)


def _engine_flip(tmp: Path) -> None:
    _engine(tmp, flip=True)


def _annotations_missing_videos(tmp: Path) -> None:
    db = {"val_0000": {"subset": "testing", "duration": 10.0, "annotations": []}}
    (tmp / "gt.json").write_text(json.dumps({"database": db}))


def _not_json(tmp: Path) -> None:
    (tmp / "gt.json").write_text("{not json")


def _earlier_batch_out(tmp: Path) -> None:
    (tmp / "bout").mkdir()
    (tmp / "bout" / "detections.json").write_bytes(PREVIOUS)


# ------------------------------------------------------------------------------------------- rows
RATE = r"--snippet-rate must be a finite number > 0"
CASES: list[Case] = [
    # 1: non-finite or zero rates
    Case("stream-rate-nan", "1", (*STREAM, "--features", "{features}", "--snippet-rate", "nan"), RATE),
    Case("stream-rate-inf", "1", (*STREAM, "--features", "{features}", "--snippet-rate", "inf"), RATE),
    Case("stream-rate-zero", "1", (*STREAM, "--features", "{features}", "--snippet-rate", "0"), RATE),
    Case("stream-rate-negative", "1", (*STREAM, "--features", "{features}", "--snippet-rate=-2"), RATE),
    Case("batch-rate-nan", "1", (*BATCH, "--out", "{tmp}/bout", "--snippet-rate", "nan"), RATE),
    Case("batch-rate-inf", "1", (*BATCH, "--out", "{tmp}/bout", "--snippet-rate", "inf"), RATE),
    Case("batch-rate-zero", "1", (*BATCH, "--out", "{tmp}/bout", "--snippet-rate", "0"), RATE),
    Case(
        "stream-config-rate-inf",
        "1",
        (*STREAM, "--features", "{features}", "--set", "data.snippet_rate=.inf"),
        r"snippet_rate",
    ),
    # 2: a failed run leaves the earlier output as it was; output paths checked before the work
    Case(
        "stream-bad-features-keep-out",
        "2",
        (*STREAM, "--features", "{tmp}/bad", "--out", "{tmp}/out.json"),
        r"narrow\.npy: 7 channels per snippet",
        setup=_bad_width_folder,
    ),
    Case(
        "stream-nan-keeps-out-and-plot",
        "2",
        (*STREAM, "--features", "{tmp}/nan.npy", "--out", "{tmp}/out.json", "--plot", "{tmp}/plot.png"),
        r"nan\.npy: stream 'nan' at snippet 150: non-finite value nan",
        setup=_nan_stream,
    ),
    Case(
        "stream-out-is-folder",
        "2",
        (*STREAM, "--features", "{features}", "--out", "{tmp}/outdir"),
        r"--out .*outdir: is a folder",
        setup=_folder_named_out,
    ),
    Case(
        "stream-out-under-a-file",
        "2",
        (*STREAM, "--features", "{features}", "--out", "{tmp}/afile/out.json"),
        r"--out .*afile.* is not a folder",
        setup=_a_file,
    ),
    Case(
        "stream-plot-is-folder",
        "2",
        (*STREAM, "--features", "{features}", "--out", "{tmp}/out.json", "--plot", "{tmp}/outdir"),
        r"--plot .*outdir: is a folder",
        setup=lambda t: (_folder_named_out(t), _previous_out(t)),
    ),
    Case(
        "stream-plot-unknown-format",
        "2",
        (*STREAM, "--features", "{features}", "--out", "{tmp}/out.json", "--plot", "{tmp}/t.xyz"),
        r"--plot .*t\.xyz: unknown image format 'xyz'",
        setup=_previous_out,
    ),
    Case(
        "batch-out-is-file",
        "2",
        (*BATCH, "--out", "{tmp}/afile", "--snippet-rate", "2"),
        r"--out .*afile: is a file, expected a folder",
        setup=_a_file,
    ),
    # read-only outputs: chmod does not stop root (CI), a path on /proc does (no file can be made there)
    Case(
        "stream-out-read-only",
        "extra",
        (*STREAM, "--features", "{features}", "--out", "/proc/spot_out.json"),
        r"--out /proc/spot_out\.json: /proc is not writable",
    ),
    Case(
        "batch-out-read-only",
        "extra",
        (*BATCH, "--out", "/proc/spot_batch", "--snippet-rate", "2"),
        r"--out /proc/spot_batch: /proc is not writable",
    ),
    Case(
        "onnx-out-read-only",
        "extra",
        ("-m", "export.onnx", "--checkpoint", "{ckpt}", "--out", "/proc/spot.onnx"),
        r"--out /proc/spot\.onnx: /proc is not writable",
    ),
    Case(
        "batch-bad-model-keeps-out",
        "2",
        ("-m", "runtime.batch", "--model", "{onnx}", "--features", "{features}", "--out", "{tmp}/bout"),
        r"model\.onnx",
        setup=_earlier_batch_out,
    ),
    Case(
        "verify-json-under-a-file",
        "2",
        (*VERIFY, "--backends", "eager", "--json", "{tmp}/afile/rows.json"),
        r"--json .*afile.* is not a folder",
        setup=_a_file,
    ),
    Case(
        "onnx-out-is-folder",
        "2",
        ("-m", "export.onnx", "--checkpoint", "{ckpt}", "--out", "{tmp}/outdir"),
        r"--out .*outdir: is a folder",
        setup=_folder_named_out,
    ),
    Case(
        "quantize-out-under-a-file",
        "2",
        ("-m", "export.quantize", "{onnx}", "--out", "{tmp}/afile/q.onnx"),
        r"--out .*afile.* is not a folder",
        setup=_a_file,
    ),
    Case(
        "serving-out-is-file",
        "2",
        ("-m", "export.serving", "--onnx", "{onnx}", "--out", "{tmp}/afile"),
        r"--out .*afile: is a file, expected a folder",
        setup=_a_file,
    ),
    # 3: an existing model is never replaced without --overwrite
    Case(
        "onnx-overwrite-refused",
        "3",
        ("-m", "export.onnx", "--checkpoint", "{ckpt}", "--out", "{onnx}"),
        r"model\.onnx: already exists; pass --overwrite",
    ),
    Case(
        "quantize-overwrite-refused",
        "3",
        ("-m", "export.quantize", "{onnx}", "--out", "{tmp}/q.onnx"),
        r"q\.onnx: already exists; pass --overwrite",
        setup=_existing_file("q.onnx"),
    ),
    Case(
        "trt-overwrite-refused",
        "3",
        ("-m", "export.trt", "{onnx}", "--out", "{tmp}/m.plan"),
        r"m\.plan: already exists; pass --overwrite",
        setup=_existing_file("m.plan"),
    ),
    Case(
        "serving-overwrite-refused",
        "3",
        ("-m", "export.serving", "--onnx", "{onnx}", "--out", "{tmp}/repo"),
        r"spot_heads: model folder exists; pass --overwrite",
        setup=_existing_repository,
    ),
    # 4: what is loaded is checked against its recorded digest first
    Case(
        "stream-onnx-bitflip",
        "4",
        ("-m", "runtime.stream", "--model", "{onnx}", "--features", "{features}", "--out", "{tmp}/out.json"),
        r"model\.onnx: sha256 does not match the recorded digest",
        setup=_onnx_bitflip_with_out,
    ),
    Case(
        "verify-onnx-bitflip",
        "4",
        (*VERIFY, "--onnx", "{onnx}", "--backends", "onnxruntime"),
        r"model\.onnx: sha256 does not match the recorded digest",
        setup=_onnx_bitflip,
    ),
    Case(
        "serving-onnx-bitflip",
        "4",
        ("-m", "export.serving", "--onnx", "{onnx}", "--out", "{tmp}/repo"),
        r"model\.onnx: sha256 does not match the recorded digest",
        setup=_onnx_bitflip,
    ),
    Case(
        "quantize-onnx-bitflip",
        "4",
        ("-m", "export.quantize", "{onnx}", "--out", "{tmp}/q.onnx"),
        r"model\.onnx: sha256 does not match the recorded digest",
        setup=_onnx_bitflip,
    ),
    Case(
        "serving-engine-truncated",
        "4",
        ("-m", "export.serving", "--engine", "{tmp}/m.plan", "--out", "{tmp}/repo"),
        r"m\.plan: 8192 bytes, the recorded size is 16384",
        setup=_engine_cut,
    ),
    Case(
        "serving-engine-bitflip",
        "4",
        ("-m", "export.serving", "--engine", "{tmp}/m.plan", "--out", "{tmp}/repo"),
        r"m\.plan: sha256 does not match",
        setup=_engine_flip,
    ),
    Case(
        "stream-engine-truncated",
        "4",
        ("-m", "runtime.stream", "--model", "{tmp}/m.plan", "--features", "{features}"),
        r"m\.plan: 8192 bytes, the recorded size is 16384",
        setup=_engine_cut,
    ),
    Case(
        "verify-engine-truncated",
        "4",
        (*VERIFY, "--engine", "{tmp}/m.plan", "--backends", "tensorrt"),
        r"m\.plan: 8192 bytes, the recorded size is 16384",
        setup=_engine_cut,
    ),
    # 6: one line instead of a traceback
    Case(
        "stream-device-banana",
        "6",
        (*STREAM, "--features", "{features}", "--device", "banana"),
        r"--device 'banana': not a device",
    ),
    Case(
        "stream-device-no-cuda",
        "6",
        (*STREAM, "--features", "{features}", "--device", "cuda:99"),
        r"--device 'cuda:99': (CUDA is not available|this machine has)",
    ),
    Case(
        "batch-device-banana",
        "6",
        (*BATCH, "--out", "{tmp}/bout", "--snippet-rate", "2", "--device", "banana"),
        r"--device 'banana': not a device",
    ),
    Case(
        "verify-device-banana",
        "6",
        (*VERIFY, "--backends", "eager", "--device", "banana"),
        r"--device 'banana': not a device",
    ),
    Case(
        "verify-device-no-cuda",
        "6",
        (*VERIFY, "--backends", "eager", "--device", "cuda:99"),
        r"--device 'cuda:99': (CUDA is not available|this machine has)",
    ),
    Case(
        "batch-annotations-not-json",
        "6",
        (*BATCH, "--out", "{tmp}/bout", "--annotations", "{tmp}/gt.json"),
        r"gt\.json: not valid JSON",
        setup=_not_json,
    ),
    Case(
        "batch-annotations-missing-videos",
        "6",
        (*BATCH, "--out", "{tmp}/bout", "--annotations", "{tmp}/gt.json"),
        r"gt\.json: no entry for 4 feature files",
        setup=_annotations_missing_videos,
    ),
    Case(
        "batch-annotations-folder",
        "6",
        (*BATCH, "--out", "{tmp}/bout", "--annotations", "{tmp}/outdir"),
        r"outdir",
        setup=_folder_named_out,
    ),
    # 9: the error of a stream that fails is printed once (test_reliability_runtime counts it too)
    Case(
        "stream-error-once",
        "9",
        (*STREAM, "--features", "{tmp}/nan.npy"),
        r"^error: .*nan\.npy: stream 'nan' at snippet 150",
        setup=_nan_stream,
    ),
    # extra: what users try
    Case(
        "stream-empty-folder",
        "extra",
        (*STREAM, "--features", "{tmp}/empty", "--out", "{tmp}/out.json"),
        r"empty: no \.npy or \.csv feature files",
        setup=lambda t: (_empty_folder(t), _previous_out(t)),
    ),
    Case(
        "batch-empty-folder",
        "extra",
        (
            "-m",
            "runtime.batch",
            "--model",
            "{ckpt}",
            "--features",
            "{tmp}/empty",
            "--out",
            "{tmp}/bout",
            "--snippet-rate",
            "2",
        ),
        r"empty: no \*\.npy feature files",
        setup=_empty_folder,
    ),
    Case(
        "batch-wrong-width",
        "extra",
        (
            "-m",
            "runtime.batch",
            "--model",
            "{ckpt}",
            "--features",
            "{tmp}/bad",
            "--out",
            "{tmp}/bout",
            "--snippet-rate",
            "2",
        ),
        r"narrow\.npy: 7 channels per snippet, expected 32",
        setup=_bad_width_folder,
    ),
    Case(
        "stream-chunk-zero",
        "extra",
        (*STREAM, "--features", "{features}", "--chunk", "0"),
        r"--chunk must be >= 1",
    ),
    Case(
        "stream-batch-size-zero",
        "extra",
        (*STREAM, "--features", "{features}", "--batch-size", "0"),
        r"--batch-size must be >= 1",
    ),
    Case(
        "batch-shard-size-zero",
        "extra",
        (*BATCH, "--out", "{tmp}/bout", "--snippet-rate", "2", "--shard-size", "0"),
        r"--shard-size must be >= 1",
    ),
    Case(
        "stream-set-not-a-number",
        "extra",
        (*STREAM, "--features", "{features}", "--set", "data.stride=abc"),
        r"data\.stride: expected an integer, got 'abc'",
    ),
    Case(
        "onnx-set-not-a-number",
        "extra",
        (
            "-m",
            "export.onnx",
            "--checkpoint",
            "{ckpt}",
            "--out",
            "{tmp}/x.onnx",
            "--set",
            "model.num_heads=x",
        ),
        r"model\.num_heads",
    ),
    Case(
        "stream-symlinked-out-kept",
        "extra",
        (*STREAM, "--features", "{tmp}/bad", "--out", "{tmp}/out.json"),
        r"narrow\.npy: 7 channels per snippet",
        setup=_symlinked_out,
    ),
    Case(
        "stream-out-symlink-to-folder",
        "extra",
        (*STREAM, "--features", "{features}", "--out", "{tmp}/link.json"),
        r"--out .*link\.json: is a folder",
        setup=_symlink_to_folder,
    ),
]
