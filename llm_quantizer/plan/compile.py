"""Compile a Plan into what the backends read.

* GGUF: llama-quantize ``--tensor-type REGEX=TYPE`` rules plus the positional type. Recent
  llama.cpp applies a matching rule first and its row-length fallback after it; a tensor no
  rule matches gets the ftype's own mix (e.g. Q4_K_M bumps ffn_down to Q6_K). So every
  2-D tensor gets a rule with its *stored* type (fallbacks already applied: no rule asks for
  an incompatible type) and the rules never overlap, which makes first-match (new) and
  last-match (old llama.cpp) semantics agree. The ftype only labels the file
  (``general.file_type``); it must be a quantized type, or llama.cpp ignores the rules.
* int: a compressed-tensors ``quantization_config`` (``pack-quantized``, one config group per
  (bits, group, sym) scheme) and a GPTQModel config with a ``dynamic`` override map.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from ..errors import ConfigError
from ..formats import get_format
from .patterns import compress
from .types import Plan, TensorPlan

# llama-quantize type argument whose main type is the key (the mix only labels the file here)
_FTYPE_OF = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "IQ2_S": "IQ2_M"}


@dataclass(frozen=True)
class LlamaQuantizeSpec:
    ftype: str                              # positional type argument, e.g. "Q4_K_M"
    tensor_types: tuple[tuple[str, str], ...]   # (lower-case regex on GGUF names, ggml type)

    def args(self) -> list[str]:
        """``--tensor-type`` arguments, one per rule (ggml type names in lower case)."""
        out = []
        for pattern, tname in self.tensor_types:
            out += ["--tensor-type", f"{pattern}={tname.lower()}"]
        return out

    def to_dict(self) -> dict:
        return {"ftype": self.ftype, "tensor_types": [list(r) for r in self.tensor_types]}


def to_llama_quantize(plan: Plan) -> LlamaQuantizeSpec:
    """Rules ``(regex, TYPE)`` covering every 2-D tensor of a GGUF plan, grouped by type."""
    _need(plan, "gguf")
    matrices = [t for t in plan.tensors if len(t.shape) >= 2]
    missing = [t.name for t in matrices if not t.gguf_name]
    if missing:
        raise ConfigError(f"plan tensor {missing[0]} has no gguf_name; cannot write llama-quantize rules")
    universe = [t.gguf_name.lower() for t in matrices]
    by_type: dict[str, list[str]] = defaultdict(list)
    for t in matrices:
        by_type[t.format].append(t.gguf_name.lower())
    rules = tuple((rx, fmt) for fmt, names in sorted(by_type.items())
                  for rx in compress(names, universe))
    return LlamaQuantizeSpec(_ftype(matrices), rules)


def _ftype(matrices: list[TensorPlan]) -> str:
    counts = Counter(t.format for t in matrices)
    quantized = [f for f, _ in counts.most_common() if not get_format(f).is_float]
    if not quantized:
        return counts.most_common(1)[0][0] if counts else "F16"
    return _FTYPE_OF.get(quantized[0], quantized[0])


def _need(plan: Plan, family: str) -> None:
    if plan.family != family:
        raise ConfigError(f"this is a {plan.family} plan; it cannot be compiled for {family}")


def _module(t: TensorPlan) -> str:
    return t.name[: -len(".weight")] if t.name.endswith(".weight") else t.name


def _schemes(plan: Plan) -> tuple[dict[tuple, list[str]], list[str], list[str]]:
    """(bits, group, sym) -> module names; float-kept matrix modules; all matrix modules."""
    schemes: dict[tuple, list[str]] = defaultdict(list)
    floats, universe = [], []
    for t in plan.tensors:
        if len(t.shape) < 2:
            continue
        universe.append(_module(t))
        fmt = get_format(t.format)
        if fmt.family == "int":
            schemes[(fmt.bits, fmt.group_size, fmt.symmetric)].append(_module(t))
        else:
            floats.append(_module(t))
    return dict(sorted(schemes.items())), floats, universe


def to_compressed_tensors(plan: Plan) -> dict:
    """A compressed-tensors ``quantization_config`` (goes into config.json)."""
    _need(plan, "int")
    schemes, floats, universe = _schemes(plan)
    groups = {}
    for i, ((bits, group, sym), modules) in enumerate(schemes.items()):
        groups[f"group_{i}"] = {
            "targets": ["re:" + rx for rx in compress(modules, universe)],
            "weights": {"num_bits": bits, "type": "int", "symmetric": sym,
                        "strategy": "channel" if group == -1 else "group",
                        "group_size": None if group == -1 else group,
                        "dynamic": False, "actorder": None, "observer": "minmax"},
            "input_activations": None, "output_activations": None, "format": "pack-quantized"}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized",
            "quantization_status": "compressed", "config_groups": groups,
            "ignore": sorted(floats), "kv_cache_scheme": None}


def to_gptqmodel(plan: Plan) -> dict:
    """GPTQModel ``QuantizeConfig`` fields: the most common scheme as the base, ``+:`` overrides
    for the other schemes and ``-:`` (skip) rules for modules kept in 16-bit."""
    _need(plan, "int")
    schemes, floats, universe = _schemes(plan)
    if not schemes:
        raise ConfigError("the plan quantizes no module to an int format")
    base = max(schemes, key=lambda k: (len(schemes[k]), k))
    dynamic: dict[str, dict] = {}
    for (bits, group, sym), modules in schemes.items():
        if (bits, group, sym) != base:
            for rx in compress(modules, universe):
                dynamic["+:" + rx] = {"bits": bits, "group_size": group, "sym": sym}
    for rx in compress(floats, universe) if floats else []:
        dynamic["-:" + rx] = {}
    return {"bits": base[0], "group_size": base[1], "sym": base[2], "desc_act": False,
            "dynamic": dynamic}
