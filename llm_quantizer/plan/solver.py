"""Multiple-choice knapsack: one option (bytes, error) per item, least total error within a budget.

1. Per item, the lower convex hull of its (bytes, error) options.
2. Lagrangian relaxation: the optimal multiplier lambda* is the slope of the hull segment at
   which the budget runs out when all segments are taken steepest first (the exact root of the
   bisection on lambda, found by sorting the breakpoints). L(lambda*) is the LP (dual) bound.
3. Primal: the hull prefix, then a greedy fill of the slack with the true options.
4. Gap closing: an option whose reduced cost exceeds the gap cannot be in a better solution
   (Lagrangian variable fixing); the items left with several options are solved by a DP on a
   byte grid (exact when the grid is the gcd of the increments), which also gives a tighter
   lower bound. ``Solution.gap`` = total error - best proven lower bound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import BudgetError
from .dp import grid_dp

_PAD_W = np.iinfo(np.int64).max // 4


@dataclass(frozen=True)
class Solution:
    choice: np.ndarray      # option index per item
    total_bytes: int
    total_error: float
    lp_bound: float         # Lagrangian dual = LP relaxation bound
    lower_bound: float      # best proven lower bound (>= lp_bound)
    lam: float              # lambda*: error per byte at the margin
    optimal: bool           # proven optimal (gap within float tolerance)
    n_ambiguous: int        # items the DP had to decide
    cell: int               # DP grid cell in bytes (0: no DP needed)
    seconds: float

    @property
    def gap(self) -> float:
        return max(0.0, self.total_error - self.lower_bound)


def solve(weights: Sequence[Sequence[int]], errors: Sequence[Sequence[float]], budget: int,
          max_cells: int | None = None) -> Solution:
    """Pick one option per item minimizing sum(errors) with sum(weights) <= budget."""
    t0 = time.perf_counter()
    W, E = _pad(weights, errors)
    if int(W.min(axis=1).sum()) > budget:
        raise BudgetError(f"the lightest options need {int(W.min(axis=1).sum())} bytes, "
                          f"more than the budget of {int(budget)}")
    hulls = [_lower_hull(w, e) for w, e in zip(W, E)]
    lam, pos = _lagrangian(W, E, hulls, budget)
    choice = np.array([h[p] for h, p in zip(hulls, pos)])
    lp = _dual(W, E, lam, budget)
    choice = _improve(W, E, choice, budget)
    if lam == 0.0:                                  # every item at its best: optimal
        return _result(W, E, choice, lp, lp, lam, 0, 0, t0)
    choice, lower, n_amb, cell = _close_gap(W, E, choice, lam, lp, budget, max_cells)
    return _result(W, E, choice, lp, max(lp, lower), lam, n_amb, cell, t0)


def _pad(weights, errors) -> tuple[np.ndarray, np.ndarray]:
    if len(weights) != len(errors) or not len(weights):
        raise ValueError("weights and errors need one non-empty option list per item")
    m = max(len(w) for w in weights)
    W = np.full((len(weights), m), _PAD_W, dtype=np.int64)
    E = np.full((len(weights), m), np.inf)
    for i, (w, e) in enumerate(zip(weights, errors)):
        if len(w) != len(e) or not len(w):
            raise ValueError(f"item {i}: weights and errors differ in length or are empty")
        W[i, : len(w)], E[i, : len(e)] = w, e
    if (W < 0).any() or not np.isfinite(E[W < _PAD_W]).all():
        raise ValueError("weights must be >= 0 and errors finite")
    return W, E


def _lower_hull(w: np.ndarray, e: np.ndarray) -> list[int]:
    """Option indices on the lower-left convex hull, by increasing bytes, decreasing error."""
    order = np.lexsort((e, w))
    pareto = []
    for j in order:
        if w[j] == _PAD_W:
            break
        if not pareto or e[j] < e[pareto[-1]]:
            pareto.append(int(j))
    hull: list[int] = []
    for j in pareto:
        while len(hull) >= 2 and _cross(w, e, hull[-2], hull[-1], j) <= 0:
            hull.pop()
        hull.append(j)
    return hull


def _cross(w, e, o, a, b) -> float:
    return float(w[a] - w[o]) * float(e[b] - e[o]) - float(e[a] - e[o]) * float(w[b] - w[o])


def _lagrangian(W, E, hulls, budget) -> tuple[float, np.ndarray]:
    """Take hull segments steepest first; returns (lambda*, hull position per item)."""
    item, dw, de = [], [], []
    for i, h in enumerate(hulls):
        item += [i] * (len(h) - 1)
        dw += [W[i, b] - W[i, a] for a, b in zip(h, h[1:])]
        de += [E[i, a] - E[i, b] for a, b in zip(h, h[1:])]
    item, dw, de = np.array(item, dtype=np.int64), np.array(dw, np.int64), np.array(de, float)
    slope = de / dw
    order = np.argsort(-slope, kind="stable")           # within an item slopes already fall
    base = int(sum(W[i, h[0]] for i, h in enumerate(hulls)))
    k = int(np.searchsorted(np.cumsum(dw[order]) + base, budget, side="right"))
    pos = np.bincount(item[order[:k]], minlength=len(hulls))
    lam = float(slope[order[k]]) if k < len(order) else 0.0
    return lam, pos


def _dual(W, E, lam, budget) -> float:
    """L(lambda) = sum_i min_j (e_ij + lambda w_ij) - lambda B: a lower bound for any lambda >= 0."""
    return float(np.min(E + lam * W, axis=1).sum() - lam * budget)


def _improve(W, E, choice, budget) -> np.ndarray:
    """Greedy fill: repeatedly take the single move that lowers error most and still fits."""
    choice = choice.copy()
    rows = np.arange(len(choice))
    while True:
        slack = budget - int(W[rows, choice].sum())
        gain = E[rows, choice][:, None] - E
        gain[W - W[rows, choice][:, None] > slack] = -np.inf
        i, j = np.unravel_index(np.argmax(gain), gain.shape)
        if gain[i, j] <= 1e-15 * max(1.0, abs(E[i, j])):
            return choice
        choice[i] = j


def _close_gap(W, E, choice, lam, lp, budget, max_cells, rounds: int = 3):
    """Fix options by reduced cost, solve the ambiguous items on a byte grid; a better primal
    shrinks the gap, so repeat (fewer ambiguous items, finer grid) while it helps."""
    lower, n_amb, cell = -np.inf, 0, 0
    for _ in range(rounds):
        better, lower, n_amb, cell, exact = _dp_round(W, E, choice, lam, lp, budget, max_cells)
        if better is None or exact:
            return (choice if better is None else better), lower, n_amb, cell
        choice = better
    return choice, lower, n_amb, cell


def _dp_round(W, E, choice, lam, lp, budget, max_cells):
    """One reduction + grid DP. Returns (improved choice or None, lower bound, #ambiguous,
    cell, proven)."""
    rows = np.arange(len(choice))
    incumbent = float(E[rows, choice].sum())
    tol = 1e-9 * max(1.0, abs(incumbent))
    reduced = (E + lam * W) - np.min(E + lam * W, axis=1, keepdims=True)
    alive = reduced <= (incumbent - lp) + tol
    alive[rows, choice] = True
    amb = np.flatnonzero(alive.sum(axis=1) > 1)
    if incumbent - lp <= tol or not len(amb):
        return None, incumbent, len(amb), 0, True
    fixed = np.setdiff1d(rows, amb)
    opts = [np.flatnonzero(alive[i]) for i in amb]
    base = [int(W[i, o].min()) for i, o in zip(amb, opts)]
    cap = budget - int(W[fixed, choice[fixed]].sum()) - sum(base)
    res = grid_dp([W[i, o] - b for i, o, b in zip(amb, opts, base)],
                  [E[i, o] for i, o in zip(amb, opts)], cap, max_cells)
    fixed_err = float(E[fixed, choice[fixed]].sum())
    lower = min(fixed_err + res.lower_bound, incumbent)
    if not fixed_err + res.error < incumbent - tol:
        return None, lower, len(amb), res.cell, res.exact
    better = choice.copy()
    better[amb] = [o[j] for o, j in zip(opts, res.choice)]
    return _improve(W, E, better, budget), lower, len(amb), res.cell, res.exact


def _result(W, E, choice, lp, lower, lam, n_amb, cell, t0) -> Solution:
    rows = np.arange(len(choice))
    total_w, total_e = int(W[rows, choice].sum()), float(E[rows, choice].sum())
    lower = min(lower, total_e)
    optimal = total_e - lower <= 1e-9 * max(1.0, abs(total_e))
    return Solution(choice, total_w, total_e, lp, lower, lam, optimal, n_amb, cell,
                    time.perf_counter() - t0)
