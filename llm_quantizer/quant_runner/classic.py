"""Classic ``quant_method: gptq`` (v1 ``checkpoint_format: gptq``) and ``awq`` (GEMM) checkpoints,
for uniform bits only (transformers loads them through optimum + gptqmodel; a per-layer entry
would be ignored there, so mixed plans stay compressed-tensors).

Layouts (as the loaders read them; see ../shared/recipes/gptq_v1_checkpoint.py and
awq_gemm_checkpoint.py), per linear ``[out, in]`` with G groups and unsigned codes
``u = code + 2^(b-1)``, unsigned zeros ``z = zero + 2^(b-1)`` (symmetric: z = 2^(b-1), which is
GPTQ's own symmetric zero), so ``(u - z) * scale`` is our fake-quantized weight:

* gptq: ``qweight`` int32 ``[in * b / 32, out]`` (32/b input rows per word, low bits first),
  ``qzeros`` int32 ``[G, out * b / 32]`` holding ``z - 1`` (v1), ``scales`` fp16 ``[G, out]``,
  ``g_idx`` int32 ``[in]``; bits 2, 4, 8.
* awq: ``qweight`` int32 ``[in, out / 8]`` and ``qzeros`` int32 ``[G, out / 8]`` packed along the
  output dim in AutoAWQ's order 0 2 4 6 1 3 5 7, ``scales`` fp16 ``[G, out]``; 4 bits.

Scales are quantized in bfloat16 (as for compressed-tensors) and stored as float16, which holds
every bfloat16 value in float16's normal range exactly; the other tensors and ``dtype`` stay
bfloat16. gptqmodel's CPU kernels compute in bfloat16, so the loaded model equals our bfloat16
fake-quant model; GPU kernels multiply in float16 (last-bit differences).
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from ..errors import ConfigError
from ..quant.rtn import QuantArgs
from .ct_writer import CompressedTensorsWriter
from .schemes import QuantizedLinear

CLASSIC_FORMATS = ("gptq", "awq")
CLASSIC_DTYPE = "bfloat16"
_AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def pack_rows(u: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned values ``u`` [R, C] along dim 0: int32 [R * bits / 32, C], row k of each
    word at bits ``bits * k`` (int32 shifts wrap into the sign bit as the int32 word does)."""
    per = 32 // bits
    r, c = u.shape
    u = u.to(torch.int32).reshape(r // per, per, c)
    word = u[:, 0, :].clone()
    for k in range(1, per):
        word |= u[:, k, :] << (bits * k)
    return word


def pack_awq(u: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit unsigned values ``u`` [R, C] along dim 1 in AutoAWQ's GEMM order: int32 [R, C / 8]."""
    r, c = u.shape
    u = u.to(torch.int32).reshape(r, c // 8, 8)
    word = torch.zeros(r, c // 8, dtype=torch.int32)
    for i, o in enumerate(_AWQ_ORDER):
        word |= u[:, :, o] << (4 * i)
    return word


def _unsigned(q: QuantizedLinear) -> tuple[torch.Tensor, torch.Tensor]:
    off = 1 << (q.args.bits - 1)
    return q.codes.to(torch.int32) + off, q.zeros.to(torch.int32) + off


def fp16_scales(q: QuantizedLinear) -> torch.Tensor:
    """Scales [G, out] in float16; ConfigError if a scale is not exactly representable there."""
    s16 = q.scales.t().contiguous().to(torch.float16)
    if not torch.equal(s16.to(q.scales.dtype), q.scales.t()):
        bad = int((s16.to(q.scales.dtype) != q.scales.t()).sum())
        raise ConfigError(f"{bad} scale(s) are outside float16's exact range (|s| < 6.1e-5 or > 65504); "
                          "write this model as compressed-tensors")
    return s16


def pack_gptq(module: str, q: QuantizedLinear) -> dict[str, torch.Tensor]:
    u, z = _unsigned(q)
    bits, in_f = q.args.bits, q.codes.shape[1]
    return {f"{module}.qweight": pack_rows(u.t().contiguous(), bits),
            f"{module}.qzeros": pack_rows(z - 1, bits).t().contiguous(),     # v1 stores z - 1
            f"{module}.scales": fp16_scales(q),
            f"{module}.g_idx": (torch.arange(in_f) // (in_f // q.scales.shape[1])).to(torch.int32)}


def pack_awq_linear(module: str, q: QuantizedLinear) -> dict[str, torch.Tensor]:
    u, z = _unsigned(q)
    return {f"{module}.qweight": pack_awq(u.t().contiguous()),
            f"{module}.qzeros": pack_awq(z.t().contiguous()),
            f"{module}.scales": fp16_scales(q)}


def check_classic(fmt: str, schemes: Mapping[str, Optional[QuantArgs]]) -> QuantArgs:
    """The one QuantArgs of a classic checkpoint; one-line ConfigError otherwise."""
    if fmt not in CLASSIC_FORMATS:
        raise ConfigError(f"checkpoint format {fmt!r} is not one of {', '.join(CLASSIC_FORMATS)}")
    used = {a for a in schemes.values() if a is not None}
    if len(used) != 1 or any(a is None for a in schemes.values()):
        raise ConfigError(f"a classic {fmt} checkpoint needs one scheme for every linear (uniform bits); "
                          "mixed plans are written as compressed-tensors")
    args = used.pop()
    ok_bits = (2, 4, 8) if fmt == "gptq" else (4,)
    if args.bits not in ok_bits or args.group_size == -1:
        raise ConfigError(f"a classic {fmt} checkpoint takes {'/'.join(map(str, ok_bits))}-bit group "
                          f"quantization, not {args.bits}-bit group {args.group_size}")
    if args.scale_dtype not in ("bfloat16", "float16"):
        raise ConfigError(f"a classic {fmt} checkpoint stores float16 scales: quantize with bfloat16 or float16 scales")
    return args


def classic_config(fmt: str, args: QuantArgs, act_order: bool = False) -> dict:
    """``quantization_config`` of a classic checkpoint (groups stay contiguous: static groups)."""
    if fmt == "gptq":
        return {"quant_method": "gptq", "bits": args.bits, "group_size": args.group_size, "desc_act": False,
                "sym": args.symmetric, "checkpoint_format": "gptq", "static_groups": act_order,
                "true_sequential": True, "damp_percent": 0.01}
    return {"quant_method": "awq", "bits": args.bits, "group_size": args.group_size, "zero_point": True,
            "version": "gemm"}


class ClassicWriter(CompressedTensorsWriter):
    """The streaming writer with classic per-linear tensors (float16 scales, bfloat16 elsewhere)."""

    def __init__(self, final_dir, fmt: str, **kw):
        super().__init__(final_dir, dtype=getattr(torch, CLASSIC_DTYPE), **kw)
        self.fmt = fmt

    def add_layer(self, prefix, tensors, quantized: dict[str, QuantizedLinear]) -> None:
        self.add_tensors(tensors)
        pack = pack_gptq if self.fmt == "gptq" else pack_awq_linear
        for module, q in quantized.items():
            self._add(pack(module, q))
