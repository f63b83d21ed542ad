"""Synthetic measurements.json data for a llama-shaped model (tests and benchmarks).

Errors follow ``numel * sensitivity * 2**(-2 * stored bits) * noise`` with per-kind sensitivity,
U-shaped layer importance and one super weight in layer 1's down projection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..formats import get_format
from .measurements import stored_format

_SENSITIVITY = {"q": 0.6, "k": 0.8, "v": 1.5, "o": 1.0, "gate": 0.9, "up": 0.9, "down": 1.4,
                "embed": 0.3, "lm_head": 2.0}
_GGUF = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "gate": "ffn_gate",
         "up": "ffn_up", "down": "ffn_down"}
_HF = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
       "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


@dataclass(frozen=True)
class Shape:
    num_layers: int = 4
    hidden: int = 512
    intermediate: int = 1536
    n_heads: int = 8
    n_kv_heads: int = 2
    vocab: int = 4096


LLAMA_70B = Shape(80, 8192, 28672, 64, 8, 128256)


def linear_shapes(s: Shape) -> dict[str, tuple[int, int]]:
    head = s.hidden // s.n_heads
    kv = head * s.n_kv_heads
    return {"q": (s.hidden, s.hidden), "k": (kv, s.hidden), "v": (kv, s.hidden),
            "o": (s.hidden, s.hidden), "gate": (s.intermediate, s.hidden),
            "up": (s.intermediate, s.hidden), "down": (s.hidden, s.intermediate)}


def make_measurements(shape: Shape = Shape(), formats: Sequence[str] = (), seed: int = 0,
                      name: str = "synthetic-llama") -> dict:
    """A measurements dict (schema_version 1) with errors for every format in ``formats``."""
    rng = np.random.default_rng(seed)
    tensors = [_tensor("model.embed_tokens.weight", "token_embd.weight", "embed", None,
                       (shape.vocab, shape.hidden), formats, rng, 1.0)]
    for i in range(shape.num_layers):
        imp = 1.0 + 2.0 * ((2 * i / max(1, shape.num_layers - 1)) - 1) ** 4
        tensors.append(_norm(f"model.layers.{i}.input_layernorm.weight", f"blk.{i}.attn_norm.weight", i, shape))
        for kind, dims in linear_shapes(shape).items():
            t = _tensor(f"model.layers.{i}.{_HF[kind]}.weight", f"blk.{i}.{_GGUF[kind]}.weight",
                        kind, i, dims, formats, rng, imp)
            t["super_weight"] = i == min(1, shape.num_layers - 1) and kind == "down"
            tensors.append(t)
        tensors.append(_norm(f"model.layers.{i}.post_attention_layernorm.weight", f"blk.{i}.ffn_norm.weight", i, shape))
    tensors.append(_norm("model.norm.weight", "output_norm.weight", None, shape))
    tensors.append(_tensor("lm_head.weight", "output.weight", "lm_head", None,
                           (shape.vocab, shape.hidden), formats, rng, 1.0))
    total = sum(t["numel"] for t in tensors)
    return {"schema_version": 1,
            "model": {"name": name, "architecture": "LlamaForCausalLM", "num_layers": shape.num_layers,
                      "total_params": total, "original_bytes": 2 * total, "dtype": "bfloat16"},
            "tensors": tensors}


def _tensor(name, gguf_name, kind, layer, dims, formats, rng, importance) -> dict:
    numel = dims[0] * dims[1]
    errors = {}
    for f in formats:
        fmt = get_format(f)
        if not fmt.supports(dims):
            continue
        bits = get_format(stored_format(fmt, dims)).effective_bits(dims)
        noise = float(rng.lognormal(0.0, 0.15))
        errors[fmt.name] = numel * _SENSITIVITY[kind] * 2.0 ** (-2 * bits) * noise * 1e-3
    return {"name": name, "gguf_name": gguf_name, "kind": kind, "layer": layer, "shape": list(dims),
            "numel": numel, "quantizable": True, "importance": importance, "super_weight": False,
            "errors": errors}


def _norm(name, gguf_name, layer, shape: Shape) -> dict:
    return {"name": name, "gguf_name": gguf_name, "kind": "norm", "layer": layer,
            "shape": [shape.hidden], "numel": shape.hidden, "quantizable": False,
            "importance": 1.0, "super_weight": False, "errors": {}}
