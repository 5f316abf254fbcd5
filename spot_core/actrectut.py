"""ActRecTut gesture streams: the cross-subject protocol of issue 3 (item 5).

Data: ``../shared/data/actrectut`` (``gesture.json`` + ``subjectN_gesture_data.npy``, 32 Hz, 15
channels, 11 gesture classes, one ~35-minute stream per subject). The protocol, fixed so our numbers
compare with a peer's ActionFormer on the same features:

- **Featuriser** (:func:`featurise`): snippets of 8 raw samples (0.25 s, 4 snippets per second); per
  snippet and channel mean, std (ddof 0), min and max -> 60 dims, columns grouped by statistic
  (:func:`spot_core.data.features.snippetize_stream`).
- **Standardisation** (:func:`fit_standardiser`): per-channel mean/std of the *training subject's*
  snippets only; the test subject is standardised with those statistics.
- **Cross-subject**: train on one subject, test on the other, both directions; mAP at tIoU
  0.3:0.1:0.7 (``thumos`` protocol) and its average.
- **Label pieces** (:func:`cut_pieces`, :func:`draw_labeled`): the training stream is cut into
  pieces of about ``piece_sec`` = 60 s, each cut on a snippet boundary lying in background (never
  inside an instance, nor in a snippet that an instance touches); a seeded random
  ``round(fraction * pieces)`` (at least 1) of the pieces keep their labels, the rest are unlabelled.
  Consecutive pieces of the same status are joined into one training "video" (so windows may
  straddle a cut between two labelled pieces); with all labels the training video is the whole stream.
- **Test pieces**: the test stream is cut the same way into pieces of about ``test_piece_sec`` =
  300 s, each scored as one video (the peer's ~5-minute pieces), so ``decode.max_detections`` is a
  per-5-minutes cap rather than a per-stream one.

Windows are ``"window"`` mode at the native 4 snippets/s; segments are in seconds of each piece
(the test pieces' ``t0`` in :class:`Split` maps them back to the stream). Training windows may use a
denser stride (``train_stride``) than inference, which plays the role of random crops.

Entry points: :func:`build_split` (data of one direction), :func:`run_direction` (train + evaluate,
returns a result dict), :func:`trained_direction` (a trained model, its config and the standardised
test features for another component, e.g. the streaming runtime).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cli import reports_errors
from .config import ConfigError, SemiConfig, SpotConfig
from .data import streams as streams_lib
from .data.annotations import AnnotationError, AnnotationSet, Video, read_actrectut_json
from .data.features import snippetize_stream
from .data.streams import draw_labeled, read_stream
from .data.streams import join_runs as _runs
from .data.streams import sub_video as _sub_video
from .data.windows import FeatureStats, Window, make_windows
from .evaluation import PROTOCOLS, evaluate_detection
from .inference import predict_windows
from .outputs import write_json_atomic

log = logging.getLogger(__name__)

RAW_RATE = 32.0  # sensor samples per second
SAMPLES_PER_SNIPPET = 8
SNIPPET_RATE = RAW_RATE / SAMPLES_PER_SNIPPET  # 4 snippets per second
SUBJECTS = ("subject1_gesture", "subject2_gesture")
DIRECTIONS = {"1->2": (SUBJECTS[0], SUBJECTS[1]), "2->1": (SUBJECTS[1], SUBJECTS[0])}


@dataclass(frozen=True, eq=False)
class Stream:
    """One subject's stream: raw (unstandardised) snippet features and its annotations."""

    name: str
    features: np.ndarray  # [N, 60] float32
    video: Video

    @property
    def num_snippets(self) -> int:
        return int(self.features.shape[0])


def featurise(samples: np.ndarray) -> np.ndarray:
    """Raw stream ``[S, 15]`` -> snippet features ``[S // 8, 60]`` (mean | std | min | max per channel)."""
    return snippetize_stream(samples, SAMPLES_PER_SNIPPET)


def load_subjects(root: str | Path) -> tuple[list[str], dict[str, Stream]]:
    """``(class names, {stream name: Stream})`` from an ActRecTut folder (``gesture.json`` + ``.npy``).

    Each raw stream file is read by :func:`spot_core.data.streams.read_stream`, then featurised."""
    root = Path(root)
    aset = read_actrectut_json(root / "gesture.json")
    streams = {}
    for vid, v in aset.videos.items():
        if v.fps is not None and abs(v.fps - RAW_RATE) > 1e-6:
            raise ValueError(f"{root}: stream {vid} has fps {v.fps}, the protocol expects {RAW_RATE}")
        samples = read_stream(root / (v.feature_file or f"{vid}.npy"))
        streams[vid] = Stream(vid, featurise(samples), v)
    return list(aset.classes), streams


def stack_context(x: np.ndarray, offsets: tuple[int, ...]) -> np.ndarray:
    """``[N, C]`` -> ``[N, C * len(offsets)]``: row t holds rows ``t + o`` for each offset (edges
    repeat the first / last row). A diagnostic front-end, *not* the protocol's featuriser: it gives a
    per-snippet head the temporal shape that SPOT's single attention block (no positional encoding,
    1x1 classifier) cannot see; with offset ``o > 0`` a stream needs ``max(offsets)`` snippets of
    look-ahead."""
    if not offsets:
        return x
    n = x.shape[0]
    idx = np.clip(np.arange(n)[:, None] + np.asarray(offsets)[None, :], 0, n - 1)  # [N, O]
    return np.ascontiguousarray(x[idx].reshape(n, -1))


def context_offsets(radius: int, dilation: int = 1) -> tuple[int, ...]:
    """``(-radius..radius) * dilation``; radius 0 means no stacking (the protocol's 60 dims)."""
    return tuple(range(-radius * dilation, radius * dilation + 1, dilation)) if radius > 0 else ()


def fit_standardiser(train: Stream) -> FeatureStats:
    """Per-channel mean/std of the training subject's snippets (only those)."""
    return FeatureStats.fit([train.features])


def forbidden_cuts(video: Video, num_snippets: int, rate: float = SNIPPET_RATE) -> np.ndarray:
    """:func:`spot_core.data.streams.forbidden_cuts` at the protocol's 4 snippets per second."""
    return streams_lib.forbidden_cuts(video, num_snippets, rate)


def cut_pieces(
    video: Video, num_snippets: int, piece_sec: float = 60.0, rate: float = SNIPPET_RATE
) -> list[tuple[int, int]]:
    """:func:`spot_core.data.streams.cut_pieces` (pieces of about ``piece_sec``, cut at background)
    at the protocol's 4 snippets per second."""
    return streams_lib.cut_pieces(video, num_snippets, piece_sec, rate)


@dataclass
class Split:
    """The data of one direction, ready to train and evaluate."""

    cfg: SpotConfig  # with class names and window-mode settings
    stats: FeatureStats  # training subject's standardiser
    train_set: AnnotationSet  # training runs (labelled / unlabelled)
    train_windows: list[Window]
    test_set: AnnotationSet  # test pieces (one video each)
    test_windows: list[Window]
    test_features: dict[str, np.ndarray]  # standardised [N, 60] per test piece
    test_t0: dict[str, float]  # start of each test piece in the stream, seconds
    test_stream: np.ndarray | None = None  # the whole standardised test stream [N, C] (for streaming)
    pieces: list[tuple[int, int]] = field(default_factory=list)  # training pieces (snippets)
    labeled_pieces: list[int] = field(default_factory=list)
    reused_model: bool = False  # trained_direction loaded a stored run instead of training

    @property
    def labeled_seconds(self) -> float:
        return sum(self.pieces[i][1] - self.pieces[i][0] for i in self.labeled_pieces) / SNIPPET_RATE


def build_split(
    cfg: SpotConfig,
    classes: list[str],
    train: Stream,
    test: Stream,
    *,
    labeled_fraction: float | None = None,
    split_seed: int = 0,
    piece_sec: float = 60.0,
    test_piece_sec: float = 300.0,
    train_stride: int | None = None,
    context: tuple[int, ...] = (),
) -> Split:
    """Windows and annotations of ``train -> test``.

    ``labeled_fraction`` None or 1: the whole training stream is labelled. Otherwise the seeded draw of
    :func:`draw_labeled` over the ~``piece_sec`` pieces. Training windows use ``train_stride``
    (default ``cfg.data.stride``); test windows use ``cfg.data.stride``. ``context``: offsets of
    :func:`stack_context` applied after standardisation, per run / piece (``cfg.model.feat_dim`` must
    be ``60 * len(context)``); empty: the protocol's 60 dims.
    """
    rate = SNIPPET_RATE
    cfg = cfg.override(["data.mode=window", f"data.snippet_rate={rate}"])
    if not cfg.class_names:
        cfg = cfg.replace(class_names=tuple(classes))
    stats = fit_standardiser(train)
    pieces = cut_pieces(train.video, train.num_snippets, piece_sec, rate)
    if labeled_fraction is None or labeled_fraction >= 1.0:
        lab_idx = list(range(len(pieces)))
    else:
        lab_idx = draw_labeled(len(pieces), labeled_fraction, split_seed)
    status = [i in set(lab_idx) for i in range(len(pieces))]
    videos, feats = {}, {}
    for j, (a, b, s) in enumerate(_runs(pieces, status)):
        name = f"{train.name}/run{j:02d}"
        subset = "training" if s else "training_unlabel"
        videos[name] = _sub_video(train.video, a, b, name, subset, s, rate)
        feats[name] = stack_context(stats.apply(train.features[a:b]), context)
    train_set = AnnotationSet(videos, list(classes))
    tr_cfg = cfg if train_stride is None else cfg.override([f"data.stride={train_stride}"])
    train_windows = make_windows(train_set, feats, tr_cfg, snippet_rate=rate, progress=False)

    t_videos, t_feats, t0 = {}, {}, {}
    for j, (a, b) in enumerate(cut_pieces(test.video, test.num_snippets, test_piece_sec, rate)):
        name = f"{test.name}/piece{j:02d}"
        t_videos[name] = _sub_video(test.video, a, b, name, "validation", True, rate)
        t_feats[name] = stack_context(stats.apply(test.features[a:b]), context)
        t0[name] = a / rate
    test_set = AnnotationSet(t_videos, list(classes))
    test_windows = make_windows(test_set, t_feats, cfg, snippet_rate=rate, targets=False, progress=False)
    whole = stack_context(stats.apply(test.features), context)
    return Split(
        cfg, stats, train_set, train_windows, test_set, test_windows, t_feats, t0, whole, pieces, lab_idx
    )


def evaluate_split(model, split: Split, cfg: SpotConfig | None = None) -> dict:
    """mAP of ``model`` on the split's test pieces (``thumos`` tIoUs 0.3:0.1:0.7). Returns the result dict."""
    cfg = cfg or split.cfg
    preds = predict_windows(model, split.test_windows, cfg, durations=split.test_set.durations())
    return evaluate_detection(split.test_set, preds["results"], PROTOCOLS["thumos"], subset=None).to_dict()


#: the rows of issue 3 item 6: (labeled fraction, use unlabelled data, pretraining, refinement)
#: (issue 14: ``self``: rounds of self-training, spot_core.self_training; None: the config's own)
VARIANTS: dict[str, dict] = {
    "sup100": {"fraction": None, "semi": False, "pretrain": False, "refine": False, "self": 0},
    "sup10": {"fraction": 0.1, "semi": False, "pretrain": False, "refine": False, "self": 0},
    "spot10": {"fraction": 0.1, "semi": True, "pretrain": True, "refine": True, "self": None},
    "spot10_nopretrain": {"fraction": 0.1, "semi": True, "pretrain": False, "refine": True, "self": None},
    "spot10_norefine": {"fraction": 0.1, "semi": True, "pretrain": True, "refine": False, "self": None},
    "self10": {"fraction": 0.1, "semi": False, "pretrain": False, "refine": False, "self": 1},
}


def variant_config(cfg: SpotConfig, variant: str, seed: int) -> SpotConfig:
    """``cfg`` with the switches of one :data:`VARIANTS` row and the training seed."""
    v = VARIANTS[variant]
    sets = [
        f"train.seed={seed}",
        f"semi.use_unlabeled={str(v['semi']).lower()}",
        f"semi.refine={str(v['refine']).lower()}",
    ]
    if not v["pretrain"]:
        sets.append("semi.pretrain_epochs=0")
    if not v["semi"]:  # no pseudo-labels: the same run whatever the preset's ramp and thresholds
        d = SemiConfig()
        sets += [
            "semi.rampup_epochs=0",
            f"semi.mask_threshold={d.mask_threshold}",
            f"semi.cls_threshold={d.cls_threshold}",
        ]
    if v["self"] is not None:
        sets.append(f"semi.self_train_rounds={v['self']}")
    return cfg.override(sets)


def direction_split(
    data_dir: str | Path,
    direction: str = "1->2",
    *,
    cfg: SpotConfig | None = None,
    variant: str = "sup100",
    seed: int = 0,
    train_stride: int | None = None,
    context: tuple[int, ...] = (),
) -> tuple[Split, list[Window], Stream]:
    """The data of one protocol run, as :func:`trained_direction` trains it: ``(split, the windows it
    trains on, the training subject's stream)``; ``split.cfg`` is the run's config (``cfg`` with the
    variant's switches). Arguments as in :func:`trained_direction`."""
    cfg = cfg or SpotConfig.preset("actrectut")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
    classes, streams = load_subjects(data_dir)
    tr, te = DIRECTIONS[direction]
    missing = [s for s in (tr, te) if s not in streams]
    if missing:
        raise AnnotationError(
            f"{Path(data_dir) / 'gesture.json'}: no stream {missing[0]!r} (direction {direction})"
        )
    v = VARIANTS[variant]
    cfg = variant_config(cfg, variant, seed)
    if context:
        cfg = cfg.override([f"model.feat_dim={60 * len(context)}"])
    split = build_split(
        cfg, classes, streams[tr], streams[te], labeled_fraction=v["fraction"], split_seed=seed,
        train_stride=train_stride if train_stride is not None else default_train_stride(cfg), context=context,
    )  # fmt: skip
    windows = split.train_windows
    if not v["semi"] and not cfg.semi.self_train_rounds:
        windows = [w for w in windows if w.labeled]
    return split, windows, streams[tr]


def trained_direction(
    data_dir: str | Path,
    direction: str = "1->2",
    *,
    cfg: SpotConfig | None = None,
    variant: str = "sup100",
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: bool = False,
    train_stride: int | None = None,
    context: tuple[int, ...] = (),
    reuse: bool = False,
) -> tuple[torch.nn.Module, SpotConfig, dict[str, np.ndarray], AnnotationSet, Split]:
    """Train one direction and return ``(model, cfg, test features, test annotations, split)``.

    ``reuse`` (with ``out_dir``): when ``out_dir`` holds a finished run of the same training settings
    (``run_config.json``: the config without its ``decode`` section), load its model instead of
    training, and give it this config's decode (so a decode change re-scores stored models).

    The test features are the standardised ``[N, 60]`` snippets of each ~5-minute test piece (keys as
    in the annotations); a streaming runtime can feed them in chunks and compare with the offline
    :func:`evaluate_split` (``split.test_stream`` is the whole standardised test stream, and
    ``split.test_t0`` the start of each piece in it, in seconds). ``cfg`` defaults to the
    ``actrectut`` preset. ``context``: the diagnostic :func:`stack_context` offsets
    (``model.feat_dim`` is set to match).
    """
    import tempfile

    from .training import train_on_windows

    split, windows, _ = direction_split(
        data_dir, direction, cfg=cfg, variant=variant, seed=seed, train_stride=train_stride, context=context
    )
    from .checkpoint import load_model

    settings = training_settings(split.cfg)
    if reuse and out_dir is not None and stored_run_matches(Path(out_dir), settings):
        model, mcfg = load_model(Path(out_dir) / "last.safetensors")
        split.reused_model = True
        return model, mcfg.replace(decode=split.cfg.decode), split.test_features, split.test_set, split
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        train_on_windows(split.cfg, windows, None, [], out, progress=progress)
        if out_dir is not None:
            write_json_atomic(
                out / RUN_CONFIG, {"settings": settings, "train_seconds": time.perf_counter() - t0}
            )
        model, mcfg = load_model(out / "last.safetensors")
    return model, mcfg, split.test_features, split.test_set, split


#: a stored run's training settings (:func:`trained_direction` with ``out_dir``)
RUN_CONFIG = "run_config.json"


def training_settings(cfg: SpotConfig) -> dict:
    """What a trained model depends on: the config without its ``decode`` section (as JSON values)."""
    d = json.loads(json.dumps(cfg.to_dict()))
    d.pop("decode", None)
    return d


def stored_run_matches(folder: Path, settings: dict) -> bool:
    """``folder`` holds a finished run (``last.safetensors``, :data:`RUN_CONFIG`) of ``settings``."""
    meta = folder / RUN_CONFIG
    if not (meta.is_file() and (folder / "last.safetensors").is_file()):
        return False
    try:
        return json.loads(meta.read_text())["settings"] == settings
    except (ValueError, KeyError, TypeError):
        return False


def default_train_stride(cfg: SpotConfig) -> int:
    """Training-window stride: ``data.train_stride`` when set, else an eighth of the window (denser
    than inference, like random crops)."""
    if cfg.data.train_stride is not None:
        return cfg.data.train_stride
    return max(1, cfg.model.num_snippets // 8)


def run_direction(
    data_dir: str | Path,
    direction: str,
    variant: str,
    seed: int,
    *,
    cfg: SpotConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
    train_stride: int | None = None,
    context: tuple[int, ...] = (),
    reuse: bool = False,
) -> dict:
    """Train and evaluate one (direction, variant, seed). Returns mAPs (fractions), timing and split
    facts. ``reuse``: see :func:`trained_direction` (``train_seconds`` is then the stored run's)."""
    t0 = time.perf_counter()
    model, mcfg, _, _, split = trained_direction(
        data_dir, direction, cfg=cfg, variant=variant, seed=seed, out_dir=out_dir, progress=progress,
        train_stride=train_stride, context=context, reuse=reuse,
    )  # fmt: skip
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    if split.reused_model:  # the stored run's training time
        t_train = json.loads((Path(out_dir) / RUN_CONFIG).read_text()).get("train_seconds", t_train)
    res = evaluate_split(model, split, mcfg)
    out = {
        "direction": direction,
        "variant": variant,
        "seed": seed,
        "context": list(context),
        "average_mAP": res["average_mAP"],
        "mAP": res["mAP"],
        "train_seconds": round(t_train, 1),
        "reused_model": split.reused_model,
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "labeled_pieces": len(split.labeled_pieces),
        "pieces": len(split.pieces),
        "labeled_seconds": split.labeled_seconds,
        "train_windows_labeled": sum(w.labeled for w in split.train_windows),
        "train_windows_unlabeled": sum(not w.labeled for w in split.train_windows),
    }
    log.info(
        "%s %s seed %d: average mAP %.4f (%.0f s)", direction, variant, seed, out["average_mAP"], t_train
    )
    return out


@reports_errors
def main(argv: list[str] | None = None) -> int:
    """``python -m spot_core.actrectut --data DIR [--direction 1->2] [--variant sup100] [--seed 0]``.

    ``--out`` keeps the run's checkpoints (a folder that holds a run is refused unless
    ``--overwrite``). Bad input is one ``error:`` line (exit status 2); Ctrl-C exits 130."""
    import argparse

    from .cli import add_config_args, add_debug_arg, config_from_args, setup_logging

    p = argparse.ArgumentParser(prog="python -m spot_core.actrectut", description=main.__doc__)
    add_config_args(p, default_preset="actrectut")
    p.add_argument("--data", default="../shared/data/actrectut")
    p.add_argument("--direction", default="1->2", choices=sorted(DIRECTIONS))
    p.add_argument("--variant", default="sup100", choices=sorted(VARIANTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-stride", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for the run's checkpoints (default: a temporary one)")
    p.add_argument("--overwrite", action="store_true", help="replace the training run OUT holds")
    add_debug_arg(p)
    args = p.parse_args(argv)
    setup_logging()
    cfg = config_from_args(args)  # a bad --preset / --set fails before the data is read
    if args.train_stride is not None and args.train_stride < 1:
        raise ConfigError(f"--train-stride must be >= 1, got {args.train_stride}")
    if args.out is not None:
        from .train import check_run_folder

        check_run_folder(args.out, resume=False, overwrite=args.overwrite)
    r = run_direction(
        args.data, args.direction, args.variant, args.seed, cfg=cfg, out_dir=args.out,
        progress=False, train_stride=args.train_stride,
    )  # fmt: skip
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())


__all__ = [
    "DIRECTIONS",
    "SNIPPET_RATE",
    "Split",
    "Stream",
    "VARIANTS",
    "build_split",
    "cut_pieces",
    "draw_labeled",
    "evaluate_split",
    "featurise",
    "fit_standardiser",
    "forbidden_cuts",
    "load_subjects",
    "run_direction",
    "trained_direction",
]
