"""Exact / grid dynamic programming for the multiple-choice knapsack on a few items.

Each item offers options with byte *increments* ``d`` (over the item's lightest option) and
errors ``e``; pick one option per item so the increments fit in ``cap`` bytes at least error.
Increments are counted in grid cells of ``cell`` bytes, rounded to the nearest cell, so a
selection's grid total is within ``k / 2`` cells of its true total (k items). Hence:
* the DP optimum at ``cap / cell + k / 2`` cells is a valid lower bound (a relaxation);
* every selection ending at ``<= cap / cell - k / 2`` cells truly fits, so back-tracking the
  end cells in between and keeping the best one that fits in true bytes gives a primal.
When the cell is the gcd of the increments the grid is exact and both coincide.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridDP:
    choice: list[int]      # option index per item (into that item's arrays)
    error: float           # sum of the chosen errors (a feasible selection)
    lower_bound: float     # valid lower bound on the optimum
    cell: int              # grid cell in bytes
    exact: bool            # the grid is exact: error is optimal


def default_max_cells(incs: list[np.ndarray], work: float = 1.5e8, memory: float = 4e7) -> int:
    """Grid size for about ``work`` cell updates and ``memory`` bytes of backtracking table."""
    n_opts = sum(len(d) for d in incs)
    return int(max(1 << 12, min(work / max(1, n_opts), memory / max(1, len(incs)), 1 << 20)))


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


def grid_dp(incs: list[np.ndarray], errs: list[np.ndarray], cap: int,
            max_cells: int | None = None) -> GridDP:
    """Solve min sum(e) s.t. sum(d) <= cap, one option per item, on a byte grid."""
    if max(len(e) for e in errs) > 127:
        raise ValueError("at most 127 options per item")
    cell, exact = choose_cell(incs, cap, max_cells or default_max_cells(incs))
    n_cells, slack = cap // cell, (0 if exact else math.ceil(len(incs) / 2))
    grid = [np.rint(d / cell).astype(np.int64) for d in incs]
    dp, choices = _run(grid, errs, n_cells + slack)
    ends = np.arange(max(0, n_cells - slack), n_cells + slack + 1)
    picks, true_bytes = _backtrack(choices, grid, incs, ends)
    ok = np.flatnonzero(true_bytes <= cap)
    if not len(ok):                             # cannot happen when n_cells >= slack
        return GridDP([int(np.argmin(d)) for d in incs], float(sum(e[np.argmin(d)] for d, e in zip(incs, errs))),
                      -np.inf, cell, False)
    best = ok[np.argmin(dp[ends[ok]])]
    choice = [int(p[best]) for p in picks]
    error = float(sum(e[j] for e, j in zip(errs, choice)))
    return GridDP(choice, error, float(dp[n_cells + slack]), cell, exact)


def _run(incs: list[np.ndarray], errs: list[np.ndarray], n_cells: int):
    """dp[c] = least error of the items so far using at most c cells; choices per item."""
    dp = np.zeros(n_cells + 1)
    choices = []
    for d, e in zip(incs, errs):
        new = np.full(n_cells + 1, np.inf)
        ch = np.zeros(n_cells + 1, dtype=np.int8)
        for j in np.argsort(e, kind="stable"):  # best error first: ties keep the better option
            dj = int(d[j])
            if dj > n_cells:
                continue
            cand = dp[: n_cells + 1 - dj] + e[j]
            better = cand < new[dj:]
            np.minimum(new[dj:], cand, out=new[dj:])
            ch[dj:][better] = j
        dp = new
        choices.append(ch)
    return dp, choices


def _backtrack(choices, grid, incs, ends: np.ndarray):
    """Back-track every end cell at once -> (picks per item, true bytes per end cell)."""
    c = ends.copy()
    true_bytes = np.zeros(len(ends), dtype=np.int64)
    picks = []
    for ch, g, d in zip(reversed(choices), reversed(grid), reversed(incs)):
        j = ch[c].astype(np.int64)
        picks.append(j)
        true_bytes += d[j]
        c = c - g[j]
    return picks[::-1], true_bytes
