"""Engine passes that quantize a layer in place: the base class and RTN (GPTQ and AWQ have their
own modules).

A pass is an engine observer plus the engine's layer ``transform``: it observes the layer's
calibration inputs, then quantizes its linears, writes the fake-quantized weights back (so the
quantized outputs propagate to the next layer) and hands the layer to a sink.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Protocol

import torch

from ..engine.observers.base import LayerContext, Observer
from ..quant.rtn import QuantArgs, quantize_rtn
from .schemes import QuantizedLinear


class LayerSink(Protocol):
    def add_layer(self, prefix: str, tensors: dict[str, torch.Tensor],
                  quantized: dict[str, QuantizedLinear]) -> None:
        """``tensors``: the layer's other tensors (full HF names); ``quantized``: module name -> result."""


class QuantPass(Observer):
    """Base: the scheme lookup, the write-back and the hand-off to the sink."""

    name = "quant-pass"
    propagate = True

    def __init__(self, schemes: Mapping[str, Optional[QuantArgs]], sink: LayerSink,
                 tensor_names: Callable[[str], list[str]]):
        self.schemes, self.sink, self.tensor_names = schemes, sink, tensor_names
        self.stats: dict[str, dict] = {}

    def args(self, ctx: LayerContext, path: str) -> Optional[QuantArgs]:
        return self.schemes.get(ctx.prefix + path)

    def quantize_linear(self, ctx, path: str, args: QuantArgs) -> QuantizedLinear:
        raise NotImplementedError

    def __call__(self, ctx: LayerContext) -> bool:
        """The engine transform: quantize every scheduled linear of the layer, emit, propagate."""
        done = {}
        for path in ctx.linears:
            args = self.args(ctx, path)
            if args is not None:
                done[path] = self.quantize_linear(ctx, path, args)
        self.emit(ctx, done)
        return self.propagate and bool(done)

    def emit(self, ctx: LayerContext, done: dict[str, QuantizedLinear]) -> None:
        """Write the fake weights into the layer, then pass every stored tensor to the sink."""
        for path, q in done.items():
            w = ctx.linears[path].weight
            w.data.copy_(q.dequantize().to(w.device, w.dtype))
        state = ctx.layer.state_dict()
        skip = {f"{p}.weight" for p in done}
        tensors = {ctx.prefix + k: state[k].detach().cpu() for k in
                   (n[len(ctx.prefix):] for n in self.tensor_names(ctx.prefix)) if k not in skip}
        self.sink.add_layer(ctx.prefix, tensors, {ctx.prefix + p: q for p, q in done.items()})


def to_cpu_result(args, codes, scales, zeros) -> QuantizedLinear:
    return QuantizedLinear(args, codes.cpu(), scales.cpu(), zeros.cpu())


class RTNPass(QuantPass):
    """Round-to-nearest, no calibration needed (the baseline)."""

    name = "rtn-pass"

    def quantize_linear(self, ctx, path, args):
        codes, scales, zeros = quantize_rtn(ctx.linears[path].weight.detach(), args)
        return to_cpu_result(args, codes, scales, zeros)
