"""What llama.cpp's CPU runtime does to a linear's *input*: before a quantized matmul, the
activations are themselves rounded to the weight type's ``vec_dot_type`` (ggml-cpu's
``type_traits_cpu``): 8-bit blocks of 32 (Q8_0 / Q8_1) for the legacy types, 8-bit blocks of
256 with one float scale (Q8_K) for the k- and i-quants, fp16 / bf16 for F16 / BF16 weights,
nothing for F32. That rounding is an output error of its own, E ||W dx||^2 per token, which no
weight-only error sees: a tensor kept exactly (a quantized source's own bytes) still pays it,
and a wide Q8_K block over an input with massive activations pays a lot (one outlier sets the
scale of 255 other channels). The planner adds it to each GGUF format's weight error.

Rounding as ggml's reference row quantizers (``quantize_row_q8_0_ref`` / ``_q8_K_ref``): Q8_0
scale amax/127 stored as fp16, codes round(x * 127 / amax); Q8_K scale max/127 kept in float32.
``tests/ggml/test_runtime.py`` checks both against libggml-cpu's own (native) quantizers.
"""
from __future__ import annotations

import torch

# weight ggml type -> the type its activations are rounded to (ggml-cpu type_traits_cpu; Q8_1
# rounds like Q8_0). Types not listed (k-quants, i-quants, TQ*) use Q8_K.
_VEC_DOT = {"F32": None, "F16": "F16", "BF16": "BF16", "Q4_0": "Q8_0", "Q4_1": "Q8_0", "Q5_0": "Q8_0",
            "Q5_1": "Q8_0", "Q8_0": "Q8_0", "Q8_1": "Q8_0", "IQ4_NL": "Q8_0", "MXFP4": "Q8_0"}
ACTIVATION_TYPES = ("Q8_0", "Q8_K", "F16", "BF16")
_BLOCK = {"Q8_0": 32, "Q8_K": 256, "F16": 1, "BF16": 1}


def activation_type(weight_type: str) -> str | None:
    """The type llama.cpp's CPU matmul rounds a linear's input to for a ``weight_type`` weight."""
    t = weight_type.upper()
    return _VEC_DOT[t] if t in _VEC_DOT else "Q8_K"


def applies(act_type: str, n_in: int) -> bool:
    return n_in % _BLOCK[act_type] == 0


@torch.no_grad()
def round_activations(x: torch.Tensor, act_type: str) -> torch.Tensor:
    """``x`` [..., n] (float) rounded as ggml rounds a matmul input to ``act_type`` and back."""
    x = x.float()
    if act_type == "F16":
        return x.half().float()
    if act_type == "BF16":
        return x.bfloat16().float()
    block = _BLOCK[act_type]
    xb = x.reshape(-1, block)
    amax = xb.abs().amax(-1, keepdim=True)
    d = amax / 127
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    q = (xb * inv).round()
    if act_type == "Q8_0":
        d = d.half().float()
    return (q * d).reshape(x.shape)


def squared_error_sums(x: torch.Tensor, act_types) -> dict[str, torch.Tensor]:
    """Per input channel, sum over the rows of x [tokens, n] of (x - round(x))^2 (float64), for
    each of ``act_types`` that applies to width n."""
    x = x.float()
    return {t: (x - round_activations(x, t)).pow(2).sum(0).double() for t in act_types if applies(t, x.shape[-1])}


def runtime_error(w: torch.Tensor, mean_sq: torch.Tensor) -> float:
    """E ||W dx||^2 per token for W [out, in] and the mean squared rounding error of each input
    channel ``mean_sq`` [in] (rounding errors of different channels are uncorrelated: diagonal)."""
    return float(w.float().pow(2).sum(0).double() @ mean_sq.double().to(w.device))
