"""Perplexity and KLD of an example model (smollm2-135m by default, or gemma3-270m): original,
RTN / GPTQ / AWQ 4-bit (uniform) and a mixed GPTQ plan at the uniform file size, every quantized
model reloaded from its compressed-tensors checkpoint; optionally gptqmodel 7.6.0's uniform 4-bit
GPTQ on the same calibration ids (``--gptqmodel-path``, method ``gptqmodel``), reloaded through
transformers + optimum + gptqmodel and scored on the same windows.

Group size 64 for SmolLM2: its hidden size 576 is not divisible by 128 (576 = 9 x 64), and
compressed-tensors refuses uneven groups. gemma3-270m (640 / 2048 wide rows) runs at g128.
Both example models ship as 4-bit GGUFs (Q4_1, Q4_K_M); "original" is that model dequantized (bf16).
Calibration: wiki_en_calib.txt, N x 512 tokens. Eval: the first 4096 tokens of wiki_en_eval.txt
in 8 fixed windows of 512 (no overlap), the same ids for every model: ppl, and KL(original ||
model) per token (mean, p99) with the original's top-1 match, against the original's log-probs
computed once per run (kept on the device: 8 x 511 x 49152 float32, ~0.8 GB).

GPTQ propagates the quantized outputs; ``gptq`` uses act_order with static groups (the default),
``gptq-noact`` column order. AWQ is llm-awq's search (symmetric: zero-point checkpoints do not
load in transformers >= 5.23). ``mixed``: our measurements with the residual error model (each
linear's output error x its measured transfer to the per-token relative residual error) ->
knapsack over int3/int4 g32/g64, int8 g64, BF16 at the uniform int4 plan's byte size, quantized
with GPTQ (act_order); ``mixed-local``: the same with the earlier error model (output error x
layer importance), ``mixed-awq``: the residual plan quantized with AWQ; ``mixed-gp`` /
``mixed-gp-local``: the probes round int formats with GPTQ (``run_measurements(rounding="gptq")``).

Run: python bench/gptq_awq_bench.py [--samples 128] [--device auto] [--methods rtn,gptq,awq,mixed]
Writes bench/results/gptq_awq_bench.json.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_quantizer.calibrate import adds_bos, build_calibration, load_documents  # noqa: E402
from llm_quantizer.engine import resolve_device  # noqa: E402
from llm_quantizer.engine.skeleton import load_full_model  # noqa: E402
from llm_quantizer.io import write_json  # noqa: E402
from llm_quantizer.model import open_source  # noqa: E402
from llm_quantizer.quant.rtn import QuantArgs  # noqa: E402
from llm_quantizer.quant_runner import quantize_int, resolve_schemes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "text"
MIXED_FORMATS = ["int3_g32", "int3_g64", "int4_g32", "int4_g64", "int8_g64", "BF16"]


def mixed_formats(group: int) -> list[str]:
    """The mixed plan's candidates: MIXED_FORMATS, plus int3/int4/int8 at ``group`` when it is not
    32 or 64 (so the uniform plan's own format is always a candidate)."""
    extra = [f"int3_g{group}", f"int4_g{group}", f"int8_g{group}"] if group not in (32, 64) else []
    return MIXED_FORMATS[:-1] + extra + ["BF16"]


def eval_windows(tok, path: Path, n_tokens: int = 4096, window: int = 512) -> torch.Tensor:
    """Fixed non-overlapping windows of the eval text; a tokenizer that adds BOS (Gemma's) gets it as
    each window's first token, as llama-perplexity does (Gemma without it scores ~2x worse ppl)."""
    ids = tok(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:n_tokens]
    w = torch.tensor(ids[: len(ids) // window * window]).reshape(-1, window)
    if adds_bos(tok):
        w[:, 0] = tok.bos_token_id
    return w


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, device, batch: int = 4) -> float:
    return score(model, windows, device, None, batch)["ppl"]


@torch.no_grad()
def base_logprobs(model, windows: torch.Tensor, device, batch: int = 4) -> list[torch.Tensor]:
    """The original's log-probs at every scored position, kept on ``device`` (once per run)."""
    return [torch.log_softmax(model(b.to(device)).logits[:, :-1].float(), -1) for b in windows.split(batch)]


@torch.no_grad()
def score(model, windows: torch.Tensor, device, base=None, batch: int = 4) -> dict:
    """ppl of ``model`` on ``windows`` (every position but the first of each window); with ``base``
    (``base_logprobs`` of the original) also the per-token KL(original || model): mean, p99, and
    the share of positions whose top-1 token equals the original's."""
    nll, n, kl, same = 0.0, 0, [], 0
    for i, b in enumerate(windows.split(batch)):
        b = b.to(device)
        logp = torch.log_softmax(model(b).logits[:, :-1].float(), -1)
        nll -= logp.gather(-1, b[:, 1:, None]).sum().item()
        n += b[:, 1:].numel()
        if base is not None:
            p0 = base[i]
            kl.append((p0.exp() * (p0 - logp)).sum(-1).flatten().cpu())
            same += int((p0.argmax(-1) == logp.argmax(-1)).sum())
    out = {"ppl": math.exp(nll / n)}
    if base is not None:
        k = torch.cat(kl).double()
        out.update(kld_mean=float(k.mean()), kld_p99=float(k.quantile(0.99)), same_top_pct=100.0 * same / n)
    return out


def load_checkpoint(path, device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).to(device).eval()


def fake_model(source, fake_state, device):
    model = load_full_model(source, "cpu", torch.bfloat16)
    model.load_state_dict(fake_state, strict=False)
    return model.to(device).eval()


def peak_mem(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_MEAS: dict = {}


def mixed_plan(source, ids, device, group: int, error_model: str = "residual", rounding: str = "nearest"):
    """Knapsack plan over MIXED_FORMATS at the byte size of the uniform int4 plan (every linear
    int4: no super-weight floor there, so its size is the uniform checkpoint's). Measured once per
    probe rounding (``rounding="gptq"``: the probes round int formats with GPTQ)."""
    from llm_quantizer.measure import run_measurements
    from llm_quantizer.plan import Constraints, make_plan

    formats = mixed_formats(group)
    if rounding not in _MEAS:
        t0 = time.perf_counter()
        _MEAS[rounding] = run_measurements(source, ids, formats, device=str(device), progress=False,
                                           rounding=rounding).measurements
        _MEAS[rounding + "_seconds"] = round(time.perf_counter() - t0, 1)
    meas = _MEAS[rounding]
    uniform = make_plan(meas, "1", [f"int4_g{group}"], Constraints(super_weight_min_bits=None, error_model=error_model))
    plan = make_plan(meas, f"{uniform.totals.bytes}B", formats, Constraints(error_model=error_model))
    return plan, uniform.totals.bytes, uniform.totals.predicted_error


def variant(name: str):
    """bench name -> (method, options): gptq-act = act_order (static groups); mixed uses it too."""
    from llm_quantizer.quant_runner import AWQOptions, GPTQOptions

    act, noact = GPTQOptions(act_order=True), GPTQOptions(act_order=False)
    return {"rtn": ("rtn", None), "gptq": ("gptq", act), "gptq-noact": ("gptq", noact),
            "gptq-ts": ("gptq", GPTQOptions(act_order=True, true_sequential=True)),
            "awq": ("awq", AWQOptions()), "mixed": ("gptq", act), "mixed-local": ("gptq", act),
            "mixed-gp": ("gptq", act), "mixed-gp-local": ("gptq", act),
            "mixed-awq": ("awq", AWQOptions()), "mixed-rtn": ("rtn", None), "mixed-local-rtn": ("rtn", None)}[name]


def run_method(name, source, ids, windows, device, group, work: Path, row: dict, plan=None, base=None):
    method, options = variant(name)
    schemes = resolve_schemes(source, plan, None if plan is not None else QuantArgs(4, group, True))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res = quantize_int(source, method, schemes, ids, work / name, plan=plan, options=options, device=str(device),
                       batch_size=8, progress=False, keep_fake=True)
    row.update(quant_seconds=round(res.seconds, 1), peak_mib=round(peak_mem(device)), tensor_bytes=res.nbytes,
               file_bytes=sum(p.stat().st_size for p in res.path.glob("*.safetensors")))
    ckpt = load_checkpoint(res.path, device)
    row.update(score(ckpt, windows, device, base))
    ref = fake_model(source, res.fake_state, device)
    with torch.no_grad():
        a, b = ckpt(windows[:2].to(device)).logits.float(), ref(windows[:2].to(device)).logits.float()
    row["max_abs_logit_diff_ckpt_vs_fake"] = (a - b).abs().max().item()
    row["schemes"] = dict(sorted(_count(res.schemes).items()))
    if plan is not None:
        from llm_quantizer.quant_runner.schemes import scheme_label

        by_kind: dict = {}
        for m, a in res.schemes.items():
            k = by_kind.setdefault(m.rsplit(".", 1)[-1], {})
            k[scheme_label(a)] = k.get(scheme_label(a), 0) + 1
        row["schemes_by_kind"] = by_kind
    return row


def run_gptqmodel(args, source, windows, work: Path, row: dict, base=None):
    """gptqmodel 7.6.0's uniform 4-bit GPTQ (act-order, sym, damp 0.01, true-sequential off as in
    our ``gptq``) on the same calibration ids, in its own process (bench/gptq_vs_gptqmodel.py's
    child), then loaded here through transformers + optimum + gptqmodel and scored like the others."""
    from bench.gptq_vs_gptqmodel import _run_child, prepare_hf

    hf = work / "hf_bf16"
    if not hf.exists():
        prepare_hf(args.model, hf)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([args.gptqmodel_path, str(ROOT)]),
               OMP_NUM_THREADS=str(os.cpu_count()), GPTQMODEL_CPU_WORKERS=str(max(2, os.cpu_count() or 2)))
    child_args = argparse.Namespace(samples=args.samples, seq_len=args.seq_len, text_dir=args.text_dir,
                                    group_size=args.group_size, true_sequential=False)
    out = work / "gptqmodel"
    got = _run_child("gptqmodel", hf, out, child_args, env)
    if "error" in got:
        raise RuntimeError(got["error"].strip().splitlines()[-1])
    row.update(quant_seconds=got["seconds"], quant_cpu_seconds=got["cpu_seconds"], peak_mib=got["peak_rss_mib"],
               gptqmodel=got.get("gptqmodel"),
               file_bytes=sum(p.stat().st_size for p in out.glob("*.safetensors")))
    if args.gptqmodel_path not in sys.path:
        sys.path.insert(0, args.gptqmodel_path)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16, device_map="cpu").eval()
    row.update(score(model, windows, torch.device("cpu"), None if base is None else [b.cpu() for b in base]))
    return row


def _count(schemes):
    from llm_quantizer.quant_runner.schemes import scheme_label

    out = {}
    for a in schemes.values():
        out[scheme_label(a)] = out.get(scheme_label(a), 0) + 1
    return out


def _earlier_rows(path, meta: dict, rerun: list[str]) -> list[dict]:
    """Rows of an earlier run in ``path`` with the same model, calibration, eval and group size,
    except the original's and those of methods run again (``rerun``: method-name prefixes)."""
    import json

    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    if any(old.get(k) != meta[k] for k in ("model", "calibration", "eval", "group_size")):
        return []
    return [dict(r, from_earlier_run=True) for r in old.get("rows", [])[1:]
            if not any(f"{r['method']} ".startswith(p) for p in rerun) and "error" not in r]


def _device_name(device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="example name or path (e.g. the GGUF file)")
    ap.add_argument("--text-dir", default=str(TEXT), help="folder with wiki_en_calib.txt / wiki_en_eval.txt")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--methods", default="rtn,gptq,gptq-noact,awq,mixed,mixed-local,mixed-awq")
    ap.add_argument("--gptqmodel-path", default=None,
                    help="folder gptqmodel 7.6.0 was installed into (--target); adds method gptqmodel")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--out", default=None, help="default bench/results/gptq_awq_bench[_MODEL_gGROUP].json")
    args = ap.parse_args(argv)
    if args.out is None:
        # the bare name holds the H100 smollm2 g64 run; a CPU run of that setting gets its own file
        gpu_default = (args.model, args.group_size) == ("smollm2-135m", 64) and args.device != "cpu"
        suffix = "" if gpu_default else f"_{args.model}_g{args.group_size}"
        args.out = str(Path(__file__).parent / "results" / f"gptq_awq_bench{suffix}.json")
    if "gptqmodel" in args.methods.split(",") and not args.gptqmodel_path:
        ap.error("method gptqmodel needs --gptqmodel-path")
    load0 = os.getloadavg()
    device = resolve_device(args.device)
    source, text = open_source(args.model), Path(args.text_dir)
    tok = source.tokenizer()
    ids = build_calibration(load_documents([text / "wiki_en_calib.txt"]), tok, args.samples, args.seq_len, 0).input_ids
    windows = eval_windows(tok, text / "wiki_en_eval.txt", args.eval_tokens)
    original = load_full_model(source, str(device), torch.bfloat16)
    rows = [{"method": "original (4-bit GGUF dequantized, bf16)", "ppl": perplexity(original, windows, device)}]
    base = base_logprobs(original, windows, device)
    del original
    print(f"original ppl {rows[0]['ppl']:.3f}", flush=True)
    meta = {"model": args.model, "calibration": list(ids.shape),
            "eval": {"tokens": windows.numel(), "windows": list(windows.shape)},
            "group_size": args.group_size, "mixed_formats": mixed_formats(args.group_size),
            "command": "python bench/gptq_awq_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "rows": rows}

    kept = _earlier_rows(args.out, meta, [f"{n} " for n in args.methods.split(",")])
    if kept:
        print(f"keeping {len(kept)} rows of the same setting from {args.out}", flush=True)
        rows.extend(kept)

    def save():
        write_json(args.out, {**meta, "device": _device_name(device), "loadavg_start": load0,
                              "loadavg_end": os.getloadavg()})

    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods.split(","):
            mixed = name.startswith("mixed")
            row = {"method": f"{name} 4-bit g{args.group_size} sym" if not mixed else f"{name} plan"}
            t0 = time.perf_counter()
            try:
                plan = None
                if mixed:
                    em = "local" if "local" in name else "residual"
                    rounding = "gptq" if name.startswith("mixed-gp") else "nearest"
                    plan, budget, uniform_pred = mixed_plan(source, ids, device, args.group_size, em, rounding)
                    row.update(budget_bytes=budget, error_model=em, probe_rounding=rounding,
                               predicted_error=plan.totals.predicted_error, uniform_predicted_error=uniform_pred,
                               measure_seconds=_MEAS[rounding + "_seconds"])
                if name == "gptqmodel":
                    row["method"] = f"gptqmodel 4-bit g{args.group_size} sym"
                    rows.append(run_gptqmodel(args, source, windows, Path(tmp), row, base))
                else:
                    rows.append(run_method(name, source, ids, windows, device, args.group_size, Path(tmp), row,
                                           plan, base))
            except Exception as e:  # noqa: BLE001 - a failed row is reported, the others still run
                row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                print(f"{row['method']}: FAILED {row['error']}", flush=True)
                save()
                continue
            row["total_seconds"] = round(time.perf_counter() - t0, 1)
            print(f"{row['method']}: ppl {row['ppl']:.3f}  KLD {row['kld_mean']:.4f}  ({row['quant_seconds']} s)", flush=True)
            save()
    print(f"\n{'method':40} {'ppl':>8} {'KLD':>8} {'p99':>7} {'top%':>6} {'quant s':>8} {'peak MiB':>9} "
          f"{'weights MB':>11} {'ckpt-fake':>10}")
    for r in (r for r in rows if "ppl" in r):
        kl = (f"{r['kld_mean']:8.4f} {r['kld_p99']:7.3f} {r['same_top_pct']:6.2f}" if "kld_mean" in r
              else f"{'':8} {'':7} {'':6}")
        print(f"{r['method']:40} {r['ppl']:8.3f} {kl} {r.get('quant_seconds', ''):>8} {r.get('peak_mib', ''):>9} "
              f"{r.get('file_bytes', 0) / 1e6:11.2f} {r.get('max_abs_logit_diff_ckpt_vs_fake', 0):10.2e}")
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
