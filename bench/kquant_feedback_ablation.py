"""Error-feedback variants on a llama.cpp file that ``kquant_bench.py`` already made: re-encode its
codec-typed layer tensors with the given ``feedback_encode`` options (same types, same size) and
score llama.cpp's file and each variant (mean KLD vs the fp32 original, ppl) on wiki_en_eval.txt.

    python bench/kquant_bench.py --mixes q3_k_m ...          # makes WORK/<model>/<mix>/
    python bench/kquant_feedback_ablation.py --mix q3_k_m \\
        --variant 'act:{"act_order": true, "codes": "nearest"}' \\
        --variant 'act_sink_refit:{"act_order": true, "refit": 1, "first_token_weight": 100}'

The calibration ids are rebuilt exactly as kquant_bench builds them (same samples, seq len, seed)
and the importance matrix is the one kquant_bench wrote next to the file, so the only difference
between the two files is the rounding. Writes bench/results/kquant_feedback_ablation_<model>_<mix>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = ROOT.parent / "shared" / "data" / "text"
OUT = ROOT / "bench" / "results"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--mix", default="q3_k_m")
    ap.add_argument("--work", default="/tmp/kquant_bench")
    ap.add_argument("--cal-samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--variant", action="append", default=[], help="NAME:JSON options of gptq_round_gguf")
    ap.add_argument("--existing", action="append", default=[],
                    help="NAME=PATH:JSON a file re-encoded earlier (e.g. by this script) with those options")
    args = ap.parse_args(argv)

    import kquant_bench as kb
    from llm_quantizer.backends.gguf_feedback import gptq_round_gguf
    from llm_quantizer.calibrate import build_calibration, load_documents
    from llm_quantizer.ggml.imatrix import load_imatrix_means
    from llm_quantizer.model import open_source

    d = Path(args.work) / args.model / args.mix
    llama = next((d / "quantized_model" / "intermediate").glob(f"*-{args.mix}.gguf"))
    means = load_imatrix_means(d / "quantization_plan" / "imatrix.gguf")
    src = open_source(args.model)
    tok = src.tokenizer()
    ids = build_calibration(load_documents(SHARED / "wiki_en_calib.txt", tokenizer=tok), tok,
                            args.cal_samples, args.seq_len, seed=0).input_ids
    out_json = OUT / f"kquant_feedback_ablation_{args.model}_{args.mix}.json"
    rec = json.loads(out_json.read_text()) if out_json.exists() else {"model": args.model, "mix": args.mix,
                                                                       "variants": {}}
    rec.update(command=" ".join([sys.executable, *sys.argv]), args=vars(args), loadavg_start=os.getloadavg())
    files = {"llamacpp": llama}
    for e in args.existing:
        name, rest = e.split("=", 1)
        path, opts = rest.split(":", 1)
        files[name] = Path(path)
        rec["variants"].setdefault(name, {"options": json.loads(opts), "file": path})
    for v in args.variant:
        name, opts = v.split(":", 1)
        opts = json.loads(opts)
        out = d / f"feedback_{name}.gguf"
        t0, c0 = time.perf_counter(), time.process_time()
        r = gptq_round_gguf(src, llama, out, ids, means, device="cpu", progress=False, **opts)
        rec["variants"][name] = {"options": opts, "wall_s": round(time.perf_counter() - t0, 1),
                                 "cpu_s": round(time.process_time() - c0, 1), "reencoded": len(r["tensors"]),
                                 "encode_s_sum": round(sum(x["seconds"] for x in r["tensors"].values()), 1)}
        files[name] = out
        print(f"{name}: {rec['variants'][name]}", flush=True)
    base = kb.kld_base(src, args.eval_tokens, args.ctx)
    ev = kb.eval_files(base, files, args.ctx)
    rec.setdefault("eval", {}).update(ev)
    rec["loadavg_end"] = os.getloadavg()
    ref = ev["llamacpp"]["kld_mean"]
    for k, x in ev.items():
        print(f"{args.mix:8} {k:24} {x['bytes'] / 2**20:8.2f} MiB  KLD {x['kld_mean']:.5f} +- {x['kld_mean_unc']:.5f}"
              f"  ppl {x['ppl']:.3f}  top1 {x['same_top_pct']:.2f}  dKLD {100 * (x['kld_mean'] / ref - 1):+.1f}%")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(rec, indent=1, default=str))
    print("wrote", out_json)


if __name__ == "__main__":
    main()
