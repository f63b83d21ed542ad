"""A drop-in for MAQ (``MaqQuantizationConfig``, ``MaqQuantizer``) over llm-quantizer's engine,
GPTQ/AWQ passes and compressed-tensors writer."""
from .facade import MaqQuantizationConfig, MaqQuantizer

__all__ = ["MaqQuantizationConfig", "MaqQuantizer"]
