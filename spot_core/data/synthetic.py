"""Deterministic synthetic detection data: the project's embedded default data set.

:func:`generate_dataset` writes a dataset folder in the on-disk formats the real pipeline reads
(:func:`spot_core.data.datasets.load_dataset`)::

    <out_dir>/annotations.json       official ActivityNet layout, subsets training / validation,
                                     plus "classes", "snippet_rate" and the "generator" settings
    <out_dir>/features/<video>.npy   [N, C] float32, snippet n covers [n, n + 1) / snippet_rate s

Same arguments -> byte-identical files (every video draws from its own
``numpy.random.default_rng([seed, split, index])``; JSON is written in a fixed order).

What makes it a detection problem rather than a per-snippet classification one:

- **several instances** per video (1 to ``max_instances``, classes drawn independently), videos of
  ``min_snippets`` to ``max_snippets`` snippets (log-uniform), instances of ``inst_frac`` of the
  video, separated by at least one snippet of background;
- **blurred boundaries**: an instance's features ramp in and out linearly over ``ramp_frac`` of the
  video (at least one snippet); the ground-truth boundary is the ramp's midpoint;
- **structured background**: a per-video scene in a low-dimensional background subspace with scene
  cuts (piecewise-constant jumps) and a slow AR(1) drift; **distractor bursts**: short (2-4% of the
  video) weak copies of one phase of a random class, labelled background;
- **confusable classes**, in pairs that share a prototype, each pair of one kind (cycling):

  - ``order``: two sub-phases P and Q; class a is P then Q, class b is Q then P. Every snippet looks
    the same for both classes: only the order inside the instance tells them apart.
  - ``fewdims``: a shared base plus / minus a small offset on 3 dimensions: separable per
    snippet only noisily, reliably after pooling over the instance.
  - ``rhythm``: class a is steady; class b alternates +M / -M over 4 blocks of the instance (plus a
    weak steady offset on 3 dims). A per-snippet linear classifier cannot carve the steady class
    out of the middle of the two lobes; only the weak offset helps it.

  An odd last class is ``plain`` (its own prototype).
- all instances share an "actionness" component (foreground is easier to find than its class),
  amplitudes vary per instance, and i.i.d. Gaussian noise is added everywhere.

Measured with the defaults (toy preset, rescale T=64, 240 training / 60 validation videos, seeds 0
and 7), average mAP@[0.5:0.95] on validation: per-snippet logistic regression with runs of the
argmax class as detections 28-31% (11-16% with multi-threshold runs); a 3-layer dilated temporal
convolution with the same decoding 77-82%; ground-truth targets through the same decoding ~93%
(the ceiling set by T=64 quantisation). The order pair stays near 5% for the per-snippet model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SpotConfig
from .annotations import AnnotationSet, Instance, Video, write_activitynet_json
from .features import save_npy_atomic

logger = logging.getLogger(__name__)

PAIR_KINDS = ("order", "fewdims", "rhythm")
_SPLIT_CODE = {"training": 0, "validation": 1}


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and difficulty knobs of the synthetic data (defaults: the ``toy`` preset's C and K)."""

    feat_dim: int = 32  # C
    num_classes: int = 6  # K
    snippet_rate: float = 2.0  # snippets per second
    min_snippets: int = 40
    max_snippets: int = 400
    max_instances: int = 4
    inst_frac: tuple[float, float] = (0.06, 0.3)  # instance length as a fraction of the video
    min_inst_snippets: float = 4.0
    ramp_frac: tuple[float, float] = (0.01, 0.03)  # boundary ramp width as a fraction of the video
    amplitude: tuple[float, float] = (0.6, 1.2)  # per-instance scale of the class pattern
    actionness: float = 0.5  # weight of the component shared by all classes
    fewdims_offset: float = 0.9  # +/- offset on 3 dims between the two 'fewdims' classes
    rhythm_strength: float = 0.9  # amplitude of the alternating component of 'rhythm' class b
    rhythm_bias: float = 0.8  # a weak steady offset on 3 dims of 'rhythm' class b (a per-snippet cue)
    bg_dims: int = 4  # background subspace
    bg_scale: float = 0.8  # per-dim std of the background scene
    scene_cuts_per_100: float = 0.6  # expected scene cuts per 100 snippets
    drift: float = 0.3  # AR(1) drift std per dim
    distractors_per_100: float = 1.0  # expected distractor bursts per 100 snippets
    distractor_amplitude: tuple[float, float] = (0.35, 0.7)
    noise: float = 0.6  # i.i.d. Gaussian noise std per dim

    def __post_init__(self) -> None:
        if self.feat_dim < 8:
            raise ValueError(f"synthetic data needs feat_dim >= 8, got {self.feat_dim}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not 1 <= self.min_snippets <= self.max_snippets:
            raise ValueError("need 1 <= min_snippets <= max_snippets")
        if self.min_snippets < 2 * self.min_inst_snippets + 2:
            raise ValueError("min_snippets too small for one instance plus background")
        if self.snippet_rate <= 0:
            raise ValueError("snippet_rate must be > 0")

    @staticmethod
    def from_config(cfg: SpotConfig, **changes: Any) -> SyntheticSpec:
        return SyntheticSpec(feat_dim=cfg.model.feat_dim, num_classes=cfg.model.num_classes, **changes)


def class_kinds(num_classes: int) -> list[tuple[str, int]]:
    """Per class: (kind, role) with role 0/1 inside its pair (``plain`` for an odd last class)."""
    out = []
    for c in range(num_classes):
        pair = c // 2
        if c == num_classes - 1 and num_classes % 2 == 1:
            out.append(("plain", 0))
        else:
            out.append((PAIR_KINDS[pair % len(PAIR_KINDS)], c % 2))
    return out


def class_names(num_classes: int) -> list[str]:
    """Readable names: ``<kind><pair>_<a|b>`` (e.g. ``order0_a``) or ``plain<k>``."""
    names = []
    for c, (kind, role) in enumerate(class_kinds(num_classes)):
        names.append(f"plain{c}" if kind == "plain" else f"{kind}{c // 2}_{'ab'[role]}")
    return names


class _Prototypes:
    """The class patterns, shared by all videos of one seed."""

    def __init__(self, spec: SyntheticSpec, rng: np.random.Generator) -> None:
        c = spec.feat_dim
        self.spec = spec
        self.kinds = class_kinds(spec.num_classes)
        self.actionness = rng.standard_normal(c)
        self.bg_basis = rng.standard_normal((c, spec.bg_dims)) / math.sqrt(spec.bg_dims)
        self.pairs: dict[int, dict[str, np.ndarray]] = {}
        for k in range(spec.num_classes):
            pair = k // 2
            if pair in self.pairs:
                continue
            kind = self.kinds[k][0]
            p: dict[str, np.ndarray] = {"base": rng.standard_normal(c), "alt": rng.standard_normal(c)}
            dims = rng.choice(c, size=3, replace=False)
            off = np.zeros(c)
            off[dims] = spec.fewdims_offset * rng.choice([-1.0, 1.0], size=3)
            p["offset"] = off
            p["bias"] = off / max(spec.fewdims_offset, 1e-12) * spec.rhythm_bias
            if kind == "rhythm":
                p["alt"] = p["alt"] * spec.rhythm_strength
            self.pairs[pair] = p

    def pattern(self, k: int, u: np.ndarray) -> np.ndarray:
        """Class k's features at relative positions ``u`` in [0, 1] of the instance: ``[len(u), C]``."""
        kind, role = self.kinds[k]
        p = self.pairs[k // 2]
        u = u[:, None]
        if kind == "order":
            # P then Q (role 0) or Q then P (role 1), with a short smooth hand-over at the middle
            w = np.clip((u - 0.5) / 0.1 + 0.5, 0.0, 1.0)
            first, second = (p["base"], p["alt"]) if role == 0 else (p["alt"], p["base"])
            x = (1 - w) * first + w * second
        elif kind == "fewdims":
            x = p["base"] + (p["offset"] if role == 0 else -p["offset"]) + 0 * u
        elif kind == "rhythm":
            sign = np.where(np.floor(u * 4).astype(int) % 2 == 0, 1.0, -1.0)
            x = p["base"] + (0.0 * u if role == 0 else sign * p["alt"] + p["bias"])
        else:  # plain
            x = p["base"] + 0 * u
        return x + self.spec.actionness * self.actionness

    def distractor(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """One phase of class k's pattern (what a burst looks like)."""
        u = np.array([rng.uniform(0.0, 1.0)])
        return self.pattern(k, u)[0] - self.spec.actionness * self.actionness * rng.uniform(0.0, 1.0)


def _layout(spec: SyntheticSpec, n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Instance spans in snippet units (continuous), sorted, separated by >= 1 snippet."""
    lo, hi = spec.inst_frac
    max_m = spec.max_instances
    while True:
        m = int(rng.integers(1, max_m + 1))
        lengths = np.maximum(rng.uniform(lo, hi, size=m) * n, spec.min_inst_snippets)
        background = n - lengths.sum()
        if background >= (m + 1) * 2.0 or m == 1:
            break
        max_m = max(1, m - 1)
    if background < (m + 1) * 2.0:  # a single instance too long for a short video: shrink it
        lengths[:] = max(spec.min_inst_snippets, n * lo)
        background = n - lengths.sum()
    gaps = 1.0 + (background - (m + 1)) * rng.dirichlet(np.ones(m + 1))
    spans = []
    t = gaps[0]
    for j in range(m):
        spans.append((float(t), float(t + lengths[j])))
        t += lengths[j] + gaps[j + 1]
    return spans


def _video(
    spec: SyntheticSpec, protos: _Prototypes, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[float, float, int]]]:
    """Features ``[N, C]`` float32 and instances ``(start, end, class)`` in snippet units."""
    c, k = spec.feat_dim, spec.num_classes
    n = int(round(math.exp(rng.uniform(math.log(spec.min_snippets), math.log(spec.max_snippets)))))
    centres = np.arange(n) + 0.5

    # structured background: scene (piecewise constant, cuts at random times) + AR(1) drift
    x = np.zeros((n, c))
    cuts = np.sort(rng.uniform(0, n, size=rng.poisson(spec.scene_cuts_per_100 * n / 100)))
    bounds = np.concatenate([[0], np.ceil(cuts).astype(int), [n]])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b > a:
            x[a:b] += spec.bg_scale * (protos.bg_basis @ rng.standard_normal(spec.bg_dims))
    rho = 0.95
    d = np.zeros(c)
    eps = rng.standard_normal((n, c)) * spec.drift * math.sqrt(1 - rho * rho)
    for t in range(n):
        d = rho * d + eps[t]
        x[t] += d

    # instances with blurred boundaries
    instances = []
    for s, e in _layout(spec, n, rng):
        cls = int(rng.integers(0, k))
        ramp = max(1.0, rng.uniform(*spec.ramp_frac) * n)
        env = np.clip((centres - s) / ramp + 0.5, 0, 1) * np.clip((e - centres) / ramp + 0.5, 0, 1)
        idx = np.nonzero(env > 0)[0]
        u = np.clip((centres[idx] - s) / (e - s), 0.0, 1.0)
        amp = rng.uniform(*spec.amplitude)
        jitter = 0.15 * rng.standard_normal(c)  # instance-level variation
        x[idx] += amp * env[idx, None] * (protos.pattern(cls, u) + jitter)
        instances.append((s, e, cls))

    # distractor bursts in the background (may touch instances: real clutter does)
    for _ in range(rng.poisson(spec.distractors_per_100 * n / 100)):
        length = max(2.0, rng.uniform(0.02, 0.04) * n)
        s = rng.uniform(0, n - length)
        env = np.clip((centres - s) / 1.0 + 0.5, 0, 1) * np.clip((s + length - centres) / 1.0 + 0.5, 0, 1)
        idx = np.nonzero(env > 0)[0]
        vec = protos.distractor(int(rng.integers(0, k)), rng)
        x[idx] += rng.uniform(*spec.distractor_amplitude) * env[idx, None] * vec

    x += spec.noise * rng.standard_normal((n, c))
    return x.astype(np.float32), instances


def generate_dataset(
    out_dir: str | Path,
    cfg_or_sizes: SpotConfig | SyntheticSpec | dict[str, Any] | None = None,
    *,
    num_train: int = 240,
    num_val: int = 60,
    seed: int = 0,
) -> Path:
    """Write the synthetic dataset folder and return ``out_dir``.

    ``cfg_or_sizes``: a :class:`SpotConfig` (its ``feat_dim`` and ``num_classes``), a
    :class:`SyntheticSpec`, a dict of :class:`SyntheticSpec` fields, or None (defaults, C=32, K=6).
    Videos are ``train_0000``... (subset ``training``) and ``val_0000``... (``validation``); all are
    labeled (use :func:`~spot_core.data.annotations.split_labels` for a semi-supervised split).
    Existing files of the same names are overwritten; other files in ``out_dir`` are left alone.
    """
    if isinstance(cfg_or_sizes, SpotConfig):
        spec = SyntheticSpec.from_config(cfg_or_sizes)
    elif isinstance(cfg_or_sizes, SyntheticSpec):
        spec = cfg_or_sizes
    elif isinstance(cfg_or_sizes, dict):
        d = dict(cfg_or_sizes)
        for key in ("inst_frac", "ramp_frac", "amplitude", "distractor_amplitude"):
            if key in d:
                d[key] = tuple(d[key])
        spec = SyntheticSpec(**d)
    elif cfg_or_sizes is None:
        spec = SyntheticSpec()
    else:
        raise TypeError(
            f"cfg_or_sizes must be a SpotConfig, SyntheticSpec, dict or None, got {type(cfg_or_sizes)}"
        )
    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    out = Path(out_dir)
    feat_dir = out / "features"
    feat_dir.mkdir(parents=True, exist_ok=True)
    protos = _Prototypes(spec, np.random.default_rng([seed, 1_000_003]))
    names = class_names(spec.num_classes)
    videos: dict[str, Video] = {}
    for subset, count, prefix in (("training", num_train, "train"), ("validation", num_val, "val")):
        for i in range(count):
            rng = np.random.default_rng([seed, _SPLIT_CODE[subset], i])
            feats, insts = _video(spec, protos, rng)
            vid = f"{prefix}_{i:04d}"
            save_npy_atomic(feat_dir / f"{vid}.npy", feats)
            rate = spec.snippet_rate
            videos[vid] = Video(
                video_id=vid,
                duration=round(feats.shape[0] / rate, 6),
                subset=subset,
                instances=[Instance(round(s / rate, 4), round(e / rate, 4), names[c]) for s, e, c in insts],
            )
    aset = AnnotationSet(videos, names)
    meta = {"snippet_rate": spec.snippet_rate, "generator": {"seed": seed, **_jsonable(asdict(spec))}}
    write_activitynet_json(aset, out / "annotations.json", version="spot-tad synthetic v1", extra=meta)
    logger.info("synthetic dataset: %d training + %d validation videos in %s", num_train, num_val, out)
    return out


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
