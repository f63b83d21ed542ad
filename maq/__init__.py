"""``from maq import MaqQuantizationConfig, MaqQuantizer`` — llm-quantizer's MAQ drop-in."""
from llm_quantizer.maq import MaqQuantizationConfig, MaqQuantizer

__all__ = ["MaqQuantizationConfig", "MaqQuantizer"]
