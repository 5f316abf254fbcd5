"""Raw recordings + an annotation file -> a dataset folder: ``python -m spot_core.data.prepare``.

::

    python -m spot_core.data.prepare --recordings DIR --annotations FILE --out DATA \\
        [--sample-rate HZ] [--samples-per-snippet 8] [--stats mean,std,min,max] \\
        [--training ID,...] [--validation ID,...]

``--recordings``: a folder of raw multichannel recordings, one ``.npy`` / ``.csv`` file ``[S, ch]``
per stream (all with the same channels and sample rate). A file belongs to the annotated stream
whose id is its name without suffix, or the start of its name followed by ``_``, ``-`` or ``.``
(``subject1_gesture_data.npy`` is stream ``subject1_gesture``). Recordings without annotations
are streams of background. ``--annotations``: ActivityNet-style JSON (``database``; per stream
``subset``, ``annotations``; ``fps`` is read as the sample rate) or a CSV with the columns
``video,label,start,end`` (seconds). Subsets: ``--validation`` (and ``--training``; default: the
other streams) or the JSON's ``training`` / ``validation`` subsets.

Writes ``DATA/annotations.json`` + ``DATA/features/<stream>.npy`` (the generic dataset folder of
``python -m spot_core.train --data``) and ``DATA/stream_features.json``: the featuriser (samples
per snippet, statistics, sample rate, and the standardisation fitted on the training streams only)
that training copies beside the model and inference applies to new raw recordings.

Every recording and the annotations are read and checked before anything is written (a bad file
stops the run with one ``error:`` line naming it: a dataset is all or nothing); each output file is
written atomically. An ``--out`` that already holds a dataset is refused unless ``--overwrite``
(which also removes the feature files of streams the new dataset does not have).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..cli import add_debug_arg, positive_finite, reports_errors, setup_logging
from ..errors import SpotError
from ..outputs import OutputError, check_output
from .annotations import (
    AnnotationError,
    AnnotationSet,
    Instance,
    Video,
    load_annotations,
    write_activitynet_json,
)
from .datasets import ANNOTATIONS_FILE, FEATURES_DIR
from .features import FeatureError, save_npy_atomic
from .streams import (
    DEFAULT_STATS,
    FEATURIZER_FILE,
    STREAM_SUFFIXES,
    StreamFeaturizer,
    read_stream,
    stream_id_for,
)

log = logging.getLogger(__name__)

__all__ = ["PrepareError", "main", "match_recordings", "prepare_dataset", "read_segments_csv"]

SEGMENT_COLUMNS = ("video", "label", "start", "end")


class PrepareError(SpotError, ValueError):
    """The recordings, annotations or options cannot make a dataset; the message says which."""


def read_segments_csv(path: str | Path) -> dict[str, list[Instance]]:
    """``video,label,start,end`` rows (seconds; a header row naming these columns) -> instances per
    video, in file order. Errors name the file and line."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not a UTF-8 text csv (byte {e.start}: {e.reason})") from None
    except csv.Error as e:
        raise AnnotationError(f"{path}: malformed csv ({e})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise AnnotationError(f"{path}: empty annotation csv")
    header = [c.strip().lower() for c in rows[0]]
    missing = [c for c in SEGMENT_COLUMNS if c not in header]
    if missing:
        raise AnnotationError(f"{path}: line 1: the header needs the columns {', '.join(SEGMENT_COLUMNS)}")
    col = {c: header.index(c) for c in SEGMENT_COLUMNS}
    out: dict[str, list[Instance]] = {}
    for line, r in enumerate(rows[1:], start=2):
        where = f"{path}: line {line}"
        if len(r) < len(header):
            raise AnnotationError(f"{where}: {len(r)} fields, the header has {len(header)}")
        vid, label = r[col["video"]].strip(), r[col["label"]].strip()
        if not vid or not label:
            raise AnnotationError(f"{where}: empty video or label")
        try:
            s, e = float(r[col["start"]]), float(r[col["end"]])
        except ValueError:
            raise AnnotationError(f"{where}: start and end must be numbers (seconds)") from None
        if not (np.isfinite(s) and np.isfinite(e)) or s < 0 or e <= s:
            raise AnnotationError(f"{where}: segment [{s}, {e}] must have 0 <= start < end")
        out.setdefault(vid, []).append(Instance(s, e, label))
    return out


def match_recordings(folder: str | Path, ids: Sequence[str]) -> dict[str, Path]:
    """``{stream id: file}`` for every recording in ``folder``: the annotated id the file name equals
    or starts with (then followed by ``_``, ``-`` or ``.``; the longest id wins), else the file stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrepareError(f"{folder}: recordings folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in STREAM_SUFFIXES)
    if not files:
        raise PrepareError(f"{folder}: no .npy or .csv recordings in the folder")
    out: dict[str, Path] = {}
    for f in files:
        sid = stream_id_for(f.stem, ids)
        if sid in out:
            raise PrepareError(f"{f}: a second recording for stream {sid!r} (first: {out[sid].name})")
        out[sid] = f
    return out


def _ids(arg: str | None) -> list[str]:
    return [] if not arg else [s.strip() for s in arg.split(",") if s.strip()]


def prepare_dataset(
    recordings: str | Path,
    annotations: str | Path,
    out: str | Path,
    *,
    sample_rate: float | None = None,
    samples_per_snippet: int = 8,
    stats: Sequence[str] = DEFAULT_STATS,
    training: Sequence[str] = (),
    validation: Sequence[str] = (),
    progress: bool = True,
) -> AnnotationSet:
    """Featurise every recording, standardise with the training streams' statistics, write the
    dataset folder (see the module doc). Returns the written annotations."""
    annotations = Path(annotations)
    if annotations.suffix.lower() == ".csv":
        per_video = read_segments_csv(annotations)
        given: dict[str, Video] = {}
    else:
        aset = load_annotations(annotations)
        given = dict(aset.videos)
        per_video = {k: list(v.instances) for k, v in given.items()}
    files = match_recordings(recordings, list(per_video) + [k for k in given if k not in per_video])
    unknown = [v for v in (*training, *validation) if v not in files]
    if unknown:
        raise PrepareError(f"--training / --validation name streams without a recording: {unknown[:5]}")
    no_file = [k for k in per_video if k not in files]
    if no_file:
        raise PrepareError(
            f"{annotations}: annotated streams without a recording in {recordings}: {no_file[:5]}"
        )
    rates = {k: v.fps for k, v in given.items() if v.fps is not None}
    if sample_rate is None:
        if len(set(rates.values())) != 1 or len(rates) != len(given) or not given:
            raise PrepareError(
                "give --sample-rate HZ (the annotations do not state one rate for every stream)"
            )
        sample_rate = float(next(iter(rates.values())))
    subsets = _subsets(files, given, training, validation)
    feat = StreamFeaturizer(samples_per_snippet, tuple(stats), float(sample_rate))
    out = Path(out)
    raw: dict[str, np.ndarray] = {}
    lengths: dict[str, int] = {}
    channels = None
    for sid, f in tqdm(files.items(), desc="featurise", unit="stream", disable=not progress):
        samples = read_stream(f)
        if channels is not None and samples.shape[1] != channels:
            raise PrepareError(f"{f}: {samples.shape[1]} channels, the other recordings have {channels}")
        channels = samples.shape[1]
        try:
            raw[sid] = feat.snippets(samples)
        except FeatureError as e:
            raise FeatureError(f"{f}: {e}") from None
        lengths[sid] = samples.shape[0]
    feat = feat.fit(raw[s] for s in files if subsets[s] == "training")
    classes = list(aset.classes) if given else sorted({i.label for v in per_video.values() for i in v})
    videos = {}
    for sid in tqdm(list(files), desc="write", unit="stream", disable=not progress):
        save_npy_atomic(out / FEATURES_DIR / f"{sid}.npy", feat.standardise(raw[sid]))
        n = raw[sid].shape[0]
        videos[sid] = Video(
            video_id=sid,
            duration=lengths[sid] / sample_rate,
            subset=subsets[sid],
            instances=per_video.get(sid, []),
            fps=float(sample_rate),
            num_frames=lengths[sid],
            feature_frames=n * samples_per_snippet,
        )
    result = AnnotationSet(videos, classes)
    for stale in (out / FEATURES_DIR).glob("*"):  # an earlier dataset's streams (--overwrite)
        if stale.suffix.lower() in STREAM_SUFFIXES and stale.stem not in files:
            stale.unlink()
    write_activitynet_json(result, out / ANNOTATIONS_FILE, version="spot-tad streams")
    feat.save(out / FEATURIZER_FILE)
    return result


def check_dataset_out(out: str | Path, overwrite: bool) -> None:
    """Before any work: ``out`` can be a dataset folder, and holds none already unless ``overwrite``."""
    out = Path(out)
    check_output(out, what="--out", folder=True)
    held = (out / ANNOTATIONS_FILE).exists() or (
        (out / FEATURES_DIR).is_dir() and any((out / FEATURES_DIR).iterdir())
    )
    if held and not overwrite:
        raise OutputError(f"--out {out}: holds a dataset already; pass --overwrite to replace it")


def _subsets(files: dict[str, Path], given: dict[str, Video], training, validation) -> dict[str, str]:
    both = set(training) & set(validation)
    if both:
        raise PrepareError(f"streams both in --training and --validation: {sorted(both)[:5]}")
    if validation or training:
        out = {}
        for s in files:
            if s in validation:
                out[s] = "validation"
            elif s in training or not training:
                out[s] = "training"
        if not any(v == "training" for v in out.values()):
            raise PrepareError("no training stream (every recording is in --validation)")
        dropped = sorted(set(files) - set(out))
        if dropped:
            log.info("streams in neither --training nor --validation are left out: %s", dropped[:5])
        return out
    subs = {s: given[s].base_subset if s in given else "training" for s in files}
    if not any(v == "training" for v in subs.values()) or not any(v == "validation" for v in subs.values()):
        raise PrepareError(
            "say which streams validate: --validation ID[,ID] (the annotations have no training and "
            f"validation subsets: {sorted(set(subs.values()))})"
        )
    return {s: v for s, v in subs.items() if v in ("training", "validation")}


@reports_errors
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spot_core.data.prepare", description=__doc__.split("\n")[0])
    p.add_argument(
        "--recordings", required=True, help="folder of raw recordings (.npy / .csv [samples, channels])"
    )
    p.add_argument("--annotations", required=True, help="ActivityNet-style JSON or csv video,label,start,end")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--sample-rate", type=float, help="samples per second (default: the JSON's fps)")
    p.add_argument("--samples-per-snippet", type=int, default=8, help="raw samples per snippet (default 8)")
    p.add_argument(
        "--stats", default=",".join(DEFAULT_STATS), help="per-snippet statistics (default mean,std,min,max)"
    )
    p.add_argument("--training", help="comma-separated training stream ids (default: all not validating)")
    p.add_argument("--validation", help="comma-separated validation stream ids")
    p.add_argument("--overwrite", action="store_true", help="replace the dataset OUT holds (default: refuse)")
    p.add_argument("--no-progress", action="store_true")
    add_debug_arg(p)
    args = p.parse_args(argv)
    setup_logging(1)
    positive_finite(args.sample_rate, "--sample-rate")
    check_dataset_out(args.out, args.overwrite)
    aset = prepare_dataset(
        args.recordings, args.annotations, args.out, sample_rate=args.sample_rate,
        samples_per_snippet=args.samples_per_snippet, stats=_ids(args.stats),
        training=_ids(args.training), validation=_ids(args.validation), progress=not args.no_progress,
    )  # fmt: skip
    counts = aset.subset_counts()
    print(
        f"{args.out}: {len(aset)} streams ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}), "
        f"{len(aset.classes)} classes, {aset.num_instances()} instances"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
