"""Validate SmolLM2-135M quantized to Q4_K_M (GGUF, requantized from the example Q4_1) and, with
--gptq, to GPTQ 4-bit (compressed-tensors): ppl, KLD, same-top, repetition before/after the chosen
sampler settings. With --llama-perplexity PATH, also checks our KLD against
``llama-perplexity --kl-divergence`` on the same text and context (same base: the example GGUF
run by llama.cpp). Prints tables and writes bench/results/validate_bench.json.

Run: python bench/validate_bench.py [--gptq] [--exhaustive] [--llama-perplexity build/bin/llama-perplexity]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_quantizer.io import write_json  # noqa: E402
from llm_quantizer.model import open_source  # noqa: E402
from llm_quantizer.validate import LlamaCppRuntime, format_table, validate  # noqa: E402

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"


def make_q4km(src, work: Path) -> Path:
    from llm_quantizer.ggml import llama_quantize

    out = work / "smollm2-135m-q4_k_m.gguf"
    if not out.exists():
        llama_quantize(src.path, out, "Q4_K_M", allow_requantize=True)
    return out


def make_gptq(src, work: Path, samples: int) -> Path:
    """4-bit, group 64 (SmolLM2's 576 columns do not divide by 128), symmetric."""
    from types import SimpleNamespace

    from llm_quantizer.backends import get_backend
    from llm_quantizer.calibrate import build_calibration, load_documents
    from llm_quantizer.config import GPTQOptions

    done = work / "gptq" / "quantized_model"
    if done.is_dir() and (done / "config.json").exists():
        return done
    cal = build_calibration(load_documents(TEXT / "wiki_en_calib.txt").texts, src.tokenizer(), samples, 512, seed=0)
    cfg = SimpleNamespace(gptq=GPTQOptions(bits=4, group_size=64), device="cpu")
    return Path(get_backend("gptq").quantize(src, None, cal, work / "gptq", cfg).path)


def llama_perplexity_kld(exe: str, base_gguf: Path, ggufs: list[Path], text_file: Path, ctx: int, chunks: int,
                         work: Path) -> dict:
    base = work / "base.kld"
    common = ["-c", str(ctx), "--chunks", str(chunks)]
    subprocess.run([exe, "-m", str(base_gguf), "-f", str(text_file), *common, "--kl-divergence-base", str(base)],
                   check=True, capture_output=True)
    out = {}
    for g in ggufs:
        log = subprocess.run([exe, "-m", str(g), "--kl-divergence-base", str(base), "--kl-divergence", *common],
                             check=True, capture_output=True, text=True).stdout
        grab = {"kld_mean": r"Mean\s+KLD:\s+([\d.]+)", "kld_median": r"Median\s+KLD:\s+([\d.]+)",
                "kld_p99": r"99\.0%\s+KLD:\s+([\d.]+)", "same_top_pct": r"Same top p:\s+([\d.]+)",
                "ppl": r"Mean PPL\(Q\)\s+:\s+([\d.]+)", "ppl_base": r"Mean PPL\(base\)\s+:\s+([\d.]+)"}
        out[g.stem] = {k: float(re.search(p, log).group(1)) for k, p in grab.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "llmq_validate_bench"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--prompts", type=int, default=4, help="validation prompts used (of 6)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--exhaustive", action="store_true", help="generate with the whole sampler grid")
    ap.add_argument("--gptq", action="store_true", help="also quantize with the gptq backend (slow on CPU)")
    ap.add_argument("--gptq-samples", type=int, default=16)
    ap.add_argument("--llama-perplexity", default=None, help="path of a llama-perplexity binary")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "validate_bench.json"))
    args = ap.parse_args(argv)
    from llm_quantizer.validate import VALIDATION_PROMPTS

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = open_source("smollm2-135m")
    t0 = time.time()
    artifacts = [make_q4km(src, work)]
    if args.gptq:
        artifacts.append(make_gptq(src, work, args.gptq_samples))
    t_quant = time.time() - t0
    opts = dict(ctx=args.ctx, max_eval_tokens=args.eval_tokens, prompts=list(VALIDATION_PROMPTS[:args.prompts]),
                max_new_tokens=args.max_new_tokens, exhaustive=args.exhaustive)
    t0 = time.time()
    rep = validate(src, artifacts, [TEXT / "wiki_en_eval.txt"], work / "out", **opts)
    result = {"model": "smollm2-135m", "options": opts, "quantize_s": round(t_quant, 1),
              "validate_s": round(time.time() - t0, 1), "original": rep["original"], "comparison": rep["comparison"],
              "artifacts": [{k: v for k, v in a.items() if k not in ("generations",)} for a in rep["artifacts"]],
              "generations": {a["label"]: a.get("generations") for a in rep["artifacts"]}}
    print(f"original ppl {rep['original']['ppl']:.4f}, repetition rate {rep['original'].get('repetition_rate')}")
    print(format_table(rep["comparison"]))
    for a in rep["artifacts"]:
        for g in a.get("prevention", {}).get("grid", []):
            if g["repetition"]:
                print(f"  {a['label']:28s} {g['label']:34s} rate {g['repetition']['rate']:.3f}  ppl cost "
                      f"{g['ppl_cost_pct']:+7.2f}%  at temperature {g['temp_cost_pct']:+7.2f}%  kept {g['kept_pct']:.1f}%")
        for target, ch in a.get("prevention", {}).get("chosen", {}).items():
            print(f"  {a['label']:28s} {target:12s} -> {ch.get('label')}: rate {ch.get('rate', float('nan')):.3f} "
                  f"(reached: {ch.get('reached_target')}), ppl cost {ch.get('ppl_cost_pct', float('nan')):+.2f}%")
    if args.llama_perplexity:
        result["llama_perplexity_check"] = check(args, src, artifacts, work)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


def check(args, src, artifacts, work: Path) -> dict:
    """Same base (the example GGUF in llama.cpp), same text file, same ctx: ours vs llama-perplexity."""
    from llm_quantizer.validate.run import eval_text

    ggufs = [a for a in artifacts if Path(a).suffix == ".gguf"]
    text, _ = eval_text([TEXT / "wiki_en_eval.txt"])
    chunks = args.eval_tokens // args.ctx
    text_file = work / "eval_prefix.txt"
    text_file.write_text(text[:8 * args.eval_tokens])       # enough characters for the chunks
    ref = llama_perplexity_kld(args.llama_perplexity, src.path, ggufs, text_file, args.ctx, chunks, work)
    orig = LlamaCppRuntime(src.path, n_ctx=args.ctx)
    ours = validate(src, ggufs, [text_file], work / "check", original_runtime=orig, ctx=args.ctx,
                    max_eval_tokens=args.eval_tokens, generations=False)
    rows = {}
    for a in ours["artifacts"]:
        r = ref[Path(a["path"]).stem]
        rows[a["label"]] = {"ours": {k: a[k] for k in r}, "llama_perplexity": r,
                            "kld_rel_diff_pct": 100 * (a["kld_mean"] / r["kld_mean"] - 1)}
        print(f"{a['label']}: mean KLD ours {a['kld_mean']:.6f} vs llama-perplexity {r['kld_mean']:.6f} "
              f"({rows[a['label']]['kld_rel_diff_pct']:+.2f}%); same-top {a['same_top_pct']:.2f} vs "
              f"{r['same_top_pct']:.2f}; ppl {a['ppl']:.4f} vs {r['ppl']:.4f}")
    return {"ctx": args.ctx, "chunks": chunks, "artifacts": rows}


if __name__ == "__main__":
    sys.exit(main())
