"""The tensors of a GGUF file, planned without loading weights, loaded one at a time.

Each :class:`TensorJob` knows its GGUF name, shape, ggml type and how to produce its data:
the source tensor (HF layout) with llama.cpp's converter transforms re-applied (q/k row
permutation for llama/mistral, ``+1`` on Gemma norms), cast to the output type. Extra tensors
llama.cpp needs (Llama 3 ``rope_freqs``, Phi-3 LongRoPE factors, or whatever unmapped tensors a
GGUF source carries) are added as F32 jobs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT

from ..errors import ModelSourceError
from .hparams import head_dim, n_kv_heads, rope_params

OUT_TYPES = {"F32": QT.F32, "F16": QT.F16, "BF16": QT.BF16}
_NP_DTYPE = {QT.F32: np.float32, QT.F16: np.float16, QT.BF16: np.int16}   # BF16 written as raw int16


@dataclass
class TensorJob:
    name: str                        # GGUF tensor name
    shape: tuple[int, ...]           # PyTorch order ([out, in])
    qtype: QT
    load: Callable[[], np.ndarray]   # data in the layout and dtype written

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(_NP_DTYPE[self.qtype]).itemsize


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's converter row permutation of q/k (weights [out, in] or biases [out])."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_numpy(w: torch.Tensor, qtype: QT) -> np.ndarray:
    if qtype == QT.BF16:
        return w.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
    return w.to(torch.float16 if qtype == QT.F16 else torch.float32).contiguous().numpy()


def tensor_jobs(source, out_type: str = "F16") -> list[TensorJob]:
    """Every tensor of the GGUF file for ``source``, in llama.cpp's usual order."""
    out_q = OUT_TYPES[out_type]
    jobs = _extra_jobs(source)
    # HF: a tied lm_head is the embedding (transformers ignores a stored copy); GGUF: keep what is there
    is_gguf = getattr(source, "reader", None) is not None
    skip_lm_head = not is_gguf and bool(getattr(source.config, "tie_word_embeddings", False))
    lm_head = f"{source.layer_map.lm_head_path}.weight"
    for hf, info in source.tensors.items():
        if skip_lm_head and hf == lm_head:
            continue
        name = source.gguf_name(hf)
        if name is None:
            raise ModelSourceError(f"tensor {hf!r} has no llama.cpp name for {source.model_type}")
        qtype = out_q if len(info.shape) >= 2 else QT.F32
        jobs.append(TensorJob(name, tuple(info.shape), qtype, _loader(source, hf, name, qtype)))
    return sorted(jobs, key=lambda j: _order(j.name))


def _order(name: str) -> tuple:
    m = re.match(r"blk\.(\d+)\.", name)
    if m:
        return (2, int(m.group(1)), name)
    return (1 if name.startswith(("token_embd", "rope_")) else 3, 0, name)


def _loader(source, hf: str, name: str, qtype: QT) -> Callable[[], np.ndarray]:
    lm, cfg = source.layer_map, source.config

    def load() -> np.ndarray:
        w = source.load(hf).float()
        if lm.gguf_permute_qk and re.search(r"attn_q\.(weight|bias)$", name):
            w = permute_qk(w, cfg.num_attention_heads)
        elif lm.gguf_permute_qk and re.search(r"attn_k\.(weight|bias)$", name):
            w = permute_qk(w, n_kv_heads(cfg))
        if lm.norm_offset and name.endswith("norm.weight"):
            w = w + lm.norm_offset
        return to_numpy(w, qtype)

    return load


def _f32_job(name: str, values) -> TensorJob:
    arr = np.ascontiguousarray(values, dtype=np.float32)
    return TensorJob(name, tuple(arr.shape), QT.F32, lambda: arr)


def _extra_jobs(source) -> list[TensorJob]:
    reader = getattr(source, "reader", None)
    if reader is not None:        # a GGUF source: carry its unmapped tensors (rope factors) over
        from gguf.quants import dequantize

        mapped = {source.gguf_name(hf) for hf in source.tensors}
        return [_f32_job(t.name, dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist()))))
                for t in reader.tensors if t.name not in mapped]
    rp, cfg = rope_params(source.config), source.config
    kind = (rp.get("rope_type") or "default").lower()
    if kind == "llama3":
        return [_f32_job("rope_freqs.weight", llama3_rope_factors(rp, head_dim(cfg)))]
    if kind == "longrope":
        return [_f32_job("rope_factors_long.weight", rp["long_factor"]),
                _f32_job("rope_factors_short.weight", rp["short_factor"])]
    return []


def llama3_rope_factors(rp: dict, dim: int) -> np.ndarray:
    """Per-frequency RoPE divisors for Llama 3.x scaling, as llama.cpp's ``rope_freqs``."""
    base, factor = float(rp["rope_theta"]), float(rp.get("factor", 8.0))
    low, high = float(rp.get("low_freq_factor", 1.0)), float(rp.get("high_freq_factor", 4.0))
    old_ctx = float(rp.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, mid))
    return out.astype(np.float32)
