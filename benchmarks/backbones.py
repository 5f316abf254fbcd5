"""Cost of every backbone x mask head: ``python -m benchmarks.backbones`` (issue 14, item 6).

For each architecture on the ``actrectut`` window (C = 60, T = 128, K = 11) and on the ``anet`` one
(C = 400, T = 100, K = 200): parameters, FLOPs per window of the inference forward (counted by
``torch.utils.flop_counter``: matmuls and convolutions, the terms that dominate), and CPU
milliseconds per window for the forward alone and for forward + decode + Soft-NMS, at batch 1 and
64. Random weights and features (seeded): the numbers measure cost only. Cases run interleaved, one
call of each per round after warm-up, medians over rounds (p10 / p90 beside them), so that load
drift on a shared machine hits them alike. Writes ``benchmarks/results/backbones_<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import cpu_model
from benchmarks.compare import percentile
from spot_core.cli import reports_errors, setup_logging
from spot_core.config import SPOT_ORIGINAL_ACTRECTUT, SpotConfig
from spot_core.decode import detect
from spot_core.model import SPOT
from spot_core.outputs import write_text_atomic

log = logging.getLogger(__name__)
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: (name, preset, overrides): the original SPOT, the actrectut preset (local + offset head), and the
#: study's other combinations
PAIRWISE = ("model.mask_head=pairwise", "model.abs_pos=false")
ARCHS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("spot + spot (original)", "actrectut", SPOT_ORIGINAL_ACTRECTUT),
    ("local + offset head (actrectut preset)", "actrectut", ()),
    ("local + spot head", "actrectut", ("model.mask_head=spot",)),
    ("local + pairwise", "actrectut", PAIRWISE),
    ("conv + pairwise", "actrectut", ("model.backbone=conv", *PAIRWISE)),
    ("spot + spot (anet preset)", "anet", ()),
    ("local + spot head, anet sizes", "anet", ("model.backbone=local", "model.abs_pos=true",
        "model.cls_head=conv", "model.hidden_dim=256", "model.window_norm=true")),
)  # fmt: skip


def arch_config(preset: str, overrides: tuple[str, ...]) -> SpotConfig:
    return SpotConfig.preset(preset).override(list(overrides))


def count_flops(model: SPOT, x: torch.Tensor) -> int:
    """FLOPs of one inference forward of ``x`` (``torch.utils.flop_counter``)."""
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return int(fc.get_total_flops())


def run(
    rounds: int = 15, warmup: int = 2, batches: tuple[int, ...] = (1, 64), seed: int = 0
) -> dict[str, Any]:
    """Cost of every :data:`ARCHS` entry; ms per window are medians over ``rounds`` interleaved rounds."""
    cases = {}
    rows = []
    for name, preset, sets in ARCHS:
        cfg = arch_config(preset, sets)
        torch.manual_seed(seed)
        model = SPOT(cfg.model).eval()
        x1 = torch.randn(
            1, cfg.model.feat_dim, cfg.model.num_snippets, generator=torch.Generator().manual_seed(seed)
        )
        rows.append({
            "arch": name, "preset": preset, "overrides": list(sets),
            "params": sum(p.numel() for p in model.parameters()),
            "inference_params": sum(p.numel() for n, p in model.named_parameters()
                                    if not n.startswith(("order_", "recon"))),
            "mflop_per_window": round(count_flops(model, x1) / 1e6, 2),
        })  # fmt: skip
        for b in batches:
            x = x1.expand(b, -1, -1).contiguous()

            def fwd(model=model, x=x):
                with torch.no_grad():
                    return model(x)

            def e2e(model=model, x=x, cfg=cfg):
                with torch.no_grad():
                    return detect(*model(x), cfg.decode)

            cases[(name, b, "forward")] = fwd
            cases[(name, b, "end_to_end")] = e2e
    times: dict[tuple, list[float]] = {k: [] for k in cases}
    for r in range(warmup + rounds):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[k].append((time.perf_counter() - t0) * 1e3 / k[1])
    for row in rows:
        for b in batches:
            for what in ("forward", "end_to_end"):
                ts = times[(row["arch"], b, what)]
                row[f"{what}_b{b}_ms_per_window"] = {
                    "median": round(statistics.median(ts), 4),
                    "p10": round(percentile(ts, 0.1), 4),
                    "p90": round(percentile(ts, 0.9), 4),
                }
    return {"device": cpu_model(), "threads": torch.get_num_threads(), "rounds": rounds, "rows": rows}


def table(res: dict[str, Any]) -> str:
    """The markdown table of :func:`run`'s result (medians)."""
    lines = [
        "| architecture | window | params | MFLOP / window | forward ms / window (b=1 / b=64) "
        "| end to end ms / window (b=1 / b=64) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in res["rows"]:
        cfg = arch_config(r["preset"], tuple(r["overrides"]))
        m = cfg.model
        fw, e2e = (
            " / ".join(f"{r[f'{what}_b{b}_ms_per_window']['median']:.3f}" for b in (1, 64))
            for what in ("forward", "end_to_end")
        )
        window = f"C={m.feat_dim}, T={m.num_snippets}, K={m.num_classes}"
        size = f"{r['inference_params']:,} | {r['mflop_per_window']:,}"
        lines.append(f"| {r['arch']} | {window} | {size} | {fw} | {e2e} |")
    return "\n".join(lines)


@reports_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backbones", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default=None, help="file label (default: cpu_<threads>t)")
    p.add_argument(
        "--json", type=Path, default=None, help="output (default benchmarks/results/backbones_<label>.json)"
    )
    args = p.parse_args(argv)
    setup_logging(1)
    torch.set_num_threads(args.threads)
    res = run(rounds=args.rounds)
    out = args.json or RESULTS_DIR / f"backbones_{args.label or f'cpu_{args.threads}t'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(res, indent=1) + "\n")
    print(table(res))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
