"""Repetition prevention: a small grid of sampler settings, each measured twice on the quantized
model - the repetition rate of its generations, and its perplexity cost on the eval text.

Cost (``ppl_cost_pct``): the perplexity of the *penalized* next-token distribution (repeat /
presence / frequency penalties, DRY) at temperature 1 on the same eval windows, teacher-forced,
relative to the plain perplexity (:func:`sampler.penalized_scores`). Scoring penalties on
held-out text is honest about what they do: real text repeats words, and a penalty that pushes
them down shows up as lost likelihood. Temperature and truncation keep the model's ranking and
are not a repetition control: they are reported beside it - ``temp_cost_pct`` (the penalized
perplexity at the setting's temperature; greedy, a point mass, is left at 1) and ``kept_pct``
(the share of eval tokens top-k / top-p / min-p would keep; a dropped one would score infinity).

Choice, per target runtime (llama.cpp, Ollama, transformers: each can express a subset): among
the settings whose repetition rate is at most the original's (under the base setting) plus
``tolerance``, the least ``ppl_cost_pct``; ties go to more tokens kept, then to the smaller
temperature cost (so the base setting wins when it already reaches the target). When none gets
there, the one with the lowest repetition rate. Generation is the expensive part, so settings
are generated cheapest first and the search stops as soon as every target is settled.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .generations import PromptSet, generate_all, repetition_summary
from .sampler import SamplerSettings, penalized_scores

TARGETS = ("llama.cpp", "ollama", "transformers")
S = SamplerSettings
DEFAULT_GRID: tuple[SamplerSettings, ...] = (
    S(),                                                   # the base: greedy, nothing else
    S(repeat_penalty=1.1), S(repeat_penalty=1.2), S(repeat_penalty=1.3),
    S(presence_penalty=0.5), S(frequency_penalty=0.3),
    S(dry_multiplier=0.8),
    S(temperature=0.7, min_p=0.05), S(temperature=0.7, min_p=0.05, repeat_penalty=1.1),
    S(temperature=0.7, top_p=0.9, repeat_penalty=1.1), S(temperature=1.0, min_p=0.1),
    S(temperature=0.7, min_p=0.05, dry_multiplier=0.8),
)


class CostMeter:
    """A ``metrics.evaluate`` window hook: accumulates every candidate's penalized NLL."""

    def __init__(self, candidates: Sequence[SamplerSettings], first: int, max_windows: int | None = None):
        self.candidates, self.first, self.max_windows = list(candidates), first, max_windows
        self.nll = [[] for _ in self.candidates]
        self.nll_t = [[] for _ in self.candidates]
        self.kept = [[] for _ in self.candidates]
        self.plain: list[np.ndarray] = []

    @property
    def plain_ppl(self) -> float:
        """The unpenalized perplexity on the same tokens, computed the same way (the reference)."""
        return float(np.exp(np.concatenate(self.plain).mean())) if self.plain else float("nan")

    def __call__(self, w: int, ids, logits) -> None:
        if self.max_windows is not None and w >= self.max_windows:
            return
        ids = ids.tolist()
        self.plain.append(penalized_scores(logits, ids, self.first, SamplerSettings())[0].numpy())
        for i, c in enumerate(self.candidates):
            nll, nll_t, kept = penalized_scores(logits, ids, self.first, c)
            self.nll[i].append(nll.numpy())
            self.nll_t[i].append(nll_t.numpy())
            self.kept[i].append(kept.numpy())

    def results(self) -> list[dict]:
        def mean(parts):
            return float(np.concatenate(parts).mean()) if parts else float("nan")

        return [{"ppl": float(np.exp(mean(n))), "ppl_t": float(np.exp(mean(t))), "kept_pct": 100 * mean(k),
                 "tokens": int(sum(len(x) for x in n))} for n, t, k in zip(self.nll, self.nll_t, self.kept)]


def _cost_row(c: SamplerSettings, cost: dict, plain_ppl: float) -> dict:
    return {"label": c.label(), "settings": c.to_dict(), "targets": list(c.targets()), "repetition": None,
            "ppl": cost["ppl"], "ppl_cost_pct": 100 * (cost["ppl"] / plain_ppl - 1),
            "temp_cost_pct": 100 * (cost["ppl_t"] / plain_ppl - 1), "kept_pct": cost["kept_pct"]}


def _key(r: dict) -> tuple:
    return round(r["ppl_cost_pct"], 6), -r["kept_pct"], abs(r["temp_cost_pct"])


def choose(rows: Sequence[dict], target_rate: float, tolerance: float, target: str) -> dict:
    """The chosen row index for one target runtime (see the module docstring); rows not
    measured (``repetition`` None) are skipped."""
    ok = [i for i, r in enumerate(rows) if target in r["targets"] and r.get("repetition")]
    if not ok:
        return {"index": None, "reached_target": False}
    feasible = [i for i in ok if rows[i]["repetition"]["rate"] <= target_rate + tolerance]
    if feasible:
        best = min(feasible, key=lambda i: _key(rows[i]))
    else:
        best = min(ok, key=lambda i: (rows[i]["repetition"]["rate"], rows[i]["ppl_cost_pct"]))
    r = rows[best]
    return {"index": best, "label": r["label"], "reached_target": bool(feasible), "settings": r["settings"],
            "rate": r["repetition"]["rate"], "ppl_cost_pct": r["ppl_cost_pct"],
            "temp_cost_pct": r["temp_cost_pct"], "kept_pct": r["kept_pct"]}


def search(rt, ps: PromptSet, candidates: Sequence[SamplerSettings], costs: Sequence[dict], plain_ppl: float,
           original_rate: float, max_new_tokens: int, tolerance: float = 0.02, seed: int = 0,
           exhaustive: bool = False) -> dict:
    """Measure the grid on ``rt`` and choose per target. ``candidates[0]`` is the base setting:
    its row is the 'before'. Costs are known before any generation, so settings are generated in
    the order of the choice rule and the search stops once every target has a setting at the
    original's level (the first such is its choice); ``exhaustive`` measures the whole grid.
    Rows (generations kept as ids) come back in grid order; unmeasured ones have no repetition."""
    from tqdm.auto import tqdm

    rows = [_cost_row(c, cost, plain_ppl) for c, cost in zip(candidates, costs)]
    order = [0] + sorted(range(1, len(rows)), key=lambda i: _key(rows[i]))
    settled: set[str] = set()
    for i in tqdm(order, desc=f"sampler grid {getattr(rt, 'name', '')}", unit="setting", leave=False, disable=None):
        if settled == set(TARGETS) and not exhaustive:
            break
        gens = generate_all(rt, ps, candidates[i], max_new_tokens, seed)
        rows[i].update(repetition=repetition_summary(gens, ps.stop_ids), generations=gens)
        if rows[i]["repetition"]["rate"] <= original_rate + tolerance:
            settled |= set(rows[i]["targets"])
    chosen = {t: choose(rows, original_rate, tolerance, t) for t in TARGETS}
    return {"original_rate": original_rate, "tolerance": tolerance, "before": rows[0]["repetition"],
            "chosen": chosen, "measured": sum(r["repetition"] is not None for r in rows), "grid": rows}
