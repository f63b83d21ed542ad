"""How much of a linear's output error reaches the residual stream, relative to the stream.

The error probes give each linear's own output error ``tr(dW H dW^T) / tokens``. Those numbers
are not comparable across linears: an error in ``v`` is mixed by attention and scaled by ``o``,
an error in ``down`` adds straight to the residual, and the residual's norm varies by orders of
magnitude between layers (and between tokens: massive activations on the first token). The next
layer normalises its input, so what it sees is the error *relative to each token's residual*.

For every linear this observer quantizes the weight with a reference format (4-bit RTN), reruns
the decoder layer on the captured calibration inputs and measures

    transfer = mean_t ||dy_t||^2 / ||y_t||^2  /  mean_t ||x_t dW^T||^2

(``y``: the layer's output, ``x``: the linear's input). ``transfer * probe error`` then predicts
the per-token relative residual error for any format: one layer rerun per linear.
"""
from __future__ import annotations

import torch

from .base import Observer, register_observer


@register_observer
class ResidualTransfer(Observer):
    name = "transfer"

    def __init__(self, max_tokens: int = 4096, bits: int = 4, group_size: int = 32):
        self.max_tokens, self.bits, self.group_size = max_tokens, bits, group_size
        self.tensors: dict[str, float] = {}
        self._calls: list = []
        self._hooks: list = []

    def layer_start(self, ctx):
        self._calls, seen = [], [0]

        def pre(mod, args, kwargs):
            if seen[0] < self.max_tokens:
                self._calls.append([args, kwargs, None])
                seen[0] += args[0].shape[0] * args[0].shape[1] if args[0].dim() == 3 else args[0].shape[0]

        def post(mod, args, kwargs, out):
            if self._calls and self._calls[-1][2] is None:
                self._calls[-1][2] = (out[0] if isinstance(out, tuple) else out).detach()

        self._hooks = [ctx.layer.register_forward_pre_hook(pre, with_kwargs=True),
                       ctx.layer.register_forward_hook(post, with_kwargs=True)]

    def layer_end(self, ctx):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        try:
            for path, lin in ctx.linears.items():
                t = self._transfer(ctx.layer, lin)
                if t is not None:
                    self.tensors[f"{ctx.prefix}{path}.weight"] = t
        finally:
            self._calls = []

    @torch.no_grad()
    def _transfer(self, layer, lin) -> float | None:
        from ...quant.rtn import QuantArgs, fake_quantize

        w = lin.weight.data
        g = self.group_size if w.shape[1] % self.group_size == 0 else -1
        wq = fake_quantize(w.float(), QuantArgs(self.bits, g, True, scale_dtype="float32")).to(w.dtype)
        dw = (w.float() - wq.float())
        local = [0.0, 0]

        def hook(mod, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            local[0] += float((x @ dw.t()).pow(2).sum())
            local[1] += x.shape[0]

        handle = lin.register_forward_pre_hook(hook)
        rel, n = 0.0, 0
        try:
            lin.weight.data = wq
            for args, kwargs, y in self._calls:
                out = layer(*args, **kwargs)
                yq = (out[0] if isinstance(out, tuple) else out).float()
                y = y.float()
                r = (yq - y).pow(2).sum(-1) / y.pow(2).sum(-1).clamp_min(1e-12)
                rel += float(r.sum())
                n += r.numel()
        finally:
            lin.weight.data = w
            handle.remove()
        if n == 0 or local[1] == 0 or local[0] <= 0:
            return None
        return (rel / n) / (local[0] / local[1])

    def result(self) -> dict:
        return {"tensors": dict(self.tensors)}
