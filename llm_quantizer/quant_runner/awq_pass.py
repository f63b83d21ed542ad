"""AWQ inside the engine, following llm-awq's ``run_awq`` per decoder layer.

1. The inputs of every input group (q/k/v, gate/up, and o / down when foldable) are collected.
2. Per group, scales are searched on the ORIGINAL weights: the attention group on the linears'
   outputs, the MLP group on the whole MLP block (``module2inspect=mlp``); v -> o only when
   ``v.out == o.in`` (no grouped-query attention), up -> down when gate/up are not fused.
3. All scales are applied: divided into the preceding norm (Gemma's ``1 + w`` offset from the
   layer map) or the preceding linear's rows, multiplied into the group's weight columns.
4. Clipping search on the scaled weights and inputs (not for q/k, as llm-awq), then RTN.

As llm-awq, the next layer sees the float layer's outputs unless ``propagate`` is set.
Each linear is searched with its own QuantArgs, so mixed-bit plans work.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..engine.observers.activations import shared_inputs
from ..quant.awq import activation_mean, apply_clip, auto_clip, fold_into_linear_rows, fold_into_norm, \
    linear_outputs, ratio_scales, scale_linear_columns
from ..quant.rtn import QuantArgs, fake_quantize, quantize_rtn
from .passes import QuantPass, to_cpu_result
from .schemes import CT_DTYPE


@dataclass(frozen=True)
class AWQOptions:
    n_grid: int = 20
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    propagate: bool = False


@dataclass
class _Group:
    prev: tuple[str, str]          # ("norm" | "linear", path relative to the layer)
    linears: list[str]             # stored linear paths sharing one input
    block: Optional[str] = None    # module inspected instead of the linears' outputs (the MLP)


def awq_groups(ctx) -> list[_Group]:
    """The scaling groups of this layer, from the layer map (no names matched ad hoc)."""
    lm, layer = ctx.layer_map, ctx.layer
    paths = lm.linears
    groups = []
    for norm_key, kinds in lm.input_groups:
        lin = list(dict.fromkeys(paths[k] for k in kinds if k in paths))
        if lin and norm_key in lm.norms:
            groups.append(_Group(("norm", lm.norms[norm_key]), lin, _mlp_block(lm, lin)))
    for src, dst, fused_with in (("v", "o", "q"), ("up", "down", "gate")):
        if src in paths and dst in paths and paths[src] != paths.get(fused_with):
            if layer.get_submodule(paths[src]).out_features == layer.get_submodule(paths[dst]).in_features:
                groups.append(_Group(("linear", paths[src]), [paths[dst]]))
    return groups


def _mlp_block(lm, linears: list[str]) -> Optional[str]:
    parents = {p.rpartition(".")[0] for p in linears}
    down = lm.linears.get("down")
    if len(parents) == 1 and down and down.rpartition(".")[0] in parents and down not in linears:
        return parents.pop()
    return None


def search_group_scales(x: torch.Tensor, weights: Sequence[torch.Tensor], args: Sequence[Optional[QuantArgs]],
                        forward: Callable, n_grid: int = 20):
    """quant.awq.search_scales with one QuantArgs per weight (None: not quantized).
    Returns (scales float32 [in], best ratio, losses)."""
    ref = forward(x, weights)
    x_mean = activation_mean(x)
    best, losses = (float("inf"), 0.0, None), []
    for r in range(n_grid):
        s = ratio_scales(x_mean, r / n_grid)
        qws = [w if a is None else (fake_quantize(w.float() * s, a) / s).to(w.dtype) for w, a in zip(weights, args)]
        loss = (ref - forward(x, qws)).float().pow(2).mean().item()
        losses.append(loss)
        if loss < best[0]:
            best = (loss, r / n_grid, s)
    if best[2] is None:
        raise RuntimeError(f"AWQ scale search found no finite loss (first losses {losses[:3]})")
    return best[2], best[1], losses


class AWQPass(QuantPass):
    name = "awq-pass"
    wants_linear_io = True

    def __init__(self, schemes, sink, tensor_names, options: AWQOptions = AWQOptions()):
        super().__init__(schemes, sink, tensor_names)
        self.options = options
        self.propagate = options.propagate
        self._x: dict[str, list[torch.Tensor]] = {}
        self._x_scaled: dict[str, torch.Tensor] = {}
        self._shared: dict[str, str] = {}

    def layer_start(self, ctx):
        self._x, self._shared = defaultdict(list), shared_inputs(ctx.layer_map)

    def linear_io(self, ctx, path, x, y):
        if path not in self._shared:
            self._x[path].append(x.detach().float())

    def __call__(self, ctx) -> bool:
        try:
            x = {p: torch.cat(v) for p, v in self._x.items()}
            self._x = {}
            self._x_scaled = self._scale(ctx, x)
            return super().__call__(ctx)
        finally:
            self._x, self._x_scaled = {}, {}

    def _input(self, x, path):
        return x[self._shared.get(path, path)]

    def _scale(self, ctx, x) -> dict[str, torch.Tensor]:
        """Search every group's scales on the original weights, then apply them all; returns
        the inputs divided by the scales (what the scaled linears see)."""
        found = []
        for g in awq_groups(ctx):
            args = [self.args(ctx, p) for p in g.linears]
            if all(a is None for a in args):
                continue
            mods = [ctx.layer.get_submodule(p) for p in g.linears]
            fwd = _block_forward(ctx.layer, g) if g.block else linear_outputs
            s, ratio, _ = search_group_scales(x[g.linears[0]], [m.weight.detach() for m in mods], args, fwd,
                                              self.options.n_grid)
            found.append((g, mods, s))
            self.stats[ctx.prefix + g.linears[0]] = {"ratio": ratio, "prev": g.prev[1]}
        for g, mods, s in found:
            self._apply(ctx, g, mods, s)
            x[g.linears[0]] = x[g.linears[0]] / s
        return x

    def _apply(self, ctx, g: _Group, mods, s) -> None:
        kind, path = g.prev
        prev = ctx.layer.get_submodule(path)
        with torch.no_grad():
            if kind == "norm":
                w, b = fold_into_norm(prev.weight, s, getattr(prev, "bias", None), ctx.layer_map.norm_offset)
                w = w.to(getattr(torch, CT_DTYPE)).to(prev.weight.dtype)   # as the checkpoint stores it
            else:
                w, b = fold_into_linear_rows(prev.weight, s, prev.bias)
            prev.weight.copy_(w)
            if b is not None:
                prev.bias.copy_(b)
            for m in mods:
                m.weight.copy_(scale_linear_columns(m.weight, s))

    def quantize_linear(self, ctx, path, args):
        w = ctx.linears[path].weight.detach()
        kinds = ctx.layer_map.stored_linears()[path]
        if self.options.clip and not ({"q", "k"} & set(kinds)):
            o = self.options
            max_val = auto_clip(w, self._input(self._x_scaled, path), args, n_grid=o.clip_grid,
                                max_shrink=o.max_shrink)
            w = apply_clip(w, max_val)
        return to_cpu_result(args, *quantize_rtn(w, args))


def _block_forward(layer, g: _Group):
    """forward(x, weights) of the block ``g.block`` with the group's weights swapped in."""
    block = layer.get_submodule(g.block)
    names = [p[len(g.block) + 1:] + ".weight" for p in g.linears]

    def forward(x, weights):
        return torch.func.functional_call(block, dict(zip(names, weights)), (x,)).float()

    return forward
