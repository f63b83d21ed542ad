"""GPTQ (Frantar et al. 2022) as in IST-DASLab/gptq ``fasterquant``, on a plain weight [out, in].

Codes, scales and zeros follow ``rtn`` (compressed-tensors conventions). Works on whatever
device W and H live on. Group qparams (non-static) are taken from the fully updated W at each
group boundary, i.e. what the column-by-column algorithm sees.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import torch

from ..errors import BackendError
from .rtn import QuantArgs, compute_qparams, dequantize, dequantize_values, quantize_values

log = logging.getLogger(__name__)


class HessianAccumulator:
    """Running ``H = 2/n * sum x x^T`` over inputs x [..., in], n counted as the reference does.

    A 2-D batch counts as one sample; otherwise the leading dim is the sample count.
    """

    def __init__(self, columns: int, device=None, dtype=torch.float32):
        self.columns, self.device, self.dtype = columns, device, dtype
        self.H: torch.Tensor | None = None
        self.nsamples = 0

    def add_batch(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.columns:
            raise ValueError(f"expected inputs with {self.columns} features, got {x.shape[-1]}")
        if self.H is None:
            dev = x.device if self.device is None else self.device
            self.H = torch.zeros(self.columns, self.columns, device=dev, dtype=self.dtype)
        n_new = 1 if x.dim() <= 2 else x.shape[0]
        x = x.detach().reshape(-1, self.columns).t().to(self.H.device, self.dtype)
        self.H *= self.nsamples / (self.nsamples + n_new)
        self.nsamples += n_new
        x = math.sqrt(2 / self.nsamples) * x
        self.H += x @ x.t()


@dataclass
class GPTQResult:
    """Everything in the ORIGINAL column order.

    qweight_fake: ``dequantize(codes, scales, zeros, g_idx)``, dtype = scale dtype.
    codes: int8 [out, in] signed. scales: [out, G] scale dtype. zeros: int8 [out, G].
    g_idx: int32 [in], group of each column (``arange(in) // group_size`` unless act_order
    without static groups). perm: processing order (act_order) or None. loss: sum of
    ``(w - q)^2 / d^2 / 2`` as the reference reports. percdamp: the damping actually used.
    """

    qweight_fake: torch.Tensor
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    perm: torch.Tensor | None
    loss: float
    percdamp: float

    @property
    def contiguous_groups(self) -> bool:
        """True when g_idx is ``arange // group_size`` (storable without g_idx)."""
        n, g = self.g_idx.numel(), self.scales.shape[1]
        return torch.equal(self.g_idx.cpu().long(), torch.arange(n) // (n // g))


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


class _Groups:
    """Per-column qparams: channel, static (precomputed) or dynamic (at group boundaries)."""

    def __init__(self, W, args, static):
        self.args, self.perm = args, None
        self.col_args = replace(args, group_size=-1)
        self.gl = args.group_len(W.shape[1])
        self.dynamic = args.group_size != -1 and not static
        self.table = [] if self.dynamic else [
            compute_qparams(W[:, g:g + self.gl], self.col_args) for g in range(0, W.shape[1], self.gl)
        ]

    def at(self, i: int, current_cols):
        """(group id, (scale, zero) [out, 1]) for processing index i; current_cols() gives W."""
        if self.dynamic:
            if i % self.gl == 0:
                self.table.append(compute_qparams(current_cols(), self.col_args))
            return i // self.gl, self.table[-1]
        g = (i if self.perm is None else int(self.perm[i])) // self.gl
        return g, self.table[g]


def _prepare(W, H, args, static_groups):
    W = W.detach().float().clone()
    H = H.detach().to(W.device).clone()
    # as the reference: channel qparams come from W before dead columns are zeroed
    channel = _Groups(W, args, True) if args.group_size == -1 else None
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return W, H, channel or _Groups(W, args, static_groups)


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, args: QuantArgs, blocksize: int = 128,
                  percdamp: float = 0.01, act_order: bool = False,
                  static_groups: bool = False) -> GPTQResult:
    """Quantize W [out, in] with Hessian H [in, in] (from ``HessianAccumulator``)."""
    W, H, groups = _prepare(W, H, args, static_groups)
    rows, cols = W.shape
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
        groups.perm = perm.tolist()
    Hinv, used = inverse_hessian_cholesky(H, percdamp)
    Hinv = Hinv.to(W.dtype)
    if groups.dynamic and blocksize % groups.gl and groups.gl % blocksize:
        blocksize = max(1, blocksize // groups.gl) * groups.gl  # groups must not straddle blocks
    codes = torch.zeros(rows, cols, dtype=torch.int8, device=W.device)
    gids = torch.zeros(cols, dtype=torch.int32, device=W.device)
    loss = torch.zeros((), dtype=torch.float64, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        Err1, block_loss = _quantize_block(W, Hinv, i1, i2, groups, args, codes, gids)
        loss += block_loss
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # lazy batch update of the later columns
    return _finish(codes, gids, groups, perm, loss.item(), used)


def _quantize_block(W, Hinv, i1, i2, groups, args, codes, gids):
    """Columns i1:i2 one by one (writing codes, gids); returns (scaled errors, loss)."""
    W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
    Err1 = torch.zeros_like(W1)
    loss = torch.zeros((), dtype=torch.float64, device=W.device)
    gl = groups.gl
    for i in range(i2 - i1):
        w, d = W1[:, i], Hinv1[i, i]
        # the group's current columns: in W1 if the group fits in this block, else (i == 0) in W
        cur = (lambda: W1[:, i:i + gl]) if i + gl <= i2 - i1 else (lambda: W[:, i1 + i:i1 + i + gl])
        g, (s, z) = groups.at(i1 + i, cur)
        c = quantize_values(w, s[:, 0], z[:, 0], args)
        q = dequantize_values(c, s[:, 0], z[:, 0]).float()
        codes[:, i1 + i], gids[i1 + i] = c, g
        loss += ((w - q) ** 2).sum().double() / d.double() ** 2 / 2
        err = (w - q) / d
        W1[:, i:] -= torch.outer(err, Hinv1[i, i:])
        Err1[:, i] = err
    return Err1, loss


def _finish(codes, gids, groups, perm, loss, percdamp) -> GPTQResult:
    scales = torch.cat([s for s, _ in groups.table], dim=1)
    zeros = torch.cat([z for _, z in groups.table], dim=1)
    if perm is not None:
        inv = torch.argsort(perm)
        codes, gids = codes[:, inv], gids[inv]
    fake = dequantize(codes, scales, zeros, gids)
    return GPTQResult(fake, codes, scales, zeros, gids, perm, loss, percdamp)
