"""Multiple-choice knapsack: exact against brute force, bounds, speed on a 70B-sized instance."""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from llm_quantizer.errors import BudgetError
from llm_quantizer.plan.solver import _lower_hull, solve


def brute_force(weights, errors, budget) -> float:
    best = np.inf
    for pick in itertools.product(*[range(len(w)) for w in weights]):
        if sum(w[j] for w, j in zip(weights, pick)) <= budget:
            best = min(best, sum(e[j] for e, j in zip(errors, pick)))
    return best


def greedy(weights, errors, budget) -> float:
    """Best error reduction per byte first, from every item's lightest option."""
    pick = [int(np.argmin(w)) for w in weights]
    used = sum(w[j] for w, j in zip(weights, pick))
    while True:
        moves = [((errors[i][pick[i]] - errors[i][j]) / max(weights[i][j] - weights[i][pick[i]], 1e-9), i, j)
                 for i in range(len(weights)) for j in range(len(weights[i]))
                 if errors[i][j] < errors[i][pick[i]] and used - weights[i][pick[i]] + weights[i][j] <= budget]
        if not moves:
            return sum(e[j] for e, j in zip(errors, pick))
        _, i, j = max(moves)
        used += weights[i][j] - weights[i][pick[i]]
        pick[i] = j


def test_beats_greedy_on_a_constructed_instance():
    # A: +6 bytes saves 7 (1.17/byte), B: +10 bytes saves 10 (1.0/byte); budget 10.
    # Greedy takes A and then B no longer fits (error 10); the optimum is B alone (error 7).
    weights, errors = [[0, 6], [0, 10]], [[7.0, 0.0], [10.0, 0.0]]
    assert greedy(weights, errors, 10) == 10.0
    sol = solve(weights, errors, 10)
    assert sol.total_error == 7.0 and list(sol.choice) == [0, 1] and sol.optimal
    assert sol.lp_bound <= 7.0


def test_random_small_instances_match_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(150):
        n = int(rng.integers(1, 6))
        weights = [list(rng.integers(0, 60, size=rng.integers(1, 5))) for _ in range(n)]
        errors = [list(rng.random(len(w)) * 10) for w in weights]
        budget = int(sum(min(w) for w in weights) + rng.integers(0, 80))
        sol, best = solve(weights, errors, budget), brute_force(weights, errors, budget)
        assert sol.total_bytes <= budget
        assert sol.total_error == pytest.approx(best, abs=1e-9) and sol.optimal
        assert sol.lp_bound <= sol.lower_bound + 1e-9 <= best + 2e-9


def test_coarse_grid_stays_feasible_with_valid_bounds():
    rng = np.random.default_rng(1)
    for _ in range(80):
        n = int(rng.integers(2, 6))
        weights = [list(rng.integers(1000, 60000, size=rng.integers(1, 5))) for _ in range(n)]
        errors = [list(rng.random(len(w)) * 10) for w in weights]
        budget = int(sum(min(w) for w in weights) + rng.integers(0, 80000))
        sol, best = solve(weights, errors, budget, max_cells=50), brute_force(weights, errors, budget)
        assert sol.total_bytes <= budget and sol.total_error >= best - 1e-9
        assert sol.lower_bound <= best + 1e-9
        assert not sol.optimal or sol.total_error == pytest.approx(best)


def test_lower_hull_drops_dominated_and_concave_points():
    w = np.array([0, 10, 5, 20, 12, 30])
    e = np.array([10.0, 4.0, 9.0, 1.0, 6.0, 1.0])
    # (5, 9) lies above the chord (0,10)-(10,4); (12, 6) is dominated by (10, 4); (30, 1) by (20, 1)
    assert _lower_hull(w, e) == [0, 1, 3]


def test_budget_edges():
    with pytest.raises(BudgetError):
        solve([[5, 6], [5]], [[1.0, 0.0], [0.0]], 9)
    sol = solve([[1, 2], [1, 3]], [[2.0, 1.0], [5.0, 0.0]], 100)      # everything fits
    assert list(sol.choice) == [1, 1] and sol.lam == 0.0 and sol.optimal


def test_70b_sized_instance_is_fast_and_near_optimal():
    rng = np.random.default_rng(2)
    bits = np.array([2.31, 2.5, 3.06, 3.44, 3.44, 4.25, 4.5, 5.5, 6.56, 8.5, 16.0, 2.06])
    sizes = [8192 * 8192, 1024 * 8192, 1024 * 8192, 8192 * 8192] + [28672 * 8192] * 3
    weights, errors = [], []
    for i in range(80 * 7):
        numel = sizes[i % 7]
        weights.append((numel * bits / 8).astype(np.int64))
        errors.append(numel * 2.0 ** (-2 * bits) * rng.uniform(0.5, 2.0, size=len(bits)))
    budget = int(sum(w[6] for w in weights))                          # ~4.5 bpw
    t0 = time.perf_counter()
    sol = solve(weights, errors, budget)
    assert time.perf_counter() - t0 < 2.0 * 2.5                       # loose: ~0.1 s here
    assert sol.total_bytes <= budget and sol.total_bytes > 0.999 * budget
    assert sol.lp_bound <= sol.lower_bound <= sol.total_error
    assert sol.gap <= 1e-3 * sol.total_error
    assert sol.lam > 0
