"""Sampler settings and llama.cpp's sampler chain, in torch, runtime-independent.

The chain is llama.cpp's default (``common/sampling.cpp``): penalties -> DRY -> top-k -> top-p ->
min-p -> temperature -> draw. Penalties as ``llama_sampler_penalties``: over the last
``repeat_last_n`` tokens (prompt included), a seen token's logit is divided by ``repeat_penalty``
when positive (multiplied when not), then ``count * frequency + presence`` is subtracted.
DRY as ``llama_sampler_dry`` without sequence breakers (the exported llama-cli line says
``--dry-sequence-breaker none``): a token that would extend a repeat of ``n >= allowed_length``
tokens loses ``multiplier * base ** (n - allowed_length)``. Temperature 0 is greedy.

Every runtime generates through :func:`sample_next`, so a setting means the same thing for a
GGUF and an HF checkpoint, and :func:`penalized_scores` scores held-out text under exactly the
distribution that generation samples from.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import numpy as np
import torch

_FLOAT_MAX_LOG = 88.7228391


@dataclass(frozen=True)
class SamplerSettings:
    temperature: float = 0.0          # <= 0: greedy
    top_k: int = 0                    # <= 0: off
    top_p: float = 1.0                # 1: off
    min_p: float = 0.0                # 0: off
    repeat_penalty: float = 1.0       # 1: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_last_n: int = 64
    dry_multiplier: float = 0.0       # 0: off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_last_n: int = 64

    @classmethod
    def from_dict(cls, d: dict) -> "SamplerSettings":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            from ..errors import ConfigError
            raise ConfigError(f"unknown sampler setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def has_penalties(self) -> bool:
        return self.repeat_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def has_dry(self) -> bool:
        return self.dry_multiplier != 0.0 and self.dry_base >= 1.0 and self.dry_last_n != 0

    def targets(self) -> tuple[str, ...]:
        """Runtimes whose settings can express this exactly (transformers: no presence /
        frequency / DRY; Ollama: no DRY)."""
        out = ["llama.cpp"]
        if not self.has_dry:
            out.append("ollama")
            if self.presence_penalty == 0 and self.frequency_penalty == 0:
                out.append("transformers")
        return tuple(out)

    def label(self) -> str:
        parts = ["greedy" if self.greedy else f"T={self.temperature:g}"]
        parts += [f"top_k={self.top_k}"] if self.top_k > 0 else []
        parts += [f"top_p={self.top_p:g}"] if self.top_p < 1 else []
        parts += [f"min_p={self.min_p:g}"] if self.min_p > 0 else []
        parts += [f"rep={self.repeat_penalty:g}"] if self.repeat_penalty != 1 else []
        parts += [f"pres={self.presence_penalty:g}"] if self.presence_penalty else []
        parts += [f"freq={self.frequency_penalty:g}"] if self.frequency_penalty else []
        parts += [f"dry={self.dry_multiplier:g}/{self.dry_base:g}/{self.dry_allowed_length}"] if self.has_dry else []
        return " ".join(parts)


# -- penalties -----------------------------------------------------------------------------------
def _window(history: Sequence[int], last_n: int) -> list[int]:
    h = list(history)
    return h if last_n < 0 else h[len(h) - last_n:] if last_n else []


def dry_penalties(history: Sequence[int], s: SamplerSettings) -> dict[int, float]:
    """{token: logit penalty} of llama.cpp's DRY (no sequence breakers): Z-algorithm over the
    reversed window gives, for every earlier end position, how long the current suffix repeats."""
    if not s.has_dry:
        return {}
    r = _window(history, s.dry_last_n)[::-1]        # r[i] = i-th token from the end
    n = len(r)
    if n <= s.dry_allowed_length:
        return {}
    z = [0] * n
    lt = rt = 0
    for k in range(1, n):
        m = min(rt - k + 1, z[k - lt]) if k <= rt else 0
        while k + m < n and r[m] == r[k + m]:
            m += 1
        z[k] = m
        if m and k + m - 1 > rt:
            lt, rt = k, k + m - 1
    longest: dict[int, int] = {}
    for k in range(1, n):                            # suffix repeats ending k tokens back
        if z[k] >= s.dry_allowed_length:
            tok = r[k - 1]                           # ... followed there by this token
            longest[tok] = max(longest.get(tok, 0), z[k])
    max_exp = int(_FLOAT_MAX_LOG / math.log(s.dry_base)) if s.dry_base > 1.000001 else 0
    out = {}
    for tok, m in longest.items():
        e = m - s.dry_allowed_length
        e = min(e, max_exp) if max_exp > 0 else e
        out[tok] = s.dry_multiplier * s.dry_base ** e
    return out


def penalize(logits: torch.Tensor, history: Sequence[int], s: SamplerSettings) -> torch.Tensor:
    """Penalties then DRY on one row of logits [V] (a new tensor)."""
    out = logits.clone()
    if s.has_penalties and s.repeat_last_n != 0:
        toks, counts = np.unique(np.asarray(_window(history, s.repeat_last_n), dtype=np.int64), return_counts=True)
        if len(toks):
            idx = torch.from_numpy(toks)
            v = out[idx]
            v = torch.where(v <= 0, v * s.repeat_penalty, v / s.repeat_penalty)
            v -= torch.from_numpy(counts).to(v.dtype) * s.frequency_penalty + s.presence_penalty
            out[idx] = v
    dry = dry_penalties(history, s)
    if dry:
        idx = torch.tensor(list(dry), dtype=torch.long)
        out[idx] -= torch.tensor(list(dry.values()), dtype=out.dtype)
    return out


# -- truncation and sampling ---------------------------------------------------------------------
def truncate(logits: torch.Tensor, s: SamplerSettings) -> torch.Tensor:
    """top-k, top-p, min-p (on untempered probabilities, as llama.cpp), then temperature."""
    x = logits.clone()
    if s.top_k > 0 and s.top_k < x.numel():
        kth = torch.topk(x, s.top_k).values[-1]
        x[x < kth] = -math.inf
    if s.top_p < 1.0:
        p_sorted, order = torch.sort(torch.softmax(x.double(), -1), descending=True)
        before = torch.cumsum(p_sorted, 0) - p_sorted        # mass strictly before each token
        x[order[before >= s.top_p]] = -math.inf
    if s.min_p > 0.0:
        x[x < x.max() + math.log(s.min_p)] = -math.inf
    return x if s.greedy else x / s.temperature


def sample_next(logits: torch.Tensor, history: Sequence[int], s: SamplerSettings,
                rng: np.random.Generator) -> int:
    x = truncate(penalize(logits.float(), history, s), s)
    if s.greedy:
        return int(torch.argmax(x))
    p = torch.softmax(x.double(), -1).numpy()
    return int(rng.choice(len(p), p=p / p.sum()))


# -- scoring text under a setting ------------------------------------------------------------------
def penalized_scores(logits: torch.Tensor, ids: Sequence[int], first: int, s: SamplerSettings):
    """Teacher-forced scores of ``ids[first+1:]`` from ``logits[first:-1]`` ([T, V], one window)
    under ``s``: ``(nll [S], nll_t [S], kept [S])``, float64, float64, bool.

    ``nll``: the penalized distribution (penalties, DRY) at temperature 1 - what the repetition
    controls cost. ``nll_t``: the same at the setting's temperature (greedy: 1). Truncation is in
    neither (a truncated-away token would score infinity); ``kept`` says whether top-k / top-p /
    min-p would have kept the true token."""
    ids = list(ids)
    rows = logits[first:len(ids) - 1].float()
    if s.has_penalties or s.has_dry:
        rows = torch.stack([penalize(rows[i], ids[:first + i + 1], s) for i in range(len(rows))])
    target = torch.tensor(ids[first + 1:], dtype=torch.long)[:, None]
    nll = -torch.log_softmax(rows.double(), -1).gather(1, target)[:, 0]
    nll_t = nll
    if not s.greedy and s.temperature != 1:
        nll_t = -torch.log_softmax(rows.double() / s.temperature, -1).gather(1, target)[:, 0]
    return nll, nll_t, _kept(rows, target[:, 0], s)


def _kept(rows: torch.Tensor, target: torch.Tensor, s: SamplerSettings) -> torch.Tensor:
    kept = torch.ones(len(target), dtype=torch.bool)
    true = rows.gather(1, target[:, None])
    if s.top_k > 0:
        kept &= (rows > true).sum(1) < s.top_k
    if s.top_p < 1.0:
        p = torch.softmax(rows.double(), -1)
        above = torch.where(rows > true, p, torch.zeros_like(p)).sum(1)
        kept &= above < s.top_p
    if s.min_p > 0.0:
        kept &= true[:, 0] >= rows.max(1).values + math.log(s.min_p)
    return kept
