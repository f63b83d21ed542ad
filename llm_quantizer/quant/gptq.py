"""GPTQ (Frantar et al. 2022) as in IST-DASLab/gptq ``fasterquant``, on a plain weight [out, in].

Codes, scales and zeros follow ``rtn`` (compressed-tensors conventions). Works on whatever
device W and H live on. Group qparams (non-static) are taken from the fully updated W at each
group boundary, i.e. what the column-by-column algorithm sees.

Speed (CPU): H is factored once per input (``factor_hessian``) and shared by the weights it
feeds; such weights can be stacked along the rows and solved in one column loop; the loop works
on the block transposed (a column is a contiguous row) with per-group float32 qparams ready, and
reports the loss per row from the scaled errors. The arithmetic per element is the reference's.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import torch

from ..errors import BackendError
from .gram import add_upper_gram, mirror_upper_blocks
from .rtn import QuantArgs, compute_qparams, dequantize

log = logging.getLogger(__name__)


class HessianAccumulator:
    """Running ``H = 2/n * sum x x^T`` over inputs x [..., in], n counted as the reference does.

    A 2-D batch counts as one sample; otherwise the leading dim is the sample count. Each batch
    adds to the block upper triangle only (``gram.add_upper_gram``, 10/16 of the flops); reading
    ``H`` mirrors it: the same matrix as the full product, bit for bit.
    """

    def __init__(self, columns: int, device=None, dtype=torch.float32):
        self.columns, self.device, self.dtype = columns, device, dtype
        self._H: torch.Tensor | None = None
        self._mirrored = True
        self.nsamples = 0

    @property
    def H(self) -> torch.Tensor | None:
        if not self._mirrored:
            mirror_upper_blocks(self._H)
            self._mirrored = True
        return self._H

    def add_batch(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.columns:
            raise ValueError(f"expected inputs with {self.columns} features, got {x.shape[-1]}")
        if self._H is None:
            dev = x.device if self.device is None else self.device
            self._H = torch.zeros(self.columns, self.columns, device=dev, dtype=self.dtype)
        n_new = 1 if x.dim() <= 2 else x.shape[0]
        x = x.detach().reshape(-1, self.columns).t().to(self._H.device, self.dtype)
        self._H *= self.nsamples / (self.nsamples + n_new)
        self.nsamples += n_new
        x = math.sqrt(2 / self.nsamples) * x
        add_upper_gram(self._H, x.t())
        self._mirrored = False


@dataclass
class GPTQResult:
    """Everything in the ORIGINAL column order.

    codes: int8 [out, in] signed. scales: [out, G] scale dtype. zeros: int8 [out, G].
    g_idx: int32 [in], group of each column (``arange(in) // group_size`` unless act_order
    without static groups). perm: processing order (act_order) or None. row_loss: float64 [out],
    per row the sum of ``(w - q)^2 / d^2 / 2`` as the reference reports; loss: its sum.
    percdamp: the damping actually used.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    perm: torch.Tensor | None
    row_loss: torch.Tensor
    percdamp: float

    @property
    def loss(self) -> float:
        return self.row_loss.sum().item()

    @property
    def qweight_fake(self) -> torch.Tensor:
        """``dequantize(codes, scales, zeros, g_idx)``, dtype = scale dtype."""
        return dequantize(self.codes, self.scales, self.zeros, self.g_idx)

    @property
    def contiguous_groups(self) -> bool:
        """True when g_idx is ``arange // group_size`` (storable without g_idx)."""
        n, g = self.g_idx.numel(), self.scales.shape[1]
        return torch.equal(self.g_idx.cpu().long(), torch.arange(n) // (n // g))

    def rows(self, start: int, stop: int) -> "GPTQResult":
        """The result of rows start:stop (a part of a stacked solve; rows are independent)."""
        return replace(self, codes=self.codes[start:stop], scales=self.scales[start:stop],
                       zeros=self.zeros[start:stop], row_loss=self.row_loss[start:stop])


def inverse_hessian_cholesky(H: torch.Tensor, percdamp: float, retry=(0.03, 0.1, 0.3, 1.0)):
    """Upper Cholesky factor of (H + damp I)^-1, damp = percdamp * mean(diag H).

    On failure retries with each larger value in ``retry``. Returns (U, percdamp used).
    """
    if not torch.isfinite(H).all():
        raise BackendError("GPTQ: the Hessian has non-finite values (NaN/inf in calibration inputs)")
    idx = torch.arange(H.shape[0], device=H.device)
    tried = []
    for pd in [percdamp] + [r for r in retry if r > percdamp]:
        Hd = H.clone()
        Hd[idx, idx] += pd * torch.mean(torch.diag(H))
        L, info = torch.linalg.cholesky_ex(Hd)
        if info.item() == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info.item() == 0 and torch.isfinite(U).all():
                return U, pd
        tried.append(pd)
        log.warning("GPTQ: Cholesky failed with percdamp=%g, retrying with more damping", pd)
    raise BackendError(
        f"GPTQ: Hessian not positive definite even with percdamp {tried}; "
        "use more or more varied calibration samples, or a larger percdamp"
    )


@dataclass
class HessianFactor:
    """What the solve needs from H, shared by every weight fed the same input (q/k/v, gate/up).

    dead: inputs never seen (diag 0; their H entry set to 1, their W columns zeroed). perm: the
    act-order processing order or None. Hinv: upper Cholesky factor of the damped, permuted H^-1.
    """

    dead: torch.Tensor
    perm: torch.Tensor | None
    Hinv: torch.Tensor
    percdamp: float


def factor_hessian(H: torch.Tensor, percdamp: float = 0.01, act_order: bool = False) -> HessianFactor:
    H = H.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else None
    if perm is not None:
        H = H[perm][:, perm]
    Hinv, used = inverse_hessian_cholesky(H, percdamp)
    return HessianFactor(dead, perm, Hinv, used)


class _Groups:
    """Per-column qparams: channel, static (precomputed) or dynamic (at group boundaries).

    ``table``: (scale, zero) [out, 1] per group in group order; ``col(j)``: float32 (scale, zero)
    rows for processing index j."""

    def __init__(self, W, args, static, perm):
        self.col_args = replace(args, group_size=-1)
        self.gl = args.group_len(W.shape[1])
        self.dynamic = args.group_size != -1 and not static
        self.table, self._f32 = [], []
        if not self.dynamic:
            for g in range(0, W.shape[1], self.gl):
                self._add(compute_qparams(W[:, g:g + self.gl], self.col_args))
        cols = torch.arange(W.shape[1]) if perm is None or self.dynamic else perm.cpu()
        self.gids = (cols // self.gl).to(torch.int32)
        self._g = self.gids.tolist()

    def _add(self, sz):
        self.table.append(sz)
        self._f32.append((sz[0][:, 0].float().contiguous(), sz[1][:, 0].float().contiguous()))

    def new_group(self, current):
        """Dynamic groups: qparams of the group starting here, from its current columns [out, gl]."""
        self._add(compute_qparams(current, self.col_args))

    def col(self, j: int):
        return self._f32[self._g[j]]


def gptq_quantize(W: torch.Tensor, H: torch.Tensor | None, args: QuantArgs, blocksize: int = 128,
                  percdamp: float = 0.01, act_order: bool = False, static_groups: bool = False,
                  factor: HessianFactor | None = None) -> GPTQResult:
    """Quantize W [out, in] with Hessian H [in, in] (from ``HessianAccumulator``), or with its
    ``factor_hessian(H, percdamp, act_order)`` computed once for every weight sharing H.

    Rows are independent: weights sharing H and ``args`` may be stacked along dim 0 and solved
    once (``GPTQResult.rows`` splits the result)."""
    if factor is None:
        factor = factor_hessian(H, percdamp, act_order)
    W = W.detach().float().clone()
    # as the reference: channel qparams come from W before dead columns are zeroed
    channel = _Groups(W, args, True, None) if args.group_size == -1 else None
    W[:, factor.dead.to(W.device)] = 0
    perm = factor.perm
    groups = channel or _Groups(W, args, static_groups, perm)
    if perm is not None:
        W = W[:, perm]
    Hinv = factor.Hinv.to(W.device, W.dtype)
    if groups.dynamic and blocksize % groups.gl and groups.gl % blocksize:
        blocksize = max(1, blocksize // groups.gl) * groups.gl  # groups must not straddle blocks
    rows, cols = W.shape
    codes = torch.empty(rows, cols, dtype=torch.int8, device=W.device)
    row_loss = torch.zeros(rows, dtype=torch.float64, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        Err1, C1 = _quantize_block(W, Hinv, i1, i2, groups, args)
        codes[:, i1:i2] = C1.t()
        row_loss += Err1.double().pow(2).sum(0) / 2
        W[:, i2:] -= Err1.t().contiguous() @ Hinv[i1:i2, i2:]  # lazy batch update of the later columns
    scales = torch.cat([s for s, _ in groups.table], dim=1)
    zeros = torch.cat([z for _, z in groups.table], dim=1)
    gids = groups.gids.to(W.device)       # per processing index
    if perm is not None:
        inv = torch.argsort(perm)
        codes, gids = codes[:, inv], gids[inv.to(gids.device)]
    return GPTQResult(codes, scales, zeros, gids, perm, row_loss, factor.percdamp)


def _quantize_block(W, Hinv, i1, i2, groups, args):
    """Columns i1:i2 one by one. Works on the block transposed ([cols, out], a column is a
    contiguous row). Returns (scaled errors, codes as float), both [i2 - i1, out].

    Per column exactly the arithmetic of ``rtn.quantize_values`` / ``dequantize_values``:
    ``(c - z) * s`` is exact in float32 for integer c, z in [-128, 127] and a 16-bit scale, so
    rounding it once to the scale dtype equals the 16-bit product."""
    W1, Hinv1 = W[:, i1:i2].t().contiguous(), Hinv[i1:i2, i1:i2]
    Err1, C1 = torch.empty_like(W1), torch.empty_like(W1)
    sdt, gl, qmin, qmax = args.torch_scale_dtype, groups.gl, args.qmin, args.qmax
    for i in range(i2 - i1):
        j = i1 + i
        if groups.dynamic and j % gl == 0:
            # the group's current columns: in W1 if it fits in this block, else (i == 0) in W
            groups.new_group(W1[i:i + gl].t() if i + gl <= i2 - i1 else W[:, j:j + gl])
        s, z = groups.col(j)
        w, c, err = W1[i], C1[i], Err1[i]
        torch.addcdiv(z, w, s, out=c).clamp_(qmin, qmax).round_()      # z + w / s
        q = (c - z).mul_(s)
        if sdt != torch.float32:
            q = q.to(sdt).float()
        torch.sub(w, q, out=err).div_(Hinv1[i, i])
        W1[i + 1:] -= torch.outer(Hinv1[i, i + 1:], err)
    return Err1, C1
