"""GPTQ inside the engine: Hessians from the layer's calibration inputs, then ``gptq_quantize``.

True-sequential (the reference's ``--true-sequential``, GPTQModel's default; off by default here:
on smollm2-135m it did not help, see bench/gptq_awq_bench.py): the layer's linears
are quantized stage by stage in forward order (q/k/v, o, gate/up, down, as the engine's hooks
first saw them); before each later stage its Hessian is recomputed from the layer's cached
inputs with the earlier stages already quantized (the forward stops at the hooked linear).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.observers.activations import shared_inputs
from ..quant.gptq import HessianAccumulator, gptq_quantize
from .passes import QuantPass, to_cpu_result


@dataclass(frozen=True)
class GPTQOptions:
    blocksize: int = 128
    percdamp: float = 0.01
    act_order: bool = True        # with static groups, so groups stay contiguous (no g_idx)
    true_sequential: bool = False


class _Stop(Exception):
    """Private early stop: the hooked linear's input has been taken."""


class GPTQPass(QuantPass):
    name = "gptq-pass"
    wants_linear_io = True

    def __init__(self, schemes, sink, tensor_names, options: GPTQOptions = GPTQOptions()):
        super().__init__(schemes, sink, tensor_names)
        self.options = options
        self._reset()

    def _reset(self):
        self._acc: dict[str, HessianAccumulator] = {}
        self._shared: dict[str, str] = {}
        self._order: list[str] = []           # input owners in forward order
        self._calls: list[tuple] = []         # (args, kwargs) of every layer call (references)
        self._hook = None

    def layer_start(self, ctx):
        self._reset()
        self._shared = shared_inputs(ctx.layer_map)
        if self.options.true_sequential:
            self._hook = ctx.layer.register_forward_pre_hook(
                lambda mod, args, kwargs: self._calls.append((args, kwargs)), with_kwargs=True)

    def linear_io(self, ctx, path, x, y):
        owner = self._shared.get(path, path)
        if owner not in self._order:
            self._order.append(owner)
        if path == owner and self._stage(ctx, owner):
            if path not in self._acc:
                self._acc[path] = HessianAccumulator(x.shape[-1], device=x.device)
            self._acc[path].add_batch(x)

    def layer_end(self, ctx):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _stage(self, ctx, owner) -> list[str]:
        """The quantized linears fed by ``owner``'s input."""
        return [p for p in ctx.linears if self._shared.get(p, p) == owner and self.args(ctx, p) is not None]

    def quantize_linear(self, ctx, path, args):
        acc = self._acc[self._shared.get(path, path)]
        w = ctx.linears[path].weight.detach()
        o = self.options
        res = gptq_quantize(w, acc.H, args, blocksize=o.blocksize, percdamp=o.percdamp,
                            act_order=o.act_order, static_groups=o.act_order)
        if not res.contiguous_groups:       # cannot happen with static groups; guard the format
            raise RuntimeError(f"GPTQ produced non-contiguous groups for {ctx.prefix}{path}")
        self.stats[ctx.prefix + path] = {"loss": res.loss, "percdamp": res.percdamp}
        return to_cpu_result(args, res.codes, res.scales, res.zeros)

    def __call__(self, ctx):
        try:
            if not self.options.true_sequential:
                return super().__call__(ctx)
            done = {}
            for owner in self._order:
                stage = self._stage(ctx, owner)
                if stage and done:
                    self._acc[owner] = self._rehessian(ctx, owner)
                for p in stage:
                    done[p] = q = self.quantize_linear(ctx, p, self.args(ctx, p))
                    w = ctx.linears[p].weight
                    w.data.copy_(q.dequantize().to(w.device, w.dtype))
            self.emit(ctx, done)
            return self.propagate and bool(done)
        finally:
            self._reset()

    def _rehessian(self, ctx, owner: str) -> HessianAccumulator:
        """H of ``owner``'s input with the layer as it is now (earlier stages quantized)."""
        lin = ctx.linears[owner]
        acc = HessianAccumulator(lin.in_features, device=lin.weight.device)

        def take(mod, args):
            acc.add_batch(args[0].reshape(-1, args[0].shape[-1]))
            raise _Stop

        handle = lin.register_forward_pre_hook(take)
        try:
            with torch.no_grad():
                for args, kwargs in self._calls:
                    try:
                        ctx.layer(*args, **kwargs)
                    except _Stop:
                        pass
        finally:
            handle.remove()
        return acc
