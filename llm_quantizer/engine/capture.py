"""Capture what each decoder layer receives: the first layer's hidden states (embeddings) and
every layer's keyword arguments (masks, rope), with forward pre-hooks and an early stop."""
from __future__ import annotations

import torch
from torch import nn


class _Stop(Exception):
    """Private early-stop signal: the embeddings and all layer kwargs have been captured."""


def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList, input_ids: torch.Tensor):
    """Run ``model`` up to its first decoder layer.

    Returns (hidden_states entering layer 0, [kwargs of layer i]). Layers stay untouched: each
    is replaced during the call by a pass-through that records its kwargs, the last one stops.
    """
    hidden: list[torch.Tensor] = []
    kwargs_per_layer: list[dict] = [None] * len(layers)
    handles = []

    def make_hook(i: int):
        def hook(module, args, kwargs):
            if i == 0:
                hidden.append(args[0] if args else kwargs["hidden_states"])
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            for key, off in (("use_cache", False), ("cache", None), ("past_key_values", None),
                             ("past_key_value", None)):
                if key in kw:
                    kw[key] = off
            kwargs_per_layer[i] = kw
            if i == len(layers) - 1:
                raise _Stop
            return args, kwargs
        return hook

    originals = list(layers)
    passthrough = [_PassThrough(layer) for layer in originals]
    for i, p in enumerate(passthrough):
        layers[i] = p
        handles.append(p.register_forward_pre_hook(make_hook(i), with_kwargs=True))
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
        for i, layer in enumerate(originals):
            layers[i] = layer
    if not hidden:
        raise RuntimeError("the model never reached its first decoder layer")
    return hidden[0], kwargs_per_layer


class _PassThrough(nn.Module):
    """Stands in for a decoder layer during capture; exposes the layer's attributes."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        object.__setattr__(self, "inner", inner)
        for attr in ("attention_type", "layer_idx", "is_sliding", "sliding_window"):
            if hasattr(inner, attr):
                object.__setattr__(self, attr, getattr(inner, attr))

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states
