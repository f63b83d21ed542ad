"""Catalog of candidate weight formats with exact byte costs from each real storage layout.

Two families:
* ``gguf``: llama.cpp tensor types by their ggml names (``Q4_K``, ``Q8_0``, ``F16``...). Sizes come
  from ``gguf.GGML_QUANT_SIZES``; a row of ``ne[0]`` values costs ``ne[0] / block * type_size``.
  llama.cpp swaps a type whose block does not divide the row length for a fallback type
  (``llama-quant.cpp``) and never quantizes 1-D tensors: :func:`gguf_effective_type`.
* ``int``: GPTQ/AWQ style integer groups, ``int{bits}_g{group}`` / ``int{bits}_gch`` (per output
  channel), ``_asym`` suffix for a zero point. Sizes follow compressed-tensors ``pack-quantized``;
  :func:`gptq_nbytes` gives the classic GPTQ checkpoint layout.

Shapes are PyTorch order ``[..., out, in]``: the row length (GGUF ``ne[0]``) is ``shape[-1]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import ConfigError

Family = Literal["gguf", "int"]
FLOAT_TYPES = ("F32", "F16", "BF16")
# ggml types usable for weights (Q8_1/Q8_K are activation types; MXFP4/NVFP4/Q1_0 left out).
GGUF_TYPES = FLOAT_TYPES + (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS",
    "TQ1_0", "TQ2_0")
# llama-quant.cpp: the type used when a row length is not a multiple of the type's block size.
# When the fallback's block does not divide it either, llama.cpp writes F16; types missing here
# make llama.cpp throw "Unsupported tensor size encountered".
GGUF_FALLBACK = {
    "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
    **{t: "IQ4_NL" for t in ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
                             "Q2_K", "Q3_K", "IQ4_XS")},
    "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}
# llama.cpp refuses these without an importance matrix (IQ1_M except for token_embd/output).
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S")
INT_BITS = (2, 3, 4, 8)
INT_GROUPS = (32, 64, 128, -1)
SCALE_BYTES = 2            # fp16 / bf16 scales (compressed-tensors uses the weight dtype)
SOURCE_BYTES = 2           # unquantized tensors of an int checkpoint stay in the bf16/fp16 source
# llama-quantize mixes (ftypes) -> the main tensor type of the mix, for a helpful error
_LLAMA_MIXES = {"Q2_K_S": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
                "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K",
                "IQ2_M": "IQ2_S", "IQ3_XS": "IQ3_S", "IQ3_M": "IQ3_S"}


@dataclass(frozen=True)
class Format:
    """One storage format. ``group_size == -1`` means one scale per output channel."""

    name: str
    family: Family
    bits_per_weight: float          # nominal, including block scales / group metadata
    block_size: int = 1             # gguf
    type_size: int = 0              # gguf: bytes per block
    bits: int = 0                   # int
    group_size: int = 0             # int
    symmetric: bool = True          # int
    requires_imatrix: bool = False  # gguf: llama.cpp refuses it without an imatrix

    @property
    def is_float(self) -> bool:
        return self.name in FLOAT_TYPES

    def supports(self, shape: Sequence[int]) -> bool:
        """Whether the backend can store ``shape`` in this format (GGUF: maybe via fallback)."""
        if self.family == "gguf":
            return gguf_supports(self.name, shape)
        return len(tuple(shape)) < 2 or int_supports(self, shape)

    def nbytes(self, shape: Sequence[int]) -> int:
        """Exact stored bytes of a tensor of ``shape`` in this format (see module docstring)."""
        shape = _check_shape(shape)
        if self.family == "gguf":
            return gguf_nbytes(gguf_effective_type(self.name, shape), shape)
        if len(shape) < 2:
            return math.prod(shape) * SOURCE_BYTES       # 1-D stays in the 16-bit source dtype
        return pack_quantized_nbytes(self, shape)

    def effective_bits(self, shape: Sequence[int]) -> float:
        """Stored bits per weight for this shape (after any llama.cpp fallback)."""
        return 8.0 * self.nbytes(shape) / max(1, math.prod(shape))


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if not shape or any(s <= 0 for s in shape):
        raise ConfigError(f"tensor shape {list(shape)} must be non-empty with positive sizes")
    return shape


def _gguf_format(name: str) -> Format:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    return Format(name, "gguf", size * 8 / block, block_size=block, type_size=size,
                  requires_imatrix=name in NEEDS_IMATRIX)


def int_format_name(bits: int, group_size: int, symmetric: bool = True) -> str:
    group = "ch" if group_size == -1 else str(group_size)
    return f"int{bits}_g{group}" + ("" if symmetric else "_asym")


def _int_format(bits: int, group: int, symmetric: bool) -> Format:
    per_group = 0.0 if group == -1 else (SCALE_BYTES * 8 + (0 if symmetric else bits)) / group
    return Format(int_format_name(bits, group, symmetric), "int", bits + per_group,
                  bits=bits, group_size=group, symmetric=symmetric)


def _build_registry() -> dict[str, Format]:
    reg = {name: _gguf_format(name) for name in GGUF_TYPES}
    for bits in INT_BITS:
        for group in INT_GROUPS:
            for sym in (True, False):
                f = _int_format(bits, group, sym)
                reg[f.name] = f
    return reg


_REGISTRY = _build_registry()


def get_format(name: str) -> Format:
    """The format called ``name`` (GGUF names are case-insensitive). Unknown -> ConfigError."""
    key = str(name).strip()
    for cand in (key, key.upper(), key.lower()):
        if cand in _REGISTRY:
            return _REGISTRY[cand]
    if key.upper() in _LLAMA_MIXES:
        raise ConfigError(f"{name!r} is a llama.cpp mix, not a tensor type; use {_LLAMA_MIXES[key.upper()]}")
    raise ConfigError(f"unknown format {name!r}; known: {', '.join(_REGISTRY)}")


def list_formats(family: Family | None = None) -> list[Format]:
    """All formats in catalog order, optionally of one family."""
    if family not in (None, "gguf", "int"):
        raise ConfigError(f"unknown format family {family!r}; known: gguf, int")
    return [f for f in _REGISTRY.values() if family is None or f.family == family]


def gguf_effective_type(type_name: str, shape: Sequence[int]) -> str:
    """The ggml type llama.cpp actually writes when asked for ``type_name`` on ``shape``.

    1-D tensors are never quantized (they stay F32); a row length that the type's block does
    not divide gets llama.cpp's fallback type, or F16 when the fallback does not fit either."""
    shape, fmt = _check_shape(shape), get_format(type_name)
    if fmt.family != "gguf":
        raise ConfigError(f"{fmt.name} is not a GGUF type")
    if len(shape) < 2:
        return "F32"
    row = shape[-1]
    if row % fmt.block_size == 0:
        return fmt.name
    fallback = GGUF_FALLBACK.get(fmt.name)
    if fallback is None:
        raise ConfigError(f"{fmt.name} needs a row length divisible by {fmt.block_size}, got {row}; "
                          f"llama.cpp has no fallback for it")
    return fallback if row % _REGISTRY[fallback].block_size == 0 else "F16"


def gguf_supports(type_name: str, shape: Sequence[int]) -> bool:
    """Whether llama.cpp can store ``shape`` when asked for ``type_name`` (maybe via fallback)."""
    try:
        gguf_effective_type(type_name, shape)
    except ConfigError:
        return False
    return True


def gguf_nbytes(type_name: str, shape: Sequence[int]) -> int:
    """Bytes of ``shape`` stored exactly as ``type_name`` (no fallback): rows * blocks * size."""
    shape, fmt = _check_shape(shape), get_format(type_name)
    row = shape[-1]
    if row % fmt.block_size:
        raise ConfigError(f"row length {row} is not a multiple of {fmt.name}'s block {fmt.block_size}")
    return math.prod(shape[:-1]) * (row // fmt.block_size) * fmt.type_size


def _n_groups(fmt: Format, in_features: int) -> int:
    return 1 if fmt.group_size == -1 else math.ceil(in_features / fmt.group_size)


def int_supports(fmt: Format, shape: Sequence[int]) -> bool:
    """compressed-tensors group quantization needs in_features divisible by the group size."""
    return fmt.group_size == -1 or _check_shape(shape)[-1] % fmt.group_size == 0


def pack_quantized_nbytes(fmt: Format, shape: Sequence[int], scale_bytes: int = SCALE_BYTES,
                          actorder: bool = False) -> int:
    """compressed-tensors ``pack-quantized`` bytes of one Linear weight ``[..., out, in]``
    (dense packing of compressed-tensors >= 0.20, checked against its compressor):

    ``weight_packed`` int32 [out, ceil(in * bits / 32)], ``weight_scale`` [out, n_groups] in the
    16-bit weight dtype, ``weight_shape`` int64 [2], asymmetric only: ``weight_zero_point``
    int32 [ceil(out * bits / 32), n_groups] (packed along the output dim), and ``weight_g_idx``
    int32 [in] only with activation ordering. (Releases before 0.20 packed 32 // bits values
    per int32, so 3-bit took ceil(in / 10) words.)"""
    shape = _check_shape(shape)
    if not int_supports(fmt, shape):
        raise ConfigError(f"{fmt.name} needs in_features divisible by {fmt.group_size}, got {shape[-1]}")
    out, n_in = math.prod(shape[:-1]), shape[-1]
    groups = _n_groups(fmt, n_in)
    total = out * math.ceil(n_in * fmt.bits / 32) * 4 + out * groups * scale_bytes + 2 * 8
    if not fmt.symmetric:
        total += math.ceil(out * fmt.bits / 32) * groups * 4
    return total + (n_in * 4 if actorder else 0)


def gptq_nbytes(fmt: Format | str, shape: Sequence[int], scale_bytes: int = SCALE_BYTES,
                g_idx: bool = True) -> int:
    """Classic GPTQ checkpoint bytes (AutoGPTQ/GPTQModel ``quant_method: gptq`` layout).

    ``qweight`` int32 [in * bits / 32, out], ``qzeros`` int32 [n_groups, out * bits / 32] (stored
    for symmetric formats too), ``scales`` fp16 [n_groups, out], ``g_idx`` int32 [in]."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    if fmt.family != "int":
        raise ConfigError(f"{fmt.name} is not an int format")
    shape = _check_shape(shape)
    out, n_in = math.prod(shape[:-1]), shape[-1]
    groups = _n_groups(fmt, n_in)
    qweight = math.ceil(n_in * fmt.bits / 32) * out * 4
    qzeros = groups * math.ceil(out * fmt.bits / 32) * 4
    return qweight + qzeros + groups * out * scale_bytes + (n_in * 4 if g_idx else 0)


def default_candidates(family: Family) -> list[str]:
    """A sensible 12-format candidate set per family (imatrix-only IQ2 types included)."""
    if family == "gguf":
        return ["IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "Q2_K", "Q3_K", "IQ4_XS", "Q4_K", "Q5_K",
                "Q6_K", "Q8_0", "F16"]
    if family == "int":
        return ["int2_g32", "int2_g64", "int3_g32", "int3_g64", "int3_g128", "int4_g32",
                "int4_g64", "int4_g128", "int4_gch", "int8_g128", "int8_gch", "BF16"]
    raise ConfigError(f"unknown format family {family!r}; known: gguf, int")
