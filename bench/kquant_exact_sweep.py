"""Exactness sweep: every tensor of a model whose rows are a multiple of 256, every K-quant type
(and IQ4_XS), without and with the model's real importance matrix; our bytes vs libggml's.

The imatrix is read from bench/results/<model>-gguf/importance_analysis/imatrix.gguf (written by
bench/plan_real_bench.py) when present, else from --imatrix. Prints mismatching blocks per type
and writes bench/results/kquant_exact_sweep_<model>.json.

Run: python bench/kquant_exact_sweep.py [--models smollm2-135m gemma3-270m] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_quantizer.ggml import load_imatrix_means  # noqa: E402
from llm_quantizer.ggml.quantize import quantize_tensor  # noqa: E402
from llm_quantizer.kquants import get_codec  # noqa: E402
from llm_quantizer.model import open_source  # noqa: E402

TYPES = ("Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "IQ4_XS")


def sweep(model: str, types, imatrix_path: Path | None) -> dict:
    src = open_source(model)
    means = load_imatrix_means(imatrix_path) if imatrix_path and imatrix_path.exists() else {}
    out = {t: {"plain": [0, 0], "imatrix": [0, 0]} for t in types}
    tensors, t_ours, t_ggml = [], 0.0, 0.0
    for name, info in src.tensors.items():
        if len(info.shape) != 2 or info.shape[-1] % 256:
            continue
        w = src.load(name).float().numpy()
        im = means.get(src.gguf_name(name) or "")
        tensors.append({"name": name, "shape": list(w.shape), "imatrix": im is not None})
        for t in types:
            codec = get_codec(t)
            for mode, q in (("plain", None), ("imatrix", im)):
                if mode == "imatrix" and q is None:
                    continue
                q = None if q is None else np.ascontiguousarray(q, dtype=np.float32)
                t0 = time.perf_counter()
                ours = codec.encode(torch.from_numpy(w), None if q is None else torch.from_numpy(q))
                t1 = time.perf_counter()
                ref = quantize_tensor(w, t, q, nthread=1)
                t_ours, t_ggml = t_ours + t1 - t0, t_ggml + time.perf_counter() - t1
                bad = (ours.reshape(-1, codec.type_size) != ref.reshape(-1, codec.type_size)).any(1)
                out[t][mode][0] += int(bad.sum())
                out[t][mode][1] += int(bad.size)
        print(f"{model} {name} {tuple(w.shape)} done", flush=True)
    return {"model": model, "imatrix": str(imatrix_path) if means else None, "tensors": tensors,
            "mismatching_blocks": out, "ours_s": t_ours, "ggml_1t_s": t_ggml}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--types", nargs="+", default=list(TYPES))
    ap.add_argument("--imatrix", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ok = True
    for model in a.models:
        im = a.imatrix or ROOT / "bench" / "results" / f"{model}-gguf" / "importance_analysis" / "imatrix.gguf"
        load0 = os.getloadavg()
        res = sweep(model, a.types, im)
        res["loadavg"] = [load0, os.getloadavg()]
        for t, modes in res["mismatching_blocks"].items():
            print(model, t, {m: f"{b}/{n}" for m, (b, n) in modes.items()})
            ok &= all(b == 0 for b, _ in modes.values())
        path = ROOT / "bench" / "results" / f"kquant_exact_sweep_{model}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1))
        print("wrote", path)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
