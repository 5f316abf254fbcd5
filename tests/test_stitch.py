"""Actions longer than a window: decode.stitch (offline merge and streaming runtime, exactly equal).

An oracle model (perfect per-window logits and masks from one-hot features) isolates the merge:
every window reports exactly its own part of each action, so what comes out whole is what the
merge makes whole. Instances range from 2 % to 10x the window length T = 128.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.detector import StreamDetector
from runtime.offline import offline_detect
from runtime.session import EagerSession
from spot_core.config import ConfigError, SpotConfig
from spot_core.model import SPOT

pytestmark = pytest.mark.usefixtures("one_thread")

T, K = 128, 3
LENGTHS = (3, 6, 13, 32, 64, 100, 128, 200, 256, 640, 1280)  # snippets: 2.3 % .. 10x T


def _cfg(stitch: bool, vote: str = "null") -> SpotConfig:
    return SpotConfig.preset("toy").override(
        [f"model.num_snippets={T}", f"model.num_classes={K}", f"model.feat_dim={K + 1}", "model.head_dim=8",
         "data.mode=window", "data.stride=32", "data.snippet_rate=4.0", f"decode.top_k={T}",
         f"decode.stitch={str(stitch).lower()}", f"decode.vote_iou={vote}"]
    )  # fmt: skip


class Oracle(EagerSession):
    """Logits: 20 x the one-hot class channel; mask row t: the run of snippet t's class."""

    def _run(self, x):
        cls = x[:, : K + 1].argmax(1)  # [B, T]
        logits = 20.0 * torch.nn.functional.one_hot(cls, K + 1).permute(0, 2, 1).float()
        start = torch.ones_like(cls, dtype=torch.bool)
        start[:, 1:] = cls[:, 1:] != cls[:, :-1]
        run = torch.cumsum(start.long(), 1)  # [B, T]
        fg = cls != K
        mask = (run[:, :, None] == run[:, None, :]) & fg[:, :, None]
        return logits, mask.float()


def _stream(seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    rng = np.random.default_rng(seed)
    inst, t = [], 20
    for i, n in enumerate(LENGTHS * 2):
        inst.append((t, t + n, i % K))
        t += n + int(rng.integers(10, 60))
    x = np.zeros((t + 30, K + 1), dtype=np.float32)
    x[:, K] = 1.0
    for a, b, c in inst:
        x[a:b] = 0.0
        x[a:b, c] = 1.0
    return x + 0.01 * rng.standard_normal(x.shape).astype(np.float32), inst


def _found(results: list[dict], inst, rate=4.0, tiou=0.7) -> list[bool]:
    out = []
    for a, b, c in inst:
        s, e = a / rate, b / rate
        best = 0.0
        for d in results:
            if d["label"] != f"class_{c}":
                continue
            ds, de = d["segment"]
            inter = max(0.0, min(e, de) - max(s, ds))
            best = max(best, inter / (max(e, de) - min(s, ds)))
        out.append(best >= tiou)
    return out


def _session(stitch: bool, batch: int = 8, vote: str = "null") -> Oracle:
    cfg = _cfg(stitch, vote)
    torch.manual_seed(0)
    return Oracle(SPOT(cfg.model).eval(), cfg, batch_size=batch)


def test_stitching_finds_actions_from_2_percent_to_10x_the_window():
    x, inst = _stream()
    plain = _found(offline_detect(_session(False), x)["results"]["stream"], inst)
    stitched = _found(offline_detect(_session(True), x)["results"]["stream"], inst)
    long = [b - a > T for a, b, _ in inst]
    assert all(stitched), [inst[i] for i, ok in enumerate(stitched) if not ok]
    assert not any(p for p, lg in zip(plain, long, strict=True) if lg)  # without it: none longer than T
    assert sum(plain) == 8 and sum(stitched) == len(inst) == 22  # the measurement (docs, README)


@pytest.mark.parametrize(
    ("chunk", "batch", "vote"), [(1, 1, "null"), (37, 3, "null"), (500, 8, "null"), (37, 3, "0.5")]
)
def test_streamed_equals_offline_with_stitching(chunk, batch, vote):
    """(decode.vote_iou: box voting after the merge, on the stitched candidates)"""
    x, inst = _stream(seed=1)
    session = _session(True, batch, vote)
    want = offline_detect(session, x)["results"]["stream"]
    det = StreamDetector(session, snippet_rate=4.0)
    det.open("stream")
    for a in range(0, x.shape[0], chunk):
        det.push("stream", x[a : a + chunk])
    entries, _ = det.close_json("stream")
    assert entries == want
    assert all(_found(entries, inst))


def test_stitch_needs_window_mode():
    with pytest.raises(ConfigError, match="decode.stitch"):
        SpotConfig.preset("toy").override(["decode.stitch=true"])
    assert not any(SpotConfig.preset(p).decode.stitch for p in ("anet", "toy", "actrectut"))
    assert SpotConfig.preset("stream").decode.stitch
