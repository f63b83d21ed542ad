"""Quantization backends. Importing this package registers the built-in ones."""
from . import awq, gptq  # noqa: F401  (register awq, gptq)
from . import gguf  # noqa: F401  (registers gguf, alias llamacpp)
from .registry import Artifact, Backend, backend_names, describe_backends, get_backend, register_backend

__all__ = ["Artifact", "Backend", "backend_names", "describe_backends", "get_backend", "register_backend"]
