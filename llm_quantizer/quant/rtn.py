"""Group-wise integer round-to-nearest quantization of a weight [out, in].

Conventions are compressed-tensors' (``calculate_qparams`` and ``forward.py``) so that a
``pack-quantized`` checkpoint decompresses to exactly our fake-quantized weight:

* codes are signed: ``q in [-2^(b-1), 2^(b-1) - 1]``, stored as int8;
* symmetric: ``scale = absmax / ((2^b - 1) / 2)``, ``zero = 0``;
* asymmetric: ``scale = (max - min) / (2^b - 1)``,
  ``zero = round(clamp(-2^(b-1) - min / scale))`` (signed int8), min <= 0 <= max;
* the scale is computed in float32, then rounded to ``scale_dtype``; zeros become its eps;
* ``q = round(clamp(w / scale + zero))`` (round half to even), in float32;
* ``w_hat = (q - zero) * scale`` computed in ``scale_dtype``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

_SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class QuantArgs:
    """Weight quantization settings. ``group_size=-1`` means one group per output row.

    ``scale_dtype`` must be the dtype the checkpoint stores scales in; for compressed-tensors
    that is the dtype the model is loaded in (it allocates ``weight_scale`` like the weight).
    ``mse`` turns on a clipping grid search for the scales (GPTQ's ``mse`` option).
    """

    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    scale_dtype: str = "bfloat16"
    mse: bool = False
    mse_grid: int = 100
    mse_maxshrink: float = 0.8
    mse_norm: float = 2.4

    def __post_init__(self):
        if isinstance(self.scale_dtype, torch.dtype):
            object.__setattr__(self, "scale_dtype", str(self.scale_dtype).removeprefix("torch."))
        if not 2 <= self.bits <= 8:
            raise ConfigError(f"bits must be in 2..8, got {self.bits}")
        if self.group_size != -1 and self.group_size <= 0:
            raise ConfigError(f"group_size must be -1 or positive, got {self.group_size}")
        if self.scale_dtype not in _SCALE_DTYPES:
            raise ConfigError(f"scale_dtype must be one of {sorted(_SCALE_DTYPES)}, got {self.scale_dtype}")
        if self.mse_grid < 1 or not 0 < self.mse_maxshrink <= 1:
            raise ConfigError("mse_grid must be >= 1 and mse_maxshrink in (0, 1]")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return _SCALE_DTYPES[self.scale_dtype]

    def group_len(self, in_features: int) -> int:
        """Columns per group for a weight with ``in_features`` columns."""
        if self.group_size == -1:
            return in_features
        if in_features % self.group_size:
            raise ConfigError(f"in_features {in_features} is not divisible by group_size {self.group_size}")
        return self.group_size


def qparams_from_minmax(wmin: torch.Tensor, wmax: torch.Tensor, args: QuantArgs):
    """(scale in ``scale_dtype``, zero as int8) from per-group min/max; compressed-tensors math."""
    dev = wmin.device
    wmin = torch.clamp(wmin.float(), max=0.0)
    wmax = torch.clamp(wmax.float(), min=0.0)
    bit_min = torch.tensor(float(args.qmin), device=dev)
    bit_range = torch.tensor(float(args.qmax - args.qmin), device=dev)
    if args.symmetric:
        scale = torch.maximum(wmin.abs(), wmax.abs()) / (bit_range / 2)
        zero = torch.zeros_like(scale)
    else:
        scale = (wmax - wmin) / bit_range
        zero = torch.clamp(bit_min - wmin / scale, args.qmin, args.qmax)
        zero = torch.where(scale > 0, zero, torch.zeros_like(zero))  # all-zero group: 0/0
    dt = args.torch_scale_dtype
    fi = torch.finfo(dt)
    scale = torch.clamp(scale, fi.min, fi.max).to(dt)
    scale = torch.where(scale == 0, torch.tensor(fi.eps, dtype=dt, device=dev), scale)
    zero = torch.round(torch.clamp(zero, -128, 127)).to(torch.int8)
    return scale, zero


def _grouped(w: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    rows, cols = w.shape
    gl = args.group_len(cols)
    return w.float().reshape(rows, cols // gl, gl)


def _fake_grouped(wg, scale, zero, args):
    """Fake-quantize grouped weights [out, G, gs] with per-group scale/zero [out, G]."""
    s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)
    return dequantize_values(quantize_values(wg, s, z, args), s, z)


def _mse_search(wg, wmin, wmax, args: QuantArgs):
    best_s, best_z = qparams_from_minmax(wmin, wmax, args)
    best = torch.full(wmin.shape, float("inf"), device=wg.device)
    for i in range(int(args.mse_maxshrink * args.mse_grid)):
        p = 1 - i / args.mse_grid
        s, z = qparams_from_minmax(p * wmin, p * wmax, args)
        err = (_fake_grouped(wg, s, z, args).float() - wg).abs().pow(args.mse_norm).sum(-1)
        better = err < best
        best = torch.where(better, err, best)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    return best_s, best_z


def compute_qparams(w: torch.Tensor, args: QuantArgs):
    """Scales [out, G] (``scale_dtype``) and zeros [out, G] (int8) for weight w [out, in]."""
    wg = _grouped(w, args)
    wmin, wmax = wg.amin(-1), wg.amax(-1)
    if args.mse:
        return _mse_search(wg, wmin, wmax, args)
    return qparams_from_minmax(wmin, wmax, args)


def _expand(scale, zero, cols: int, g_idx=None):
    """Per-column scale/zero [out, in] from per-group [out, G] (contiguous groups or g_idx)."""
    if g_idx is None:
        g_idx = torch.arange(cols, device=scale.device) // (cols // scale.shape[1])
    g_idx = g_idx.to(device=scale.device, dtype=torch.long)
    return scale[:, g_idx], zero[:, g_idx]


def quantize_values(x, scale, zero, args: QuantArgs) -> torch.Tensor:
    """int8 codes ``round(clamp(x / scale + zero))`` for scale/zero broadcastable to x."""
    q = torch.clamp(x.float() / scale + zero.float(), args.qmin, args.qmax)
    return torch.round(q).to(torch.int8)


def dequantize_values(codes, scale, zero) -> torch.Tensor:
    """``(codes - zero) * scale`` in the scale's dtype, scale/zero broadcastable to codes."""
    return (codes.to(scale.dtype) - zero.to(scale.dtype)) * scale


def quantize(w, scale, zero, args: QuantArgs, g_idx=None) -> torch.Tensor:
    """Signed int8 codes of w [out, in] for per-group scale/zero [out, G]."""
    s, z = _expand(scale, zero, w.shape[1], g_idx)
    return quantize_values(w, s, z, args)


def dequantize(codes, scale, zero=None, g_idx=None, dtype=None) -> torch.Tensor:
    """``(codes - zero) * scale`` in the scale's dtype (as compressed-tensors), then ``dtype``."""
    zero = torch.zeros_like(scale, dtype=torch.int8) if zero is None else zero
    if g_idx is None:       # contiguous groups: broadcast [out, G, 1] over [out, G, gl], no gather
        rows, cols = codes.shape
        out = dequantize_values(codes.reshape(rows, scale.shape[1], -1), scale[..., None], zero[..., None])
        out = out.reshape(rows, cols)
    else:
        s, z = _expand(scale, zero, codes.shape[1], g_idx)
        out = dequantize_values(codes, s, z)
    return out if dtype is None else out.to(dtype)


def quantize_rtn(w: torch.Tensor, args: QuantArgs):
    """Round-to-nearest: (codes int8 [out, in], scale [out, G], zero int8 [out, G])."""
    scale, zero = compute_qparams(w, args)
    return quantize(w, scale, zero, args), scale, zero


def fake_quantize(w: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    """Quantize then dequantize w [out, in] with RTN; returned in w's dtype."""
    codes, scale, zero = quantize_rtn(w, args)
    return dequantize(codes, scale, zero, dtype=w.dtype)


def to_unsigned(codes: torch.Tensor, zero: torch.Tensor, bits: int):
    """Shift signed codes/zeros to the unsigned ``[0, 2^b - 1]`` range of GPTQ/AWQ kernels."""
    off = 1 << (bits - 1)
    return (codes.to(torch.int32) + off).to(torch.uint8), (zero.to(torch.int32) + off).to(torch.uint8)
