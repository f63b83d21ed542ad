"""A small but realistic run output directory, in the layouts the stages write."""
from __future__ import annotations

import json
from pathlib import Path

KINDS = ("q", "k", "v", "o", "gate", "up", "down")
N_LAYERS = 4
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)> & \"quotes\""


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _png(path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.plot(np.random.default_rng(seed).standard_normal(50).cumsum())
    ax.set_title(path.stem)
    fig.savefig(path, format="png", dpi=60)
    plt.close(fig)


def architecture(out: Path) -> None:
    _json(out / "architecture_analysis/architecture_analysis.json", {
        "schema_version": 1,
        "model": {"ref": "org/tiny-llama", "name": "tiny-llama", "source": "hf", "model_type": "llama",
                  "layer_map": "llama", "num_layers": N_LAYERS, "tied_embeddings": False},
        "totals": {"params": 3_000_000, "bytes": 6_000_000, "tensors": 31, "bits_per_weight": 16.0,
                   "embedding_params": 1_000_000, "decoder_params": 2_000_000, "embedding_share": 0.33,
                   "decoder_share": 0.67},
        "per_kind": {k: {"params": 70_000, "bytes": 140_000, "tensors": N_LAYERS} for k in KINDS},
        "layers": [{"layer": i, "params": 500_000, "bytes": 1_000_000, "kinds": {}} for i in range(N_LAYERS)],
        "tensors": []})
    _png(out / "architecture_analysis/layer_distribution.png", 0)


def _tensor(layer, kind) -> dict:
    name = f"model.layers.{layer}.mlp.{kind}_proj.weight" if kind in ("gate", "up", "down") else \
        f"model.layers.{layer}.self_attn.{kind}_proj.weight"
    fmt, bpw = ("Q6_K", 6.5625) if (kind == "down" and layer == 1) else (("Q4_K", 4.5) if layer % 2 else ("Q3_K", 3.4375))
    return {"name": name, "gguf_name": f"blk.{layer}.{kind}.weight", "kind": kind, "layer": layer, "shape": [256, 256],
            "numel": 65536, "format": fmt, "bytes": int(65536 * bpw / 8), "bits_per_weight": bpw,
            "predicted_error": 0.01 * (layer + 1), "importance": 1.0, "estimated": False, "reason": "solver"}


def measure_and_plan(out: Path) -> None:
    sw = [{"layer": 1, "row": 12, "col": 200, "weight": -2.75, "out_max": 410.0, "spike_ratio": 180.0,
           "tensor": "model.layers.1.mlp.down_proj.weight"}]
    _json(out / "importance_analysis/importance_analysis.json", {
        "metrics": {"lim": "1 - cos(layer input, layer output)", "bi": "block influence", "zd": "z-score distribution"},
        "layers": [{"layer": i, "lim": 0.1 * (i + 1), "bi": 0.05 * i, "zd": 0.2} for i in range(N_LAYERS)],
        "massive_activations": [{"layer": i, "value": 10.0 * (i + 1), "channel": 7, "token": 0, "median": 0.3,
                                 "ratio": 33.3 * (i + 1)} for i in range(N_LAYERS)],
        "down_proj_spikes": sw, "super_weights": sw, "selected_metric": "lim"})
    _png(out / "importance_analysis/layer_importance.png", 1)
    _png(out / "importance_analysis/weight_distributions.png", 2)
    tensors = [_tensor(i, k) for i in range(N_LAYERS) for k in KINDS]
    tensors.append({"name": "model.embed_tokens.weight", "gguf_name": "token_embd.weight", "kind": "embed",
                    "layer": None, "shape": [1000, 256], "numel": 256000, "format": "Q8_0", "bytes": 272000,
                    "bits_per_weight": 8.5, "predicted_error": 0.0, "importance": 1.0, "estimated": True,
                    "reason": "min_embed_bits"})
    tensors.append({"name": "model.norm.weight", "gguf_name": "output_norm.weight", "kind": "norm", "layer": None,
                    "shape": [256], "numel": 256, "format": "F32", "bytes": 1024, "bits_per_weight": 32.0,
                    "predicted_error": 0.0, "importance": 1.0, "estimated": False, "reason": "not quantizable"})
    _json(out / "measurements.json", {"schema_version": 1, "metric": "lim", "formats": ["Q3_K", "Q4_K", "Q6_K"],
                                      "model": {"name": "tiny-llama", "total_params": 3_000_000},
                                      "tensors": [{"name": t["name"], "kind": t["kind"], "layer": t["layer"],
                                                   "errors": {"Q3_K": 0.3, "Q4_K": 0.1}} for t in tensors]})
    _json(out / "quantization_plan/quantization_plan.json", {
        "schema_version": 1, "model": {"name": "tiny-llama"}, "family": "gguf",
        "budget": {"spec": "4.5bpw", "kind": "bpw", "value": 4.5, "bytes": 1_700_000},
        "allowed_formats": ["Q3_K", "Q4_K", "Q6_K", "Q8_0"],
        "constraints": {"keep": [["lm_head", "Q8_0"]], "min_embed_bits": 8.0, "super_weight_min_bits": 6.0},
        "tensors": tensors,
        "totals": {"bytes": 1_650_000, "bpw": 4.4, "predicted_error": 0.42, "optimal": False, "gap": 0.003}})
    _png(out / "quantization_plan/quantization_plan.png", 3)


def quantize_and_validate(out: Path) -> None:
    gguf = out / "quantized_model/tiny-llama-4.5bpw.gguf"
    gguf.parent.mkdir(parents=True, exist_ok=True)
    gguf.write_bytes(b"GGUF" + bytes(1_600_000))
    label = gguf.stem
    chosen = {"index": 3, "label": "T=0.7 top_p=0.9 rep=1.1", "reached_target": True, "rate": 0.05,
              "ppl_cost_pct": 1.2, "kept_pct": 99.0,
              "settings": {"temperature": 0.7, "top_p": 0.9, "repeat_penalty": 1.1}}
    gens = [{"prompt": f"Prompt {i}: {HOSTILE}", "original": f"The original says {i}.\nSecond line.",
             "quantized": "the the the the", "quantized_chosen": "A varied answer."} for i in range(5)]
    rec = {"label": label, "path": str(gguf), "runtime": "llama.cpp", "bytes": 1_600_004, "bits_per_weight": 4.27,
           "tokens": 2048, "ppl": 21.3, "ppl_base": 20.1, "ln_ppl_ratio": 0.058, "kld_mean": 0.061,
           "kld_median": 0.02, "kld_p99": 0.9, "same_top_pct": 88.5,
           "repetition": {"original_rate": 0.04, "before_rate": 0.31, "rate": 0.05, "reached_target": True,
                          "ppl_cost_pct": 1.2, "kept_pct": 99.0, "label": chosen["label"]},
           "prevention": {"original_rate": 0.04, "before": {"rate": 0.31},
                          "chosen": {"llama.cpp": chosen, "ollama": chosen, "transformers": {"index": None,
                                                                                            "reached_target": False}}},
           "generations": gens}
    _json(out / "validation/validation.json", {
        "version": 1, "original": {"name": "tiny-llama", "ppl": 20.1, "params": 3_000_000, "repetition_rate": 0.04},
        "eval": {"tokens": 2048, "windows": 8, "ctx": 512},
        "artifacts": [rec], "comparison": [{k: rec[k] for k in ("label", "bytes", "bits_per_weight", "ppl", "kld_mean")}
                                           | {"rep_before": 0.31, "rep_after": 0.05}]})
    _png(out / "validation/validation.png", 4)
    (out / f"validation/{label}").mkdir(parents=True, exist_ok=True)
    (out / f"validation/{label}/Modelfile").write_text(f"FROM {gguf}\nPARAMETER temperature 0.7\n")
    (out / "quantization_plan/prevent_repetition.sh").write_text("#!/usr/bin/env bash\nexec llama-cli -m x.gguf\n")
    (out / "run.sh").write_text("#!/usr/bin/env bash\nllm-quantizer run 'org/tiny-llama' --budget 4.5bpw -o out\n")
    _json(out / "run_config.json", {"version": 1, "model": "org/tiny-llama", "budget": "4.5bpw", "backend": "gguf"})


def make_run(out: Path, stages: str = "all") -> Path:
    """``stages``: 'architecture' for a partial run, 'all' for a complete one."""
    architecture(out)
    if stages == "all":
        measure_and_plan(out)
        quantize_and_validate(out)
    return out
