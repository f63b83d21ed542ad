"""Quantization math: RTN, GPTQ and AWQ on plain tensors (no I/O, no model plumbing)."""
from .awq import (
    AWQScaleResult,
    apply_clip,
    auto_clip,
    fold_into_linear_rows,
    fold_into_norm,
    scale_linear_columns,
    search_scales,
)
from .gptq import (
    GPTQResult,
    HessianAccumulator,
    HessianFactor,
    factor_hessian,
    gptq_quantize,
    inverse_hessian_cholesky,
)
from .rtn import (
    QuantArgs,
    compute_qparams,
    dequantize,
    dequantize_values,
    fake_quantize,
    qparams_from_minmax,
    quantize,
    quantize_rtn,
    quantize_values,
    to_unsigned,
)

__all__ = [
    "AWQScaleResult", "GPTQResult", "HessianAccumulator", "HessianFactor", "QuantArgs", "apply_clip", "auto_clip",
    "compute_qparams", "dequantize", "dequantize_values", "factor_hessian", "fake_quantize", "fold_into_linear_rows", "fold_into_norm",
    "gptq_quantize", "inverse_hessian_cholesky", "qparams_from_minmax", "quantize",
    "quantize_rtn", "quantize_values", "scale_linear_columns", "search_scales", "to_unsigned",
]
