"""Massive activations and super weights (Sun et al. 2024; Yu et al. 2024).

Per layer: the largest |hidden state| leaving it (value, channel, token position, ratio to the
median). For down_proj: the largest |input| per channel and |output| per channel over all
tokens. A layer whose down_proj output spike towers over its other output channels holds a super
weight: its row is the spiking output channel, its column the input channel contributing most
to that output (|W[row, c]| * max|x_c|).
"""
from __future__ import annotations

import torch

from .base import Observer, register_observer


@register_observer
class OutlierObserver(Observer):
    name = "outliers"
    wants_linear_io = True

    def __init__(self, spike_ratio: float = 50.0):
        self.spike_ratio = spike_ratio
        self.massive: list[dict] = []
        self.down: list[dict] = []
        self._x = self._y = None
        self._hmax: dict | None = None
        self._median_sum, self._median_n = 0.0, 0

    def layer_start(self, ctx):
        self._x = self._y = None
        self._hmax = {"value": 0.0}
        self._median_sum, self._median_n = 0.0, 0
        self._down_path = ctx.layer_map.linears.get("down")

    def linear_io(self, ctx, path, x, y):
        if path != self._down_path:
            return
        xa, ya = x.abs().amax(0).float(), y.abs().amax(0).float()
        self._x = xa if self._x is None else torch.maximum(self._x, xa)
        self._y = ya if self._y is None else torch.maximum(self._y, ya)

    def batch(self, ctx, h_in, h_out):
        a = h_out.abs().float()
        flat = a.reshape(-1)
        idx = int(flat.argmax())
        val = float(flat[idx])
        if val > self._hmax["value"]:
            b, rest = divmod(idx, a.shape[1] * a.shape[2])
            tok, ch = divmod(rest, a.shape[2])
            self._hmax = {"value": val, "channel": ch, "token": tok, "sample_in_batch": b}
        self._median_sum += float(a.median())
        self._median_n += 1

    def layer_end(self, ctx):
        median = self._median_sum / max(self._median_n, 1)
        self.massive.append({"layer": ctx.index, **self._hmax, "median": median,
                             "ratio": self._hmax["value"] / max(median, 1e-12)})
        if self._y is None:
            return
        w = ctx.linears[self._down_path].weight.detach().float()
        row = int(self._y.argmax())
        col = int((w[row].abs() * self._x).argmax())
        self.down.append({"layer": ctx.index, "row": row, "col": col, "weight": float(w[row, col]),
                          "out_max": float(self._y[row]), "out_median": float(self._y.median()),
                          "in_max": float(self._x[col]),
                          "in_argmax": int(self._x.argmax()), "tensor": f"{ctx.prefix}{self._down_path}.weight"})

    def super_weights(self) -> list[dict]:
        """Layers whose down_proj output spike is ``spike_ratio`` x the median output channel's."""
        out = []
        for d in self.down:
            ratio = d["out_max"] / max(d["out_median"], 1e-12)
            if ratio >= self.spike_ratio:
                out.append(dict(d, spike_ratio=ratio))
        return out

    def result(self) -> dict:
        return {"massive_activations": self.massive, "down_proj_spikes": self.down,
                "super_weights": self.super_weights()}
