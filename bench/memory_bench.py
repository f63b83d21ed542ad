"""Peak memory of the streaming engine on a random llama of ~2 GB of bf16 weights.

Default shape: TinyLlama-1.1B's (22 layers, hidden 2048, intermediate 5632, 32 heads, 4 KV heads,
vocab 32000, untied head): 2.05 GiB. The model is written layer by layer as sharded safetensors (one shard per decoder layer, one for
the embeddings, one for the head), never held whole. Two subprocesses:
  baseline  imports torch + transformers and builds the engine's skeleton (meta weights) only
  engine    the same, then runs the engine with activation statistics (imatrix + full H) and
            importance (LIM/BI/ZD) on N x L random token ids
Reported: peak RSS of each (VmHWM) and the engine's peak above the baseline, as a share of
the model's size (goal: < 25 %), with the RSS at each layer's end and in the head stage.

Run: python bench/memory_bench.py [--probes gguf] [--layers 22 --hidden 2048 --intermediate 5632 --samples 8 --seq-len 256]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _peak_mib() -> float:
    """Peak RSS of this process so far: VmHWM (ru_maxrss would carry the parent's RSS over fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_model(out: Path, args) -> int:
    """Write a random llama to ``out``, one shard per decoder layer; returns the weight bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, vocab_size=args.vocab, max_position_embeddings=4096,
                      tie_word_embeddings=False, torch_dtype="bfloat16")
    cfg.save_pretrained(out)
    h, i, d = args.hidden, args.intermediate, args.hidden // args.heads
    kv = args.kv_heads * d
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    shards = [("embed", {"model.embed_tokens.weight": lambda: rnd(args.vocab, h)})]
    for n in range(args.layers):
        p = f"model.layers.{n}."
        shards.append((f"layer{n}", {
            p + "self_attn.q_proj.weight": lambda: rnd(h, h), p + "self_attn.k_proj.weight": lambda: rnd(kv, h),
            p + "self_attn.v_proj.weight": lambda: rnd(kv, h), p + "self_attn.o_proj.weight": lambda: rnd(h, h),
            p + "mlp.gate_proj.weight": lambda: rnd(i, h), p + "mlp.up_proj.weight": lambda: rnd(i, h),
            p + "mlp.down_proj.weight": lambda: rnd(h, i),
            p + "input_layernorm.weight": lambda: torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": lambda: torch.ones(h, dtype=torch.bfloat16)}))
    shards.append(("head", {"model.norm.weight": lambda: torch.ones(h, dtype=torch.bfloat16),
                            "lm_head.weight": lambda: rnd(args.vocab, h)}))
    weight_map, total = {}, 0
    for k, (_, makers) in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: make() for name, make in makers.items()}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in tensors})
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    return total


def child(part: str, model_dir: str, samples: int, seq_len: int, batch_size: int, dtype: str = "float32",
          max_full: int = 8192, probes: str = "none") -> dict:
    import torch
    import transformers  # noqa: F401

    from llm_quantizer.engine import EngineOptions, LayerwiseEngine, Observer
    from llm_quantizer.engine.observers.activations import ActivationStats
    from llm_quantizer.engine.observers.importance import ImportanceObserver
    from llm_quantizer.engine.skeleton import build_skeleton
    from llm_quantizer.model import open_source

    src = open_source(model_dir)
    if part == "baseline":
        build_skeleton(src)
        return {"part": part, "peak_rss_mib": _peak_mib(), "rss_mib": _rss_mib()}

    class RssTrace(Observer):
        name = "rss-trace"

        def __init__(self):
            self.layers = []
            self.head = None

        def layer_end(self, ctx):
            self.layers.append(round(_rss_mib(), 1))

        def finish(self, final):
            self.head = round(_rss_mib(), 1)

    ids = torch.randint(0, src.config.vocab_size, (samples, seq_len), generator=torch.Generator().manual_seed(0))
    trace = RssTrace()
    t0 = time.perf_counter()
    eng = LayerwiseEngine(src, EngineOptions(device="cpu", batch_size=batch_size, progress=False,
                                             dtype=getattr(torch, dtype)))
    obs = [ActivationStats(max_full=max_full), ImportanceObserver()]
    if probes != "none":   # the measure stage's full set: outliers and the per-format error probes too
        from llm_quantizer.engine.observers.outliers import OutlierObserver
        from llm_quantizer.engine.observers.probes import ErrorProbe
        from llm_quantizer.measure.run import DEFAULT_FORMATS

        obs += [OutlierObserver(), ErrorProbe(DEFAULT_FORMATS[probes])]
    eng.run(ids, obs + [trace])
    return {"part": part, "seconds": time.perf_counter() - t0, "peak_rss_mib": _peak_mib(), "rss_mib": _rss_mib(),
            "rss_at_layer_end_mib": trace.layers, "rss_in_head_stage_mib": trace.head}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="engine compute dtype")
    ap.add_argument("--max-full", type=int, default=8192,
                    help="ActivationStats: full H for linears up to this many inputs (0: imatrix only)")
    ap.add_argument("--probes", default="none", choices=("none", "gguf", "int"),
                    help="also run the outlier observer and the error probes of this format family (the measure "
                         "stage's observers)")
    ap.add_argument("--work", default=None, help="model folder (default: a temporary one, removed after)")
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory_bench.json"))
    args = ap.parse_args(argv)
    if args.child:
        res = child(args.child[0], args.child[1], args.samples, args.seq_len, args.batch_size, args.dtype,
                    args.max_full, args.probes)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    from llm_quantizer.io import write_json

    with tempfile.TemporaryDirectory(prefix="llmq_memory_bench_") as tmp:
        model_dir = Path(args.work or tmp)
        model_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if (model_dir / "model.safetensors.index.json").exists():
            size = json.loads((model_dir / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
        else:
            size = build_model(model_dir, args)
        print(f"random llama: {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
              f"vocab {args.vocab}: {size / 2**30:.2f} GiB of bf16 weights ({time.perf_counter() - t0:.0f} s to build, "
              f"builder peak RSS {_peak_mib():.0f} MiB)")
        rows = {}
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        for part in ("baseline", "engine"):
            cmd = [sys.executable, __file__, "--child", part, str(model_dir), "--samples", str(args.samples),
                   "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--dtype", args.dtype,
                   "--max-full", str(args.max_full), "--probes", args.probes]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"part {part} failed (rc {proc.returncode})")
            rows[part] = json.loads(line[0][7:])
    base, eng = rows["baseline"]["peak_rss_mib"], rows["engine"]
    above = eng["peak_rss_mib"] - base
    share = above * 2**20 / size
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"calibration {args.samples} x {args.seq_len} random ids, batch {args.batch_size}, compute dtype "
          f"{args.dtype}, full H up to {args.max_full} inputs, probes {args.probes}; engine {eng['seconds']:.0f} s; load avg {load}")
    print(f"{'':28} {'MiB':>8}")
    print(f"{'model weights (bf16)':28} {size / 2**20:8.0f}")
    print(f"{'baseline peak RSS':28} {base:8.0f}")
    print(f"{'engine peak RSS':28} {eng['peak_rss_mib']:8.0f}")
    print(f"{'engine peak above baseline':28} {above:8.0f}   = {100 * share:.1f} % of the model (goal < 25 %)")
    print(f"RSS at each layer's end (MiB): {eng['rss_at_layer_end_mib']}; in the head stage: "
          f"{eng['rss_in_head_stage_mib']}")
    path = write_json(args.out, {"model": {"layers": args.layers, "hidden": args.hidden,
                                           "intermediate": args.intermediate, "vocab": args.vocab,
                                           "weight_bytes": size},
                                 "calibration": [args.samples, args.seq_len], "loadavg": load,
                                 "dtype": args.dtype, "max_full": args.max_full, "probes": args.probes,
                                 "baseline": rows["baseline"], "engine": eng, "above_baseline_mib": above,
                                 "share_of_model": share})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
