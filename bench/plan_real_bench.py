"""Plan real models (smollm2-135m, gemma3-270m) from real measurements at several bpw budgets.

For each model and format family (gguf: `measure --backend gguf`, int: `measure --backend gptq`)
the model is calibrated (8 x 256 tokens) and measured once; the outputs are cached under
bench/results/<model>-<family>/ so reruns skip straight to planning. Then the planner is run at
2.5 ... 6.0 bpw with the same constraints the API builds (``llm_quantizer.api.plan``); the int
family once per ``--int-embeddings`` policy (auto: embeddings stay BF16 while the budget allows,
quantize: the knapsack decides). Budgets below the achievable minimum record the planner's
one-line BudgetError.

Prints a table and writes bench/results/plan_real_bench.json.
Run: python bench/plan_real_bench.py [--models ...] [--families gguf int] [--cal-samples 8]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_quantizer.config import PlanOptions  # noqa: E402
from llm_quantizer.errors import BudgetError  # noqa: E402
from llm_quantizer.io import read_json, write_json  # noqa: E402
from llm_quantizer.plan import Constraints, make_plan  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CALIB_TEXT = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "wiki_en_calib.txt")
MODELS = ("smollm2-135m", "gemma3-270m")
FAMILIES = {"gguf": "gguf", "int": "gptq"}          # family -> measure backend
BUDGETS_BPW = (2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0)


def _cli() -> list[str]:
    exe = shutil.which("llm-quantizer")
    return [exe] if exe else [sys.executable, "-m", "llm_quantizer"]


def measurements_dir(model: str, family: str) -> Path:
    return RESULTS / f"{model}-{family}"


def ensure_measurements(model: str, family: str, samples: int, seq_len: int, data: str) -> tuple[dict, float]:
    """measurements.json for (model, family), measured once and cached. Returns (dict, seconds spent)."""
    out = measurements_dir(model, family)
    path = out / "measurements.json"
    t0 = time.perf_counter()
    if not path.exists():
        cal = out / "calibration_data" / "calibration.safetensors"
        if not cal.exists():
            subprocess.run(_cli() + ["calibrate", model, "--data", data, "--cal-samples", str(samples),
                                     "--seq-len", str(seq_len), "-o", str(out)], check=True)
        subprocess.run(_cli() + ["measure", model, "-o", str(out), "--backend", FAMILIES[family]], check=True)
    return read_json(path), time.perf_counter() - t0


def constraints_for(measurements: dict, allowed, int_embeddings: str = "auto") -> Constraints:
    """The same constraints ``llm_quantizer.api.plan`` builds with default PlanOptions (and
    ``--int-embeddings``)."""
    opts = PlanOptions(int_embeddings=int_embeddings)
    gguf_family = any(f.upper() == f and not f.startswith("int") for f in allowed
                      if f not in ("BF16", "F16", "F32"))
    overhead = measurements["model"].get("gguf_overhead_bytes") if gguf_family else None
    return Constraints.from_dict({"keep": list(opts.keep), "min_embed_bits": opts.min_embed_bits,
                                  "super_weight_min_bits": opts.super_weight_min_bits,
                                  "overhead_bytes": overhead, "int_embeddings": opts.int_embeddings,
                                  "error_model": opts.error_model})


def plan_rows(model: str, family: str, measurements: dict, int_embeddings: str = "auto") -> list[dict]:
    allowed = measurements["formats"]
    cons = constraints_for(measurements, allowed, int_embeddings)
    policy = int_embeddings if family == "int" else "-"
    rows = []
    for bpw in BUDGETS_BPW:
        spec = f"{bpw}bpw"
        row = {"model": model, "family": family, "int_embeddings": policy, "budget": spec, "budget_bpw": bpw}
        t0 = time.perf_counter()
        try:
            plan = make_plan(measurements, spec, allowed_formats=allowed, constraints=cons)
        except BudgetError as e:
            row.update(error=str(e).splitlines()[0], lines=len(str(e).splitlines()),
                       plan_s=time.perf_counter() - t0)
            rows.append(row)
            continue
        t = plan.totals
        formats: dict[str, int] = {}
        for tp in plan.tensors:
            formats[tp.format] = formats.get(tp.format, 0) + 1
        row["embedding"] = "/".join(tp.format for tp in plan.tensors if tp.kind in ("embed", "lm_head"))
        row.update(budget_bytes=t.budget_bytes, bytes=t.bytes, tensor_bytes=t.tensor_bytes,
                   overhead_bytes=t.overhead_bytes, within=t.bytes <= t.budget_bytes,
                   rel_dev=abs(t.bytes - t.budget_bytes) / t.budget_bytes, bpw=t.bpw,
                   predicted_error=t.predicted_error, lower_bound=t.lower_bound,
                   rel_gap=t.gap / max(t.predicted_error, 1e-300), optimal=t.optimal,
                   solve_s=t.solve_seconds, plan_s=time.perf_counter() - t0, formats=formats)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'model':13} {'fam':4} {'int emb':8} {'bpw':>4} {'budget B':>12} {'planned B':>12} {'in?':>3} "
          f"{'|dev|/bud':>9} {'pred err':>10} {'opt/gap':>12} {'solve s':>7} embedding")
    for r in rows:
        head = f"{r['model']:13} {r['family']:4} {r.get('int_embeddings', '-'):8} {r['budget_bpw']:4.1f}"
        if "error" in r:
            print(f"{head}  BudgetError: {r['error']}")
            continue
        opt = f"{'opt' if r['optimal'] else 'no'}/{r['rel_gap']:.1e}"
        print(f"{head} {r['budget_bytes']:12,d} {r['bytes']:12,d} {'yes' if r['within'] else 'NO':>3} "
              f"{r['rel_dev']:9.2e} {r['predicted_error']:10.4g} {opt:>12} {r['solve_s']:7.3f} {r['embedding']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=["gguf", "int"])
    ap.add_argument("--cal-samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--data", default=os.environ.get("LQ_BENCH_CALIB", CALIB_TEXT))
    ap.add_argument("--int-embeddings", nargs="+", choices=["auto", "keep", "quantize"], default=["auto", "quantize"],
                    help="int family: plan once per embedding policy (auto = the default PlanOptions)")
    ap.add_argument("--cached-only", action="store_true",
                    help="plan only the (model, family) pairs already measured; skip the others")
    ap.add_argument("--out", default=str(RESULTS / "plan_real_bench.json"))
    args = ap.parse_args(argv)
    rows, measure_s = [], {}
    for model in args.models:
        for fam in args.families:
            if args.cached_only and not (measurements_dir(model, fam) / "measurements.json").exists():
                print(f"skipped {model}-{fam}: not measured yet (--cached-only)")
                measure_s[f"{model}-{fam}"] = None
                continue
            meas, secs = ensure_measurements(model, fam, args.cal_samples, args.seq_len, args.data)
            measure_s[f"{model}-{fam}"] = secs
            for policy in (args.int_embeddings if fam == "int" else ["auto"]):
                rows += plan_rows(model, fam, meas, policy)
    print_table(rows)
    write_json(args.out, {"calibration": {"samples": args.cal_samples, "seq_len": args.seq_len,
                                          "data": args.data},
                          "measure_seconds": measure_s, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
