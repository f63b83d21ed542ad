"""Quality at size: our planned GGUF at the file size of each llama.cpp preset vs the preset.

For each model: one calibration (wiki_en_calib.txt) and one measure pass give the importance
matrix and the per-format errors; each llama.cpp preset (Q2_K ... Q6_K, IQ4_XS) is made by
llama.cpp with that imatrix from the F16 GGUF of the dequantized source (and, with
``--llamacpp-from-source``, also from the source GGUF itself, as ``llama-quantize
--allow-requantize`` would be run on it); our plan gets the preset's exact file size as its byte budget and is
written with the same imatrix (and, with ``--rounding gptq``, our error-feedback encoders too,
when the build has them). All files are scored against the original on wiki_en_eval.txt with one
stored base: KLD mean / p99, same-top %, ppl. Prints a table, writes JSON + a KLD-vs-bpw plot.

    python bench/presets_bench.py --models smollm2-135m gemma3-270m
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TEXT = ROOT.parent / "shared" / "data" / "text"
PRESETS = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_XS")


def prepare(model: str, work: Path, samples: int, seq_len: int):
    """Calibrate + measure once per model (reused when measurements.json exists)."""
    from llm_quantizer import api

    src = api._source(model)
    if not (work / "measurements.json").exists():
        t0 = time.time()
        api.calibrate(src, work, data=[str(TEXT / "wiki_en_calib.txt")], samples=samples, seq_len=seq_len)
        api.measure(src, work, backend="gguf")
        print(f"{model}: calibrate + measure {time.time() - t0:.0f} s", flush=True)
    return src


def make_preset(src, work: Path, preset: str) -> Path:
    from llm_quantizer.backends.gguf import GGUFBackend, model_name
    from llm_quantizer.ggml import llama_quantize

    final = work / "presets" / f"{model_name(src)}-{preset.lower()}.gguf"
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        inter = GGUFBackend().intermediate(src, work)
        llama_quantize(inter, final, preset, (), work / "importance_analysis" / "imatrix.gguf")
    return final


def make_preset_from_source(src, work: Path, preset: str) -> Path:
    """The preset made by llama.cpp from the quantized source GGUF itself (``--allow-requantize``):
    llama-quantize copies every tensor that is already in its target type and re-quantizes the
    others from their dequantization (F32 inside llama.cpp)."""
    from llm_quantizer.backends.gguf import model_name
    from llm_quantizer.ggml import llama_quantize

    final = work / "presets_from_source" / f"{model_name(src)}-{preset.lower()}.gguf"
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        llama_quantize(src.path, final, preset, (), work / "importance_analysis" / "imatrix.gguf",
                       allow_requantize=True)
    return final


def variant_key(rounding: str, error_model: str) -> str:
    """Row key of one of our variants: ours_<rounding>_<error model>."""
    return f"ours_{rounding}_{error_model}"


def make_ours(src, work: Path, preset: str, nbytes: int, rounding: str, error_model: str = "auto"):
    """Our plan at ``nbytes`` (the preset's file size), written like `run` writes it."""
    from llm_quantizer import api
    from llm_quantizer.config import PlanOptions, RunConfig
    from llm_quantizer.errors import LLMQuantizerError

    tag = f"ours-{preset.lower()}" + ("" if rounding == "nearest" else f"-{rounding}") + f"-{error_model}"
    final = work / "ours" / f"{tag}.gguf"
    if final.exists():
        return final, json.loads(final.with_suffix(".plan.json").read_text())
    try:
        plan = api.plan(work, str(nbytes), options=PlanOptions(error_model=error_model))
    except LLMQuantizerError as e:
        return None, {"error": str(e)}
    cfg = RunConfig(model=str(src.ref), output_dir=str(work))
    if rounding != "nearest":
        if "rounding" not in type(cfg.gguf).model_fields:
            return None, {"error": f"--rounding {rounding} is not in this build"}
        cfg = cfg.with_overrides({"gguf.rounding": rounding})
    art = api.quantize(src, work, backend="gguf", plan=plan, config=cfg)
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(art.path), final)
    info = {"error_model": error_model, "predicted_bytes": plan.totals.bytes,
            "predicted_error": plan.totals.predicted_error,
            "formats": dict(sorted(collections.Counter(t.format for t in plan.tensors).items()))}
    final.with_suffix(".plan.json").write_text(json.dumps(info))
    return final, info


def bench_model(model: str, args) -> list[dict]:
    work = Path(args.work) / model
    src = prepare(model, work, args.samples, args.seq_len)
    arts, rows, same_size = [], [], {}
    for preset in args.presets:
        p = make_preset(src, work, preset)
        row = {"model": model, "preset": preset, "llama_file": str(p), "llama_bytes": p.stat().st_size}
        if args.llamacpp_from_source and src.kind == "gguf":
            ps = make_preset_from_source(src, work, preset)
            row["llama_from_source_file"] = str(ps)
            arts.append(ps)
        for rounding, em in variants(args):
            # presets of one file size (K-quant fallbacks: Q2_K and Q3_K_S on SmolLM2) share our plan
            k = (p.stat().st_size, rounding, em)
            if k not in same_size:
                same_size[k] = make_ours(src, work, preset, p.stat().st_size, rounding, em)
            ours, info = same_size[k]
            key = variant_key(rounding, em)
            row[key] = {"file": str(ours) if ours else None, **info}
            if ours:
                row[key]["bytes"] = ours.stat().st_size
                if ours not in arts:
                    arts.append(ours)
        arts.append(p)
        rows.append(row)
    by_path, orig, ev = score_files(src, arts, work, args)
    for row in rows:
        row["llama"] = _scores(by_path[row["llama_file"]])
        if "llama_from_source_file" in row:
            row["llama_from_source"] = _scores(by_path[row["llama_from_source_file"]])
        for rounding, em in variants(args):
            o = row[variant_key(rounding, em)]
            if o.get("file"):
                o.update(_scores(by_path[o["file"]]))
                o["kld_vs_llama_pct"] = 100 * (o["kld_mean"] / row["llama"]["kld_mean"] - 1)
    for row in rows:
        row["original_ppl"] = orig["ppl"]
        row["eval"] = ev
    return rows


def score_files(src, arts: list[Path], work: Path, args):
    """Validation records by path, the original's record and the eval windows. Scores are cached
    in ``work/scores.json`` per (file, size, mtime, ctx, eval tokens): a rerun that adds variants
    evaluates only the new files against the same stored base (the original's top-k log-probs)."""
    from llm_quantizer.validate import ValidateOptions, validate

    cache_path = work / "scores.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {"files": {}}
    setting = f"ctx={args.ctx};tokens={args.eval_tokens}"

    def key(a: Path) -> str:
        st = a.stat()
        return f"{a}|{st.st_size}|{st.st_mtime_ns}|{setting}"

    todo = [a for a in arts if key(a) not in cache["files"]]
    if todo or cache.get("setting") != setting:
        opt = ValidateOptions(ctx=args.ctx, max_eval_tokens=args.eval_tokens, generations=False, search=False)
        t0 = time.time()
        rep = validate(src, todo or arts[:1], [TEXT / "wiki_en_eval.txt"], work / "validation_run", opt)
        print(f"{src.name}: validation of {len(todo)} files {time.time() - t0:.0f} s; "
              f"original ppl {rep['original']['ppl']:.4f}", flush=True)
        cache.update(setting=setting, original=rep["original"],
                     eval={k: rep["eval"][k] for k in ("ctx", "windows", "scored_tokens")})
        for a in rep["artifacts"]:
            cache["files"][key(Path(a["path"]))] = a
        cache_path.write_text(json.dumps(cache, indent=1))
    return {str(a): cache["files"][key(a)] for a in arts}, cache["original"], cache["eval"]


def variants(args) -> list[tuple[str, str]]:
    return [(r, em) for r in args.rounding for em in args.error_model]


def _scores(a: dict) -> dict:
    return {k: a[k] for k in ("bytes", "bits_per_weight", "ppl", "kld_mean", "kld_median", "kld_p99", "same_top_pct")
            if k in a}


def table(rows: list[dict], keys) -> str:
    head = ["model", "preset", "bpw", "llama KLD", "p99", "top%", "ppl"]
    src_col = any("llama_from_source" in r for r in rows)
    if src_col:
        head += ["llama(src GGUF) KLD", "ppl"]
    for r in keys:
        head += [f"{r} bpw", "KLD", "p99", "top%", "ppl", "dKLD%"]
    lines = [head]
    for row in rows:
        L = row["llama"]
        line = [row["model"], row["preset"], f"{L['bits_per_weight']:.3f}", f"{L['kld_mean']:.4f}",
                f"{L['kld_p99']:.3f}", f"{L['same_top_pct']:.1f}", f"{L['ppl']:.3f}"]
        if src_col:
            S = row.get("llama_from_source", {})
            line += [f"{S['kld_mean']:.4f}", f"{S['ppl']:.3f}"] if S else ["-", "-"]
        for r in keys:
            o = row.get(r, {})
            if "kld_mean" in o:
                line += [f"{o['bits_per_weight']:.3f}", f"{o['kld_mean']:.4f}", f"{o['kld_p99']:.3f}",
                         f"{o['same_top_pct']:.1f}", f"{o['ppl']:.3f}", f"{o['kld_vs_llama_pct']:+.1f}"]
            else:
                line += ["-", o.get("error", "-")[:40], "", "", "", ""]
        lines.append(line)
    w = [max(len(str(l[i])) for l in lines if i < len(l)) for i in range(len(head))]
    return "\n".join("  ".join(str(c).rjust(w[i]) for i, c in enumerate(l)) for l in lines)


def plot(rows: list[dict], keys, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, m in zip(axes[0], models):
        rs = sorted((r for r in rows if r["model"] == m), key=lambda r: r["llama"]["bits_per_weight"])
        ax.plot([r["llama"]["bits_per_weight"] for r in rs], [r["llama"]["kld_mean"] for r in rs], "o-",
                label="llama.cpp preset")
        for r0 in rs:
            ax.annotate(r0["preset"], (r0["llama"]["bits_per_weight"], r0["llama"]["kld_mean"]), fontsize=7)
        for rd in keys:
            pts = [(r[rd]["bits_per_weight"], r[rd]["kld_mean"]) for r in rs if "kld_mean" in r.get(rd, {})]
            if pts:
                ax.plot(*zip(*pts), "s--", label=f"llm-quantizer plan ({rd.removeprefix('ours_')})")
        ax.set(xlabel="bits per weight (whole file)", ylabel="mean KLD vs original", yscale="log", title=m)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--rounding", nargs="+", default=["nearest"], help="nearest and/or gptq")
    ap.add_argument("--error-model", nargs="+", default=["auto"], choices=["auto", "local", "residual"],
                    help="planner objective(s) (plan.error_model; auto = residual when measured); each one "
                         "is a column")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--llamacpp-from-source", action="store_true",
                    help="also llama.cpp's preset made from the quantized source GGUF itself (--allow-requantize)")
    ap.add_argument("--work", default="/tmp/presets_bench")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "presets_bench.json"))
    args = ap.parse_args()
    t0, load0 = time.time(), os.getloadavg()
    rows = []
    for m in args.models:
        rows += bench_model(m, args)
    keys = [variant_key(r, em) for r, em in variants(args)]
    print(table(rows, keys))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, keys, out.with_suffix(".png"))
    out.write_text(json.dumps({"args": vars(args), "seconds": round(time.time() - t0, 1),
                               "loadavg_start": load0, "loadavg_end": os.getloadavg(), "rows": rows}, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
