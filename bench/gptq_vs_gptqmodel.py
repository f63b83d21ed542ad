"""GPTQ wall time and peak memory: ours vs gptqmodel 7.6.0, same model, same token ids, same
settings (4-bit, group 64, symmetric, act-order, damp 0.01, true-sequential off unless
--true-sequential: then on in both), CPU, each in its own process.

The model is smollm2-135m (the example Q4_1 GGUF dequantized into a bf16 HF folder, which both
tools load). Calibration: wiki_en_calib.txt, N x 512 tokens (N = --samples). Each child reports
its wall time and CPU time (user + sys of the whole process, threads included) for the timed part
(load + quantize + save, not the imports), the whole process's CPU time, its peak RSS (VmHWM)
and the load average around it (the box is shared: CPU time is the fairer figure).
Arms: ``ours`` (layers run in float32), ``ours-bf16`` (``compute_dtype=bfloat16``: the layers
run in bfloat16 as gptqmodel runs them; Hessians and solve in float32 in both) and ``gptqmodel``.
Each arm's perplexity on wiki_en_eval.txt (--eval-tokens, 512-token windows, bf16) is reported
next to its cost, so a faster arm cannot hide a worse model.
Ours also writes a classic ``quant_method: gptq`` checkpoint; when gptqmodel imports, that
checkpoint is loaded with transformers and its logits compared with our fake-quant model.

gptqmodel is not a dependency: install it apart (``BUILD_CUDA_EXT=0 pip install --no-deps
--target DIR gptqmodel==7.6.0 optimum==2.3.0 pypcre logbar device-smi tokenicer defuser
threadpoolctl``; its numpy==2.2.6 pin is not needed) and pass ``--gptqmodel-path DIR``.

Run: python bench/gptq_vs_gptqmodel.py [--samples 32] [--true-sequential] [--gptqmodel-path /tmp/gptqm]
Writes bench/results/gptq_vs_gptqmodel.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TEXT = ROOT.parent / "shared" / "data" / "text"


def _ids(hf_dir: str, samples: int, seq_len: int, text_dir: Path):
    from llm_quantizer.calibrate import build_calibration, load_documents
    from llm_quantizer.model import open_source

    tok = open_source(hf_dir).tokenizer()
    return build_calibration(load_documents([text_dir / "wiki_en_calib.txt"]), tok, samples, seq_len, 0).input_ids


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mib() -> int:
    """This process's peak RSS: VmHWM (ru_maxrss keeps the forking parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _timed(t0, c0, l0) -> dict:
    return {"seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(_cpu() - c0, 1),
            "loadavg_start": l0, "loadavg_end": os.getloadavg()}


def child_ours(hf_dir, out, samples, seq_len, text_dir, group, true_seq, dtype="float32"):
    import torch

    from llm_quantizer.model import open_source
    from llm_quantizer.quant.rtn import QuantArgs
    from llm_quantizer.quant_runner import GPTQOptions, quantize_int, resolve_schemes

    ids = _ids(hf_dir, samples, seq_len, text_dir)
    t0, c0, l0 = time.perf_counter(), _cpu(), os.getloadavg()
    src = open_source(hf_dir)
    res = quantize_int(src, "gptq", resolve_schemes(src, None, QuantArgs(4, group, True)), ids, out,
                       options=GPTQOptions(act_order=True, percdamp=0.01, true_sequential=true_seq), device="cpu",
                       batch_size=4, progress=False, checkpoint_format="gptq", keep_fake=True,
                       compute_dtype=getattr(torch, dtype))
    row = {**_timed(t0, c0, l0), "compute_dtype": dtype}
    torch.save({k: v for k, v in res.fake_state.items()}, Path(out).parent / f"{Path(out).name}_fake.pt")
    return row


def child_ours_bf16(*args):
    return child_ours(*args, dtype="bfloat16")


def child_gptqmodel(hf_dir, out, samples, seq_len, text_dir, group, true_seq):
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    ids = _ids(hf_dir, samples, seq_len, text_dir)
    calib = [{"input_ids": r[None], "attention_mask": torch.ones_like(r)[None]} for r in ids]
    t0, c0, l0 = time.perf_counter(), _cpu(), os.getloadavg()
    qcfg = QuantizeConfig(bits=4, group_size=group, desc_act=True, sym=True, damp_percent=0.01,
                          true_sequential=true_seq)
    model = GPTQModel.load(hf_dir, qcfg, device="cpu")
    model.quantize(calib, batch_size=4)
    model.save(out)
    return {**_timed(t0, c0, l0), "gptqmodel": __import__("gptqmodel").__version__}


def _child(argv):
    fn = {"ours": child_ours, "ours-bf16": child_ours_bf16, "gptqmodel": child_gptqmodel}[argv[0]]
    row = fn(argv[1], argv[2], int(argv[3]), int(argv[4]), Path(argv[5]), int(argv[6]), argv[7] == "1")
    row["process_cpu_seconds"] = round(_cpu(), 1)
    row["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(row), flush=True)


def _result(p: subprocess.CompletedProcess, err: str) -> dict:
    """The JSON a child printed after ``RESULT ``, or {"error": the end of ``err``}."""
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if lines else {"error": err[-2000:]}


def _run_code(code: str, env) -> dict:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return _result(p, p.stderr)


def _run_child(which, hf, out, args, env):
    cmd = [sys.executable, __file__, "--child", which, str(hf), str(out), str(args.samples), str(args.seq_len),
           str(args.text_dir), str(args.group_size), str(int(args.true_sequential))]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return _result(p, p.stderr or p.stdout)


def prepare_hf(model: str, folder: Path) -> Path:
    import torch

    from llm_quantizer.engine.skeleton import load_full_model
    from llm_quantizer.model import open_source

    src = open_source(model)
    m = load_full_model(src, "cpu", torch.bfloat16)
    m.save_pretrained(folder)
    src.tokenizer().save_pretrained(folder)
    return folder


def logits_check(hf: Path, ckpt: Path, fake_path: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 1000, (2, 64), generator=torch.Generator().manual_seed(0))
    loaded = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16, device_map="cpu").eval()
    ref = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.bfloat16).eval()
    ref.load_state_dict(torch.load(fake_path, weights_only=True), strict=False)
    with torch.no_grad():
        a, b = loaded(ids).logits.float(), ref(ids).logits.float()
        wdiff = 0.0
        for name, mod in ref.named_modules():
            if name.endswith("proj") and hasattr(loaded.get_submodule(name), "qweight"):
                eye = torch.eye(mod.weight.shape[1], dtype=torch.bfloat16)
                wdiff = max(wdiff, (loaded.get_submodule(name)(eye).t().float() - mod.weight.float()).abs().max().item())
    return {"max_abs_logit_diff": (a - b).abs().max().item(), "max_abs_logit": b.abs().max().item(),
            "max_abs_weight_diff": wdiff}


def perplexity(hf: Path, text_dir: Path, tokens: int, ckpt: Path | None = None, fake: Path | None = None) -> dict:
    """ppl on wiki_en_eval.txt (non-overlapping 512-token windows, bf16) of a checkpoint loaded by
    transformers (gptqmodel's, through optimum + gptqmodel) or of the source with a fake-quant state."""
    import torch
    from transformers import AutoModelForCausalLM

    from llm_quantizer.model import open_source

    from llm_quantizer.calibrate import adds_bos

    tok = open_source(str(hf)).tokenizer()
    ids = tok((text_dir / "wiki_en_eval.txt").read_text(), add_special_tokens=False)["input_ids"]
    win = torch.tensor(ids[: tokens // 512 * 512]).view(-1, 512)
    if adds_bos(tok):  # Gemma: BOS first in every window, as llama-perplexity does
        win[:, 0] = tok.bos_token_id
    if ckpt is not None:
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16, device_map="cpu").eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.bfloat16).eval()
        if fake is not None:
            model.load_state_dict(torch.load(fake, weights_only=True), strict=False)
    nll, n = 0.0, 0
    with torch.no_grad():
        for b in win.split(4):
            logp = torch.log_softmax(model(b).logits[:, :-1].float(), -1)
            nll -= logp.gather(-1, b[:, 1:, None]).sum().item()
            n += b[:, 1:].numel()
    return {"ppl": round(float(torch.tensor(nll / n).exp()), 4), "tokens": n}


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--text-dir", type=Path, default=TEXT)
    ap.add_argument("--gptqmodel-path", default=None, help="folder gptqmodel was installed into (--target)")
    ap.add_argument("--true-sequential", action="store_true", help="true-sequential in both (gptqmodel's default)")
    ap.add_argument("--only", default="ours,ours-bf16,gptqmodel",
                    help="arms: ours (layers in float32), ours-bf16 (layers in bfloat16), gptqmodel")
    ap.add_argument("--eval-tokens", type=int, default=4096, help="ppl of each arm on wiki_en_eval (0: skip)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gptq_vs_gptqmodel.json"))
    args = ap.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [args.gptqmodel_path, str(ROOT)])),
               OMP_NUM_THREADS=str(os.cpu_count()), GPTQMODEL_CPU_WORKERS=str(max(2, os.cpu_count() or 2)))
    result = {"model": args.model, "calibration": [args.samples, args.seq_len], "group_size": args.group_size,
              "cpu_count": os.cpu_count(), "true_sequential": args.true_sequential,
              "settings": "4-bit sym, act-order, damp 0.01, batch 4, CPU, OMP_NUM_THREADS = cpu_count", "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf = prepare_hf(args.model, tmp / "hf")
        for which in args.only.split(","):
            row = _run_child(which, hf, tmp / which, args, env)
            result["rows"][which] = row
            print(which, row, flush=True)
        if "ours" in result["rows"] and "error" not in result["rows"]["ours"] and args.gptqmodel_path:
            code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.argv = ['x']; "
                    f"from bench.gptq_vs_gptqmodel import logits_check; "
                    f"print('RESULT ' + json.dumps(logits_check({str(hf)!r}, {str(tmp / 'ours')!r}, "
                    f"{str(tmp / 'ours_fake.pt')!r})))")
            result["classic_gptq_reload"] = _run_code(code, env)
            print("classic reload", result["classic_gptq_reload"], flush=True)
        if args.eval_tokens:
            arms = {"original": "None, None"}
            for which, row in result["rows"].items():
                if "error" in row:
                    continue
                arms[which] = (f"{str(tmp / which)!r}, None" if which == "gptqmodel"
                               else f"None, {str(tmp / (which + '_fake.pt'))!r}")
            for which, a in arms.items():
                code = (f"import sys, json; from pathlib import Path; sys.path.insert(0, {str(ROOT)!r}); "
                        f"sys.argv = ['x']; from bench.gptq_vs_gptqmodel import perplexity; "
                        f"print('RESULT ' + json.dumps(perplexity(Path({str(hf)!r}), Path({str(args.text_dir)!r}), "
                        f"{args.eval_tokens}, *[None if x is None else Path(x) for x in ({a})])))")
                got = result.setdefault("perplexity", {})[which] = _run_code(code, env)
                print("ppl", which, got, flush=True)
    ppl = result.get("perplexity", {})
    print(f"\n{'arm':10} {'wall s':>8} {'CPU s':>8} {'process CPU s':>14} {'peak RSS MiB':>13} {'ppl':>8}  load start -> end")
    for which, row in result["rows"].items():
        if "error" not in row:
            print(f"{which:10} {row['seconds']:8.1f} {row['cpu_seconds']:8.1f} {row['process_cpu_seconds']:14.1f} "
                  f"{row['peak_rss_mib']:13d} {ppl.get(which, {}).get('ppl', float('nan')):8.3f}  "
                  f"{row['loadavg_start'][0]:.1f} -> {row['loadavg_end'][0]:.1f}")
    if "original" in ppl:
        print(f"original ppl {ppl['original'].get('ppl')}")
    from llm_quantizer.io import write_json

    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
