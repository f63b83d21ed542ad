"""The gptq backend: our GPTQ solver in the streaming engine, per-layer bits from the plan,
written as compressed-tensors ``pack-quantized`` (transformers and vLLM load it).

``config.gptq``: bits, group_size, act_order (with static groups, so the groups stay contiguous
and no ``g_idx`` is needed), symmetric. ``config.device``: where the layers run (auto: CUDA when
available). A plan (Plan, its JSON dict or ``{HF weight: int format}``) overrides the uniform bits.
"""
from __future__ import annotations

from ..quant.rtn import QuantArgs
from ..quant_runner import GPTQOptions
from ..quant_runner.schemes import CT_DTYPE
from .int_common import IntBackend
from .registry import register_backend


def _opts(config):
    from ..config import GPTQOptions as Cfg

    return getattr(config, "gptq", None) or Cfg()


@register_backend
class GPTQBackend(IntBackend):
    name = "gptq"
    method = "gptq"
    description = "GPTQ (our solver, streamed layer by layer) -> compressed-tensors pack-quantized, per-layer bits"

    def default_args(self, config) -> QuantArgs:
        o = _opts(config)
        return QuantArgs(o.bits, o.group_size, o.symmetric, scale_dtype=CT_DTYPE)

    def options(self, config) -> GPTQOptions:
        return GPTQOptions(act_order=_opts(config).act_order)
