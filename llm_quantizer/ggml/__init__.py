"""llama.cpp / ggml through the libraries that llama-cpp-python ships (loaded on first use).

- ``quantize``: one tensor to any ggml type and back, and the per-format error probe.
- ``imatrix``: importance matrices in llama-imatrix's GGUF layout.
- ``llama_quantize``: a whole GGUF through ``llama_model_quantize``, and its CLI equivalent.
- ``runtime``: the activation rounding of llama.cpp's CPU matmuls (torch; no library needed).
"""
from .imatrix import imatrix_means, load_imatrix_means, read_imatrix, read_imatrix_metadata, write_imatrix
from .lib import block_size, ggml_type, requires_imatrix, row_size, type_size
from .llama_quantize import llama_quantize, llama_quantize_command, resolve_ftype
from .quantize import QUANTIZABLE, check_quantizable, dequantize_tensor, fake_quantize, quant_error, quantize_tensor

__all__ = [
    "QUANTIZABLE", "block_size", "check_quantizable", "dequantize_tensor", "fake_quantize", "ggml_type",
    "imatrix_means", "llama_quantize", "llama_quantize_command", "load_imatrix_means", "quant_error",
    "quantize_tensor", "read_imatrix", "read_imatrix_metadata", "requires_imatrix", "resolve_ftype",
    "row_size", "type_size", "write_imatrix",
]
