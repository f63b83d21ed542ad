"""Our Hugging Face / GGUF -> GGUF writer on gguf-py's ``GGUFWriter`` (F32, F16, BF16).

``write_gguf(source, path, "F16")`` streams a model source into a GGUF that llama.cpp loads:
architecture keys from the transformers config (or copied from a GGUF source), tokenizer
metadata, and every tensor with llama.cpp's converter transforms re-applied.
"""
from .tensors import OUT_TYPES, TensorJob, llama3_rope_factors, permute_qk, tensor_jobs
from .writer import FILE_TYPES, check_out_type, gguf_is_complete, shard_files, write_gguf

__all__ = ["FILE_TYPES", "OUT_TYPES", "TensorJob", "check_out_type", "gguf_is_complete", "llama3_rope_factors",
           "permute_qk", "shard_files", "tensor_jobs", "write_gguf"]
