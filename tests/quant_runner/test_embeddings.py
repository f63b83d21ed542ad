"""Quantized embeddings / lm_head (int plans below the BF16-embedding floor): packed like the
linears, one shared table for tied models, reloaded (compressed-tensors' own decompressor) with
the logits of our fake-quantized model, file size as planned."""
from __future__ import annotations

import pytest
import torch

from llm_quantizer.errors import ConfigError
from llm_quantizer.model import open_source
from llm_quantizer.plan import Constraints, make_plan, to_compressed_tensors
from llm_quantizer.plan.synthetic import Shape, make_measurements
from llm_quantizer.quant_runner import quantize_int, resolve_schemes
from llm_quantizer.quant_runner.ct_load import load_dequantized, packed_embeddings
from llm_quantizer.validate.runtime import HFRuntime

IDS = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
FMTS = ["int3_g32", "int4_g32", "int8_g32", "BF16"]


def _plan(tied: bool):
    """A knapsack plan over the tiny model's tensors at 4.5 bpw (below the BF16-embedding floor)."""
    meas = make_measurements(Shape(num_layers=2, hidden=64, intermediate=128, n_heads=4, n_kv_heads=2,
                                   vocab=256), FMTS, seed=5)
    if tied:
        meas["tensors"] = [t for t in meas["tensors"] if t["name"] != "lm_head.weight"]
    total = sum(t["numel"] for t in meas["tensors"])
    meas["model"].update(total_params=total, original_bytes=2 * total)
    return make_plan(meas, "4.5bpw", FMTS, Constraints(overhead_bytes=0))


def _fake_model(src_dir, fake_state):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.bfloat16).eval()
    assert not model.load_state_dict(fake_state, strict=False).unexpected_keys
    model.tie_weights()
    return model


@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("llama", False), ("gemma3", True)])
def test_quantized_embeddings_reload_with_fake_quant_logits(tiny_models, tmp_path, arch, tied):
    src_dir = tiny_models[arch][0]
    plan = _plan(tied)
    emb = {t.name: t for t in plan.tensors if t.kind in ("embed", "lm_head")}
    assert emb and all(t.format.startswith("int") for t in emb.values())
    src = open_source(src_dir)
    res = quantize_int(src, "gptq", resolve_schemes(src, plan), IDS, tmp_path / "q", plan=plan,
                       device="cpu", progress=False, keep_fake=True)
    assert res.quantization_config == to_compressed_tensors(plan)
    assert packed_embeddings(res.path) == sorted(n[: -len(".weight")] for n in emb)
    # the checkpoint's tensor bytes are the plan's (the planner prices the packed embedding
    # exactly) plus the source tensors the synthetic plan does not list (qwen2's q/k/v biases)
    unplanned = sum(2 * src.tensors[n].numel for n in src.tensors if n not in plan.by_name())
    assert res.nbytes == plan.totals.tensor_bytes + unplanned
    with torch.no_grad():
        got = load_dequantized(res.path, dtype=torch.bfloat16)(IDS).logits.float()
        ref = _fake_model(src_dir, res.fake_state)(IDS).logits.float()
    assert (got - ref).abs().max().item() < 1e-3
    assert "load_dequantized" in (res.path / "README.md").read_text()
    # validation's runtime takes the same route
    rt = HFRuntime.from_pretrained(res.path)
    assert (rt.logits(IDS[0].tolist()) - ref[0]).abs().max().item() < 2e-2   # float32 vs bfloat16 compute


def test_classic_checkpoint_refuses_quantized_embedding(tiny_models, tmp_path):
    src_dir = tiny_models["llama"][0]
    src = open_source(src_dir)
    plan = {f"model.layers.{i}.{p}.weight": "int4_g32" for i in range(2)
            for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    plan["model.embed_tokens.weight"] = "int4_g32"
    with pytest.raises(ConfigError, match="cannot store a quantized embedding"):
        quantize_int(src, "gptq", resolve_schemes(src, plan), IDS, tmp_path / "q", device="cpu",
                     progress=False, checkpoint_format="gptq")
    plan["model.norm.weight"] = "int4_g32"
    with pytest.raises(ConfigError, match="only linears, the embedding and the lm_head"):
        resolve_schemes(src, plan)
