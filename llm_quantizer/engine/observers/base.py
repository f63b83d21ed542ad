"""The observer lifecycle (style lesson 9: small, no telemetry) and the observer registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import nn

from ...model.archs import LayerMap


@dataclass
class LayerContext:
    """What an observer may look at while the engine holds one decoder layer."""

    index: int
    layer: nn.Module
    layer_map: LayerMap
    prefix: str                            # HF name prefix of the layer, e.g. "model.layers.3."
    linears: dict[str, nn.Linear]          # stored linear path (relative) -> module
    tokens: int = 0                        # tokens seen in this layer so far
    state: dict = field(default_factory=dict)   # shared scratch space between observers


class Observer:
    """Override what you need. ``wants_linear_io`` makes the engine hook every linear."""

    name: ClassVar[str] = "observer"
    wants_linear_io: ClassVar[bool] = False

    def layer_start(self, ctx: LayerContext) -> None: ...

    def linear_io(self, ctx: LayerContext, path: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """x: [tokens, in] input of linear ``path``; y: [tokens, out] its output."""

    def batch(self, ctx: LayerContext, h_in: torch.Tensor, h_out: torch.Tensor) -> None: ...

    def layer_end(self, ctx: LayerContext) -> None: ...

    def finish(self, final: "FinalContext") -> None:
        """After the last layer: the final norm's output and lm_head are available."""

    def result(self) -> dict:
        return {}


@dataclass
class FinalContext:
    hidden: list[torch.Tensor]             # final-norm outputs per batch
    input_ids: list[torch.Tensor]
    lm_head: nn.Module | None
    embed_weight: torch.Tensor | None
    tied: bool
    state: dict = field(default_factory=dict)


_OBSERVERS: dict[str, Callable[..., Observer]] = {}


def register_observer(cls):
    if cls.name in _OBSERVERS:
        raise ValueError(f"observer {cls.name!r} registered twice")
    _OBSERVERS[cls.name] = cls
    return cls


def make_observer(name: str, **kwargs) -> Observer:
    from ...errors import ConfigError

    if name not in _OBSERVERS:
        raise ConfigError(f"unknown observer {name!r}; available: {', '.join(sorted(_OBSERVERS))}")
    return _OBSERVERS[name](**kwargs)


def observer_names() -> list[str]:
    return sorted(_OBSERVERS)
