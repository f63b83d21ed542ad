"""Encode speed of our block encoders on CUDA vs CPU (same machine), CUDA bytes == CPU bytes, and
error-feedback encode time on CUDA. Needs only torch + numpy (imports llm_quantizer.kquants
without the package's heavier dependencies), so it runs on a bare GPU box:

    python bench/kquant_cuda_speed.py --out bench/results/kquant_cuda_speed.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _import_kquants():
    """Import llm_quantizer.kquants (+ quant.gptq for feedback) without llm_quantizer/__init__."""
    for name in ("llm_quantizer", "llm_quantizer.quant"):
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [str(ROOT / name.replace(".", "/"))]
            sys.modules[name] = m
    kq = importlib.import_module("llm_quantizer.kquants")
    fb = importlib.import_module("llm_quantizer.kquants.feedback")
    return kq, fb


def _sync(dev):
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1536)
    ap.add_argument("--cols", type=int, default=1536)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "kquant_cuda_speed.json"))
    args = ap.parse_args(argv)
    kq, fb = _import_kquants()
    kq.has_codec("Q8_0")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(args.rows, args.cols, generator=g) * torch.exp(torch.randn(args.cols, generator=g) * 0.5)
    qw = torch.exp(torch.randn(args.cols, generator=g) * 1.2)
    X = torch.randn(4096, args.cols, generator=g) * qw.sqrt()
    H = 2 / X.shape[0] * X.t() @ X
    devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for name in sorted(kq.CODECS):
        codec = kq.get_codec(name)
        rec = {"type": name, "weights": w.numel()}
        ref = ref_plain = None
        for dev in devs:
            wd, qd = w.to(dev), qw.to(dev)
            codec.encode(wd[:64], qd)          # warm-up (CUDA context, kernels)
            _sync(dev)
            t0 = time.perf_counter()
            raw = codec.encode(wd, qd)
            _sync(dev)
            rec[f"encode_{dev}_s"] = time.perf_counter() - t0
            plain = codec.encode(wd, None) if not codec.needs_imatrix else None
            if ref is None:
                ref, ref_plain = raw, plain
            else:
                rec["cuda_plain_bytes_equal_cpu"] = plain is None or bool(np.array_equal(ref_plain, plain))
                rec["cuda_bytes_equal_cpu"] = bool(np.array_equal(ref, raw))
                rec["cuda_block_mismatch"] = float((ref.reshape(-1, codec.type_size)
                                                    != raw.reshape(-1, codec.type_size)).any(1).mean())
        if "cuda" in devs:
            _sync("cuda")
            t0 = time.perf_counter()
            res = fb.feedback_encode(codec, w.cuda(), H.cuda(), qw=qw.cuda())
            _sync("cuda")
            rec["feedback_cuda_s"] = time.perf_counter() - t0
            near = codec.fake_quantize(w.cuda(), qw.cuda())
            rec["feedback_err_ratio"] = fb.output_error(w.cuda(), res.fake, H.cuda()) / \
                fb.output_error(w.cuda(), near, H.cuda())
        print(json.dumps(rec), flush=True)
        rows.append(rec)
    out = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "torch": torch.__version__, "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
           "shape": [args.rows, args.cols], "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
