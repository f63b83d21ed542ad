"""GGUF block encoders (torch, byte-exact with llama.cpp) and Hessian error feedback."""
from .base import CODECS, Codec, cat_params, get_codec, has_codec, register

__all__ = ["CODECS", "Codec", "cat_params", "get_codec", "has_codec", "register"]
