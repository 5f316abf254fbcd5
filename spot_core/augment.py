"""Training-time helpers that do not change the model: weight EMA and time-warp augmentation."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """Exponential moving average of a model's weights (buffers copied as they are).

    After optimiser step n (1-based) the average moves by ``1 - d_n`` towards the live weights, with
    ``d_n = min(decay, (1 + n) / (10 + n))``: the warm-up keeps a short run from averaging mostly
    the initial weights (with a fixed 0.999, 300 steps leave 74 % of the initialisation in the
    average). :attr:`module` is the averaged model (eval mode, no gradients).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the live weights of ``model`` into the average (call after each optimiser step)."""
        self.steps += 1
        d = min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
        for p_ema, p in zip(self.module.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "steps": torch.tensor(self.steps),
            **{f"w.{k}": v for k, v in self.module.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.steps = int(state["steps"])
        self.module.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("w.")})


def attach_ema(model: nn.Module, opt: torch.optim.Optimizer, decay: float | None) -> WeightEMA | None:
    """A :class:`WeightEMA` of ``model`` updated after every ``opt.step()`` (None when ``decay`` is None)."""
    if decay is None:
        return None
    ema = WeightEMA(model, decay)
    opt.register_step_post_hook(lambda *_: ema.update(model))
    return ema


@torch.no_grad()
def time_warp(batch: dict[str, torch.Tensor], amount: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Resample each labelled window by a random speed factor ``f`` in ``[1 - amount, 1 + amount]``.

    ``batch``: ``features [B, C, T]``, ``cls_target [B, T]``, ``mask_target [B, T, T]``,
    ``valid_mask [B, T]``. Output snippet u reads the input at ``p = (u + 0.5) f - 0.5`` (features
    linearly interpolated; targets at the nearest snippet, so masks stay 0/1 blocks); where ``p``
    falls outside the window's real snippets the output is padding (zero, background, not valid).
    ``f > 1`` plays the window faster (actions shorter), ``f < 1`` slower. Other keys pass through.
    """
    if amount <= 0.0:
        return batch
    x, cls, mask, valid = batch["features"], batch["cls_target"], batch["mask_target"], batch["valid_mask"]
    b, _, t = x.shape
    f = 1.0 + amount * (2.0 * torch.rand(b, generator=gen) - 1.0)  # [B]
    f = f.to(x.device)
    n_valid = valid.sum(dim=1)  # [B]
    p = (torch.arange(t, device=x.device)[None, :] + 0.5) * f[:, None] - 0.5  # p: [B, T]
    ok = (p >= -0.5) & (p <= n_valid[:, None].to(p.dtype) - 0.5)  # ok: [B, T]
    p = p.clamp(min=0.0)
    i0 = p.floor().long().clamp(max=t - 1)
    i1 = (i0 + 1).clamp(max=t - 1)
    i1 = torch.minimum(i1, (n_valid[:, None] - 1).clamp(min=0))
    w = (p - i0.to(p.dtype)).clamp(0.0, 1.0)[:, None, :]  # w: [B, 1, T]
    g0 = x.gather(2, i0[:, None, :].expand_as(x))
    g1 = x.gather(2, i1[:, None, :].expand_as(x))
    xw = torch.where(ok[:, None, :], g0 * (1.0 - w) + g1 * w, 0.0)
    near = p.round().long().clamp(max=t - 1)  # near: [B, T]
    cw = cls.gather(1, near)  # outside ``ok`` the snippet is not valid, so no loss reads its class
    rows = mask.gather(1, near[:, :, None].expand(b, t, t))
    mw = rows.gather(2, near[:, None, :].expand(b, t, t))
    mw = mw * (ok[:, :, None] & ok[:, None, :]).to(mw.dtype)
    out = dict(batch)
    out["features"] = xw
    out["cls_target"] = cw
    out["mask_target"] = mw
    out["valid_mask"] = ok & valid.gather(1, near)
    return out
