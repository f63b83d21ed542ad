"""Architecture hyperparameters as llama.cpp reads them, from a transformers config.

The common keys are written for every architecture; per-architecture extras are small functions
in ``_EXTRAS`` keyed by the layer map's ``gguf_arch`` (the keys llama.cpp's converter writes for
that family: Gemma sliding window and soft-capping, Phi-3 sliding window and LongRoPE, ...).
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import gguf

from ..errors import ModelSourceError

log = logging.getLogger(__name__)


def head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def n_kv_heads(cfg) -> int:
    return getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads


def rope_params(cfg, layer_type: str = "full_attention") -> dict:
    """RoPE parameters (transformers 5 ``rope_parameters``; per layer type for Gemma 3)."""
    rp = dict(getattr(cfg, "rope_parameters", None) or {})
    if isinstance(rp.get(layer_type), dict):
        rp = dict(rp[layer_type])
    elif any(isinstance(v, dict) for v in rp.values()):
        rp = {}
    if "rope_theta" not in rp:
        rp["rope_theta"] = getattr(cfg, "rope_theta", None) or 10000.0
    return rp


def write_hparams(w: gguf.GGUFWriter, cfg, gguf_arch: str, num_layers: int) -> None:
    """All ``{arch}.*`` keys for a model of ``gguf_arch`` described by ``cfg``."""
    hd, rp = head_dim(cfg), rope_params(cfg)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(num_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(cfg.num_attention_heads))
    w.add_head_count_kv(int(n_kv_heads(cfg)))
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_freq_base(float(rp["rope_theta"]))
    w.add_rope_dimension_count(int(hd * float(rp.get("partial_rotary_factor", 1.0))))
    w.add_vocab_size(int(cfg.vocab_size))
    _rope_scaling(w, cfg, rp)
    _EXTRAS.get(gguf_arch, lambda w, cfg: None)(w, cfg)


def _rope_scaling(w, cfg, rp: dict) -> None:
    kind = (rp.get("rope_type") or "default").lower()
    if kind in ("default", "llama3", "longrope"):      # llama3 / longrope: factor tensors instead
        return
    if kind not in ("linear", "yarn"):
        raise ModelSourceError(f"RoPE scaling {kind!r} is not supported by the GGUF writer")
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if kind == "linear" else gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(float(rp["factor"]))
    if kind == "yarn" and rp.get("original_max_position_embeddings"):
        w.add_rope_scaling_orig_ctx_len(int(rp["original_max_position_embeddings"]))


def _check_attn_scale(cfg) -> None:
    q = getattr(cfg, "query_pre_attn_scalar", None)       # llama.cpp: head_dim, or n_embd/n_head (27B)
    if q is not None and int(q) not in (head_dim(cfg), cfg.hidden_size // cfg.num_attention_heads):
        log.warning("query_pre_attn_scalar=%s differs from head_dim=%s: llama.cpp scales attention "
                    "by 1/sqrt(head_dim), so the GGUF will not match transformers", q, head_dim(cfg))


def _gemma2(w, cfg) -> None:
    _check_attn_scale(cfg)
    if cfg.attn_logit_softcapping:
        w.add_attn_logit_softcapping(float(cfg.attn_logit_softcapping))
    if cfg.final_logit_softcapping:
        w.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
    _sliding(w, cfg)


def _sliding(w, cfg) -> None:
    types = list(getattr(cfg, "layer_types", None) or [])
    if cfg.sliding_window and "sliding_attention" in types:
        w.add_sliding_window(int(cfg.sliding_window))
        w.add_sliding_window_pattern([t == "sliding_attention" for t in types])   # per layer


def _gemma3(w, cfg) -> None:
    _check_attn_scale(cfg)
    if getattr(cfg, "final_logit_softcapping", None):
        w.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
    _sliding(w, cfg)
    local = (getattr(cfg, "rope_parameters", None) or {}).get("sliding_attention")
    if isinstance(local, dict) and "rope_theta" in local:
        w.add_rope_freq_base_swa(float(local["rope_theta"]))


def _phi3(w, cfg) -> None:
    w.add_sliding_window(int(getattr(cfg, "sliding_window", None) or 0))
    rp = rope_params(cfg)
    orig = rp.get("original_max_position_embeddings") or getattr(cfg, "original_max_position_embeddings", None)
    if orig:
        w.add_rope_scaling_orig_ctx_len(int(orig))
    if (rp.get("rope_type") or "").lower() == "longrope" and orig:
        scale = cfg.max_position_embeddings / orig
        w.add_rope_scaling_attn_factors(1.0 if scale <= 1 else math.sqrt(1 + math.log(scale) / math.log(orig)))


_EXTRAS: dict[str, Callable] = {"GEMMA2": _gemma2, "GEMMA3": _gemma3, "PHI3": _phi3}
