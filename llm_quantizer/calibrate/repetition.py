"""Repetition statistics of a token sequence or a text.

Shared by calibration filtering (generate.py) and the validation stage. Definitions:

- ``repeated_ngram_share`` (seq-rep-n, Welleck et al. 2019): the share of the sequence's n-grams
  that repeat an earlier one, ``1 - unique n-grams / n-grams``.
- ``distinct_n``: ``unique n-grams / n-grams``.
- ``longest_repeated_span``: length of the longest contiguous span that occurs at least twice
  (the two occurrences may overlap: ``a a a a`` has a repeated span of 3).

A text is split on whitespace; pass token ids for statistics that do not depend on the
language's use of spaces. Sequences too short to hold one n-gram score 0.0 on both n-gram stats.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Hashable, Sequence

import numpy as np


@dataclass(frozen=True)
class RepetitionStats:
    tokens: int
    n: int                        # n of repeated_ngram_share
    repeated_ngram_share: float
    distinct_1: float
    distinct_2: float
    longest_repeated_span: int

    def to_dict(self) -> dict:
        return asdict(self)


def units(seq: str | Sequence[Hashable]) -> list:
    """Whitespace words of a text, or the items of a sequence (tensors and arrays as lists)."""
    if isinstance(seq, str):
        return seq.split()
    if hasattr(seq, "tolist"):
        return list(seq.tolist())
    return list(seq)


def ngrams(seq: Sequence[Hashable], n: int) -> list[tuple]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(seq: str | Sequence[Hashable], n: int) -> float:
    grams = ngrams(units(seq), n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_share(seq: str | Sequence[Hashable], n: int = 3) -> float:
    grams = ngrams(units(seq), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def longest_repeated_span(seq: str | Sequence[Hashable]) -> int:
    """Compare the sequence with itself shifted by every offset; the longest run of equal
    positions is the longest repeated span. O(n^2) element comparisons, vectorized per offset."""
    a = _as_int_array(units(seq))
    best = 0
    for shift in range(1, len(a)):
        if len(a) - shift <= best:
            break
        best = max(best, _longest_true_run(a[shift:] == a[:-shift]))
    return best


def repetition_stats(seq: str | Sequence[Hashable], n: int = 3) -> RepetitionStats:
    u = units(seq)
    return RepetitionStats(tokens=len(u), n=n, repeated_ngram_share=repeated_ngram_share(u, n),
                           distinct_1=distinct_n(u, 1), distinct_2=distinct_n(u, 2),
                           longest_repeated_span=longest_repeated_span(u))


def jaccard(a: set, b: set) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def _as_int_array(items: list) -> np.ndarray:
    ids: dict = {}
    return np.fromiter((ids.setdefault(x, len(ids)) for x in items), dtype=np.int64, count=len(items))


def _longest_true_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())
