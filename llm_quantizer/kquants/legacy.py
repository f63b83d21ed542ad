"""llama.cpp's 32-wide block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL.

Each codec reproduces what ``ggml_quantize_chunk`` writes, with and without an importance matrix
(llama.cpp takes other code paths when ``quant_weights`` is given: ``make_qx_quants`` for
Q4_0/Q5_0, ``make_qkx3_quants`` for Q4_1/Q5_1, weighted scale search for IQ4_NL; Q8_0 ignores it).

Exactness: every sum runs in llama.cpp's sequential order (a python loop over the 32 positions,
vectorized over all blocks and scale candidates), fp32 throughout, no fused multiply-add (the
libggml-base we compare with has none), candidates compared in llama.cpp's order with its strict
inequalities. The codes of every path are ``rule(x * id - off * id)``-style functions of two
per-block numbers (the inverse scale llama.cpp rounds with and an offset), kept in the params, so
``quantize`` with fixed params reproduces llama.cpp's codes exactly and error feedback can reuse it.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Codec, Params, block_view, divc, fp16_bytes, rdiv, register, sqrt_f32

QK = 32
GROUP_MAX_EPS = 1e-15
KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
_CHUNK = 1 << 14  # blocks per vectorized pass (bounds the [blocks, candidates, 32] temporaries)

f32 = np.float32


def _f(x) -> float:
    """A python float that equals the C float constant (so torch uses the same fp32 value)."""
    return float(f32(x))


def _fp16_round(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C roundf, exactly (no x+0.5 double rounding)."""
    t = torch.trunc(x)
    return t + torch.sign(x) * ((x - t).abs() >= 0.5)


def _abs_max_signed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(amax, the value with the first largest |x|) per row of [B, n], as llama.cpp's scan."""
    a = x.abs()
    i = torch.argmax(a, dim=1, keepdim=True)
    return a.gather(1, i)[:, 0], x.gather(1, i)[:, 0]


def _row_sigma2(w: torch.Tensor) -> torch.Tensor:
    """sum(x^2)/n over each full row, summed sequentially like llama.cpp's *_impl. [R]."""
    s = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
    for j in range(w.shape[1]):
        c = w[:, j]
        s = s + c * c
    return divc(s, float(w.shape[1]))


def _best_index(vals: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """llama.cpp best_index_int8 on the sorted table ``vals`` (float32), elementwise on x."""
    n = vals.numel()
    mu = torch.ones(x.shape, dtype=torch.int64, device=x.device)  # first k >= 1 with vals[k] > x
    for k in range(1, n - 1):
        mu += x >= vals[k]
    lo, hi = vals[mu - 1], vals[mu]
    idx = torch.where(x - lo < hi - x, mu - 1, mu)
    idx = torch.where(x <= vals[0], torch.zeros_like(idx), idx)
    return torch.where(x >= vals[-1], torch.full_like(idx, n - 1), idx)


def _chunked(fn, *arrays):
    """Run fn on row chunks of [B, ...] arrays (None passes through) and concatenate each output."""
    B = arrays[0].shape[0]
    if B <= _CHUNK:
        return fn(*arrays)
    outs = [fn(*[None if a is None else a[i:i + _CHUNK] for a in arrays]) for i in range(0, B, _CHUNK)]
    return tuple(torch.cat(parts) for parts in zip(*outs))


# ---- llama.cpp's searches, vectorized over blocks [B, 32] ------------------------------------
def make_qx_quants(x: torch.Tensor, w: torch.Tensor, nmax: int):
    """Weighted symmetric scale search (rmse_type 1 with quant_weights). -> (scale, iscale) [B]."""
    amax, mx = _abs_max_signed(x)
    zero = amax < GROUP_MAX_EPS
    safe = torch.where(zero, torch.ones_like(mx), mx)
    steps = [0] + [s for s in range(-9, 10) if s]
    num = torch.tensor([_f(-(f32(nmax) + f32(0.1) * f32(s))) for s in steps], device=x.device)
    isc = num[None, :] / safe[:, None]                                   # [B, K]
    l = torch.round(isc[:, :, None] * x[:, None, :]).clamp(-nmax, nmax - 1)  # [B, K, n]
    sumlx = torch.zeros_like(isc)
    suml2 = torch.zeros_like(isc)
    for j in range(x.shape[1]):
        lj = l[:, :, j]
        wj = w[:, j:j + 1]
        sumlx = sumlx + (wj * x[:, j:j + 1]) * lj
        suml2 = suml2 + (wj * lj) * lj
    s0, q0 = sumlx[:, 0], suml2[:, 0]
    scale = torch.where(q0 != 0, s0 / torch.where(q0 != 0, q0, torch.ones_like(q0)), torch.zeros_like(q0))
    best = scale * s0
    iscale = isc[:, 0].clone()
    for k in range(1, len(steps)):
        sx, s2 = sumlx[:, k], suml2[:, k]
        take = (s2 > 0) & (sx * sx > best * s2)
        new_scale = sx / torch.where(s2 > 0, s2, torch.ones_like(s2))
        scale = torch.where(take, new_scale, scale)
        best = torch.where(take, new_scale * sx, best)
        iscale = torch.where(take, isc[:, k], iscale)
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    iscale = torch.where(zero, torch.zeros_like(iscale), iscale)
    return scale, iscale


def make_qkx3_quants(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin=-0.9, rdelta=0.05, nstep=36):
    """Weighted asymmetric scale+min search. -> (scale, min (stored), iscale, off) [B]:
    codes are clamp(round(iscale * (x - off)), 0, nmax). Sequential over candidates: llama.cpp
    moves ``min`` to the best candidate's min, and later candidates round around it."""
    n = x.shape[1]
    mn = torch.clamp(x.min(dim=1).values, max=0.0)
    mx = x.max(dim=1).values
    sum_w = w[:, 0].clone()
    sum_x = sum_w * x[:, 0]
    for j in range(1, n):
        sum_w = sum_w + w[:, j]
        sum_x = sum_x + w[:, j] * x[:, j]
    flat = mx <= mn
    one = torch.ones_like(mx)
    iscale = rdiv(float(nmax), torch.where(flat, one, mx - mn))
    scale = 1.0 / iscale
    L = torch.round(iscale[:, None] * (x - mn[:, None])).clamp(0, nmax)
    best_mad = torch.zeros_like(mx)
    for j in range(n):
        diff = (scale * L[:, j] + mn) - x[:, j]
        best_mad = best_mad + w[:, j] * (diff * diff)
    cur_min, off, best_is = mn.clone(), mn.clone(), iscale.clone()
    for s in range(nstep + 1):
        num = _f(f32(rmin) + f32(rdelta) * f32(s) + f32(nmax))
        rng = mx - cur_min
        isc = rdiv(num, torch.where(rng > 0, rng, one))
        La = torch.round(isc[:, None] * (x - cur_min[:, None])).clamp(0, nmax)
        sum_l = torch.zeros_like(mx)
        sum_l2 = torch.zeros_like(mx)
        sum_xl = torch.zeros_like(mx)
        for j in range(n):
            wl = w[:, j] * La[:, j]
            sum_l = sum_l + wl
            sum_l2 = sum_l2 + wl * La[:, j]
            sum_xl = sum_xl + wl * x[:, j]
        D = sum_w * sum_l2 - sum_l * sum_l
        okD = D > 0
        Ds = torch.where(okD, D, one)
        t_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        t_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = t_min > 0
        t_min = torch.where(pos, torch.zeros_like(t_min), t_min)
        t_scale = torch.where(pos, sum_xl / torch.where(sum_l2 != 0, sum_l2, one), t_scale)
        mad = torch.zeros_like(mx)
        for j in range(n):
            diff = (t_scale * La[:, j] + t_min) - x[:, j]
            mad = mad + w[:, j] * (diff * diff)
        take = okD & (mad < best_mad) & ~flat
        best_mad = torch.where(take, mad, best_mad)
        off = torch.where(take, cur_min, off)
        best_is = torch.where(take, isc, best_is)
        scale = torch.where(take, t_scale, scale)
        cur_min = torch.where(take, t_min, cur_min)
    zero = torch.zeros_like(scale)
    return (torch.where(flat, zero, scale), cur_min, torch.where(flat, zero, best_is), off)


def iq4nl_search(x: torch.Tensor, w: torch.Tensor, vals: torch.Tensor, ntry: int = 7):
    """IQ4_NL's per-block scale search (quantize_row_iq4_nl_impl with one 32-block). -> d [B]."""
    amax, mx = _abs_max_signed(x)
    zero = amax < GROUP_MAX_EPS
    safe = torch.where(zero, torch.ones_like(mx), mx)
    v0 = float(vals[0])
    d0 = divc(-safe, v0)
    ids = torch.cat([(1.0 / d0)[:, None],
                     torch.tensor([float(t + int(v0)) for t in range(-ntry, ntry + 1)], device=x.device)[None, :]
                     / safe[:, None]], dim=1)                            # [B, K]
    q = vals[_best_index(vals, ids[:, :, None] * x[:, None, :])]         # [B, K, n]
    sqx = torch.zeros_like(ids)
    sq2 = torch.zeros_like(ids)
    for j in range(x.shape[1]):
        wq = w[:, j:j + 1] * q[:, :, j]
        sqx = sqx + wq * x[:, j:j + 1]
        sq2 = sq2 + wq * q[:, :, j]
    ones = torch.ones_like(sq2)
    d = torch.where(sq2[:, 0] > 0, sqx[:, 0] / torch.where(sq2[:, 0] > 0, sq2[:, 0], ones[:, 0]), torch.zeros_like(d0))
    best = d * sqx[:, 0]
    for k in range(1, ids.shape[1]):
        sx, s2 = sqx[:, k], sq2[:, k]
        take = (s2 > 0) & (sx * sx > best * s2)
        nd = sx / torch.where(s2 > 0, s2, ones[:, 0])
        d = torch.where(take, nd, d)
        best = torch.where(take, nd * sx, best)
    return torch.where(zero, torch.zeros_like(d), d)


# ---- codecs --------------------------------------------------------------------------------
class _Legacy(Codec):
    """Params: d (stored scale, fp32 before fp16), m (stored min, or zeros), id (inverse scale the
    codes are rounded with), off (value subtracted before scaling). All [R, nb]."""

    block = QK
    group = QK
    type_size = 0
    has_min = False
    bits = 4

    # subclasses: _params_ref(xb) and _params_imatrix(xb, wts) -> (d, m, id, off) [B]; _codes(v)
    def row_context(self, w: torch.Tensor) -> dict:
        return {"sigma2": _row_sigma2(w)}

    def params(self, w: torch.Tensor, qw: torch.Tensor | None, sigma2: torch.Tensor | None = None) -> Params:
        R, C = w.shape
        xb = block_view(w.float(), QK).reshape(-1, QK)
        if qw is None or not self.uses_imatrix:
            d, m, i, o = _chunked(self._params_ref, xb)
        else:
            s2 = _row_sigma2(w) if sigma2 is None else sigma2.to(w.device, torch.float32)
            s2 = s2[:, None].expand(R, C).reshape(-1, QK)
            q = qw.to(w.device, torch.float32).reshape(1, C).expand(R, C).reshape(-1, QK)
            wts = q * sqrt_f32(s2 + xb * xb)
            d, m, i, o = _chunked(self._params_imatrix, xb, wts)
        shape = (R, C // QK)
        mode = torch.full(shape, 0 if qw is None or not self.uses_imatrix else 1, dtype=torch.int8, device=w.device)
        if qw is not None and self.uses_imatrix:  # all-|x| < 1e-15 blocks: make_qx_quants writes code 0
            mode[block_view(w.float(), QK).abs().amax(-1) < GROUP_MAX_EPS] = 2
        return {"d": d.reshape(shape), "m": m.reshape(shape), "id": i.reshape(shape),
                "off": o.reshape(shape), "mode": mode}

    uses_imatrix = True

    def quantize(self, x, p, cols):
        b = (cols // QK).to(x.device)
        d, m, i, o, mode = (p[k][:, b] for k in ("d", "m", "id", "off", "mode"))
        codes = self._codes(x.float(), i, o, mode)
        return codes, self._dequant(codes, d, m)

    def _dequant(self, codes, d, m):
        return codes.float() * _fp16_round(d) + _fp16_round(m)

    # ---- error-feedback hooks (base.Codec): grid-nearest codes, refittable d (and m) --------
    refit_width = QK

    def nearest(self, x, p, cols):
        b = (cols // QK).to(x.device)
        d, m = p["d"][:, b], p["m"][:, b]
        d16, m16 = _fp16_round(d), _fp16_round(m)
        live = d16 != 0
        codes = self._grid(x.float(), torch.where(live, d16, torch.ones_like(d16)), m16)
        if not bool(live.all()):   # all-zero scale: any code decodes the same; keep llama.cpp's
            codes = torch.where(live, codes, self.quantize(x, p, cols)[0])
        return codes, self._dequant(codes, d, m)

    def dequantize(self, codes, p):
        b = torch.arange(codes.shape[1], device=codes.device) // QK
        return self._dequant(codes, p["d"][:, b], p["m"][:, b])

    def _grid(self, x, d16, m16):
        """Codes of the grid point nearest to x (d16 != 0)."""
        raise NotImplementedError

    def refit_basis(self, codes, p):
        B = [self._levels(codes)]
        if self.has_min:
            B.append(torch.ones_like(B[0]))
        return torch.stack(B, dim=-1)

    def _levels(self, codes):
        """The multiplier of d in the dequantized value, per code."""
        return codes.float()

    def refit_theta(self, p):
        th = [_fp16_round(p["d"])] + ([_fp16_round(p["m"])] if self.has_min else [])
        return torch.stack(th, dim=-1)

    def with_theta(self, p, theta):
        d = theta[..., 0].contiguous()
        m = theta[..., 1].contiguous() if self.has_min else torch.zeros_like(d)
        i = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
        return {**p, "d": d, "m": m, "id": i, "off": m}

    def _scale_bytes(self, p) -> list[np.ndarray]:
        out = [fp16_bytes(p["d"])]
        if self.has_min:
            out.append(fp16_bytes(p["m"]))
        return out

    def pack(self, codes, p):
        R, C = codes.shape
        nb = C // QK
        c = codes.to(torch.int64).reshape(R, nb, QK).cpu()
        parts = self._scale_bytes(p)
        lo = (c[..., :16] & 0xF) | ((c[..., 16:] & 0xF) << 4)
        if self.bits == 5:
            hb = (c >> 4) & 1
            qh = (hb << torch.arange(QK)).sum(-1)                                # uint32 bit j
            parts.append(np.stack([((qh >> (8 * k)) & 0xFF).numpy() for k in range(4)], -1).astype(np.uint8))
        parts.append(lo.numpy().astype(np.uint8))
        return np.concatenate(parts, axis=-1).reshape(R, nb * self.type_size)


class _Sym(_Legacy):
    """Q4_0 / Q5_0: ref d = max/-2^(b-1), codes min(2^b-1, trunc(x*id + 2^(b-1) + .5));
    imatrix: make_qx_quants, codes nmax + clamp(round(iscale*x), -nmax, nmax-1)."""

    def _params_ref(self, xb):
        nmax = 1 << (self.bits - 1)
        _, mx = _abs_max_signed(xb)
        d = divc(mx, float(-nmax))
        i = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
        z = torch.zeros_like(d)
        return d, z, i, z

    def _params_imatrix(self, xb, wts):
        scale, iscale = make_qx_quants(xb, wts, 1 << (self.bits - 1))
        z = torch.zeros_like(scale)
        return scale, z, iscale, z

    def _codes(self, x, i, o, mode):
        nmax = 1 << (self.bits - 1)
        ref = torch.trunc(x * i + (nmax + 0.5)).clamp(max=2 * nmax - 1).clamp(min=0)
        imx = torch.round(i * x).clamp(-nmax, nmax - 1) + nmax
        out = torch.where(mode == 1, imx, ref)
        return torch.where(mode == 2, torch.zeros_like(out), out).to(torch.int32)

    def _dequant(self, codes, d, m):
        return (codes - (1 << (self.bits - 1))).float() * _fp16_round(d)

    def _grid(self, x, d16, m16):
        nmax = 1 << (self.bits - 1)
        return (torch.round(x / d16).clamp(-nmax, nmax - 1) + nmax).to(torch.int32)

    def _levels(self, codes):
        return (codes - (1 << (self.bits - 1))).float()


class _Asym(_Legacy):
    """Q4_1 / Q5_1: ref d = (max-min)/nmax, m = min, codes trunc((x-min)*id + .5);
    imatrix: make_qkx3_quants."""

    has_min = True

    def _params_ref(self, xb):
        nmax = (1 << self.bits) - 1
        mn, mx = xb.min(dim=1).values, xb.max(dim=1).values
        d = divc(mx - mn, float(nmax))
        i = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
        return d, mn, i, mn

    def _params_imatrix(self, xb, wts):
        return make_qkx3_quants(xb, wts, (1 << self.bits) - 1)

    def _codes(self, x, i, o, mode):
        nmax = (1 << self.bits) - 1
        ref = torch.trunc((x - o) * i + 0.5).clamp(0, nmax)
        imx = torch.round(i * (x - o)).clamp(0, nmax)
        return torch.where(mode == 1, imx, ref).to(torch.int32)

    def _grid(self, x, d16, m16):
        return torch.round((x - m16) / d16).clamp(0, (1 << self.bits) - 1).to(torch.int32)


@register
class Q4_0(_Sym):
    name, type_size, bits = "Q4_0", 18, 4


@register
class Q5_0(_Sym):
    name, type_size, bits = "Q5_0", 22, 5


@register
class Q4_1(_Asym):
    name, type_size, bits = "Q4_1", 20, 4


@register
class Q5_1(_Asym):
    name, type_size, bits = "Q5_1", 24, 5


@register
class Q8_0(_Legacy):
    """d = amax/127, codes roundf(x*id) (the importance matrix is ignored, as in llama.cpp)."""

    name, type_size, bits = "Q8_0", 34, 8
    uses_imatrix = False

    def row_context(self, w):
        return {}

    def _params_ref(self, xb):
        amax = xb.abs().max(dim=1).values
        d = divc(amax, 127.0)
        i = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
        z = torch.zeros_like(d)
        return d, z, i, z

    def _codes(self, x, i, o, mode):
        return _round_half_away(x * i).clamp(-128, 127).to(torch.int32)

    def _dequant(self, codes, d, m):
        return codes.float() * _fp16_round(d)

    def _grid(self, x, d16, m16):
        return torch.round(x / d16).clamp(-128, 127).to(torch.int32)

    def pack(self, codes, p):
        R, C = codes.shape
        nb = C // QK
        qs = codes.to(torch.int8).reshape(R, nb, QK).cpu().numpy().view(np.uint8)
        return np.concatenate([fp16_bytes(p["d"]), qs], axis=-1).reshape(R, nb * self.type_size)


@register
class IQ4_NL(_Legacy):
    """Non-linear 4-bit grid (kvalues_iq4nl), one fp16 scale per 32; llama.cpp's quantize_iq4_nl
    (ntry 7) with weights qw*sqrt(sigma2 + x^2) (block-local sigma2) or x^2 without an imatrix."""

    name, type_size, bits = "IQ4_NL", 18, 4

    def row_context(self, w):
        return {}

    def _vals(self, device):
        return torch.tensor(KVALUES_IQ4NL, dtype=torch.float32, device=device)

    def params(self, w, qw, sigma2=None):
        R, C = w.shape
        xb = block_view(w.float(), QK).reshape(-1, QK)
        if qw is None:
            wts = xb * xb
        else:
            s2 = torch.zeros(xb.shape[0], device=w.device)
            for j in range(QK):
                s2 = s2 + xb[:, j] * xb[:, j]
            s2 = s2 * (2.0 / QK)
            q = qw.to(w.device, torch.float32).reshape(1, C).expand(R, C).reshape(-1, QK)
            wts = q * sqrt_f32(s2[:, None] + xb * xb)
        vals = self._vals(w.device)
        (d,) = _chunked(lambda a, b: (iq4nl_search(a, b, vals),), xb, wts)
        i = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
        shape = (R, C // QK)
        z = torch.zeros(shape, device=w.device)
        return {"d": d.reshape(shape), "m": z, "id": i.reshape(shape), "off": z,
                "mode": torch.zeros(shape, dtype=torch.int8, device=w.device)}

    def _codes(self, x, i, o, mode):
        return _best_index(self._vals(x.device), x * i).to(torch.int32)

    def _dequant(self, codes, d, m):
        return self._vals(codes.device)[codes.long()] * _fp16_round(d)

    def _grid(self, x, d16, m16):
        return _best_index(self._vals(x.device), x / d16).to(torch.int32)

    def _levels(self, codes):
        return self._vals(codes.device)[codes.long()]
