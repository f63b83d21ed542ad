"""The awq backend: activation-aware scale search (folded into the preceding norm / linear),
clipping search and group quantization in the streaming engine, per-layer bits from the plan,
written as compressed-tensors ``pack-quantized``.

``config.awq``: bits, group_size, zero_point (asymmetric, default off). Zero-point checkpoints
follow the compressed-tensors spec, but transformers >= 5.23 with compressed-tensors >= 0.18 cannot
load them (``quant_runner.compat``): with that stack a zero-point request is refused up front.
"""
from __future__ import annotations

import logging

from ..quant.rtn import QuantArgs
from ..quant_runner import AWQOptions
from ..quant_runner.schemes import CT_DTYPE
from .int_common import IntBackend
from .registry import register_backend

log = logging.getLogger(__name__)


def _opts(config):
    from ..config import AWQOptions as Cfg

    return getattr(config, "awq", None) or Cfg()


@register_backend
class AWQBackend(IntBackend):
    name = "awq"
    method = "awq"
    description = "AWQ (scale + clip search, streamed) -> compressed-tensors pack-quantized, per-layer bits"

    def default_args(self, config) -> QuantArgs:
        o = _opts(config)
        return QuantArgs(o.bits, o.group_size, not o.zero_point, scale_dtype=CT_DTYPE)

    def options(self, config) -> AWQOptions:
        return AWQOptions()
