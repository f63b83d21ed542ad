"""Per-architecture layer maps, as data (style lesson 2).

A :class:`LayerMap` names, relative to one decoder layer, the linears by kind (q k v o gate up
down), fused linears and how they split, the norms, and the model-level embeddings / final
norm / lm_head. GGUF names come from gguf-py's ``TensorNameMap``; the only per-architecture
GGUF facts kept here are the tensor transforms llama.cpp's converter applies (q/k row
permutation for llama, ``+1`` on Gemma norms).

Adding an architecture is one ``register(LayerMap(...))`` call, or an alias of an existing one.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from ..errors import UnsupportedArchitectureError

# Tensor kinds used everywhere (analysis, measurements, plans).
LINEAR_KINDS = ("q", "k", "v", "o", "gate", "up", "down")
OTHER_KINDS = ("embed", "lm_head", "norm", "other")

_LLAMA_LINEARS = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
    "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}
_LLAMA_NORMS = {"attn": "input_layernorm", "ffn": "post_attention_layernorm"}


@dataclass(frozen=True)
class FusedLinear:
    """A stored linear holding several logical ones stacked along the output dim."""

    path: str                      # relative to the layer, e.g. "self_attn.qkv_proj"
    parts: tuple[str, ...]         # kinds in stacking order, e.g. ("q", "k", "v")


@dataclass(frozen=True)
class LayerMap:
    model_types: tuple[str, ...]
    gguf_arch: str                                  # gguf-py MODEL_ARCH name, e.g. "LLAMA"
    linears: dict[str, str] = field(default_factory=lambda: dict(_LLAMA_LINEARS))
    fused: tuple[FusedLinear, ...] = ()
    norms: dict[str, str] = field(default_factory=lambda: dict(_LLAMA_NORMS))
    layers_path: str = "model.layers"
    embed_path: str = "model.embed_tokens"
    final_norm_path: str = "model.norm"
    lm_head_path: str = "lm_head"
    norm_offset: float = 0.0          # Gemma RMSNorm scales by (1 + w)
    gguf_permute_qk: bool = False     # llama.cpp's converter permutes q/k rows for llama
    # (norm, linears it feeds) pairs: the input groups AWQ scales and the engine observes
    input_groups: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("attn", ("q", "k", "v")), ("ffn", ("gate", "up")),
    )

    @property
    def name(self) -> str:
        return self.model_types[0]

    # -- names -------------------------------------------------------------------------------
    def layer_prefix(self, i: int) -> str:
        return f"{self.layers_path}.{i}."

    def stored_linears(self) -> dict[str, tuple[str, ...]]:
        """Linear module paths as stored -> the logical kinds each holds, in stacking order."""
        out: dict[str, tuple[str, ...]] = {}
        for kind, path in self.linears.items():
            out[path] = out.get(path, ()) + (kind,)
        out.update({f.path: f.parts for f in self.fused})
        return out

    def fused_sizes(self, config) -> dict[str, tuple[int, ...]]:
        """Output rows of each part of each fused linear, from the HF config."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        rows = {"q": config.num_attention_heads * head_dim, "k": n_kv * head_dim, "v": n_kv * head_dim,
                "gate": config.intermediate_size, "up": config.intermediate_size}
        return {f.path: tuple(rows[k] for k in f.parts) for f in self.fused}

    def gguf_name(self, hf_name: str, num_layers: int) -> str | None:
        """The llama.cpp tensor name of a stored HF tensor (gguf-py's TensorNameMap)."""
        return _gguf_name_map(self.gguf_arch, num_layers).get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def classify(self, name: str) -> tuple[int | None, str]:
        """(layer index or None, kind) of a stored tensor name."""
        base = re.sub(r"\.(weight|bias)$", "", name)
        if base == self.embed_path:
            return None, "embed"
        if base == self.lm_head_path:
            return None, "lm_head"
        if base == self.final_norm_path:
            return None, "norm"
        m = re.match(re.escape(self.layers_path) + r"\.(\d+)\.(.+)$", base)
        if not m:
            return None, "other"
        layer, rel = int(m.group(1)), m.group(2)
        kinds = self.stored_linears().get(rel)
        if kinds:
            return layer, "+".join(kinds)
        if rel.endswith("norm") or rel in self.norms.values():
            return layer, "norm"
        return layer, "other"


@functools.lru_cache(maxsize=16)
def _gguf_name_map(arch: str, num_layers: int):
    import gguf

    return gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch), num_layers)


_REGISTRY: dict[str, LayerMap] = {}


def register(spec: LayerMap) -> LayerMap:
    for mt in spec.model_types:
        if mt in _REGISTRY:
            raise ValueError(f"layer map for {mt!r} registered twice")
        _REGISTRY[mt] = spec
    return spec


def supported() -> list[str]:
    return sorted(_REGISTRY)


def get_layer_map(model_type: str) -> LayerMap:
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(supported())}"
        ) from None


register(LayerMap(("llama",), "LLAMA", gguf_permute_qk=True))
register(LayerMap(("mistral",), "LLAMA", gguf_permute_qk=True))
register(LayerMap(("qwen2",), "QWEN2"))
register(LayerMap(("qwen3",), "QWEN3", norms={**_LLAMA_NORMS, "q": "self_attn.q_norm", "k": "self_attn.k_norm"}))
_GEMMA_NORMS = {"attn": "input_layernorm", "post_attn": "post_attention_layernorm",
                "ffn": "pre_feedforward_layernorm", "post_ffn": "post_feedforward_layernorm",
                "q": "self_attn.q_norm", "k": "self_attn.k_norm"}
register(LayerMap(("gemma3_text", "gemma3"), "GEMMA3", norms=_GEMMA_NORMS, norm_offset=1.0))
register(LayerMap(("gemma2",), "GEMMA2", norms={k: v for k, v in _GEMMA_NORMS.items() if k not in "qk"},
                  norm_offset=1.0))
register(LayerMap(
    ("phi3",), "PHI3",
    linears={"q": "self_attn.qkv_proj", "k": "self_attn.qkv_proj", "v": "self_attn.qkv_proj",
             "o": "self_attn.o_proj", "gate": "mlp.gate_up_proj", "up": "mlp.gate_up_proj",
             "down": "mlp.down_proj"},
    fused=(FusedLinear("self_attn.qkv_proj", ("q", "k", "v")), FusedLinear("mlp.gate_up_proj", ("gate", "up"))),
))
