"""The one layer-wise streaming loop (style lesson 8).

Embeddings are captured with a pre-hook, then each decoder layer is filled from the source,
every calibration batch runs through it, observers see inputs/outputs, the layer is emptied.
Peak memory: one layer + the activation cache + the embedding table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..model.source import ModelSource
from .capture import capture_layer_inputs
from .observers.base import FinalContext, LayerContext, Observer
from .skeleton import build_skeleton, empty, fill, fix_mmap_threshold, load_module, resolve_device


@dataclass
class EngineOptions:
    device: str = "auto"
    dtype: torch.dtype = torch.float32
    batch_size: int = 4
    progress: bool = True
    run_head: bool = True            # final norm + lm_head stage for observers' finish()
    low_memory: bool = True          # fixed glibc mmap threshold: no heap fragmentation (skeleton.py)


# A layer transform may change a layer's weights after observation (GPTQ, AWQ):
# it returns True when the layer's outputs must be recomputed (propagation of quantized outputs).
LayerTransform = Callable[[LayerContext], bool]
# A weight hook changes a module's weights right after they are loaded, before anything runs
# through it (evaluating a plan with fake-quantized weights): hook(HF name prefix, module). It
# sees the embeddings, every decoder layer, and lm_head (when tied: the embeddings again).
WeightHook = Callable[[str, nn.Module], None]


class LayerwiseEngine:
    def __init__(self, source: ModelSource, options: EngineOptions | None = None):
        self.source = source
        self.opts = options or EngineOptions()
        self.device = resolve_device(self.opts.device)
        if self.opts.low_memory:
            fix_mmap_threshold()
        self.lm = source.layer_map
        self.model = build_skeleton(source, self.opts.dtype)
        self.layers: nn.ModuleList = self.model.get_submodule(self.lm.layers_path)
        self._weights: WeightHook | None = None

    # -- embeddings --------------------------------------------------------------------------
    def _embed(self, batches: Sequence[torch.Tensor]):
        embed = load_module(self.source, self.model, self.lm.embed_path, self.device, self.opts.dtype)
        if self._weights is not None:
            self._weights(self.lm.embed_path + ".", embed)
        for mod in _rotary_modules(self.model):
            mod.to(self.device)
        hidden, kwargs = [], {}
        for ids in batches:
            h, kw = capture_layer_inputs(self.model, self.layers, ids.to(self.device))
            hidden.append(h)
            kwargs.setdefault(tuple(ids.shape), kw)
        return hidden, kwargs

    def run(self, input_ids: torch.Tensor, observers: Sequence[Observer] = (),
            transform: LayerTransform | None = None, weights: WeightHook | None = None) -> list[Observer]:
        """Stream ``input_ids`` [N, L] through every layer, feeding ``observers``."""
        self._weights = weights
        batches = list(torch.split(input_ids, self.opts.batch_size))
        hidden, kwargs = self._embed(batches)
        empty(self.model.get_submodule(self.lm.embed_path))   # reloaded in the head stage when tied
        hooks_wanted = any(o.wants_linear_io for o in observers)
        for i in _progress(range(len(self.layers)), self.opts.progress, "layers"):
            hidden = self._run_layer(i, hidden, batches, kwargs, observers, hooks_wanted, transform)
        if self.opts.run_head:
            self._finish(hidden, batches, observers)
        return list(observers)

    def _run_layer(self, i, hidden, batches, kwargs, observers, hooks_wanted, transform):
        prefix = self.lm.layer_prefix(i)
        layer = fill(self.layers[i], self.source.load_layer(i), self.device, self.opts.dtype)
        if self._weights is not None:
            self._weights(prefix, layer)
        linears = {p: layer.get_submodule(p) for p in self.lm.stored_linears()}
        ctx = LayerContext(i, layer, self.lm, prefix, linears)
        for o in observers:
            o.layer_start(ctx)
        handles = _hook_linears(ctx, observers) if hooks_wanted else []
        outs = []
        with torch.no_grad():
            for h, ids in zip(hidden, batches):
                y = _call_layer(layer, h, kwargs[tuple(ids.shape)][i])
                ctx.tokens += h.shape[0] * h.shape[1]
                for o in observers:
                    o.batch(ctx, h, y)
                outs.append(y)
        for hd in handles:
            hd.remove()
        for o in observers:
            o.layer_end(ctx)
        if transform is not None and transform(ctx):
            with torch.no_grad():
                outs = [_call_layer(layer, h, kwargs[tuple(ids.shape)][i]) for h, ids in zip(hidden, batches)]
        empty(layer)
        return outs

    def _finish(self, hidden, batches, observers):
        norm = load_module(self.source, self.model, self.lm.final_norm_path, self.device, self.opts.dtype)
        tied = self.source.tied_embeddings
        head = self.model.get_submodule(self.lm.lm_head_path)
        embed_w = None
        if tied:
            embed = load_module(self.source, self.model, self.lm.embed_path, self.device, self.opts.dtype)
            if self._weights is not None:
                self._weights(self.lm.embed_path + ".", embed)
            embed_w = embed.weight
            head.weight = embed_w
        else:
            load_module(self.source, self.model, self.lm.lm_head_path, self.device, self.opts.dtype)
            if self._weights is not None:
                self._weights(self.lm.lm_head_path + ".", head)
        with torch.no_grad():
            normed = [norm(h) for h in hidden]
        final = FinalContext(normed, batches, head, embed_w, tied)
        for o in observers:
            o.finish(final)
        empty(norm)
        empty(head)
        empty(self.model.get_submodule(self.lm.embed_path))


def _call_layer(layer, h, kw):
    out = layer(h, **kw)
    return out[0] if isinstance(out, tuple) else out


def _hook_linears(ctx: LayerContext, observers):
    wanted = [o for o in observers if o.wants_linear_io]

    def make(path):
        def hook(mod, args, out):
            x = args[0].reshape(-1, args[0].shape[-1])
            y = out.reshape(-1, out.shape[-1])
            for o in wanted:
                o.linear_io(ctx, path, x, y)
        return hook

    return [m.register_forward_hook(make(p)) for p, m in ctx.linears.items()]


def _rotary_modules(model):
    return [m for name, m in model.named_modules() if name.endswith("rotary_emb")]


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    import sys

    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, disable=not sys.stderr.isatty(), leave=False)
