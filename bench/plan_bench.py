"""Plan a synthetic 70B-shaped model (80 layers x 7 linears x 12 formats) at several budgets.

Prints a table (time, bytes vs budget, error, optimality gap) and writes
bench/results/plan_bench.json.   Run: python bench/plan_bench.py [--family gguf|int]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_quantizer.formats import default_candidates  # noqa: E402
from llm_quantizer.io import write_json  # noqa: E402
from llm_quantizer.plan import make_plan  # noqa: E402
from llm_quantizer.plan.synthetic import LLAMA_70B, make_measurements  # noqa: E402

BUDGETS = ("0.2", "0.25", "0.3", "3.5bpw", "4.5bpw", "5.5bpw", "40GB", "60GiB")


def run(family: str, seed: int) -> list[dict]:
    formats = default_candidates(family)
    measurements = make_measurements(LLAMA_70B, formats, seed=seed, name="synthetic-llama-70b")
    rows = []
    for spec in BUDGETS:
        t0 = time.perf_counter()
        plan = make_plan(measurements, spec, formats)
        t = plan.totals
        rows.append({"family": family, "budget": spec, "budget_bytes": t.budget_bytes,
                     "bytes": t.bytes, "fill": t.bytes / t.budget_bytes, "bpw": t.bpw,
                     "error": t.predicted_error, "lower_bound": t.lower_bound,
                     "dual_bound": t.dual_bound, "rel_gap": t.gap / max(t.predicted_error, 1e-300),
                     "optimal": t.optimal, "solve_s": t.solve_seconds,
                     "plan_s": time.perf_counter() - t0})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("gguf", "int", "both"), default="both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "plan_bench.json"))
    args = ap.parse_args(argv)
    families = ("gguf", "int") if args.family == "both" else (args.family,)
    rows = [r for fam in families for r in run(fam, args.seed)]
    print(f"{'family':6} {'budget':>7} {'plan s':>7} {'solve s':>7} {'bytes':>15} {'budget':>15} "
          f"{'fill':>8} {'bpw':>6} {'error':>11} {'gap':>9} opt")
    for r in rows:
        print(f"{r['family']:6} {r['budget']:>7} {r['plan_s']:7.3f} {r['solve_s']:7.3f} "
              f"{r['bytes']:15,d} {r['budget_bytes']:15,d} {r['fill']:8.5f} {r['bpw']:6.3f} "
              f"{r['error']:11.5g} {r['rel_gap']:9.2e} {'yes' if r['optimal'] else 'no'}")
    write_json(args.out, {"model": "synthetic llama-70b (80 layers, 7 linears, 12 formats)",
                          "items": 80 * 7 + 2, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
