"""``h += x^T x`` on the block upper triangle of h, and the mirror that completes it.

A symmetric rank-k update that torch does not expose: 4 column blocks, the diagonal block and
the blocks right of it, 10/16 of the flops of a full ``addmm_``. Each computed entry is the same
dot product as in the full product (bit-equal on MKL, tests/quant/test_gram.py)."""
from __future__ import annotations

import functools

import torch


def block_bounds(n: int, blocks: int = 4) -> list[int]:
    """Column-block bounds of ``add_upper_gram`` (one block below 256 inputs)."""
    blocks = 1 if n < 256 else blocks
    return [round(i * n / blocks) for i in range(blocks + 1)]


def add_upper_gram(h: torch.Tensor, x: torch.Tensor) -> None:
    """``h += x^T x`` for x [tokens, n] on the block upper triangle of h [n, n] only; the lower
    blocks stay untouched (``mirror_upper_blocks`` fills them)."""
    b = block_bounds(x.shape[1])
    half = x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and _mm_out_float32_ok()
    x = x if half else x.float()
    for i in range(len(b) - 1):
        a, c = x[:, b[i]:b[i + 1]].T, x[:, b[i]:]
        if half:   # 16-bit tensor cores, float32 accumulation: the products of 16-bit values are exact
            h[b[i]:b[i + 1], b[i]:] += torch.mm(a, c, out_dtype=torch.float32)
        else:
            h[b[i]:b[i + 1], b[i]:].addmm_(a, c)


def mirror_upper_blocks(h: torch.Tensor) -> None:
    """Copy the upper blocks of ``add_upper_gram`` onto the lower ones, in place."""
    b = block_bounds(h.shape[0])
    for i in range(len(b) - 1):
        for j in range(i + 1, len(b) - 1):
            h[b[j]:b[j + 1], b[i]:b[i + 1]].copy_(h[b[i]:b[i + 1], b[j]:b[j + 1]].T)


@functools.lru_cache(maxsize=1)
def _mm_out_float32_ok() -> bool:
    """Whether this torch has ``torch.mm(..., out_dtype=float32)`` for 16-bit CUDA inputs."""
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device="cuda")
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError):
        return False
