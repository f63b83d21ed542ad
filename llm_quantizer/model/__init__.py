"""Model sources and per-architecture layer maps."""
from .archs import LINEAR_KINDS, LayerMap, get_layer_map, supported
from .resolve import EXAMPLES, open_source
from .source import ModelSource, TensorInfo

__all__ = ["LINEAR_KINDS", "LayerMap", "get_layer_map", "supported", "EXAMPLES", "open_source",
           "ModelSource", "TensorInfo"]
