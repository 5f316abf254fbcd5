"""The ActRecTut protocol (spot_core.actrectut): featuriser, standardisation, label pieces, real files.

Synthetic streams check the pieces by hand; the real-data tests read ``../shared/data/actrectut``
through the ``shared_data`` fixture (skip without it, fail under CI).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spot_core.actrectut import (
    SNIPPET_RATE,
    Stream,
    build_split,
    context_offsets,
    cut_pieces,
    draw_labeled,
    evaluate_split,
    featurise,
    fit_standardiser,
    forbidden_cuts,
    load_subjects,
    stack_context,
    variant_config,
)
from spot_core.config import SpotConfig
from spot_core.data.annotations import Instance, Video

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["a", "b"]


def test_featuriser_hand_case():
    # 16 samples x 15 channels: channel c of sample i is i * (c + 1); snippet 1 of channel 0 has a spike
    x = np.arange(16, dtype=np.float32)[:, None] * np.arange(1, 16, dtype=np.float32)[None, :]
    x[10, 0] = -5.0
    f = featurise(x)
    assert f.shape == (2, 60) and f.dtype == np.float32
    # snippet 0, channel 2 (factor 3): samples 0, 3, ..., 21
    v = 3.0 * np.arange(8)
    assert f[0, 2] == pytest.approx(v.mean())  # mean block: columns 0..14
    assert f[0, 15 + 2] == pytest.approx(v.std())  # std (ddof 0): columns 15..29
    assert f[0, 30 + 2] == 0.0 and f[0, 45 + 2] == 21.0  # min 30..44, max 45..59
    w = np.array([8, 9, -5, 11, 12, 13, 14, 15], dtype=np.float64)  # channel 0 of snippet 1
    assert f[1, [0, 15, 30, 45]] == pytest.approx([w.mean(), w.std(), -5.0, 15.0], rel=1e-6)
    assert featurise(x[:15]).shape == (1, 60)  # a trailing partial snippet is dropped


def _stream(name: str, n: int, instances: list[tuple[float, float, str]], seed: int, scale: float) -> Stream:
    rng = np.random.default_rng(seed)
    feats = (rng.normal(size=(n, 60)) * scale + seed).astype(np.float32)
    inst = [Instance(s, e, lab) for s, e, lab in instances]
    return Stream(name, feats, Video(name, n / SNIPPET_RATE, name, inst))


def _synthetic_instances(n: int, seed: int) -> list[tuple[float, float, str]]:
    rng = np.random.default_rng(seed)
    out, t = [], 3.0
    while t < n / SNIPPET_RATE - 12:
        length = float(rng.uniform(1.5, 8.0))
        out.append((t, t + length, CLASSES[int(rng.integers(2))]))
        t += length + float(rng.choice([0.25, 0.4, 1.0, 3.0, 20.0]))
    return out


def test_standardisation_uses_the_training_subject_only():
    n = 1200
    tr = _stream("s1", n, _synthetic_instances(n, 0), seed=1, scale=2.0)
    te = _stream("s2", n, _synthetic_instances(n, 1), seed=7, scale=5.0)
    cfg = SpotConfig.preset("actrectut").override(["model.num_classes=2", "model.num_snippets=32"])
    sp = build_split(cfg, CLASSES, tr, te, test_piece_sec=100.0)
    stats = fit_standardiser(tr)
    assert np.allclose(sp.stats.mean, tr.features.mean(0), atol=1e-4)
    assert np.allclose(sp.stats.std, tr.features.std(0), atol=1e-4)
    # the test pieces are standardised with the training subject's statistics, not their own
    name = next(iter(sp.test_features))
    a = int(round(sp.test_t0[name] * SNIPPET_RATE))
    piece = sp.test_features[name]
    assert np.allclose(piece, stats.apply(te.features[a : a + len(piece)]), atol=1e-5)
    assert abs(float(np.concatenate(list(sp.test_features.values())).mean())) > 1.0  # test mean is ~7-1
    other = build_split(cfg, CLASSES, tr, _stream("s3", n, [], seed=3, scale=9.0), test_piece_sec=100.0)
    assert np.array_equal(other.stats.mean, sp.stats.mean) and np.array_equal(other.stats.std, sp.stats.std)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pieces_never_cut_an_instance(seed):
    n = 4000
    s = _stream("s", n, _synthetic_instances(n, seed), seed=seed, scale=1.0)
    pieces = cut_pieces(s.video, n, 60.0)
    assert pieces[0][0] == 0 and pieces[-1][1] == n
    assert all(a < b for a, b in pieces) and all(
        p[1] == q[0] for p, q in zip(pieces, pieces[1:], strict=False)
    )
    lengths = np.array([b - a for a, b in pieces]) / SNIPPET_RATE
    assert lengths[:-1].min() >= 30.0 and 40 <= np.median(lengths) <= 80
    for a, _ in pieces[1:]:
        t = a / SNIPPET_RATE
        for inst in s.video.instances:
            # not inside, and not in a snippet the instance touches
            assert t + 1 / SNIPPET_RATE <= inst.start or t - 1 / SNIPPET_RATE >= inst.end
    assert not forbidden_cuts(s.video, n)[[a for a, _ in pieces[1:]]].any()
    # every instance lies in exactly one piece
    for inst in s.video.instances:
        assert sum(a <= inst.start * SNIPPET_RATE and inst.end * SNIPPET_RATE <= b for a, b in pieces) == 1


def test_labeled_draw_is_seeded_and_about_ten_percent():
    assert draw_labeled(33, 0.1, 0) == draw_labeled(33, 0.1, 0)
    draws = {tuple(draw_labeled(37, 0.1, s)) for s in range(10)}
    assert len(draws) > 5  # the seed matters
    assert all(len(d) == 4 for d in draws) and len(draw_labeled(33, 0.1, 0)) == 3
    assert len(draw_labeled(5, 0.1, 0)) == 1  # at least one piece keeps labels
    assert draw_labeled(10, 1.0, 3) == list(range(10))
    with pytest.raises(ValueError):
        draw_labeled(10, 0.0, 0)


def test_split_labels_follow_the_draw():
    n = 4000
    tr = _stream("s1", n, _synthetic_instances(n, 0), seed=1, scale=1.0)
    te = _stream("s2", 1200, _synthetic_instances(1200, 1), seed=2, scale=1.0)
    cfg = SpotConfig.preset("actrectut").override(["model.num_classes=2"])
    sp = build_split(cfg, CLASSES, tr, te, labeled_fraction=0.1, split_seed=4)
    assert sp.labeled_pieces == draw_labeled(len(sp.pieces), 0.1, 4)
    lab_sec = sum(v.duration for v in sp.train_set if v.labeled)
    assert lab_sec == pytest.approx(sp.labeled_seconds)
    assert sum(v.duration for v in sp.train_set) == pytest.approx(n / SNIPPET_RATE)
    n_inst = sum(len(v.instances) for v in sp.train_set)
    assert n_inst == len(tr.video.instances)  # no instance lost at a cut
    assert any(not w.labeled for w in sp.train_windows) and any(w.labeled for w in sp.train_windows)
    assert all(not w.has_targets for w in sp.train_windows if not w.labeled)


def test_stack_context():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = stack_context(x, context_offsets(1))
    assert y.shape == (4, 9)
    assert np.array_equal(y[0], np.r_[x[0], x[0], x[1]]) and np.array_equal(y[3], np.r_[x[2], x[3], x[3]])
    assert context_offsets(2, 3) == (-6, -3, 0, 3, 6) and stack_context(x, ()) is x


def test_real_files_load_and_split(shared_data):
    classes, streams = load_subjects(shared_data / "actrectut")
    assert len(classes) == 11 and sorted(streams) == ["subject1_gesture", "subject2_gesture"]
    s1, s2 = streams["subject1_gesture"], streams["subject2_gesture"]
    assert s1.features.shape == (62480 // 8, 60) and s2.features.shape == (70778 // 8, 60)
    assert len(s1.video.instances) == 286 and len(s2.video.instances) == 286
    for s, n_lab in ((s1, 3), (s2, 4)):  # the peer's draw kept 3 and 4 one-minute pieces
        pieces = cut_pieces(s.video, s.num_snippets, 60.0)
        assert 30 <= len(pieces) <= 40
        cuts = [a for a, _ in pieces[1:]]
        assert not forbidden_cuts(s.video, s.num_snippets)[cuts].any()
        assert len(draw_labeled(len(pieces), 0.1, 0)) == n_lab
    # one direction end to end: 10% labels, a two-step training, a finite mAP on the test pieces
    from spot_core.training import train_on_windows

    cfg = SpotConfig.preset("actrectut").override(
        ["train.epochs=1", "train.steps_per_epoch=2", "semi.pretrain_epochs=0", "semi.use_unlabeled=false"]
    )
    sp = build_split(cfg, classes, s1, s2, labeled_fraction=0.1, split_seed=0, train_stride=32)
    assert sum(len(v.instances) for v in sp.test_set) == 286
    assert sp.test_stream.shape == s2.features.shape  # the whole standardised stream, for streaming
    for name, piece in sp.test_features.items():
        a = int(round(sp.test_t0[name] * SNIPPET_RATE))
        assert np.array_equal(piece, sp.test_stream[a : a + len(piece)])
    assert sum(len(v.instances) for v in sp.train_set if v.labeled) > 0
    torch.manual_seed(0)
    from spot_core.model import SPOT

    lab = [w for w in sp.train_windows if w.labeled]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        train_on_windows(sp.cfg, lab, None, [], tmp, progress=False)
        from spot_core.checkpoint import load_model

        model, mcfg = load_model(f"{tmp}/last.safetensors")
    assert isinstance(model, SPOT)
    res = evaluate_split(model, sp, mcfg)
    assert 0.0 <= res["average_mAP"] <= 1.0 and len(res["mAP"]) == 5


def test_stored_runs_are_reused_only_with_the_same_training_settings(shared_data, tmp_path):
    """trained_direction(reuse=True): a stored run of the same training settings is loaded (with the
    caller's decode), any other setting retrains; ssl_results --models relies on this."""
    from spot_core.actrectut import RUN_CONFIG, trained_direction

    tiny = ["train.epochs=1", "train.steps_per_epoch=1", "model.num_layers=1", "model.hidden_dim=32"]
    cfg = SpotConfig.preset("actrectut").override(tiny)
    kw = dict(direction="1->2", variant="sup10", seed=0, out_dir=tmp_path, reuse=True)
    m1, c1, *_, sp1 = trained_direction(shared_data / "actrectut", cfg=cfg, **kw)
    assert not sp1.reused_model and (tmp_path / RUN_CONFIG).is_file()
    first = (tmp_path / "last.safetensors").read_bytes()
    m2, c2, *_, sp2 = trained_direction(
        shared_data / "actrectut", cfg=cfg.override(["decode.mask_thresholds=[0.3]"]), **kw
    )
    assert sp2.reused_model and c2.decode.mask_thresholds == (0.3,) and c1.decode.mask_thresholds == (0.5,)
    assert all(
        torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True)
    )
    _, _, *_, sp3 = trained_direction(shared_data / "actrectut", cfg=cfg.override(["train.lr=0.002"]), **kw)
    assert not sp3.reused_model and (tmp_path / "last.safetensors").read_bytes() != first


def test_variant_switches_and_the_preset_ramp_up():
    """The preset ramps the pseudo-label terms up over 10 epochs (SPOT rows); supervised rows have
    none to ramp, so their config says 0 (the same run, whatever the preset's ramp); the original
    model's overrides turn it off."""
    from spot_core.actrectut import variant_config
    from spot_core.config import SPOT_ORIGINAL_ACTRECTUT, SpotConfig

    cfg = SpotConfig.preset("actrectut")
    assert cfg.semi.rampup_epochs == 10
    spot = variant_config(cfg, "spot10", 3)
    assert spot.semi.rampup_epochs == 10 and spot.semi.use_unlabeled and spot.train.seed == 3
    for v in ("sup100", "sup10", "self10"):
        sup = variant_config(cfg, v, 0)
        assert sup.semi.rampup_epochs == 0 and not sup.semi.use_unlabeled
    assert cfg.override(list(SPOT_ORIGINAL_ACTRECTUT)).semi.rampup_epochs == 0


def test_head_choice_scores_only_the_unlabelled_pieces_of_the_training_subject(shared_data):
    """benchmarks.head_choice: the held-out set is the training subject's unlabelled pieces, every
    one of their instances, none of the labelled pieces' ones; the other subject is not read."""
    from benchmarks.head_choice import unlabelled_held_out

    classes, streams = load_subjects(shared_data / "actrectut")
    s = streams["subject1_gesture"]
    cfg = variant_config(SpotConfig.preset("actrectut"), "sup10", 0)
    split = build_split(cfg, classes, s, s, labeled_fraction=0.1, split_seed=0)
    held, windows = unlabelled_held_out(split, s)
    lab = [split.pieces[i] for i in split.labeled_pieces]
    unlab_snippets = sum(b - a for i, (a, b) in enumerate(split.pieces) if i not in split.labeled_pieces)
    assert sum(held.durations().values()) == pytest.approx(unlab_snippets / SNIPPET_RATE)
    in_lab = [i for i in s.video.instances if any(a <= i.start * SNIPPET_RATE < b for a, b in lab)]
    n_held = sum(len(v.instances) for v in held.videos.values())
    assert in_lab and n_held == len(s.video.instances) - len(in_lab)
    assert windows and all(w.video_id in held.videos for w in windows)


def test_head_choice_trains_once_for_arms_that_differ_only_in_decode(shared_data, monkeypatch):
    """benchmarks.head_choice: decode-only arms share one trained model (and each is scored with its
    own decode); an arm with another training setting trains its own."""
    import spot_core.training
    from benchmarks.head_choice import held_out_arms

    calls = []
    real = spot_core.training.train_on_windows
    monkeypatch.setattr(
        spot_core.training, "train_on_windows", lambda c, *a, **k: calls.append(c) or real(c, *a, **k)
    )
    tiny = ("train.epochs=1", "train.steps_per_epoch=1", "model.num_layers=1", "model.hidden_dim=16")
    arms = [("plain", tiny), ("vote", (*tiny, "decode.vote_iou=0.5")), ("other", (*tiny, "train.lr=0.002"))]
    out = held_out_arms(shared_data / "actrectut", "subject1_gesture", 0, arms)
    assert list(out) == ["plain", "vote", "other"] and len(calls) == 2
    assert calls[1].train.lr == 0.002 and all(0 <= r["average_mAP"] <= 100 for r in out.values())


def test_head_choice_inductive_scores_only_runs_kept_out_of_training(shared_data, monkeypatch):
    """benchmarks.head_choice --inductive: every other unlabelled run is neither trained on (not even
    as unlabelled data by spot10) nor anything but scored; the other unlabelled runs still train."""
    import spot_core.training
    from benchmarks import head_choice

    seen = {}
    real_train, real_held = spot_core.training.train_on_windows, head_choice.unlabelled_held_out

    def train(c, windows, *a, **k):
        seen["train"] = {w.video_id for w in windows}
        return real_train(c, windows, *a, **k)

    def held(split, stream, *a, **k):
        seen["runs"] = head_choice.unlabelled_runs(split)
        seen["only"] = k.get("only")
        return real_held(split, stream, *a, **k)

    monkeypatch.setattr(spot_core.training, "train_on_windows", train)
    monkeypatch.setattr(head_choice, "unlabelled_held_out", held)
    tiny = ("train.epochs=1", "train.steps_per_epoch=1", "model.num_layers=1", "model.hidden_dim=16",
            "semi.pretrain_epochs=1", "semi.pretrain_steps_per_epoch=1", "semi.rampup_epochs=1")  # fmt: skip
    out = head_choice.held_out_arms(
        shared_data / "actrectut", "subject1_gesture", 0, [("a", tiny)], "spot10", inductive=True
    )
    assert 0 <= out["a"]["average_mAP"] <= 100
    runs, only = seen["runs"], seen["only"]
    assert len(runs) >= 4 and only == set(runs[1::2])
    names = {j: f"subject1_gesture/run{j:02d}" for j in runs}
    assert not {names[j] for j in only} & seen["train"]  # held-out runs never trained on
    assert {names[j] for j in runs if j not in only} <= seen["train"]  # the others train unlabelled


def test_cached_runs_of_other_settings_do_not_hide_earlier_current_ones():
    """benchmarks.ssl_results: the latest run per key *among those of the current settings* counts,
    so a later trial of other settings (then reverted) leaves the earlier runs in the tables."""
    from benchmarks.ssl_results import _run_config, current_runs

    cfg = _run_config("actrectut", "spot10", "local-spot")
    key = {"dataset": "actrectut", "row": "spot10", "direction": "1->2", "seed": 0, "arch": "local-spot"}
    old = {**key, "average_mAP": 0.8, "config": cfg}
    trial = {**key, "average_mAP": 0.6, "config": {**cfg, "semi.mask_threshold": 0.123}}
    assert current_runs([old, trial]) == [old]
    newer = {**old, "average_mAP": 0.81}
    assert current_runs([old, trial, newer]) == [newer]


def test_cached_runs_from_before_a_decode_key_count_only_while_it_is_at_its_default():
    """benchmarks.ssl_results: a run cached before ``decode.vote_iou`` existed was not voted, so it
    no longer counts for the preset (which votes) but does for an arch that turns voting off; a
    non-decode key added later (attention sizes) does not discount the original model's runs."""
    from benchmarks.ssl_results import _run_config, current_runs

    key = {"dataset": "actrectut", "row": "sup10", "direction": "1->2", "seed": 0}
    for arch, counts in (("local-offset", False), ("local-offset-novote", True)):
        cfg = _run_config("actrectut", "sup10", arch)
        before = {k: v for k, v in cfg.items() if k != "decode.vote_iou"}
        run = {**key, "arch": arch, "average_mAP": 0.8, "config": before}
        assert current_runs([run]) == ([run] if counts else [])
    cfg = _run_config("actrectut", "sup10", "spot")
    before = {k: v for k, v in cfg.items() if k not in ("model.attn_window", "model.num_layers")}
    run = {**key, "arch": "spot", "average_mAP": 0.05, "config": before}
    assert current_runs([run]) == [run]


def test_ssl_results_arches_are_the_preset_with_their_heads():
    """benchmarks.ssl_results --arch: each ActRecTut architecture is the preset with its mask head, so
    the runs of one never count as another's (their cached configs differ)."""
    from benchmarks.ssl_results import ARCHS, _run_config, arch_config

    heads = {a: arch_config(a).model.mask_head for a in ARCHS}
    assert heads == {"local-offset": "offset", "local-offset-novote": "offset", "local-spot": "spot",
                     "local-pairwise": "pairwise", "conv-pairwise": "pairwise", "spot": "spot"}  # fmt: skip
    votes = {a: arch_config(a).decode.vote_iou for a in ARCHS}  # only the preset votes (added after the rest)
    assert votes["local-offset"] == 0.3 and not any(v for a, v in votes.items() if a != "local-offset")
    assert arch_config(ARCHS[0]) == SpotConfig.preset("actrectut")  # the default arch is the preset
    cfgs = [_run_config("actrectut", "sup10", a) for a in ARCHS]
    assert all(a != b for i, a in enumerate(cfgs) for b in cfgs[i + 1 :])


def test_curves_follow_the_protocol_run_and_end_on_its_number(shared_data, tmp_path):
    """benchmarks.curves trains exactly the run spot_core.actrectut scores: one point per fine-tuning
    epoch, and the last test point is that command's average mAP (the per-epoch scoring changes nothing)."""
    from benchmarks.curves import main as curves_main
    from spot_core.actrectut import evaluate_split, trained_direction

    tiny = ["train.epochs=2", "train.steps_per_epoch=2", "model.num_layers=1", "model.hidden_dim=32"]
    jsonl = tmp_path / "curves.jsonl"
    argv = [
        "--data",
        str(shared_data / "actrectut"),
        "--variant",
        "sup10",
        "--seed",
        "1",
        "--jsonl",
        str(jsonl),
    ]
    assert curves_main([*argv, "--set", *tiny, "--plot", str(tmp_path / "c.png")]) == 0
    row = json.loads(jsonl.read_text().splitlines()[-1])
    assert len(row["test"]) == 2 and len(row["held_out"]) == 2 and (tmp_path / "c.png").stat().st_size > 0
    model, mcfg, *_, split = trained_direction(
        shared_data / "actrectut", cfg=SpotConfig.preset("actrectut").override(tiny), variant="sup10", seed=1
    )
    assert row["test"][-1] == round(100 * evaluate_split(model, split, mcfg)["average_mAP"], 2)
    from benchmarks.curves import run_curves

    with pytest.raises(ValueError, match="self-training"):  # several runs: no single curve
        run_curves(shared_data / "actrectut", "1->2", "self10", 0, tuple(tiny))
