"""Corpus-scale offline detection, sharded across processes, restartable after a crash.

``python -m runtime.batch --model CKPT --features DIR --out DIR`` (one process) or
``torchrun --nproc_per_node N -m runtime.batch ...`` (N processes; one GPU each when present).

How it works:

* the videos (feature files ``DIR/<video>.<ext>``, sorted by id) are cut into fixed shards of
  ``--shard-size`` videos; shard i goes to rank ``i % world_size``. The cut does not depend on the
  number of processes, so a rerun with another N reuses every finished shard;
* each shard is detected on its own (windows batched within the shard, then
  :func:`spot_core.inference.predict_windows`) and written atomically to
  ``OUT/shards/shard_XXXXX.json`` (:func:`spot_core.outputs.write_bytes_atomic`: temporary file,
  fsync, rename): a killed process leaves either a
  complete shard file or none;
* every shard file carries a run key (sha256 of the checkpoint, the feature file list and the
  settings that change results) and a sha256 of its own results. A rerun skips shards whose file
  validates; a file that does not (truncated, edited, another run's) is reported, moved aside to
  ``*.corrupt`` and recomputed, never used;
* after a barrier, rank 0 checks that every video of the corpus is in exactly one valid shard and
  writes the merged ActivityNet result JSON ``OUT/detections.json`` (atomically).

Because a shard's output depends only on its own videos and the batching inside it, the merged
result of N processes equals the one-process result exactly for the same ``--shard-size`` and
``--batch-size`` (other sizes batch the windows differently, which changes scores in the last
float bits; the run key includes both, so finished shards are never mixed across sizes).

Seconds: with ``--annotations`` the videos' durations come from the file (rescale mode needs them);
otherwise a video of n snippets lasts ``n / snippet_rate`` seconds (``--snippet-rate``, else the
config's ``data.snippet_rate``), and without either the run is refused.

Bad input is one line ``error: ...``, exit status 2 (``--debug``: the traceback): a rate that is not
a finite number > 0, an unknown or absent ``--device``, an ``--out`` that is a file or cannot be
written (checked before the model loads), an unusable model, feature folder or annotation file.
Ctrl-C stops with ``interrupted``, exit status 130; finished shards stay and a rerun reuses them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from spot_core.checkpoint import CheckpointError, load_model
from spot_core.cli import add_debug_arg, check_device, positive_finite, reports_errors, setup_logging
from spot_core.config import ConfigError, SpotConfig
from spot_core.data.annotations import AnnotationSet, Video
from spot_core.data.features import FEATURE_EXTS, FeatureError, FeatureStore
from spot_core.data.windows import make_windows
from spot_core.decode import RESULTS_VERSION
from spot_core.errors import SpotError
from spot_core.inference import predict_windows
from spot_core.outputs import check_output, sha256_file, write_bytes_atomic

__all__ = ["BatchError", "Shard", "detect_corpus", "main", "plan_shards", "read_shard"]

log = logging.getLogger("runtime.batch")
SHARD_FORMAT = "spot-batch-shard/1"


class BatchError(SpotError, ValueError):
    """Bad input or an output folder that cannot be used."""


@dataclass(frozen=True)
class Shard:
    index: int
    videos: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"shard_{self.index:05d}.json"


def plan_shards(video_ids: Sequence[str], shard_size: int) -> list[Shard]:
    """Consecutive shards of ``shard_size`` videos over the sorted ids (independent of the world size)."""
    if shard_size < 1:
        raise BatchError(f"--shard-size must be >= 1, got {shard_size}")
    ids = sorted(video_ids)
    return [Shard(i // shard_size, tuple(ids[i : i + shard_size])) for i in range(0, len(ids), shard_size)]


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def read_shard(path: Path, key: str, shard: Shard) -> dict[str, list[dict[str, Any]]]:
    """The results of a finished shard file; :class:`BatchError` naming the problem if it is not valid."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise BatchError(f"{path}: unreadable shard file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != SHARD_FORMAT:
        raise BatchError(f"{path}: not a shard file of this tool")
    if doc.get("run_key") != key:
        raise BatchError(f"{path}: written by another run (other checkpoint, features or settings)")
    results = doc.get("results")
    if not isinstance(results, dict) or hashlib.sha256(_canonical(results)).hexdigest() != doc.get("sha256"):
        raise BatchError(f"{path}: checksum mismatch (truncated or modified)")
    if tuple(doc.get("videos", ())) != shard.videos or sorted(results) != sorted(shard.videos):
        raise BatchError(f"{path}: holds other videos than shard {shard.index}")
    return results


@dataclass
class Job:
    cfg: SpotConfig
    model: torch.nn.Module
    store: FeatureStore
    aset: AnnotationSet
    key: str
    out: Path
    batch_size: int


def _annotations(
    store: FeatureStore, cfg: SpotConfig, annotations: str | None, snippet_rate: float | None
) -> AnnotationSet:
    ids = list(store)
    if not ids:
        raise BatchError(f"{store.root}: no *.{store.ext} feature files")
    classes = cfg.names()
    if annotations:
        from spot_core.data.annotations import load_annotations

        given = load_annotations(annotations)
        missing = [v for v in ids if v not in given.videos]
        if missing:
            raise BatchError(f"{annotations}: no entry for {len(missing)} feature files, e.g. {missing[:3]}")
        return AnnotationSet({v: given.videos[v] for v in ids}, classes)
    rate = snippet_rate if snippet_rate is not None else cfg.data.snippet_rate
    if rate is not None:
        _positive_finite(rate, "--snippet-rate" if snippet_rate is not None else "data.snippet_rate")
    if rate is None:
        raise BatchError(
            "durations unknown: give --annotations (a file with the videos' durations) or --snippet-rate "
            "(snippets per second), or use a config with data.snippet_rate"
        )
    videos = {}
    for v in ids:
        n = store.load(v).shape[0]
        videos[v] = Video(video_id=v, duration=n / rate, subset="testing", labeled=False)
    return AnnotationSet(videos, classes)


def _positive_finite(value: float, what: str) -> float:
    try:
        return positive_finite(value, what)
    except ConfigError as e:
        raise BatchError(str(e)) from None


def _run_key(model_path: Path, store: FeatureStore, cfg: SpotConfig, shard_size: int, batch_size: int) -> str:
    h = hashlib.sha256()
    h.update(sha256_file(model_path).encode())
    h.update(cfg.config_hash().encode())
    for v in store:
        p = store.path(v)
        st = p.stat()
        h.update(f"{v}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(f"shard={shard_size};batch={batch_size}".encode())
    return h.hexdigest()


def _detect_shard(job: Job, shard: Shard) -> dict[str, list[dict[str, Any]]]:
    sub = AnnotationSet({v: job.aset.videos[v] for v in shard.videos}, list(job.aset.classes))
    windows = make_windows(sub, job.store, job.cfg, targets=False, progress=False)
    durations = {v: sub.videos[v].duration for v in shard.videos}
    res = predict_windows(job.model, windows, job.cfg, batch_size=job.batch_size, durations=durations)
    results = res["results"]
    for v in shard.videos:  # a video without windows still appears, with no detections
        results.setdefault(v, [])
    return results


def _dist() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return rank, world, local


def detect_corpus(
    model_path: str | Path,
    features: str | Path,
    out: str | Path,
    *,
    ext: str = "npy",
    annotations: str | None = None,
    snippet_rate: float | None = None,
    shard_size: int = 64,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
) -> Path | None:
    """Detect every video of ``features`` into ``out``; rank 0 returns the merged JSON path (others None).

    Reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as torchrun sets them (one process otherwise).
    Options and ``out`` are checked before the model loads (:class:`BatchError` naming them).
    """
    if snippet_rate is not None:
        _positive_finite(snippet_rate, "--snippet-rate")
    for opt, value in (("--shard-size", shard_size), ("--batch-size", batch_size)):
        if value < 1:
            raise BatchError(f"{opt} must be >= 1, got {value}")
    try:
        check_output(out, folder=True)
        check_device(device)
    except (ConfigError, ValueError) as e:
        raise BatchError(str(e)) from None
    rank, world, local = _dist()
    model_path = Path(model_path)
    try:
        model, cfg = load_model(model_path)
    except CheckpointError as e:
        raise BatchError(str(e)) from None
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    try:
        store = FeatureStore(features, ext, expected_dim=cfg.model.feat_dim)
    except FeatureError as e:
        raise BatchError(str(e)) from None
    aset = _annotations(store, cfg, annotations, snippet_rate)
    out = Path(out)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    key = _run_key(model_path, store, cfg, shard_size, batch_size)
    job = Job(cfg, model, store, aset, key, out, batch_size)
    shards = plan_shards(list(aset.videos), shard_size)
    mine = [s for s in shards if s.index % world == rank]
    done = skipped = 0
    for shard in tqdm(mine, desc=f"rank {rank} shards", unit="shard", disable=not progress):
        path = shard_dir / shard.name
        if path.exists():
            try:
                read_shard(path, key, shard)
                skipped += 1
                continue
            except BatchError as e:
                log.warning("%s; recomputing it (the bad file is kept as %s.corrupt)", e, path.name)
                os.replace(path, path.with_name(path.name + ".corrupt"))
        results = _detect_shard(job, shard)
        doc = {
            "format": SHARD_FORMAT,
            "run_key": key,
            "shard": shard.index,
            "videos": list(shard.videos),
            "sha256": hashlib.sha256(_canonical(results)).hexdigest(),
            "results": results,
        }
        write_bytes_atomic(path, _canonical(doc))
        done += 1
    log.info("rank %d: %d shards detected, %d already done", rank, done, skipped)
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        return None
    return merge_shards(shards, shard_dir, key, out / "detections.json")


def merge_shards(shards: Sequence[Shard], shard_dir: Path, key: str, dest: Path) -> Path:
    """Check that every video is in exactly one valid shard; write the merged result JSON atomically."""
    merged: dict[str, list[dict[str, Any]]] = {}
    for shard in shards:
        path = shard_dir / shard.name
        if not path.exists():
            raise BatchError(f"{path}: shard {shard.index} missing after every rank finished")
        for v, dets in read_shard(path, key, shard).items():
            if v in merged:
                raise BatchError(f"video {v!r} appears in two shards")
            merged[v] = dets
    expected = [v for s in shards for v in s.videos]
    if sorted(merged) != sorted(expected):
        raise BatchError("merged results do not cover the corpus exactly once")
    doc = {"version": RESULTS_VERSION, "results": {v: merged[v] for v in sorted(merged)}, "external_data": {}}
    write_bytes_atomic(dest, json.dumps(doc).encode())
    return dest


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m runtime.batch",
        description="Sharded, restartable offline detection over a folder of feature files "
        "(run under torchrun for several processes).",
    )
    ap.add_argument("--model", required=True, help="checkpoint (.safetensors)")
    ap.add_argument("--features", required=True, help="folder of per-video feature files")
    ap.add_argument("--out", required=True, help="output folder (shards/ and detections.json)")
    ap.add_argument("--ext", default="npy", choices=FEATURE_EXTS, help="feature file extension (default npy)")
    ap.add_argument("--annotations", help="annotation file giving the videos' durations")
    ap.add_argument("--snippet-rate", type=float, help="snippets per second (durations = snippets / rate)")
    ap.add_argument("--shard-size", type=int, default=64, help="videos per shard (default 64)")
    ap.add_argument("--batch-size", type=int, default=64, help="windows per forward (default 64)")
    ap.add_argument("--device", help="torch device (default: cuda:LOCAL_RANK when present, else cpu)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_arg(ap)
    return ap


@reports_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Detect the corpus; prints the merged file. Bad input: one line ``error: ...``, status 2."""
    args = build_parser().parse_args(argv)
    setup_logging(1)
    try:
        dest = detect_corpus(
            args.model, args.features, args.out, ext=args.ext, annotations=args.annotations,
            snippet_rate=args.snippet_rate, shard_size=args.shard_size, batch_size=args.batch_size,
            device=args.device, progress=not args.no_progress,
        )  # fmt: skip
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if dest is not None:
        n = len(json.loads(dest.read_text())["results"])
        print(f"wrote {dest} ({n} videos)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
