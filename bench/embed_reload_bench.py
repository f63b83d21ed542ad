"""Int plans with a quantized embedding on real models: file size vs plan and budget, and the
reloaded checkpoint's logits vs our fake-quantized model.

For each model and budget the int plan is made from the cached measurements of
bench/plan_real_bench.py (bench/results/<model>-int/measurements.json, default constraints), the
model is quantized with RTN (the writer and packing are the same for GPTQ/AWQ; RTN keeps this
cheap on CPU) into scratch, reloaded with ``llm_quantizer.quant_runner.ct_load.load_dequantized``
(compressed-tensors' own decompressor) and compared in bfloat16 with the source model carrying
the fake-quantized weights, on 2 x 128 tokens of wiki_en_eval.txt.

Prints a table and writes bench/results/embed_reload_bench.json.
Run: python bench/embed_reload_bench.py [--models smollm2-135m] [--budgets 3bpw]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_quantizer.io import read_json, write_json  # noqa: E402
from llm_quantizer.model import open_source  # noqa: E402
from llm_quantizer.plan import make_plan  # noqa: E402
from llm_quantizer.quant_runner import quantize_int, resolve_schemes  # noqa: E402
from llm_quantizer.quant_runner.ct_load import load_dequantized, packed_embeddings  # noqa: E402
from plan_real_bench import RESULTS, constraints_for  # noqa: E402

EVAL_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "wiki_en_eval.txt"


def _ids(source, n: int = 2, length: int = 128) -> torch.Tensor:
    tok = source.tokenizer()
    ids = tok(EVAL_TEXT.read_text()[:20000], return_tensors="pt").input_ids[0]
    return ids[: n * length].reshape(n, length)


def _fake_model(source, fake_state: dict):
    """The source model (bf16) with our fake-quantized weights swapped in."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(source.config, dtype=torch.bfloat16)
    state = {n: source.load(n).to(torch.bfloat16) for n in source.tensors}
    state.update(fake_state)
    res = model.load_state_dict(state, strict=False)
    assert not res.unexpected_keys, res.unexpected_keys[:3]
    model.tie_weights()
    return model.eval()


def run_one(model: str, budget: str, workdir: Path) -> dict:
    meas = read_json(RESULTS / f"{model}-int" / "measurements.json")
    plan = make_plan(meas, budget, allowed_formats=meas["formats"],
                     constraints=constraints_for(meas, meas["formats"]))
    src = open_source(model)
    t0 = time.perf_counter()
    res = quantize_int(src, "rtn", resolve_schemes(src, plan), None, workdir / "q", plan=plan,
                       device="cpu", progress=False, keep_fake=True)
    quant_s = time.perf_counter() - t0
    files = [p for p in res.path.iterdir() if p.suffix == ".safetensors"]
    file_bytes = sum(p.stat().st_size for p in files)
    ids = _ids(src)
    with torch.no_grad():
        got = load_dequantized(res.path, dtype=torch.bfloat16)(ids).logits.float()
        ref = _fake_model(src, res.fake_state)(ids).logits.float()
    emb = {t.name: t.format for t in plan.tensors if t.kind in ("embed", "lm_head")}
    return {"model": model, "budget": budget, "budget_bytes": plan.totals.budget_bytes,
            "plan_bytes": plan.totals.bytes, "plan_tensor_bytes": plan.totals.tensor_bytes,
            "safetensors_bytes": file_bytes, "within_budget": file_bytes <= plan.totals.budget_bytes,
            "file_vs_plan_tensor_bytes": file_bytes / plan.totals.tensor_bytes - 1,
            "embedding": emb, "packed": packed_embeddings(res.path),
            "logits_max_abs_diff": (got - ref).abs().max().item(), "max_abs_logit": ref.abs().max().item(),
            "top1_agree": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            "tokens": ids.numel(), "quantize_s": quant_s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--budgets", nargs="+", default=["3bpw"])
    ap.add_argument("--out", default=str(RESULTS / "embed_reload_bench.json"))
    args = ap.parse_args(argv)
    rows = []
    for model in args.models:
        for budget in args.budgets:
            work = Path(tempfile.mkdtemp(prefix="embed_reload_", dir=os.environ.get("TMPDIR")))
            try:
                rows.append(run_one(model, budget, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    print(f"{'model':13} {'budget':7} {'budget B':>12} {'file B':>12} {'file/plan-1':>11} "
          f"{'max|dlogit|':>11} {'max|logit|':>10} {'top1':>5} embedding")
    for r in rows:
        print(f"{r['model']:13} {r['budget']:7} {r['budget_bytes']:12,d} {r['safetensors_bytes']:12,d} "
              f"{r['file_vs_plan_tensor_bytes']:11.2e} {r['logits_max_abs_diff']:11.3g} {r['max_abs_logit']:10.3g} "
              f"{r['top1_agree']:5.3f} {r['embedding']}")
    write_json(args.out, {"load_avg": os.getloadavg(), "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
