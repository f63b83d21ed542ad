"""Int quantization of a whole model inside the streaming engine: RTN, GPTQ and AWQ passes,
written as a compressed-tensors ``pack-quantized`` checkpoint with per-layer bits."""
from .awq_pass import AWQOptions, AWQPass, awq_groups, search_group_scales
from .ct_writer import CompressedTensorsWriter, checkpoint_config, pack_linear
from .gptq_pass import GPTQOptions, GPTQPass
from .passes import QuantPass, RTNPass
from .run import METHODS, IntQuantResult, quantize_int
from .schemes import QuantizedLinear, args_for_format, ct_config, layer_linear_names, plan_formats, resolve_schemes

__all__ = ["AWQOptions", "AWQPass", "CompressedTensorsWriter", "GPTQOptions", "GPTQPass", "IntQuantResult",
           "METHODS", "QuantPass", "QuantizedLinear", "RTNPass", "args_for_format", "awq_groups",
           "checkpoint_config", "ct_config", "layer_linear_names", "pack_linear", "plan_formats",
           "quantize_int", "resolve_schemes", "search_group_scales"]
