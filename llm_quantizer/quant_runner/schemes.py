"""Which linear gets which integer scheme, and the compressed-tensors config that describes it.

A *scheme map* is ``{HF module name: QuantArgs | None}`` over every stored linear of the decoder
layers (``None``: kept in 16-bit). It comes from a plan (a :class:`~llm_quantizer.plan.Plan`, its
JSON dict, or a plain ``{HF weight name: format name}`` mapping) or from one uniform ``QuantArgs``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from ..errors import ConfigError
from ..formats import get_format
from ..quant.rtn import QuantArgs

CT_DTYPE = "bfloat16"          # checkpoint dtype: scales are written in it (compressed-tensors 0.20)


@dataclass
class QuantizedLinear:
    """One quantized linear as the checkpoint stores it (CPU tensors, rtn's conventions)."""

    args: QuantArgs
    codes: torch.Tensor            # int8 [out, in], signed
    scales: torch.Tensor           # [out, G] in the checkpoint dtype
    zeros: torch.Tensor            # int8 [out, G]

    def dequantize(self) -> torch.Tensor:
        from ..quant.rtn import dequantize

        return dequantize(self.codes, self.scales, self.zeros)


def layer_linear_names(source) -> list[str]:
    """HF module names of every stored linear in the decoder layers, in layer order."""
    lm = source.layer_map
    return [f"{lm.layer_prefix(i)}{p}" for i in range(source.num_layers) for p in lm.stored_linears()]


def embedding_module_names(source) -> list[str]:
    """The stored input embedding and (untied) lm_head modules: quantized by RTN outside the
    layer loop when a plan gives them an int format (a tied lm_head is the embedding)."""
    lm = source.layer_map
    return [m for m in (lm.embed_path, lm.lm_head_path) if f"{m}.weight" in source.tensors]


def args_for_format(name: str, scale_dtype: str = CT_DTYPE) -> Optional[QuantArgs]:
    """QuantArgs of an ``int*`` format; ``None`` for a float format (kept in 16-bit)."""
    fmt = get_format(name)
    if fmt.family == "int":
        return QuantArgs(fmt.bits, fmt.group_size, fmt.symmetric, scale_dtype=scale_dtype)
    if fmt.is_float:
        return None
    raise ConfigError(f"format {fmt.name} is a GGUF type; the gptq/awq backends take int formats")


def plan_formats(plan) -> dict[str, str]:
    """``{HF weight name: format}`` from a Plan, its JSON dict, or a plain mapping."""
    from ..plan import Plan

    if isinstance(plan, Mapping) and "schema_version" in plan:
        plan = Plan.from_dict(dict(plan))
    if isinstance(plan, Plan):
        if plan.family != "int":
            raise ConfigError(f"this is a {plan.family} plan; the gptq/awq backends need an int plan")
        return {t.name: t.format for t in plan.tensors}
    if isinstance(plan, Mapping):
        return {str(k): str(v) for k, v in plan.items()}
    raise ConfigError(f"unsupported plan of type {type(plan).__name__}")


def resolve_schemes(source, plan=None, default: Optional[QuantArgs] = None) -> dict[str, Optional[QuantArgs]]:
    """The scheme map for ``source``: from ``plan`` if given, else ``default`` everywhere.

    Linears a plan does not mention get ``default`` (``None`` when no default). The embedding
    and an untied lm_head appear only when the plan quantizes them; quantized formats on other
    tensors (norms, biases) are refused.
    """
    names = layer_linear_names(source)
    schemes: dict[str, Optional[QuantArgs]] = {n: default for n in names}
    if plan is not None:
        known, extra = set(names), set(embedding_module_names(source))
        for weight, fmt in plan_formats(plan).items():
            module = weight[: -len(".weight")] if weight.endswith(".weight") else weight
            args = args_for_format(fmt)
            if module in known:
                schemes[module] = args
            elif weight not in source.tensors:
                raise ConfigError(f"plan tensor {weight} is not in model {source.name}: was the plan made for it?")
            elif args is not None and module in extra and weight.endswith(".weight"):
                schemes[module] = args
            elif args is not None:
                raise ConfigError(f"plan quantizes {weight} to {fmt}: only linears, the embedding and "
                                  "the lm_head can be quantized by this backend")
    for module, args in schemes.items():
        if args is not None:
            in_f = source.tensors[module + ".weight"].shape[-1]
            if args.group_size != -1 and in_f % args.group_size:
                fits = [g for g in (256, 128, 64, 32, 16) if in_f % g == 0] or [-1]
                raise ConfigError(f"{module}: in_features {in_f} is not divisible by group size "
                                  f"{args.group_size}; use a group size dividing it (e.g. {fits[0]})")
    if all(a is None for a in schemes.values()):
        raise ConfigError("nothing to quantize: the plan keeps every linear in 16-bit")
    return schemes


def scheme_key(args: QuantArgs) -> tuple[int, int, bool]:
    return args.bits, args.group_size, args.symmetric


def ct_weights(bits: int, group: int, sym: bool) -> dict:
    """The ``weights`` entry of a compressed-tensors config group (as ``plan.compile`` writes it)."""
    return {"num_bits": bits, "type": "int", "symmetric": sym,
            "strategy": "channel" if group == -1 else "group", "group_size": None if group == -1 else group,
            "dynamic": False, "actorder": None, "observer": "minmax"}


def ct_config(schemes: Mapping[str, Optional[QuantArgs]], plan=None) -> dict:
    """compressed-tensors ``quantization_config``: the plan compiler's output for a Plan, else
    one config group per (bits, group, sym) with regex targets, the 16-bit linears ignored."""
    from ..plan import Plan, to_compressed_tensors
    from ..plan.patterns import compress

    if isinstance(plan, Mapping) and "schema_version" in plan:
        plan = Plan.from_dict(dict(plan))
    if isinstance(plan, Plan):
        return to_compressed_tensors(plan)
    by_scheme: dict[tuple, list[str]] = defaultdict(list)
    for module, args in schemes.items():
        if args is not None:
            by_scheme[scheme_key(args)].append(module)
    universe = list(schemes)
    groups = {}
    for i, (key, modules) in enumerate(sorted(by_scheme.items())):
        groups[f"group_{i}"] = {"targets": ["re:" + rx for rx in compress(modules, universe)],
                                "weights": ct_weights(*key), "input_activations": None,
                                "output_activations": None, "format": "pack-quantized"}
    ignore = sorted({m for m, a in schemes.items() if a is None} | ({"lm_head"} - set(schemes)))
    return {"quant_method": "compressed-tensors", "format": "pack-quantized",
            "quantization_status": "compressed", "config_groups": groups,
            "ignore": ignore, "kv_cache_scheme": None}


def scheme_label(args: Optional[QuantArgs]) -> str:
    """``int4_g128`` style name (``BF16`` for None)."""
    from ..formats import int_format_name

    return "BF16" if args is None else int_format_name(args.bits, args.group_size, args.symmetric)
