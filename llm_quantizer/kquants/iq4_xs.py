"""IQ4_XS encoder (256-weight superblocks of 8 x 32, non-linear 4-bit grid, 6-bit sub-scales),
byte-exact with llama.cpp's quantize_iq4_xs (quantize_row_iq4_nl_impl(QK_K, 32, ..., ntry=7)).

Same arithmetic rules as ``kquants.py``. One quirk carried over: the codes are chosen with the
float32 superblock scale ``d = -max_scale/32`` (``idl = 1/(d*l)``), while the stored (and
dequantized) scale is fp16(d); ``params`` keeps both.
"""
from __future__ import annotations

import torch

from .base import fp16_bytes, register
from .kquants import _KCodec, _finish, _fp16, _per_sb, _sub, _sumx2, _u8
from .ksearch import EPS, QK, absmax_first, f32c, fdiv, fsqrt, nearest_int, seqsum
from .legacy import KVALUES_IQ4NL

NTRY = 7


def _vals(device) -> torch.Tensor:
    return torch.tensor(KVALUES_IQ4NL, dtype=torch.float32, device=device)


def best_index(vals: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """best_index_int8(16, values, x) elementwise, as a count: for x between table entries k and
    k+1 llama.cpp picks k+1 iff ``x - v[k] >= v[k+1] - x`` (float32); for every other k that test
    is 1 below x's bracket and 0 above it, so the index is the number of k where it holds."""
    v = [float(t) for t in vals.tolist()]
    idx = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    a = torch.empty_like(x)
    b = torch.empty_like(x)
    for k in range(len(v) - 1):
        torch.sub(x, v[k], out=a)
        torch.neg(x, out=b).add_(v[k + 1])                 # v[k+1] - x, exactly
        idx += a >= b
    return idx.long()


def iq4_scale_search(x: torch.Tensor, w: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """Per sub-block scale of quantize_row_iq4_nl_impl (ntry > 0). x, w [32, N] -> d [N]."""
    amax, mx = absmax_first(x)
    zero = amax < EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    v0 = float(KVALUES_IQ4NL[0])

    def sums(idv):
        q = vals[best_index(vals, idv * x)]
        wq = w * q
        s = seqsum(torch.stack((wq * x, wq * q)))
        return s[0], s[1]

    d = fdiv(-mx, v0)
    sqx, sq2 = sums(fdiv(1.0, d))
    pos = sq2 > 0
    d = torch.where(pos, fdiv(sqx, torch.where(pos, sq2, torch.ones_like(sq2))), torch.zeros_like(sqx))
    best = d * sqx
    for itry in range(-NTRY, NTRY + 1):
        sx, s2 = sums(fdiv(float(itry + v0), mx))
        up = (s2 > 0) & (sx * sx > best * s2)
        nd = fdiv(sx, torch.where(s2 > 0, s2, torch.ones_like(s2)))
        d = torch.where(up, nd, d)
        best = torch.where(up, nd * sx, best)
    return torch.where(zero, torch.zeros_like(d), d)


@register
class IQ4XS(_KCodec):
    name = "IQ4_XS"
    type_size = 136
    group = 32
    qmax = 15
    keeps_search_codes = False  # every code is re-chosen with the final scales

    def _search_rows(self, w, qw):
        R, C = w.shape
        xb, qwb = self._blocks(w, qw)
        X = _sub(xb, 32)
        if qwb is None:
            W = X * X
        else:
            sigma2 = _sumx2(xb) * f32c(2.0 / QK)
            s2 = sigma2.repeat_interleave(QK // 32)
            W = _sub(qwb, 32) * fsqrt(s2 + X * X)
        vals = _vals(w.device)
        S = _per_sb(iq4_scale_search(X, W, vals), 8)          # [8, M]
        _, max_scale = absmax_first(S)
        d = fdiv(-max_scale, 32.0)                             # -0.0 for an all-zero superblock
        live = d != 0
        idd = torch.where(live, fdiv(1.0, torch.where(live, d, torch.ones_like(d))), torch.zeros_like(d))
        l = nearest_int(idd[None] * S).clamp_(-32, 31).T       # [M, 8]
        dl = d[:, None] * l.float()
        idl = torch.where(dl != 0, fdiv(1.0, torch.where(dl != 0, dl, torch.ones_like(dl))), torch.zeros_like(dl))
        d16 = _fp16(d)
        nb = C // QK
        p = {"d": d16.reshape(R, nb), "ls": (l + 32).reshape(R, nb, 8),
             "idl": idl.reshape(R, nb, 8), "dl": (d16[:, None] * l.float()).reshape(R, nb, 8)}
        return p, torch.zeros(R, C, dtype=torch.int32, device=w.device)

    def quantize(self, x, p, cols):
        x = x.to(torch.float32)
        blk, sub = cols // QK, (cols % QK) // 32
        idl = p["idl"][:, blk, sub]
        dl = p["dl"][:, blk, sub]
        vals = _vals(x.device)
        q = best_index(vals, idl * x).to(torch.int32)
        return q, dl * vals[q.long()]

    def nearest(self, x, p, cols):
        """Codes nearest on the stored grid fp16(d) * l * kvalues (``quantize`` rounds with the
        float32 d, llama.cpp's quirk)."""
        x = x.to(torch.float32)
        dl = p["dl"][:, cols // QK, (cols % QK) // 32]
        live = dl != 0
        vals = _vals(x.device)
        q = best_index(vals, x / torch.where(live, dl, torch.ones_like(dl))).to(torch.int32)
        q = torch.where(live, q, torch.zeros_like(q))
        return q, dl * vals[q.long()]

    def _levels(self, codes):
        return _vals(codes.device)[codes.long()]

    def _sub_int(self, p, key, base):
        return (p["ls"] - 32).float()

    def with_theta(self, p, theta):
        out = super().with_theta(p, theta)
        dl = out["dl"]
        out["idl"] = torch.where(dl != 0, 1.0 / torch.where(dl != 0, dl, torch.ones_like(dl)), torch.zeros_like(dl))
        return out

    def pack(self, codes, p):
        R = codes.shape[0]
        L = codes.to(torch.int32).reshape(-1, 8, 2, 16)
        qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
        ls = p["ls"].reshape(-1, 8).to(torch.int32)
        lo = ls & 0xF
        scales_l = (lo[:, 0::2] | (lo[:, 1::2] << 4))                       # [M, 4]
        sh = ((ls >> 4) << (2 * torch.arange(8, device=ls.device))[None]).sum(dim=1)  # uint16
        scales_h = torch.stack((sh & 0xFF, sh >> 8), dim=1)
        return _finish(R, [fp16_bytes(p["d"].reshape(-1)), _u8(scales_h), _u8(scales_l), _u8(qs)])

