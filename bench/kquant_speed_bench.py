"""Encode speed of our K-quant / IQ4_XS encoders vs llama.cpp's ggml_quantize_chunk, and exactness.

Tensors: SmolLM2-135M's layer-3 down_proj (576 x 1536, real weights) and a seeded Gaussian
1024 x 4096 (numpy default_rng(0), x0.02). Each type is encoded without and with an importance
matrix (seeded, a few dominant channels). For every row of the table the bytes are compared with
libggml's: on this machine directly, on a GPU machine (no llama.cpp there) through the sha256 of
the reference bytes written by a CPU run with --save-ref.

CPU (here):   python bench/kquant_speed_bench.py [--threads 1] [--save-ref scratch/kq_ref]
GPU machine:  python bench/kquant_speed_bench.py --device cuda --ref scratch/kq_ref
Prints a table; writes bench/results/kquant_speed_<device>.json (with os.getloadavg()).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TYPES = ("Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "IQ4_XS")
DOWN = "model.layers.3.mlp.down_proj.weight"


def _import_codecs():
    """Import llm_quantizer.kquants without the package __init__ (a GPU box lacks gguf etc.)."""
    try:
        import llm_quantizer  # noqa: F401
    except ImportError:
        sys.modules.pop("llm_quantizer", None)
        pkg = types.ModuleType("llm_quantizer")
        pkg.__path__ = [str(ROOT / "llm_quantizer")]
        sys.modules["llm_quantizer"] = pkg
    from llm_quantizer.kquants import get_codec
    return get_codec


def tensors(ref: Path | None, extra: list[str] = ()) -> dict[str, np.ndarray]:
    out = {}
    npy = None if ref is None else ref / "down_proj.npy"
    if npy is not None and npy.exists():
        out["smollm2.down_proj.3"] = np.load(npy, allow_pickle=False)
    else:
        from llm_quantizer.model import open_source
        out["smollm2.down_proj.3"] = open_source("smollm2-135m").load(DOWN).float().numpy()
    out["randn.1024x4096"] = (np.random.default_rng(0).standard_normal((1024, 4096), dtype=np.float32)
                              * np.float32(0.02))
    for shape in extra:                      # timing only where no reference exists
        r, c = (int(v) for v in shape.lower().split("x"))
        out[f"randn.{r}x{c}"] = np.random.default_rng(2).standard_normal((r, c), dtype=np.float32) * np.float32(0.02)
    return out


def imatrix(n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.random(n, dtype=np.float32) ** 4 * 50 + np.float32(0.01)).astype(np.float32)


def edge_rows(n: int = 512) -> np.ndarray:
    """The corner cases of tests/kquants/test_kquants.py (zero / constant / one-signed blocks)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, n)).astype(np.float32)
    w[1, :256] = 0
    w[1, 256:300] = 0
    w[2] *= 1e-4
    w[3] = rng.standard_t(2, n)
    w[4] = np.abs(w[4]) + 0.5
    w[5, :256] = -0.75
    w[5, 256:] = 0.25
    w[6, ::16] *= 40
    w[7] = np.round(w[7] * 4) / 4
    w[8, :32] = 1e-20
    w[9, :16] *= 1e-3
    return w


def device_equals_cpu(get_codec, qtypes, dev) -> dict[str, bool]:
    """Bytes on ``dev`` == bytes on CPU (which the tests hold equal to libggml), edge cases."""
    w = edge_rows()
    im = imatrix(w.shape[1])
    im[::37] = 0
    out = {}
    for qtype in qtypes:
        c = get_codec(qtype)
        for use_im in (False, True):
            q = torch.from_numpy(im) if use_im else None
            cpu = c.encode(torch.from_numpy(w), q)
            other = c.encode(torch.from_numpy(w).to(dev), None if q is None else q.to(dev))
            out[f"{qtype}/{'imatrix' if use_im else 'plain'}"] = bool(np.array_equal(cpu, other))
    return out


def best_time(fn, repeat: int, sync=lambda: None) -> tuple[float, object]:
    out, best = None, float("inf")
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--types", nargs="+", default=list(TYPES))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--ref", type=Path, default=None, help="folder with ref.json (+ down_proj.npy) from --save-ref")
    ap.add_argument("--save-ref", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--shape", nargs="*", default=[], help="extra seeded Gaussian tensors RxC (timing)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    get_codec = _import_codecs()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ref = json.loads((a.ref / "ref.json").read_text()) if a.ref else {}
    use_ggml = not a.ref
    if use_ggml:
        from llm_quantizer.ggml.quantize import quantize_tensor
    load0 = os.getloadavg()
    edge = device_equals_cpu(get_codec, a.types, dev) if dev.type != "cpu" else None
    if edge is not None:
        print("edge cases, device bytes == cpu bytes:", edge, flush=True)
    rows, saved = [], {}
    for tname, w in tensors(a.ref, a.shape).items():
        im = imatrix(w.shape[1])
        wt = torch.from_numpy(w).to(dev)
        imt = torch.from_numpy(im).to(dev)
        for qtype in a.types:
            codec = get_codec(qtype)
            for use_im in (False, True):
                key = f"{tname}/{qtype}/{'imatrix' if use_im else 'plain'}"
                t_ours, ours = best_time(lambda: codec.encode(wt, imt if use_im else None), a.repeat, sync)
                row = {"tensor": tname, "shape": list(w.shape), "type": qtype, "imatrix": use_im,
                       "ours_s": t_ours, "weights_per_s": w.size / t_ours}
                if use_ggml:
                    imat = im if use_im else None
                    t1, refb = best_time(lambda: quantize_tensor(w, qtype, imat, nthread=1), a.repeat)
                    tn, _ = best_time(lambda: quantize_tensor(w, qtype, imat, nthread=os.cpu_count()), a.repeat)
                    bad = (ours.reshape(-1, codec.type_size) != refb.reshape(-1, codec.type_size)).any(1)
                    row.update(ggml_1t_s=t1, ggml_nt_s=tn, ggml_threads=os.cpu_count(),
                               exact=not bad.any(), bad_blocks=int(bad.sum()), blocks=int(bad.size))
                    saved[key] = {"sha256": sha(refb), "ggml_1t_s": t1, "ggml_nt_s": tn}
                else:
                    r = ref.get(key)
                    row.update(exact=None if r is None else sha(ours) == r["sha256"],
                               ggml_1t_s=None if r is None else r["ggml_1t_s"],
                               ggml_nt_s=None if r is None else r["ggml_nt_s"])
                rows.append(row)
                print(f"{key:42s} ours {t_ours:8.3f}s  ggml-1t {row['ggml_1t_s'] or float('nan'):7.3f}s  "
                      f"ggml-nt {row['ggml_nt_s'] or float('nan'):7.3f}s  exact {row['exact']}", flush=True)
    if a.save_ref:
        a.save_ref.mkdir(parents=True, exist_ok=True)
        (a.save_ref / "ref.json").write_text(json.dumps(saved, indent=1))
        np.save(a.save_ref / "down_proj.npy", tensors(None)["smollm2.down_proj.3"])
    meta = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "loadavg_before": load0, "loadavg_after": os.getloadavg(), "repeat": a.repeat,
            "ggml_reference": "measured here" if use_ggml else f"sha256 + timings from {a.ref}",
            "edge_cases_device_equals_cpu": edge}
    out = a.out or RESULTS / f"kquant_speed_{dev.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps(meta))
    print(f"wrote {out}")
    ok = all(r["exact"] is not False for r in rows) and (edge is None or all(edge.values()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
