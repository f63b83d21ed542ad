"""GPTQ-style error feedback inside a GGUF block format (any codec of the registry).

For W [R, C] and the layer-input Hessian H [C, C] (``quant.gptq.HessianAccumulator``):
columns are processed left to right in lazy batches (GPTQ's ``fasterquant``). When a codec block
(32 or 256 columns) is reached, its params (scales / mins) are chosen with llama.cpp's search on
the error-updated weights, with the importance ``qw`` (default diag(H), i.e. the imatrix); then
each column gets the codec's nearest codes for those params and its error is spread over the
not yet quantized columns through the inverse-Hessian Cholesky factor. The result packs to the
exact block bytes llama.cpp reads. Math only; no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..quant.gptq import inverse_hessian_cholesky
from .base import Codec, cat_params, get_codec


@dataclass
class FeedbackResult:
    raw: np.ndarray          # uint8 [R, C // block * type_size], ggml block bytes
    fake: torch.Tensor       # float32 [R, C], what the runtime dequantizes
    loss: float              # sum over columns of (w - q)^2 / Hinv_ii^2 / 2 (GPTQ's figure)
    percdamp: float          # damping actually used


def _batch_len(codec: Codec, blocksize: int) -> int:
    b = codec.block
    return max(1, blocksize // b) * b


def feedback_encode(codec: Codec | str, W: torch.Tensor, H: torch.Tensor, qw: torch.Tensor | None = None,
                    percdamp: float = 0.01, blocksize: int = 128) -> FeedbackResult:
    """Quantize W [R, C] to ``codec``'s blocks with GPTQ error feedback under Hessian H [C, C].

    ``qw`` is the importance for llama.cpp's scale search (default: diag(H)). Runs on W's device.
    """
    codec = get_codec(codec) if isinstance(codec, str) else codec
    W = W.detach().float().clone()
    R, C = W.shape
    if C % codec.block:
        raise ValueError(f"{codec.name} needs rows of a multiple of {codec.block} values, got {C}")
    H = H.detach().to(W.device, torch.float32).clone()
    diag = torch.diagonal(H)
    if qw is None:
        qw = diag.clone().clamp(min=0)
    qw = qw.to(W.device, torch.float32).reshape(-1)
    dead = diag == 0
    H[dead, dead] = 1  # inputs never seen: quantized like the rest, but nothing to feed back
    ctx = codec.row_context(W)
    U, used = inverse_hessian_cholesky(H, percdamp)
    U = U.to(W.dtype)
    codes = torch.zeros(R, C, dtype=torch.int32, device=W.device)
    fake = torch.zeros(R, C, dtype=torch.float32, device=W.device)
    params = []
    loss = torch.zeros((), dtype=torch.float64, device=W.device)
    step = _batch_len(codec, blocksize)
    bl = codec.block
    for i1 in range(0, C, step):
        i2 = min(i1 + step, C)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        p = None
        for i in range(i2 - i1):
            col = i1 + i
            if col % bl == 0:  # block reached: its params from the error-updated weights
                s = slice(col, col + bl)
                p = codec.params(W1[:, i:i + bl], qw[s], **ctx)
                params.append(p)
            w, d = W1[:, i], U1[i, i]
            c, q = codec.quantize(w[:, None], p, torch.tensor([col % bl], device=W.device))
            codes[:, col], fake[:, col] = c[:, 0], q[:, 0]
            err = (w - q[:, 0]) / d
            loss += (err.double() ** 2).sum() / 2
            W1[:, i:] -= torch.outer(err, U1[i, i:])
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    raw = codec.pack(codes, cat_params(params))
    return FeedbackResult(raw, fake, float(loss.item()), used)


def nearest_encode(codec: Codec | str, W: torch.Tensor, qw: torch.Tensor | None = None):
    """(raw bytes, dequantized) without feedback: exactly llama.cpp's encoding."""
    codec = get_codec(codec) if isinstance(codec, str) else codec
    W = W.detach().float()
    qw = None if qw is None else qw.to(W.device, torch.float32).reshape(-1)
    raw = codec.encode(W, qw)
    return raw, codec.fake_quantize(W, qw)


def output_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """tr(dW H dW^T), dW = W - Q (the layer-output error GPTQ minimizes, up to a constant)."""
    dW = (W.double() - Q.double().to(W.device))
    return float(((dW @ H.double().to(W.device)) * dW).sum())
