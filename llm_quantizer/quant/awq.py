"""AWQ (Lin et al. 2023) as in llm-awq ``auto_scale`` / ``auto_clip``, on plain tensors.

A group of linears shares one input X [n, in]. Search per-input-channel scales s: weights become
W * s, inputs X / s (s folded into the preceding norm or linear). Fake quantization is ``rtn``'s,
so the search sees exactly the checkpoint's rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import BackendError
from .rtn import QuantArgs, fake_quantize

Forward = Callable[[torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class AWQScaleResult:
    """scales: float32 [in] (multiply weight columns, divide inputs); ratio: best grid point;
    losses: output MSE for each ratio ``i / n_grid``."""

    scales: torch.Tensor
    ratio: float
    losses: list[float]


def linear_outputs(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Default block function: the linears' outputs side by side, in float32."""
    x = x.float()
    return torch.cat([x @ w.float().t() for w in weights], dim=-1)


def activation_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean |x| per input channel (llm-awq's ``get_act_scale``), float32 [in]."""
    return x.reshape(-1, x.shape[-1]).float().abs().mean(0)


def ratio_scales(x_mean: torch.Tensor, ratio: float) -> torch.Tensor:
    """``s = x_mean^ratio`` (>= 1e-4), normalized so that ``max(s) * min(s) = 1``."""
    s = x_mean.pow(ratio).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def search_scales(x: torch.Tensor, weights: Sequence[torch.Tensor], args: QuantArgs,
                  forward: Forward | None = None, n_grid: int = 20) -> AWQScaleResult:
    """Grid-search ``ratio in [0, 1)``; minimize MSE of ``forward(x, Q(W*s)/s)`` vs ``forward(x, W)``.

    ``forward(x, weights)`` is the block to inspect (e.g. the whole MLP given gate/up weights);
    by default the linears' outputs. Only the weights change, as in llm-awq.
    """
    x = x.reshape(-1, x.shape[-1])
    fwd = forward or linear_outputs
    ref = fwd(x, weights)
    x_mean = activation_mean(x)
    losses, best = [], (float("inf"), None, None)
    for r in range(n_grid):
        s = ratio_scales(x_mean, r / n_grid)
        qws = [(fake_quantize(w.float() * s, args) / s).to(w.dtype) for w in weights]
        loss = (ref - fwd(x, qws)).float().pow(2).mean().item()
        losses.append(loss)
        if loss < best[0]:
            best = (loss, r / n_grid, s)
    if best[2] is None or not torch.isfinite(best[2]).all():
        raise BackendError(f"AWQ scale search found no finite loss (first losses {losses[:3]})")
    return AWQScaleResult(best[2], best[1], losses)


@torch.no_grad()
def auto_clip(w: torch.Tensor, x: torch.Tensor, args: QuantArgs, n_grid: int = 20,
              max_shrink: float = 0.5, n_sample_token: int = 512, batch_rows: int = 256):
    """Per-group clip value [out, G] (float32) minimizing the group-wise output MSE.

    Pass the already scaled pair (W * s, X / s). Clipping is symmetric ``[-m, m]`` with
    ``m = max|w| * (1 - i / n_grid)``, as llm-awq (which skips q/k projections).
    """
    out_f, in_f = w.shape
    gl = args.group_len(in_f)
    x = x.reshape(-1, in_f)
    x = x[:: max(1, x.shape[0] // n_sample_token)].float().reshape(-1, in_f // gl, gl)
    best = [_clip_rows(w[r:r + batch_rows].float(), x, args, n_grid, max_shrink)
            for r in range(0, out_f, batch_rows)]
    return torch.cat(best, dim=0)


def _clip_rows(w, xg, args, n_grid, max_shrink):
    rows, in_f = w.shape
    wg = w.reshape(rows, xg.shape[1], xg.shape[2])
    org_max = wg.abs().amax(-1, keepdim=True)
    ref = torch.einsum("ngk,rgk->rng", xg, wg)
    best_err = torch.full(org_max.shape[:2], float("inf"), device=w.device)
    best_max = org_max.squeeze(-1).clone()
    for i in range(int(max_shrink * n_grid)):
        m = org_max * (1 - i / n_grid)
        q = fake_quantize(torch.clamp(wg, -m, m).reshape(rows, in_f), args).float()
        err = (torch.einsum("ngk,rgk->rng", xg, q.reshape_as(wg)) - ref).pow(2).mean(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, m.squeeze(-1), best_max)
    return best_max


def apply_clip(w: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """Clamp each group of w [out, in] to ``[-max_val, max_val]`` (max_val [out, G])."""
    wg = w.reshape(w.shape[0], max_val.shape[1], -1)
    m = max_val.to(w.device, w.dtype).unsqueeze(-1)
    return torch.clamp(wg, -m, m).reshape(w.shape)


def fold_into_norm(weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                   norm_offset: float = 0.0):
    """Divide a norm's output by s: returns (weight, bias). Gemma-style ``(1 + w)``: offset 1."""
    s = scales.to(weight.device).float()
    w = ((weight.float() + norm_offset) / s - norm_offset).to(weight.dtype)
    b = None if bias is None else (bias.float() / s).to(bias.dtype)
    return w, b


def fold_into_linear_rows(weight: torch.Tensor, scales: torch.Tensor,
                          bias: torch.Tensor | None = None):
    """Divide a preceding linear's outputs (rows of weight [out, in], bias) by s [out]."""
    s = scales.to(weight.device).float()
    w = (weight.float() / s.unsqueeze(1)).to(weight.dtype)
    b = None if bias is None else (bias.float() / s).to(bias.dtype)
    return w, b


def scale_linear_columns(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Multiply the input columns of a following linear (weight [out, in]) by s [in]."""
    return (weight.float() * scales.to(weight.device).float()).to(weight.dtype)
