"""Long streams as data (spot_core.data.streams): raw featurisation, standardisation, labelled pieces."""

from __future__ import annotations

import numpy as np
import pytest

from spot_core.data.annotations import Instance, Video
from spot_core.data.features import FeatureError, snippetize_stream
from spot_core.data.streams import (
    RawChunker,
    StreamFeaturizer,
    cut_pieces,
    forbidden_cuts,
    snippet_features,
    split_pieces,
)


def _raw(n: int, ch: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, ch)).astype(np.float32)


def test_default_statistics_are_snippetize_stream():
    x = _raw(101)
    assert np.array_equal(snippet_features(x, 8), snippetize_stream(x, 8))
    f = snippet_features(x, 5, ("rms", "range"))
    assert f.shape == (20, 6)
    b = x[:100].astype(np.float64).reshape(20, 5, 3)
    np.testing.assert_allclose(f[:, :3], np.sqrt((b * b).mean(1)), rtol=1e-6)
    np.testing.assert_allclose(f[:, 3:], b.max(1) - b.min(1), rtol=1e-6)
    with pytest.raises(FeatureError, match="unknown snippet statistics"):
        snippet_features(x, 8, ("median",))


def test_featurizer_fitted_on_training_only_round_trips_and_chunks(tmp_path):
    train, other = _raw(800, seed=1) * 3 + 5, _raw(640, seed=2)
    f = StreamFeaturizer(samples_per_snippet=8, sample_rate=32.0).fit([snippet_features(train, 8)])
    assert f.snippet_rate == 4.0 and f.feat_dim == 12 and f.channels == 3
    z = f(train)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)
    g = StreamFeaturizer.load(f.save(tmp_path / "run" / "stream_features.json"))
    assert np.array_equal(g(other), f(other))
    assert np.array_equal(StreamFeaturizer.for_model(tmp_path / "run" / "best.safetensors")(other), f(other))
    with pytest.raises(FeatureError, match="not found"):
        StreamFeaturizer.for_model(tmp_path / "best.safetensors")
    with pytest.raises(FeatureError, match="expected \\[samples, 3 channels\\]"):
        f(_raw(64, ch=4))
    ch = RawChunker(f)
    parts = [ch.push(other[a : a + n]) for a, n in zip(range(0, 640, 13), [13] * 50, strict=False)]
    assert np.array_equal(np.concatenate(parts), f(other))


def test_pieces_labelled_on_a_long_stream():
    rate, n = 4.0, 4 * 3600  # one hour at 4 snippets per second
    rng = np.random.default_rng(0)
    starts = np.sort(rng.uniform(0, 3500, 120))
    inst = [
        Instance(float(s), float(s + rng.uniform(2, 40)), "a" if i % 2 else "b") for i, s in enumerate(starts)
    ]
    v = Video("long", n / rate, "training", inst, fps=rate, num_frames=n)
    pieces = cut_pieces(v, n, 60.0, rate)
    assert pieces[0][0] == 0 and pieces[-1][1] == n and len(pieces) >= 40
    assert not forbidden_cuts(v, n, rate)[[a for a, _ in pieces[1:]]].any()  # cuts lie in background
    feats = rng.standard_normal((n, 4)).astype(np.float32)
    sp = split_pieces({"long": (v, feats, rate)}, ["a", "b"], 0.1, seed=3)
    assert len(sp.labeled) == round(0.1 * len(pieces))
    vids = sp.annotations.videos
    lab = [k for k, x in vids.items() if x.labeled]
    assert {x.subset for x in vids.values()} == {"training", "training_unlabel"}
    assert sum(sp.features[k].shape[0] for k in vids) == n  # the runs cover the stream once
    n_inst = sum(len(x.instances) for x in vids.values())
    assert n_inst == len(inst)  # no instance is cut by a piece boundary
    assert sum(vids[k].num_frames for k in lab) == sum(pieces[i][1] - pieces[i][0] for _, i in sp.labeled)
    again = split_pieces({"long": (v, feats, rate)}, ["a", "b"], 0.1, seed=3)
    assert again.labeled == sp.labeled


def test_chunk_check_fast_path_and_overflowing_sums() -> None:
    """as_chunk sums the chunk first (one reduction) and looks at each value only when the sum is
    not finite: a sum that overflows from finite values is accepted, a NaN / Inf anywhere is not."""
    from spot_core.data.streams import ChunkError, as_chunk

    x = np.full((4, 3), 3e38, np.float32)  # finite values whose sum overflows float32
    assert as_chunk(x, 3) is x  # contiguous float32: no copy
    y = x.copy()
    y[2, 1] = np.nan
    with pytest.raises(ChunkError, match="channel 1 \\(chunk row 2\\)"):
        as_chunk(y, 3)
    z = np.ones((2, 3))
    z[1, 2] = 1e300  # finite float64, inf once float32
    with pytest.raises(ChunkError, match="non-finite value inf in channel 2 \\(chunk row 1\\)"):
        as_chunk(z, 3)
    assert as_chunk(np.ones((2, 3), np.int64), 3).dtype == np.float32
