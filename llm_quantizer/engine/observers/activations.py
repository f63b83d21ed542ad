"""Per-linear input statistics: the Hessian proxy H = sum x x^T (full when small enough) and
its diagonal, the sum of squared inputs per channel that llama.cpp calls the importance matrix;
optionally, per channel, the squared error of llama.cpp's runtime rounding of the input
(``ggml.runtime``: Q8_0 / Q8_K / F16 / BF16)."""
from __future__ import annotations

import torch

from ...ggml.runtime import ACTIVATION_TYPES, squared_error_sums
from ...quant.gram import add_upper_gram, mirror_upper_blocks
from .base import LayerContext, Observer, register_observer


RUNTIME_STRIDE = 4


class InputStats:
    """Running sums over the rows x [tokens, in] fed to one linear."""

    def __init__(self, n_in: int, full: bool, device, runtime_types=()):
        self.sum_sq = torch.zeros(n_in, dtype=torch.float64, device=device)
        self.runtime_types = tuple(runtime_types)
        self.runtime_sq: dict[str, torch.Tensor] = {}     # activation type -> sum (x - round(x))^2 [in]
        self.runtime_count, self._runtime_phase = 0, 0
        self.h = torch.zeros(n_in, n_in, dtype=torch.float32, device=device) if full else None
        self.count = 0
        self._mean = False    # self.h holds the symmetric mean (hessian() was called): no more adds

    def add(self, x: torch.Tensor) -> None:
        if self._mean:
            raise RuntimeError("InputStats.add after hessian()")
        if self.h is not None:
            add_upper_gram(self.h, x)
        x = x.float()
        self.sum_sq += x.pow(2).sum(0).double()   # float32 within a batch: exact to ~1e-7, 10x cheaper
        if self.runtime_types:
            # a mean over tokens: every RUNTIME_STRIDE-th row estimates it at a quarter of the cost
            xs = x[self._runtime_phase::RUNTIME_STRIDE]
            self._runtime_phase = (self._runtime_phase - x.shape[0]) % RUNTIME_STRIDE
            for t, v in squared_error_sums(xs, self.runtime_types).items():
                self.runtime_sq[t] = self.runtime_sq[t] + v if t in self.runtime_sq else v
            self.runtime_count += xs.shape[0]
        self.count += x.shape[0]

    def runtime_mean_sq(self) -> dict[str, torch.Tensor]:
        """Activation type -> mean squared rounding error per input channel [in]."""
        n = max(self.runtime_count, 1)
        return {t: v / n for t, v in self.runtime_sq.items()}

    def hessian(self) -> torch.Tensor:
        """Mean second moment E[x x^T] (full) or its diagonal (1-D).

        The full H is finished in place on the first call (lower blocks mirrored, divided by the
        count) and returned as is after: no n x n copies (5632^2 floats = 127 MB on a 1B model)."""
        n = max(self.count, 1)
        if self.h is None:
            return (self.sum_sq / n).float()
        if not self._mean:
            mirror_upper_blocks(self.h)
            self.h /= n
            self._mean = True
        return self.h


def shared_inputs(layer_map) -> dict[str, str]:
    """Stored linear path -> the path whose accumulator it shares (same input tensor)."""
    out = {}
    for _, kinds in layer_map.input_groups:
        paths = list(dict.fromkeys(layer_map.linears[k] for k in kinds if k in layer_map.linears))
        out.update({p: paths[0] for p in paths[1:]})
    return out


@register_observer
class ActivationStats(Observer):
    """Sums of x^2 per input channel for every stored linear, plus the full H up to a size.

    Linears fed the same tensor (q/k/v, gate/up) share one accumulator. At ``layer_end`` the
    stats of the layer are put in ``ctx.state["input_stats"]`` for later observers, and the
    imatrix entries (HF name -> (sum x^2, count)) are kept for the whole model.
    """

    name = "activations"
    wants_linear_io = True

    def __init__(self, max_full: int = 8192, runtime: bool = False):
        """``runtime``: also sum the squared error of llama.cpp's CPU activation rounding per input
        channel (``InputStats.runtime_mean_sq``; the GGUF error probes add it to each format)."""
        self.max_full = max_full
        self.runtime_types = ACTIVATION_TYPES if runtime else ()
        self.imatrix: dict[str, tuple[torch.Tensor, int]] = {}
        self._stats: dict[str, InputStats] = {}
        self._shared: dict[str, str] = {}

    def layer_start(self, ctx):
        self._stats, self._shared = {}, shared_inputs(ctx.layer_map)

    def linear_io(self, ctx, path, x, y):
        if path in self._shared:
            return
        if path not in self._stats:
            self._stats[path] = InputStats(x.shape[1], x.shape[1] <= self.max_full, x.device, self.runtime_types)
        self._stats[path].add(x)

    def layer_end(self, ctx):
        stats = {p: self._stats[self._shared.get(p, p)] for p in ctx.linears}
        ctx.state["input_stats"] = stats
        self._stats = {}   # the layer's H now lives as long as its context only: freed before the next fill
        for p, s in stats.items():
            self.imatrix[f"{ctx.prefix}{p}.weight"] = (s.sum_sq.cpu(), s.count)

    def finish(self, final):
        head = final.lm_head
        if head is None:
            return
        n = final.hidden[0].shape[-1]
        s = InputStats(n, n <= self.max_full, final.hidden[0].device, self.runtime_types)
        for h in final.hidden:
            s.add(h.reshape(-1, h.shape[-1]))
        final.state["head_stats"] = s
        self.imatrix["lm_head.weight"] = (s.sum_sq.cpu(), s.count)
