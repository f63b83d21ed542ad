"""The measure stage's calibration pass on a GPU, on a random model with the real shapes of
Llama-3.2-1B (default) or Qwen2.5-3B: tokens per second and peak GPU memory, against one plain
forward pass of the whole model on the same GPU and against one decoder layer + activations.

The model is generated in the bench (random bf16 weights, std 0.02, one safetensors shard per
decoder layer, written to ``--work`` on the local disk) and read back by the engine like any HF
directory. Parts, in one process, each after ``torch.cuda.reset_peak_memory_stats``:
  forward   the whole model on the GPU (``load_full_model``), ``model(ids)`` batch by batch
  noprobes  the streaming engine with activation statistics (imatrix + full H), importance
            (LIM/BI/ZD) and outliers / super weights
  engine    the same plus the per-format error probes of the int family (int2/3/4/8 x g32/64/128,
            our RTN on the GPU; the GGUF probes need llama.cpp's CPU quantizers and are left out)
Peak GPU memory of the engine is split into the decoder-layer stage (max over layers) and the
embedding / head stages, and compared with its parts: one decoder layer's weights in the compute
dtype, the two activation caches (layer input and output of every calibration sequence), the
layer's H matrices, and one batch's intermediate activations.

Run: python bench/gpu_pipeline_bench.py [--shape llama-3.2-1b|qwen2.5-3b] [--samples 128 --seq-len 2048]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

SHAPES = {
    # config.json of meta-llama/Llama-3.2-1B and Qwen/Qwen2.5-3B (shapes only)
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5,
                         max_position_embeddings=131072,
                         rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
    "qwen2.5-3b": dict(model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768),
}


def _layer_shapes(c: dict) -> dict[str, tuple]:
    h, i = c["hidden_size"], c["intermediate_size"]
    d = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    shapes = {"self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h),
              "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, q),
              "mlp.gate_proj.weight": (i, h), "mlp.up_proj.weight": (i, h), "mlp.down_proj.weight": (h, i),
              "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}
    if c["model_type"] == "qwen2":
        shapes.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)})
    return shapes


def build_model(out: Path, shape: str, layers: int | None = None) -> int:
    """Random bf16 weights with ``shape``'s config, one shard per decoder layer; returns bytes."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    c = dict(SHAPES[shape])
    if layers:
        c["num_hidden_layers"] = layers
    cfg = AutoConfig.for_model(**c, torch_dtype="bfloat16")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=dev).manual_seed(0)

    def make(name, s):
        if len(s) == 1:
            return torch.ones(s, dtype=torch.bfloat16) if name.endswith("norm.weight") else torch.zeros(s, dtype=torch.bfloat16)
        return (torch.randn(s, generator=gen, device=dev) * 0.02).to(torch.bfloat16).cpu()

    shards = [{"model.embed_tokens.weight": (c["vocab_size"], c["hidden_size"])}]
    shards += [{f"model.layers.{n}.{k}": s for k, s in _layer_shapes(c).items()} for n in range(c["num_hidden_layers"])]
    head = {"model.norm.weight": (c["hidden_size"],)}
    if not c["tie_word_embeddings"]:
        head["lm_head.weight"] = (c["vocab_size"], c["hidden_size"])
    shards.append(head)
    weight_map, total = {}, 0
    for k, spec in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: make(name, s) for name, s in spec.items()}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in tensors})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    return total


def _mib(n: float) -> float:
    return n / 2**20


CUDA = torch.cuda.is_available()   # without one (a smoke test on CPU: --device cpu) memory reads 0


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _peak() -> int:
    return torch.cuda.max_memory_allocated() if CUDA else 0


def _reset():
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_forward(src, ids, batch_size, dtype, device) -> dict:
    from llm_quantizer.engine.skeleton import load_full_model

    _reset()
    model = load_full_model(src, device, dtype)
    weights = torch.cuda.memory_allocated() if CUDA else 0
    with torch.no_grad():   # warm-up batch (kernel selection), not timed
        model(input_ids=ids[:batch_size].to(device), use_cache=False)
    _sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in torch.split(ids, batch_size):
            model(input_ids=b.to(device), use_cache=False)
    _sync()
    sec = time.perf_counter() - t0
    peak = _peak()
    del model
    _reset()
    return {"part": "forward", "seconds": sec, "tokens_per_s": ids.numel() / sec,
            "peak_gpu_mib": _mib(peak), "weights_gpu_mib": _mib(weights)}


def run_engine(src, ids, batch_size, dtype, probes: bool, device) -> dict:
    from llm_quantizer.engine import EngineOptions, LayerwiseEngine, Observer
    from llm_quantizer.engine.observers.activations import ActivationStats
    from llm_quantizer.engine.observers.importance import ImportanceObserver
    from llm_quantizer.engine.observers.outliers import OutlierObserver
    from llm_quantizer.engine.observers.probes import ErrorProbe
    from llm_quantizer.measure.run import DEFAULT_FORMATS

    class StagePeaks(Observer):
        """Peak GPU memory of each decoder-layer stage (reset at its start) and of the head stage."""
        name = "stage-peaks"

        def __init__(self):
            self.before_layers, self.layers, self.head, self.times = None, [], None, []

        def layer_start(self, ctx):
            _sync()
            if self.before_layers is None:
                self.before_layers = _peak()
            if CUDA:
                torch.cuda.reset_peak_memory_stats()
            self.times.append(time.perf_counter())

        def layer_end(self, ctx):  # observers run in order: this one last, after the probes
            _sync()
            self.layers.append(_peak())
            self.times[-1] = time.perf_counter() - self.times[-1]
            if CUDA:
                torch.cuda.reset_peak_memory_stats()

        def finish(self, final):
            pass

    _reset()
    peaks = StagePeaks()
    obs = [ActivationStats(), ImportanceObserver(), OutlierObserver()]
    if probes:
        obs.append(ErrorProbe(DEFAULT_FORMATS["int"]))
    obs.append(peaks)
    _sync()
    t0 = time.perf_counter()
    eng = LayerwiseEngine(src, EngineOptions(device=device, dtype=dtype, batch_size=batch_size, progress=False))
    eng.run(ids, obs)
    _sync()
    sec = time.perf_counter() - t0
    head_peak = _peak()   # since the last layer's end: the head stage
    return {"part": "engine" if probes else "noprobes", "seconds": sec, "tokens_per_s": ids.numel() / sec,
            "peak_gpu_mib": _mib(max([peaks.before_layers or 0, head_peak] + peaks.layers)),
            "embed_stage_peak_gpu_mib": _mib(peaks.before_layers or 0),
            "layer_stage_peak_gpu_mib": _mib(max(peaks.layers)), "head_stage_peak_gpu_mib": _mib(head_peak),
            "layer_seconds_median": sorted(peaks.times)[len(peaks.times) // 2],
            "formats": DEFAULT_FORMATS["int"] if probes else []}


def expected_layer_stage(cfg: dict, tokens: int, batch: int, seq: int, dtype_bytes: int) -> dict:
    """Bytes the decoder-layer stage must hold: weights, both activation caches, H, one batch."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    weights = sum(int(torch.tensor(s).prod()) for s in _layer_shapes(cfg).values()) * dtype_bytes
    d = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * d
    caches = 2 * tokens * h * dtype_bytes
    hess = (h * h * 2 + q * q + i * i) * 4          # qkv input, gate/up input, o input, down input (float32)
    batch_act = batch * seq * (3 * i + 4 * h + 2 * q) * dtype_bytes   # MLP gate/up/act, attention q/k/v/o, norms
    # SDPA's math kernel (float32 with grouped KV heads: neither flash nor memory-efficient
    # attention takes it) materialises the scores and the probabilities of one batch
    scores = 2 * batch * cfg["num_attention_heads"] * seq * seq * dtype_bytes
    return {"layer_weights_mib": _mib(weights), "activation_caches_mib": _mib(caches), "hessians_mib": _mib(hess),
            "one_batch_activations_mib": _mib(batch_act),
            "total_mib": _mib(weights + caches + hess + batch_act),
            "attention_scores_if_math_sdpa_mib": _mib(scores),
            "total_with_attention_scores_mib": _mib(weights + caches + hess + batch_act + scores)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=None, help="fewer decoder layers (smoke tests)")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of the bench itself")
    ap.add_argument("--parts", default="forward,noprobes,engine")
    ap.add_argument("--work", default="/tmp/llmq_gpu_bench_model", help="model folder (reused when present)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_pipeline_bench.json"))
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not CUDA:
        raise SystemExit("gpu_pipeline_bench needs a CUDA GPU (--device cpu for a smoke test)")
    from llm_quantizer.model import open_source

    work = Path(args.work)
    t0 = time.perf_counter()
    if (work / "model.safetensors.index.json").exists():
        size = json.loads((work / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    else:
        size = build_model(work, args.shape, args.layers)
    build_s = time.perf_counter() - t0
    src = open_source(str(work))
    params = sum(t.numel for t in src.tensors.values())
    dtype = getattr(torch, args.dtype)
    ids = torch.randint(0, src.config.vocab_size, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))
    gpu = torch.cuda.get_device_name() if CUDA else "cpu"
    print(f"{args.shape}: {params / 1e9:.2f} B params, {size / 2**30:.2f} GiB bf16 ({build_s:.0f} s to build); "
          f"{gpu}; {args.samples} x {args.seq_len} tokens, batch {args.batch_size}, compute {args.dtype}", flush=True)
    rows = []
    for part in args.parts.split(","):
        row = run_forward(src, ids, args.batch_size, dtype, args.device) if part == "forward" else \
            run_engine(src, ids, args.batch_size, dtype, part == "engine", args.device)
        rows.append(row)
        print(f"  {part}: {row['seconds']:.1f} s, {row['tokens_per_s']:.0f} tok/s, peak GPU "
              f"{row['peak_gpu_mib']:.0f} MiB", flush=True)
    exp = expected_layer_stage(dict(SHAPES[args.shape]), ids.numel(), args.batch_size, args.seq_len,
                               torch.finfo(dtype).bits // 8)
    fwd = next((r for r in rows if r["part"] == "forward"), None)
    print(f"\n{'part':9} {'wall s':>8} {'tok/s':>9} {'x fwd time':>10} {'peak GPU MiB':>13} {'layer stage':>12} "
          f"{'embed stage':>12} {'head stage':>11}")
    for r in rows:
        ratio = r["seconds"] / fwd["seconds"] if fwd else float("nan")
        r["ratio_to_forward"] = ratio
        print(f"{r['part']:9} {r['seconds']:8.1f} {r['tokens_per_s']:9.0f} {ratio:10.2f} {r['peak_gpu_mib']:13.0f} "
              f"{r.get('layer_stage_peak_gpu_mib', float('nan')):12.0f} {r.get('embed_stage_peak_gpu_mib', float('nan')):12.0f} "
              f"{r.get('head_stage_peak_gpu_mib', float('nan')):11.0f}")
    print("one decoder layer + activations (MiB): " + ", ".join(f"{k[:-4]} {v:.0f}" for k, v in exp.items()))
    if fwd:
        print(f"  forward: whole model in {args.dtype} {fwd['weights_gpu_mib']:.0f} MiB on the GPU")
    for r in rows:
        if "layer_stage_peak_gpu_mib" in r:
            print(f"  {r['part']}: layer-stage peak / (one layer + activations) = "
                  f"{r['layer_stage_peak_gpu_mib'] / exp['total_mib']:.2f} "
                  f"({r['layer_stage_peak_gpu_mib'] / exp['total_with_attention_scores_mib']:.2f} counting the "
                  f"attention scores); whole-run peak / whole model "
                  f"in {args.dtype} = {r['peak_gpu_mib'] / (_mib(params * torch.finfo(dtype).bits / 8)):.2f}")
    from llm_quantizer.io import write_json

    path = write_json(args.out, {"shape": args.shape, "config": SHAPES[args.shape], "params": params,
                                 "weight_bytes_bf16": size, "gpu": gpu, "torch": torch.__version__,
                                 "samples": args.samples, "seq_len": args.seq_len, "batch_size": args.batch_size,
                                 "dtype": args.dtype, "expected_layer_stage": exp, "rows": rows,
                                 "cpu_count": os.cpu_count()})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
