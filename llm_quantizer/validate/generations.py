"""Sample generations for a fixed prompt set and their repetition statistics.

Prompts go through the original's chat template when it has one (``render_prompt``); every model
gets the same prompt ids, the same seeds and the same stop tokens. The repetition rate of a set of
generations is the mean over prompts of the repeated 3-gram share of the generated token ids
(seq-rep-3, ``calibrate.repetition``); distinct-2 and the longest repeated span come with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..calibrate.generate import render_prompt
from ..calibrate.repetition import repetition_stats
from .sampler import SamplerSettings

VALIDATION_PROMPTS: tuple[str, ...] = (
    "Explain how a refrigerator keeps food cold.",
    "Write a short story about a fox who learns to read.",
    "List ten tips for learning a new language, with one sentence each.",
    "Describe the water cycle to a ten-year-old.",
    "Write a Python function that returns the prime numbers below n, and explain it.",
    "What are the main differences between cats and dogs as pets?",
)


@dataclass
class PromptSet:
    prompts: list[str]
    ids: list[list[int]]
    stop_ids: frozenset[int]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def max_len(self) -> int:
        return max(len(i) for i in self.ids)


def stop_token_ids(tokenizer, config=None) -> frozenset[int]:
    """EOS of the tokenizer and of the model config (an int or a list)."""
    out = {tokenizer.eos_token_id}
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    out |= set(eos) if isinstance(eos, (list, tuple)) else {eos}
    return frozenset(int(t) for t in out if t is not None)


def prompt_set(tokenizer, prompts: Sequence[str] | None = None, config=None) -> PromptSet:
    prompts = list(prompts or VALIDATION_PROMPTS)
    return PromptSet(prompts, [render_prompt(tokenizer, p).ids for p in prompts], stop_token_ids(tokenizer, config))


def generate_all(rt, ps: PromptSet, settings: SamplerSettings, max_new_tokens: int, seed: int = 0) -> list[list[int]]:
    """One generation per prompt; prompt ``i`` uses seed ``seed + i`` for every model."""
    return [rt.generate(ids, max_new_tokens, settings, seed=seed + i, stop_ids=ps.stop_ids)
            for i, ids in enumerate(ps.ids)]


def _body(gen: Sequence[int], stop: frozenset[int]) -> list[int]:
    return list(gen[:-1]) if gen and gen[-1] in stop else list(gen)


def repetition_summary(gens: Sequence[Sequence[int]], stop: frozenset[int] = frozenset(), n: int = 3) -> dict:
    """Mean repeated n-gram share over the generations (``rate``) and companions."""
    stats = [repetition_stats(_body(g, stop), n) for g in gens]
    if not stats:
        return {"rate": 0.0, "distinct_2": 0.0, "longest_span_mean": 0.0, "longest_span_max": 0, "tokens_mean": 0.0,
                "n": n}
    return {"rate": float(np.mean([s.repeated_ngram_share for s in stats])),
            "distinct_2": float(np.mean([s.distinct_2 for s in stats])),
            "longest_span_mean": float(np.mean([s.longest_repeated_span for s in stats])),
            "longest_span_max": int(max(s.longest_repeated_span for s in stats)),
            "tokens_mean": float(np.mean([s.tokens for s in stats])),
            "per_prompt": [round(s.repeated_ngram_share, 4) for s in stats], "n": n}


def side_by_side(tokenizer, ps: PromptSet, original: Sequence[Sequence[int]],
                 **others: Sequence[Sequence[int]]) -> list[dict]:
    """Per prompt: the prompt and each model's decoded generation (stop token dropped)."""
    def text(g):
        return tokenizer.decode(_body(g, ps.stop_ids), skip_special_tokens=False)

    rows = []
    for i, p in enumerate(ps.prompts):
        row = {"prompt": p, "original": text(original[i])}
        row.update({name: text(g[i]) for name, g in others.items()})
        rows.append(row)
    return rows
