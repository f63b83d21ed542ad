"""Does end-to-end plan refinement pick the plan that llama.cpp then runs best?

For each byte budget: ``plan --refine N`` scores the N best distinct candidate plans (objectives
error model x importance power) by their fake-quant KL divergence on held-out calibration text
(llama.cpp's quantizers via libggml, our imatrix); then every candidate is written as a real
GGUF and scored by llama.cpp on wiki_en_eval.txt (one stored base, as presets_bench). The table
shows both KLDs, whether the refined choice is the real best, and its KLD vs the default plan
(the configured objective, candidate 1).

    python bench/refine_bench.py --work /tmp/refine_bench --from-run out   # reuse a run's measurements
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
TEXT = ROOT.parent / "shared" / "data" / "text"
# file sizes of llama.cpp's Q3_K_M, Q4_K_M and Q6_K on smollm2-135m (bench/results/presets_bench_*.json)
DEFAULT_BUDGETS = ("93510208", "105454144", "138382912")


def prepare(args):
    """A measured output dir: copied from ``--from-run`` or calibrated + measured here."""
    from llm_quantizer import api

    work = Path(args.work)
    if not (work / "measurements.json").exists():
        if args.from_run:
            for d in ("calibration_data", "importance_analysis", "architecture_analysis"):
                if (Path(args.from_run) / d).exists():
                    shutil.copytree(Path(args.from_run) / d, work / d, dirs_exist_ok=True)
            shutil.copy(Path(args.from_run) / "measurements.json", work / "measurements.json")
        else:
            api.calibrate(args.model, work, samples=args.samples, seq_len=512)
            api.measure(args.model, work, backend="gguf")
    return api._source(args.model), work


def bench_budget(src, work: Path, budget: str, args) -> dict:
    from llm_quantizer import api
    from llm_quantizer.config import PlanOptions
    from dataclasses import replace

    from llm_quantizer.plan import make_plan

    t0 = time.time()
    refined = api.plan(work, budget, options=PlanOptions(refine=args.refine, refine_samples=args.refine_samples),
                       model=src, log=print)
    seconds = time.time() - t0
    meas = json.loads((work / "measurements.json").read_text())
    files = {}
    for c in refined.refinement["candidates"]:
        cons = replace(refined.constraints, error_model=c["error_model"], importance_power=c["importance_power"])
        plan = make_plan(meas, budget, allowed_formats=meas["formats"], constraints=cons)
        assert plan.totals.bytes == c["bytes"], "candidate plans are deterministic"
        final = work / "gguf" / f"{budget}-{c['label'].replace('^', '_p')}.gguf"
        if not final.exists():
            art = api.quantize(src, work, backend="gguf", plan=plan)
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(art.path), final)
        files[c["label"]] = final
    return {"budget": budget, "refine_seconds": seconds, "refinement": refined.refinement,
            "files": {k: str(v) for k, v in files.items()}}


def table(rows) -> str:
    head = ["budget", "candidate", "bpw", "proxy KLD (held-out)", "llama.cpp KLD (eval)", "top%", "chosen", "real best"]
    lines = [head]
    for r in rows:
        for c in r["refinement"]["candidates"]:
            real = r["real"][c["label"]]
            lines.append([r["budget"], c["label"], f"{real['bits_per_weight']:.3f}", f"{c['kld_mean']:.5f}",
                          f"{real['kld_mean']:.5f}", f"{real['same_top_pct']:.1f}",
                          "*" if c["label"] == r["refinement"]["chosen"] else "",
                          "*" if c["label"] == r["real_best"] else ""])
    w = [max(len(str(l[i])) for l in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).rjust(w[i]) for i, c in enumerate(l)) for l in lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--work", default="/tmp/refine_bench")
    ap.add_argument("--from-run", default=None, help="an output dir of `llm-quantizer run` (gguf) to reuse")
    ap.add_argument("--budgets", nargs="+", default=list(DEFAULT_BUDGETS))
    ap.add_argument("--refine", type=int, default=4)
    ap.add_argument("--refine-samples", type=int, default=16)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--out", default="bench/results/refine_bench_smollm2-135m.json")
    args = ap.parse_args()
    from presets_bench import score_files

    t0, load0 = time.time(), os.getloadavg()[0]
    src, work = prepare(args)
    rows = [bench_budget(src, work, b, args) for b in args.budgets]
    arts = [Path(f) for r in rows for f in r["files"].values()]
    by_path, orig, ev = score_files(src, arts, work, args)
    for r in rows:
        r["real"] = {k: {m: by_path[f][m] for m in ("bits_per_weight", "kld_mean", "kld_p99", "same_top_pct", "ppl")}
                     for k, f in r["files"].items()}
        r["real_best"] = min(r["real"], key=lambda k: r["real"][k]["kld_mean"])
        first = r["refinement"]["candidates"][0]["label"]
        chosen = r["refinement"]["chosen"]
        r["chosen_vs_default_pct"] = 100 * (r["real"][chosen]["kld_mean"] / r["real"][first]["kld_mean"] - 1)
    print(table(rows))
    for r in rows:
        print(f"budget {r['budget']}: refinement {r['refine_seconds']:.0f} s; chosen {r['refinement']['chosen']} "
              f"real KLD {r['chosen_vs_default_pct']:+.1f} % vs default; real best {r['real_best']}")
    out = {"args": vars(args), "seconds": time.time() - t0, "loadavg_start": load0, "loadavg_end": os.getloadavg()[0],
           "original": orig, "eval": ev, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
