"""llama.cpp's K-quant scale searches (ggml-quants.c), vectorized over sub-blocks, float32-exact.

The searches mirror ggml-quants.c operation by operation in float32: every sum is accumulated
in the same sequence (a Python loop over the 16/32 elements of a sub-block, vectorized over all
sub-blocks), products are evaluated in C's left-to-right order, ``nearest_int`` is the
12582912 bit trick, divisions are true tensor/tensor divisions (torch turns ``tensor / scalar``
into a multiply by the reciprocal on CUDA and ``scalar / tensor`` into ``reciprocal() * scalar``),
sqrtf is taken in float64 and rounded once (torch's float32 CPU sqrt is not correctly rounded).
libggml-base is built for baseline x86-64 (scalar SSE, no FMA contraction), which is what makes
byte equality possible.

Layout: a sub-block tensor is [n, N] (element first, N = sub-blocks) so that each step of a
sequential sum is one contiguous [N] op.
"""
from __future__ import annotations

import numpy as np
import torch

QK = 256
EPS = float(np.float32(1e-15))      # GROUP_MAX_EPS


def f32c(v) -> float:
    return float(np.float32(v))


def nearest_int(v: torch.Tensor) -> torch.Tensor:
    """llama.cpp's nearest_int: (v + 1.5*2^23) bit trick (round half to even for |v| < 2^22)."""
    return ((v + 12582912.0).view(torch.int32) & 0x7FFFFF) - 0x400000


def fdiv(a, b) -> torch.Tensor:
    """IEEE float32 a / b with both operands as tensors (see the module docstring)."""
    if not torch.is_tensor(a):
        a = torch.full_like(b, f32c(a))
    if not torch.is_tensor(b):
        b = torch.full_like(a, f32c(b))
    return torch.div(a, b)


def fsqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrtf (torch's float32 CPU sqrt is off by an ulp for ~17 % of
    inputs; sqrt in float64 rounded to float32 is exact)."""
    return torch.sqrt(x.double()).float()


def seqsum(t: torch.Tensor, start_zero: bool = True) -> torch.Tensor:
    """Sum over dim -2 of t [..., n, N] in index order, float32, as ``s = 0; s += t[i]``."""
    acc = torch.zeros_like(t[..., 0, :]) + t[..., 0, :] if start_zero else t[..., 0, :].clone()
    for i in range(1, t.shape[-2]):
        acc += t[..., i, :]
    return acc


def absmax_first(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """amax = max |x|, max = the signed value of the first element reaching it (strict >)."""
    amax = torch.zeros_like(x[0])
    mx = torch.zeros_like(x[0])
    for i in range(x.shape[0]):
        ax = x[i].abs()
        up = ax > amax
        amax = torch.where(up, ax, amax)
        mx = torch.where(up, x[i], mx)
    return amax, mx


def scan_max(x: torch.Tensor) -> torch.Tensor:
    """``m = 0; if (x[i] > m) m = x[i]`` over dim 0."""
    m = torch.zeros_like(x[0])
    for i in range(x.shape[0]):
        m = torch.where(x[i] > m, x[i], m)
    return m


# ---- ggml-quants.c searches, vectorized over sub-blocks ------------------------------------
def nint_(v: torch.Tensor) -> torch.Tensor:
    """nearest_int computed in place in the float32 temporary ``v`` (returns an int32 view of it)."""
    i = v.add_(12582912.0).view(torch.int32)
    return i.bitwise_and_(0x7FFFFF).sub_(0x400000)


def make_qkx(x, w, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool):
    """make_qkx2_quants / make_qkx3_quants (same arithmetic when weights are given).

    x, w [n, N] -> scale [N], the_min [N] (>= 0, subtracted), L [n, N] int32 codes.
    Note ``min`` changes inside llama.cpp's step loop when a step wins, so the steps run in order."""
    n = x.shape[0]
    mn = x[0].clone()
    mx = x[0].clone()
    for i in range(1, n):
        mn = torch.where(x[i] < mn, x[i], mn)
        mx = torch.where(x[i] > mx, x[i], mx)
    sum_w = seqsum(w, start_zero=False)
    sum_x = seqsum(w * x, start_zero=False)
    mn = torch.where(mn > 0, torch.zeros_like(mn), mn)
    zero = mx <= mn
    mx = torch.where(zero, mn + 1, mx)          # keep the dead lanes finite
    buf = torch.empty((3,) + tuple(x.shape), dtype=x.dtype, device=x.device)

    def codes(isc, mi):                         # clamp(nearest_int(isc * (x - mi)), 0, nmax) as float
        return nint_(torch.sub(x, mi, out=buf[0]).mul_(isc)).clamp_(0, nmax).float()

    def error(sc, mi, lf):
        diff = torch.mul(lf, sc, out=buf[0]).add_(mi).sub_(x)
        diff = diff.abs_() if use_mad else diff.mul_(diff)
        return seqsum(diff.mul_(w))

    iscale = fdiv(float(nmax), mx - mn)
    scale = fdiv(1.0, iscale)
    best = error(scale, mn, codes(iscale, mn))
    l_isc, l_min = iscale, mn                   # what the kept codes were rounded with
    for step in range(nstep + 1):
        c = np.float32(rmin) + np.float32(rdelta) * np.float32(step) + np.float32(nmax)
        isc = fdiv(float(c), mx - mn)
        lf = codes(isc, mn)
        wl = torch.mul(w, lf, out=buf[0])
        torch.mul(wl, lf, out=buf[1])
        torch.mul(wl, x, out=buf[2])
        s = seqsum(buf)
        sum_l, sum_l2, sum_xl = s[0], s[1], s[2]
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = fdiv(sum_w * sum_xl - sum_x * sum_l, D)
        this_min = fdiv(sum_l2 * sum_x - sum_l * sum_xl, D)
        pos = this_min > 0
        this_min = torch.where(pos, torch.zeros_like(this_min), this_min)
        this_scale = torch.where(pos, fdiv(sum_xl, sum_l2), this_scale)
        cur = error(this_scale, this_min, lf)
        up = (D > 0) & (cur < best)
        best = torch.where(up, cur, best)
        scale = torch.where(up, this_scale, scale)
        l_isc = torch.where(up, isc, l_isc)
        l_min = torch.where(up, mn, l_min)
        mn = torch.where(up, this_min, mn)
    L = codes(l_isc, l_min)
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    L = torch.where(zero, torch.zeros_like(L), L)
    return scale, -mn, L.to(torch.int32)


def _qx_weights(x, qw, rmse_type):
    if qw is not None:
        return qw
    assert rmse_type == 1
    return x * x


def make_qx_quants(x, nmax: int, qw=None):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw): x [n, N] -> scale [N], L [n, N] (+nmax)."""
    w = _qx_weights(x, qw, 1)
    amax, mx = absmax_first(x)
    zero = amax < EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)

    wx = w * x
    buf = torch.empty((2,) + tuple(x.shape), dtype=x.dtype, device=x.device)

    def sums(isc):
        l = nint_(torch.mul(x, isc, out=buf[0])).clamp_(-nmax, nmax - 1).clone()
        lf = l.float()
        torch.mul(wx, lf, out=buf[0])
        torch.mul(w, lf, out=buf[1]).mul_(lf)
        s = seqsum(buf)
        return l, s[0], s[1]

    L, sumlx, suml2 = sums(fdiv(float(-nmax), mx))
    scale = torch.where(suml2 != 0, fdiv(sumlx, suml2), torch.zeros_like(sumlx))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        c = -(np.float32(nmax) + np.float32(0.1) * np.float32(step))
        l, slx, sl2 = sums(fdiv(float(c), mx))
        up = (sl2 > 0) & (slx * slx > best * sl2)
        L = torch.where(up, l, L)
        scale = torch.where(up, fdiv(slx, sl2), scale)
        best = torch.where(up, scale * slx, best)
    L = torch.where(zero, torch.zeros_like(L), L + nmax)
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    return scale, L


def refine(one_pass, ntry: int, const: tuple, state: tuple) -> None:
    """Run llama.cpp's "itry" refinement passes in place on ``state`` ([n, N] / [N] tensors).

    A sub-block that changed nothing in a pass is in the same state at the next one and would
    change nothing again, so each pass after the first runs on the sub-blocks that changed only."""
    idx = None
    for _ in range(ntry):
        if idx is None:
            *new, changed = one_pass(*const, *state)
            for t, v in zip(state, new):
                t.copy_(v)
            idx = torch.nonzero(changed).flatten()
        else:
            sub = [t[..., idx] for t in const + state]
            *new, changed = one_pass(*sub)
            for t, v in zip(state, new):
                t[..., idx] = v
            idx = idx[changed]
        if idx.numel() == 0:
            break


def make_q3_quants(x, nmax: int):
    """make_q3_quants(n, nmax, x, L, do_rmse=true): x [n, N] -> scale [N], L [n, N] (+nmax)."""
    n = x.shape[0]
    amax, mx = absmax_first(x)
    zero = amax < EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    iscale = fdiv(float(-nmax), mx)
    L = nearest_int(iscale * x).clamp_(-nmax, nmax - 1)
    w = x * x
    wx = w * x
    lf = L.float()
    s = seqsum(torch.stack((wx * lf, w * lf * lf)))
    sumlx, suml2 = s[0].clone(), s[1].clone()

    def one_pass(x, w, wx, L, sumlx, suml2):
        changed = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
        for i in range(n):
            li = L[i].float()
            slx = sumlx - wx[i] * li
            ok = slx > 0
            sl2 = suml2 - w[i] * li * li
            new_l = nearest_int(fdiv(x[i] * sl2, torch.where(ok, slx, torch.ones_like(slx))))
            new_l = new_l.clamp_(-nmax, nmax - 1)
            nf = new_l.float()
            ok &= new_l != L[i]
            slx = slx + wx[i] * nf
            sl2 = sl2 + w[i] * nf * nf
            ok &= (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[i] = torch.where(ok, new_l, L[i])
            sumlx = torch.where(ok, slx, sumlx)
            suml2 = torch.where(ok, sl2, suml2)
            changed |= ok
        return L, sumlx, suml2, changed

    refine(one_pass, 5, (x, w, wx), (L, sumlx, suml2))
    scale = torch.where(suml2 > 0, fdiv(sumlx, torch.where(suml2 > 0, suml2, torch.ones_like(suml2))),
                        torch.zeros_like(sumlx))
    L = torch.where(zero, torch.zeros_like(L), L + nmax)
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    return scale, L


def make_qp_quants(x, nmax: int, qw):
    """make_qp_quants(n, nmax, x, L, quant_weights): x, qw [n, M] -> scale [M], L [n, M] (uint8 semantics)."""
    n = x.shape[0]
    mx = torch.zeros_like(x[0])
    for i in range(n):
        mx = torch.where(mx > x[i], mx, x[i])
    zero = mx < EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    iscale = fdiv(float(nmax), mx)
    L = nearest_int(iscale * x) & 0xFF
    scale = fdiv(1.0, iscale)

    def mse(sc, lv):
        diff = x - sc * lv.float()
        return seqsum(qw * diff * diff)

    best = mse(scale, L)
    for step in range(-4, 5):
        if step == 0:
            continue
        c = np.float32(0.1) * np.float32(step) + np.float32(nmax)
        isc = fdiv(float(c), mx)
        l = nearest_int(isc * x).clamp_(max=nmax)
        cur = mse(fdiv(1.0, isc), l)
        up = cur < best
        best = torch.where(up, cur, best)
        iscale = torch.where(up, isc, iscale)
    l = nearest_int(iscale * x).clamp_(max=nmax)
    L = l & 0xFF
    lf = l.float()
    wx = qw * x
    s = seqsum(torch.stack((wx * lf, qw * lf * lf)))
    sumlx, suml2 = s[0].clone(), s[1].clone()
    for _ in range(5):
        changed = torch.zeros_like(zero)
        for i in range(n):
            li = L[i].float()
            slx = sumlx - wx[i] * li
            sl2 = suml2 - qw[i] * li * li
            ok = (slx > 0) & (sl2 > 0)
            new_l = nearest_int(fdiv(x[i] * sl2, torch.where(ok, slx, torch.ones_like(slx)))).clamp_(max=nmax)
            ok &= new_l != L[i]
            nf = new_l.float()
            slx = slx + wx[i] * nf
            sl2 = sl2 + qw[i] * nf * nf
            ok &= slx * slx * suml2 > sumlx * sumlx * sl2
            L[i] = torch.where(ok, new_l & 0xFF, L[i])
            sumlx = torch.where(ok, slx, sumlx)
            suml2 = torch.where(ok, sl2, suml2)
            changed |= ok
        if not bool(changed.any()):
            break
    pos = suml2 > 0
    scale = torch.where(pos, fdiv(sumlx, torch.where(pos, suml2, torch.ones_like(suml2))), torch.zeros_like(sumlx))
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    L = torch.where(zero, torch.zeros_like(L), L)
    return scale, L
