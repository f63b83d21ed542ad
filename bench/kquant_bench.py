"""llama.cpp's preset mixes, (a) as llama.cpp writes them and (b) re-encoded by our encoders with
Hessian error feedback (``--rounding gptq``) at the identical per-tensor types: size, mean KLD and
ppl on held-out text; plus encode speed of our encoders vs ggml_quantize_chunk.

    python bench/kquant_bench.py --model smollm2-135m --mixes q4_k_m q5_k_m q3_k_m q2_k q6_k

Same calibration ids and the same importance matrix (mean x^2 of every linear's input over the
calibration text, computed here with the engine) for both files. KLD is against the fp32 original
(transformers), llama-perplexity's convention (validate/metrics.py), on wiki_en_eval.txt.
Writes bench/results/kquant_bench_<model>.json (load average recorded: the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "text"
OUT = ROOT / "bench" / "results"


from llm_quantizer.engine.observers.base import Observer  # noqa: E402


class _SumSq(Observer):
    """Engine observer: mean x^2 per input channel of every stored linear (llama-imatrix's values)."""

    name = "sumsq"
    wants_linear_io = True

    def __init__(self, source):
        self.source, self.acc = source, {}

    def linear_io(self, ctx, path, x, y):
        g = self.source.gguf_name(ctx.prefix + path + ".weight")
        s, n = self.acc.get(g, (0.0, 0))
        self.acc[g] = (s + (x.double() ** 2).sum(0), n + x.shape[0])

    def means(self) -> dict[str, np.ndarray]:
        return {g: (s / n).float().cpu().numpy() for g, (s, n) in self.acc.items()}


def imatrix_means(src, ids, device) -> dict[str, np.ndarray]:
    from llm_quantizer.engine import EngineOptions, LayerwiseEngine

    obs = _SumSq(src)
    LayerwiseEngine(src, EngineOptions(device=device, progress=False, run_head=False)).run(ids, [obs])
    return obs.means()


def make_files(src, mix, ids, means, work: Path, device) -> dict:
    from llm_quantizer.backends.gguf import GGUFBackend, GGUFCalibration
    from llm_quantizer.config import RunConfig

    cfg = RunConfig().with_overrides({"gguf.llamacpp_type": mix, "gguf.rounding": "gptq", "device": device})
    t0 = time.perf_counter()
    art = GGUFBackend().quantize(src, None, GGUFCalibration(imatrix=means, input_ids=ids), work / mix, cfg)
    fb = art.info["feedback"]
    return {"llamacpp": Path(art.info["llamacpp_file"]), "ours": Path(art.path),
            "seconds_total": round(time.perf_counter() - t0, 1), "feedback_seconds": fb["seconds"],
            "reencoded": len(fb["tensors"]), "kept_llamacpp": fb["kept"],
            "types": art.info["tensor_type_counts"],
            "reencoded_types": _count(v["type"] for v in fb["tensors"].values())}


def _count(it) -> dict:
    out: dict = {}
    for t in it:
        out[t] = out.get(t, 0) + 1
    return dict(sorted(out.items()))


def kld_base(src, eval_tokens: int, ctx: int):
    """The fp32 original's stored distribution on the eval windows (computed once)."""
    from llm_quantizer.engine.skeleton import load_full_model
    from llm_quantizer.validate import metrics
    from llm_quantizer.validate.runtime import HFRuntime

    tok = src.tokenizer()
    text = (SHARED / "wiki_en_eval.txt").read_text()
    ew = metrics.eval_windows(tok, text, ctx, eval_tokens)
    orig = HFRuntime(load_full_model(src, "cpu"), name=src.name)
    base = metrics.compute_base(orig, ew)
    orig.close()
    return base


def eval_files(base, files: dict[str, Path], ctx: int) -> dict[str, dict]:
    from llm_quantizer.validate import metrics
    from llm_quantizer.validate.runtime import LlamaCppRuntime

    out = {}
    for label, path in files.items():
        rt = LlamaCppRuntime(path, n_ctx=ctx, n_threads=2)
        s = metrics.summarize(metrics.evaluate(rt, base))
        rt.close()
        out[label] = {"bytes": path.stat().st_size, **{k: s[k] for k in
                      ("ppl", "ppl_unc", "ppl_base", "kld_mean", "kld_mean_unc", "kld_p99", "same_top_pct")}}
    return out


def speed(src, means, types, reps: int = 3) -> list[dict]:
    """Seconds to encode the same tensors: ours (torch CPU, nearest and with feedback) vs
    ggml_quantize_chunk (1 thread and all threads), with the importance matrix."""
    from llm_quantizer.ggml.quantize import quantize_tensor
    from llm_quantizer.kquants import get_codec
    from llm_quantizer.kquants.feedback import feedback_encode

    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"]
    ws = [(src.load(n).float(), src.gguf_name(n)) for n in names]
    rows = []
    for t in types:
        codec = get_codec(t)
        use = [(w, means.get(g)) for w, g in ws if w.shape[1] % codec.block == 0]
        if not use:
            continue
        n = sum(w.numel() for w, _ in use)

        def best(fn):
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return min(ts)

        ours = best(lambda: [codec.encode(w, torch.from_numpy(q)) for w, q in use])
        g1 = best(lambda: [quantize_tensor(w.numpy(), t, q, nthread=1) for w, q in use])
        g2 = best(lambda: [quantize_tensor(w.numpy(), t, q) for w, q in use])
        eq = all(np.array_equal(codec.encode(w, torch.from_numpy(q)), quantize_tensor(w.numpy(), t, q))
                 for w, q in use)
        H = [torch.diag(torch.from_numpy(q)) + 0.0 for _, q in use]
        t0 = time.perf_counter()   # once: the per-column loop does not depend on H's values
        for (w, q), h in zip(use, H):
            feedback_encode(codec, w, h, qw=torch.from_numpy(q))
        fb = time.perf_counter() - t0
        rows.append({"type": t, "weights": n, "ours_s": ours, "ggml_1thread_s": g1, "ggml_threads_s": g2,
                     "ours_feedback_s": fb, "byte_exact": eq,
                     "ours_Mw_per_s": n / ours / 1e6, "ggml_1thread_Mw_per_s": n / g1 / 1e6})
    return rows


def table(model, results: dict) -> str:
    lines = [f"{model}: llama.cpp file vs ours (same per-tensor types, --rounding gptq)",
             f"{'mix':8} {'who':9} {'MiB':>8} {'KLD':>9} {'+-':>7} {'ppl':>8} {'top1%':>6} {'dKLD':>7}"]
    for mix, r in results.items():
        e = r["eval"]
        for who in ("llamacpp", "ours"):
            x = e[who]
            d = "" if who == "llamacpp" else f"{100 * (x['kld_mean'] / e['llamacpp']['kld_mean'] - 1):+.1f}%"
            lines.append(f"{mix:8} {who:9} {x['bytes'] / 2**20:8.2f} {x['kld_mean']:9.5f} {x['kld_mean_unc']:7.5f} "
                         f"{x['ppl']:8.3f} {x['same_top_pct']:6.2f} {d:>7}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--mixes", nargs="+", default=["q4_k_m", "q5_k_m", "q3_k_m", "q2_k", "q6_k"])
    ap.add_argument("--cal-samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default="/tmp/kquant_bench")
    ap.add_argument("--speed-types", nargs="*", default=["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL",
                                                          "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--speed-reps", type=int, default=1)
    args = ap.parse_args(argv)

    from llm_quantizer.calibrate import build_calibration, load_documents
    from llm_quantizer.model import open_source

    torch.manual_seed(0)
    src = open_source(args.model)
    tok = src.tokenizer()
    t0 = time.perf_counter()
    ids = build_calibration(load_documents(SHARED / "wiki_en_calib.txt", tokenizer=tok), tok,
                            args.cal_samples, args.seq_len, seed=0).input_ids
    means = imatrix_means(src, ids, args.device)
    rec = {"model": args.model, "command": " ".join([sys.executable, *sys.argv]), "args": vars(args),
           "loadavg_start": os.getloadavg(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "platform": platform.platform(), "imatrix_seconds": round(time.perf_counter() - t0, 1)}
    out_json = OUT / f"kquant_bench_{args.model}.json"
    if not args.speed_only:
        work = Path(args.work) / args.model
        # runs with other mixes accumulate in the same JSON (a mix run again is replaced)
        old = json.loads(out_json.read_text()) if out_json.exists() else {}
        results = dict(old.get("results", {})) if all(old.get("args", {}).get(k) == getattr(args, k)
                                                     for k in ("eval_tokens", "cal_samples", "seq_len", "ctx")) else {}
        base = kld_base(src, args.eval_tokens, args.ctx)
        for mix in args.mixes:
            files = make_files(src, mix, ids, means, work, args.device)
            print(f"{mix}: re-encoded {files['reencoded']} tensors {files['reencoded_types']} "
                  f"in {files['feedback_seconds']}s", flush=True)
            ev = eval_files(base, {"llamacpp": files["llamacpp"], "ours": files["ours"]}, args.ctx)
            results[mix] = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in files.items()}, "eval": ev,
                            "command": rec["command"], "loadavg": os.getloadavg()}
            rec["results"] = results
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(rec, indent=1, default=str))
        print(table(args.model, results))
    rec["speed"] = speed(src, means, args.speed_types, reps=args.speed_reps)
    for r in rec["speed"]:
        print(f"speed {r['type']:6} ours {r['ours_s']:.3f}s  ggml 1thr {r['ggml_1thread_s']:.3f}s  "
              f"ggml {os.cpu_count()}thr {r['ggml_threads_s']:.3f}s  feedback {r['ours_feedback_s']:.3f}s  "
              f"exact={r['byte_exact']}", flush=True)
    rec["loadavg_end"] = os.getloadavg()
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(rec, indent=1, default=str))
    print("wrote", out_json)


if __name__ == "__main__":
    main()
