"""GGUF end to end on real models: a planned mix vs llama.cpp's uniform q4_k_m.

For gemma3-270m and smollm2-135m (measurements from bench/plan_real_bench.py, cached under
bench/results/<model>-gguf/, measured here if missing):
  (a) plan at the first reachable budget of --budgets (default 4.5bpw, then 5.0bpw) and quantize
      with that plan (our imatrix);
  (b) quantize uniformly at q4_k_m (same imatrix).
For each file: size vs prediction (plan totals for (a); for (b) the exact byte cost of the types
llama.cpp wrote plus the measured GGUF overhead), within 0.5%?; tensor types read back with
gguf.GGUFReader vs the plan (a); load in llama-cpp-python and greedy-generate 24 tokens for
"The capital of France is".

Prints a table and writes bench/results/gguf_bench.json.
Run: python bench/gguf_bench.py [--models gemma3-270m smollm2-135m] [--budgets 4.5bpw 5.0bpw]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import llm_quantizer  # noqa: E402
from llm_quantizer import layout  # noqa: E402
from llm_quantizer.config import RunConfig  # noqa: E402
from llm_quantizer.errors import BudgetError  # noqa: E402
from llm_quantizer.formats import gguf_nbytes  # noqa: E402
from llm_quantizer.io import write_json  # noqa: E402
from llm_quantizer.plan import make_plan, write_plan  # noqa: E402
from plan_real_bench import RESULTS, constraints_for, ensure_measurements  # noqa: E402

MODELS = ("gemma3-270m", "smollm2-135m")
PROMPT = "The capital of France is"
TOLERANCE = 0.005


def read_types(path: Path) -> dict[str, dict]:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    return {t.name: {"type": t.tensor_type.name, "shape": [int(x) for x in reversed(list(t.shape))],
                     "n_bytes": int(t.n_bytes)} for t in r.tensors}


def generate(path: Path) -> tuple[str, float]:
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(str(path), n_ctx=256, verbose=False, seed=0)
    out = llm(PROMPT, max_tokens=24, temperature=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0)
    text = out["choices"][0]["text"]
    del llm
    return text, time.perf_counter() - t0


def check_file(path: Path, predicted: int, plan=None) -> dict:
    size = path.stat().st_size
    types = read_types(path)
    row = {"file": str(path), "file_bytes": size, "predicted_bytes": predicted,
           "size_dev": (size - predicted) / predicted, "size_ok": abs(size - predicted) / predicted <= TOLERANCE,
           "file_types": _hist(t["type"] for t in types.values())}
    if plan is not None:
        mism, missing = [], []
        for tp in plan.tensors:
            if tp.gguf_name is None:
                continue
            got = types.get(tp.gguf_name)
            if got is None:
                missing.append(tp.gguf_name)
            elif got["type"] != tp.format.upper():
                mism.append({"tensor": tp.gguf_name, "plan": tp.format, "file": got["type"]})
        planned = {tp.gguf_name for tp in plan.tensors if tp.gguf_name}
        row.update(types_ok=not mism and not missing, type_mismatches=mism, missing_in_file=missing,
                   extra_in_file=sorted(set(types) - planned), plan_types=_hist(tp.format for tp in plan.tensors))
    try:
        row["text"], row["gen_s"] = generate(path)
        row["loads"] = True
    except Exception as e:  # noqa: BLE001 - record the failure in the table
        row.update(loads=False, text=f"{type(e).__name__}: {e}")
    return row


def _hist(items) -> dict[str, int]:
    h: dict[str, int] = {}
    for i in items:
        h[i] = h.get(i, 0) + 1
    return dict(sorted(h.items()))


def run_model(model: str, budgets: list[str], samples: int, seq_len: int, data: str) -> list[dict]:
    meas, _ = ensure_measurements(model, "gguf", samples, seq_len, data)
    mdir = RESULTS / f"{model}-gguf"
    imatrix = mdir / layout.IMPORTANCE / "imatrix.gguf"
    allowed = meas["formats"]
    cons = constraints_for(meas, allowed)
    overhead = int(meas["model"].get("gguf_overhead_bytes") or 0)
    rows = []
    plan, budget, errors = None, None, []
    for b in budgets:
        try:
            plan, budget = make_plan(meas, b, allowed_formats=allowed, constraints=cons), b
            break
        except BudgetError as e:
            errors.append(f"{b}: {str(e).splitlines()[0]}")
    work = RESULTS / "gguf_bench" / model
    if plan is not None:
        out = work / "plan"
        write_plan(plan, out)
        t0 = time.perf_counter()
        art = llm_quantizer.quantize(model, out, backend="gguf", plan=plan, calibration=imatrix)
        q_s = time.perf_counter() - t0
        row = {"model": model, "variant": f"plan {budget}", "budget_bytes": plan.totals.budget_bytes,
               "plan_bpw": plan.totals.bpw, "quantize_s": q_s, "skipped_budgets": errors}
        row.update(check_file(Path(art.path), plan.totals.bytes, plan))
        rows.append(row)
    else:
        rows.append({"model": model, "variant": "plan", "error": "; ".join(errors)})
    out = work / "q4_k_m"
    cfg = RunConfig().with_overrides({"gguf.llamacpp_type": "q4_k_m"})
    t0 = time.perf_counter()
    art = llm_quantizer.quantize(model, out, backend="gguf", plan=None, calibration=imatrix, config=cfg)
    q_s = time.perf_counter() - t0
    types = read_types(Path(art.path))
    predicted = overhead + sum(gguf_nbytes(t["type"], t["shape"]) for t in types.values())
    row = {"model": model, "variant": "q4_k_m", "quantize_s": q_s,
           "tensor_bytes_exact": all(gguf_nbytes(t["type"], t["shape"]) == t["n_bytes"] for t in types.values())}
    row.update(check_file(Path(art.path), predicted))
    rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'model':13} {'variant':13} {'file B':>11} {'pred B':>11} {'dev':>8} {'<=0.5%':>6} "
          f"{'types=plan':>10} {'loads':>5}  text")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:13} {r['variant']:13} {r['error']}")
            continue
        types = ("yes" if r["types_ok"] else f"NO({len(r['type_mismatches'])})") if "types_ok" in r else "-"
        print(f"{r['model']:13} {r['variant']:13} {r['file_bytes']:11,d} {r['predicted_bytes']:11,d} "
              f"{r['size_dev']:+8.4%} {'yes' if r['size_ok'] else 'NO':>6} {types:>10} "
              f"{'yes' if r['loads'] else 'NO':>5}  {r['text']!r}")


def main(argv: list[str] | None = None) -> int:
    from plan_real_bench import CALIB_TEXT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--budgets", nargs="+", default=["4.5bpw", "5.0bpw"])
    ap.add_argument("--cal-samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--data", default=CALIB_TEXT)
    ap.add_argument("--out", default=str(RESULTS / "gguf_bench.json"))
    args = ap.parse_args(argv)
    rows = [r for m in args.models for r in run_model(m, args.budgets, args.cal_samples, args.seq_len, args.data)]
    print_table(rows)
    write_json(args.out, {"prompt": PROMPT, "tolerance": TOLERANCE, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
