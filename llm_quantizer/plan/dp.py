"""Exact / grid dynamic programming for the multiple-choice knapsack on a few items.

Each item offers options with byte *increments* ``d`` (over the item's lightest option) and
errors ``e``; pick one option per item so the increments fit in ``cap`` bytes at least error.
Increments are counted in grid cells of ``cell`` bytes: rounded up the answer is feasible
(a primal solution), rounded down it is a relaxation (a lower bound). When every increment is
a multiple of ``cell`` both coincide and the answer is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridDP:
    choice: list[int]      # option index per item (into that item's arrays)
    error: float           # sum of the chosen errors (rounded-up grid: feasible)
    lower_bound: float     # optimum of the rounded-down grid (a valid lower bound), or -inf
    cell: int              # grid cell in bytes
    exact: bool            # every increment is a multiple of cell: error is optimal


def choose_cell(incs: list[np.ndarray], cap: int, max_cells: int) -> tuple[int, bool]:
    """The grid cell: the gcd of all increments when that keeps the grid small, else coarser."""
    g = 0
    for d in incs:
        g = math.gcd(g, *map(int, d))
    g = max(g, 1)
    if cap // g <= max_cells:
        return g, True
    cell = max(1, math.ceil(cap / max_cells))
    return cell, all(not np.any(d % cell) for d in incs)


def default_max_cells(incs: list[np.ndarray], work: float = 3e8, memory: float = 6e7) -> int:
    """Grid size for about ``work`` cell updates and ``memory`` bytes of backtracking table."""
    n_opts = sum(len(d) for d in incs)
    return int(max(1 << 12, min(work / max(1, n_opts), memory / max(1, len(incs)), 1 << 21)))


def grid_dp(incs: list[np.ndarray], errs: list[np.ndarray], cap: int,
            max_cells: int | None = None) -> GridDP:
    """Solve min sum(e) s.t. sum(d) <= cap, one option per item, on a byte grid."""
    max_cells = max_cells or default_max_cells(incs)
    cell, exact = choose_cell(incs, cap, max_cells)
    n_cells = cap // cell
    up = [-(-d // cell) for d in incs]          # ceil: a feasible answer
    value, choice = _run(up, errs, n_cells, keep_choice=True)
    lower = value if exact else -np.inf
    smallest = min((int(x) for d in incs for x in d if x > 0), default=0)
    if not exact and len(incs) * cell < smallest:   # else the relaxation is too loose to help
        lower, _ = _run([d // cell for d in incs], errs, n_cells, keep_choice=False)
    return GridDP(_backtrack(choice, up, n_cells), value, lower, cell, exact)


def _run(incs: list[np.ndarray], errs: list[np.ndarray], n_cells: int, keep_choice: bool):
    """dp[c] = least error of the items so far using at most c cells."""
    if max(len(e) for e in errs) > 127:
        raise ValueError("at most 127 options per item")
    dp = np.zeros(n_cells + 1)
    cols = np.arange(n_cells + 1)
    choices = []
    for d, e in zip(incs, errs):
        cand = np.full((len(d), n_cells + 1), np.inf)
        for j, (dj, ej) in enumerate(zip(d.tolist(), e.tolist())):
            if dj <= n_cells:
                cand[j, dj:] = dp[: n_cells + 1 - dj] + ej
        ch = np.argmin(cand, axis=0)
        dp = cand[ch, cols]
        choices.append(ch.astype(np.int8) if keep_choice else None)
    return float(dp[n_cells]), choices


def _backtrack(choices: list[np.ndarray], incs: list[np.ndarray], n_cells: int) -> list[int]:
    c, picked = n_cells, []
    for ch, d in zip(reversed(choices), reversed(incs)):
        j = int(ch[c])
        picked.append(j)
        c -= int(d[j])
    return picked[::-1]
