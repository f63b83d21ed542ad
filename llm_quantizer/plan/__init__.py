"""Budget + measurements -> per-tensor format plan, and its compiled forms for the backends."""
from .budget import Budget, from_memory_limit, human_bytes
from .compile import LlamaQuantizeSpec, to_compressed_tensors, to_gptqmodel, to_llama_quantize
from .output import plot_plan, write_plan
from .planner import estimate_overhead, make_plan
from .solver import Solution, solve
from .types import Constraints, Plan, PlanTotals, TensorPlan

__all__ = ["Budget", "Constraints", "LlamaQuantizeSpec", "Plan", "PlanTotals", "Solution",
           "TensorPlan", "estimate_overhead", "from_memory_limit", "human_bytes", "make_plan",
           "plot_plan", "solve", "to_compressed_tensors", "to_gptqmodel", "to_llama_quantize",
           "write_plan"]
