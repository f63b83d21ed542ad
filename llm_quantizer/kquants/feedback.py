"""GPTQ-style error feedback inside a GGUF block format (any codec of the registry).

For W [R, C] and the layer-input Hessian H [C, C] (``quant.gptq.HessianAccumulator``), the
integer codes are chosen column by column with GPTQ's update (lazy batches, the inverse-Hessian
Cholesky factor), each column's error spread over the columns not yet quantized. The block params
(scales / mins, exactly as llama.cpp stores them) come either

* dynamically (``act_order=False``, the default): when a codec block (32 or 256 columns) is
  reached, llama.cpp's search runs on the error-updated weights of the block; or
* statically (``act_order=True``, GPTQModel's ``static_groups``): llama.cpp's search on the
  original weights, once, up front; then the columns can be processed in any order, here in
  descending diag(H) (act-order), each using its own block's fixed params.

``codes="nearest"`` picks the grid point nearest to each error-updated value (the stored,
fp16-rounded scales), where ``"llama"`` applies llama.cpp's own rounding rule (which for some
imatrix paths rounds with another inverse scale than the one stored). ``refit=n`` then refits
the stored float params (the legacy types' fp16 d and m; the K-quants' superblock d and dmin with
the 6-bit sub-block scales held) by least squares under the full H with the codes fixed, rounded
to fp16 (``refit_params``), and re-runs the GPTQ pass with the refit params, n times; the result
with the lowest tr(dW H dW^T) is kept. The result packs to the exact block bytes llama.cpp reads.
Math only; no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..quant.gptq import inverse_hessian_cholesky
from .base import Codec, Params, cat_params, get_codec


@dataclass
class FeedbackResult:
    raw: np.ndarray          # uint8 [R, C // block * type_size], ggml block bytes
    fake: torch.Tensor       # float32 [R, C], what the runtime dequantizes
    loss: float              # GPTQ's figure of the last pass: sum (w - q)^2 / Hinv_ii^2 / 2
    percdamp: float          # damping actually used
    error: float = float("nan")   # tr(dW H dW^T) of the result (H undamped)


def _batch_len(codec: Codec, blocksize: int) -> int:
    b = codec.block
    return max(1, blocksize // b) * b


def feedback_encode(codec: Codec | str, W: torch.Tensor, H: torch.Tensor, qw: torch.Tensor | None = None,
                    percdamp: float = 0.01, blocksize: int = 128, *, act_order: bool = False,
                    codes: str = "llama", refit: int = 0) -> FeedbackResult:
    """Quantize W [R, C] to ``codec``'s blocks with GPTQ error feedback under Hessian H [C, C].

    ``qw`` is the importance for llama.cpp's scale search (default: diag(H)). Runs on W's device.
    See the module doc for ``act_order``, ``codes`` and ``refit``.
    """
    codec = get_codec(codec) if isinstance(codec, str) else codec
    if codes not in ("llama", "nearest"):
        raise ValueError(f"codes must be 'llama' or 'nearest', got {codes!r}")
    W = W.detach().float().clone()
    R, C = W.shape
    if C % codec.block:
        raise ValueError(f"{codec.name} needs rows of a multiple of {codec.block} values, got {C}")
    H = H.detach().to(W.device, torch.float32).clone()
    diag = torch.diagonal(H)
    if qw is None:
        qw = diag.clone().clamp(min=0)
    qw = qw.to(W.device, torch.float32).reshape(-1)
    H_true = H.clone()
    dead = diag == 0
    H[dead, dead] = 1  # inputs never seen: quantized like the rest, but nothing to feed back
    fn = codec.nearest if (codes == "nearest" or refit) else codec.quantize
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if act_order else None
    Hp = H if perm is None else H[perm][:, perm]
    U, used = inverse_hessian_cholesky(Hp, percdamp)
    U = U.to(W.dtype)
    if act_order:
        p = codec.params(W, qw)
        q, fake, loss = static_pass(fn, W, U, p, perm, blocksize)
    else:
        q, fake, loss, p = dynamic_pass(codec, fn, W, U, qw, blocksize)
    err = output_error(W, fake, H_true)
    best = (err, q, p, fake, loss)
    for r in range(refit):
        p = refit_params(codec, W, H_true, q, p)
        fake = codec.dequantize(q, p)
        err = output_error(W, fake, H_true)
        if err < best[0]:
            best = (err, q, p, fake, loss)
        if r == refit - 1:
            break
        q, fake, loss = static_pass(fn, W, U, p, perm, blocksize)
        err = output_error(W, fake, H_true)
        if err < best[0]:
            best = (err, q, p, fake, loss)
    err, q, p, fake, loss = best
    return FeedbackResult(codec.pack(q, p), fake, float(loss), used, float(err))


def static_pass(fn: Callable, W: torch.Tensor, U: torch.Tensor, p: Params, perm: torch.Tensor | None,
                blocksize: int = 128):
    """GPTQ over W's columns in ``perm`` order (U: Cholesky factor of the permuted H^-1), each
    column coded by ``fn(x, p, cols)`` with fixed whole-row params p. -> (codes, fake, loss) in W's
    column order."""
    R, C = W.shape
    order = torch.arange(C, device=W.device) if perm is None else perm.to(W.device)
    Wp = W[:, order].clone()
    codes = torch.zeros(R, C, dtype=torch.int32, device=W.device)
    fake = torch.zeros(R, C, dtype=torch.float32, device=W.device)
    loss = torch.zeros((), dtype=torch.float64, device=W.device)
    for i1 in range(0, C, blocksize):
        i2 = min(i1 + blocksize, C)
        W1, U1 = Wp[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = order[i1 + i:i1 + i + 1]
            w, d = W1[:, i], U1[i, i]
            c, q = fn(w[:, None], p, col)
            codes[:, col], fake[:, col] = c, q
            err = (w - q[:, 0]) / d
            loss += (err.double() ** 2).sum() / 2
            W1[:, i:] -= torch.outer(err, U1[i, i:])
            Err1[:, i] = err
        Wp[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return codes, fake, float(loss.item())


def dynamic_pass(codec: Codec, fn: Callable, W: torch.Tensor, U: torch.Tensor, qw: torch.Tensor,
                 blocksize: int = 128):
    """GPTQ in column order; each block's params from llama.cpp's search on the error-updated
    block when it is reached. -> (codes, fake, loss, params over the whole row)."""
    R, C = W.shape
    W = W.clone()
    ctx = codec.row_context(W)
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
            c, q = fn(w[:, None], p, torch.tensor([col % bl], device=W.device))
            codes[:, col], fake[:, col] = c[:, 0], q[:, 0]
            err = (w - q[:, 0]) / d
            loss += (err.double() ** 2).sum() / 2
            W1[:, i:] -= torch.outer(err, U1[i, i:])
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return codes, fake, float(loss.item()), cat_params(params)


def refit_params(codec: Codec, W: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, p: Params,
                 rows_per_chunk: int = 64) -> Params:
    """Params whose float fields (theta, ``codec.refit_theta``) minimize tr(dW H dW^T) for the
    fixed codes, dW = W - deq: per row, the normal equations over all of the row's theta
    (deq = sum_k theta[g(c), k] * B[c, k], ``codec.refit_basis``), then theta rounded to fp16 as
    stored. Rows whose error does not drop keep their old theta."""
    R, C = W.shape
    G = codec.refit_width
    if not G:
        return p
    nb = C // G
    B = codec.refit_basis(codes, p)                       # [R, C, K]
    K = B.shape[-1]
    th_old = codec.refit_theta(p)                         # [R, nb, K]
    Hb = H.reshape(C, nb, G)
    out = []
    for r0 in range(0, R, rows_per_chunk):
        Bc = B[r0:r0 + rows_per_chunk].reshape(-1, nb, G, K)
        n = Bc.shape[0]
        HA = torch.einsum("cgj,rgjk->rcgk", Hb, Bc)       # H @ A per row: [n, C, nb, K]
        M = torch.einsum("rgjk,rgjhl->rgkhl", Bc, HA.reshape(n, nb, G, nb, K)).reshape(n, nb * K, nb * K)
        b = torch.einsum("rc,rcx->rx", W[r0:r0 + n], HA.reshape(n, C, nb * K))
        dM = torch.diagonal(M, dim1=1, dim2=2)
        ridge = 1e-7 * dM.mean(dim=1, keepdim=True).clamp(min=1e-30) + 1e-30
        M = M + torch.diag_embed(ridge.expand_as(dM))
        th = torch.linalg.solve(M.double(), b.double()[..., None])[..., 0]
        out.append(th.float().reshape(n, nb, K))
    th = torch.cat(out).to(torch.float16).to(torch.float32)
    th = torch.where(torch.isfinite(th), th, th_old)
    p_new = codec.with_theta(p, th)
    e_old = row_errors(W, codec.dequantize(codes, p), H)
    e_new = row_errors(W, codec.dequantize(codes, p_new), H)
    better = (e_new < e_old)[:, None, None]
    return codec.with_theta(p, torch.where(better, th, th_old))


def row_errors(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """(dW H dW^T)_rr per row [R], dW = W - Q."""
    dW = W.double() - Q.double()
    return ((dW @ H.double()) * dW).sum(dim=1)


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
