"""Validation: perplexity, KL divergence to the original, generations, repetition rate, and
repetition-safe sampler settings for llama.cpp, Ollama and transformers.

``validate(original, artifacts, eval_files, out_dir)`` is the entry point; the runtimes
(:class:`HFRuntime`, :class:`LlamaCppRuntime`) and the sampler are usable on their own.
"""
from .generations import VALIDATION_PROMPTS, PromptSet, generate_all, prompt_set, repetition_summary
from .metrics import BaseLogprobs, EvalWindows, compute_base, eval_windows, evaluate, summarize
from .runtime import HFRuntime, LlamaCppRuntime, Runtime, artifact_bytes, open_runtime
from .run import ValidateOptions, comparison, format_table, validate, validate_many
from .sampler import SamplerSettings, penalize, penalized_scores, sample_next
from .search import DEFAULT_GRID, CostMeter, choose, search

__all__ = ["VALIDATION_PROMPTS", "PromptSet", "generate_all", "prompt_set", "repetition_summary", "BaseLogprobs",
           "EvalWindows", "compute_base", "eval_windows", "evaluate", "summarize", "HFRuntime", "LlamaCppRuntime",
           "Runtime", "artifact_bytes", "open_runtime", "ValidateOptions", "comparison", "format_table", "validate",
           "validate_many", "SamplerSettings", "penalize", "penalized_scores", "sample_next", "DEFAULT_GRID",
           "CostMeter", "choose", "search"]
