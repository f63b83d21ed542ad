"""GPTQ / AWQ / RTN passes -> compressed-tensors checkpoints that transformers reloads with the
logits of our own fake-quantized model (uniform, mixed plans, 3/4/8 bits, tied embeddings)."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import build_tiny
from llm_quantizer.model import open_source
from llm_quantizer.plan import make_plan
from llm_quantizer.plan.synthetic import Shape, make_measurements
from llm_quantizer.quant.rtn import QuantArgs
from llm_quantizer.quant_runner import quantize_int, resolve_schemes

IDS = torch.randint(0, 256, (6, 32), generator=torch.Generator().manual_seed(1))


def _quantize(src_dir, out, method, plan=None, default=QuantArgs(4, 32, True)):
    src = open_source(src_dir)
    schemes = resolve_schemes(src, plan, None if plan is not None else default)
    return quantize_int(src, method, schemes, IDS, out, plan=plan, device="cpu", progress=False, keep_fake=True)


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits.float()


def _reference(src_dir, fake_state, dtype=torch.bfloat16):
    """Our fake-quant model: the source model with the decompressed layer tensors swapped in."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=dtype).eval()
    res = model.load_state_dict(fake_state, strict=False)
    assert not res.unexpected_keys
    return model


def _reload_diff(src_dir, res) -> tuple[float, float]:
    """(max |checkpoint - fake-quant| logits, max |checkpoint - float| logits)."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(res.path).eval()
    assert loaded.dtype == torch.bfloat16
    got = _logits(loaded)
    ref = _logits(_reference(src_dir, res.fake_state))
    flt = _logits(AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.bfloat16).eval())
    return (got - ref).abs().max().item(), (got - flt).abs().max().item()


@pytest.mark.parametrize("arch,method", [("llama", "gptq"), ("qwen3", "gptq"), ("phi3", "gptq"),
                                         ("llama", "awq"), ("qwen3", "awq"), ("gemma3", "awq"),
                                         ("gemma3", "gptq"), ("qwen2", "rtn")])
def test_uniform_4bit_reloads_with_fake_quant_logits(tiny_models, tmp_path, arch, method):
    src_dir = tiny_models[arch][0]
    res = _quantize(src_dir, tmp_path / "q", method)
    diff, vs_float = _reload_diff(src_dir, res)
    assert diff < 1e-3
    assert vs_float > 1e-3                      # it did quantize
    cfg = json.loads((res.path / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["quantization_config"]["format"] == "pack-quantized"
    assert (res.path / "generation_config.json").is_file() and (res.path / "README.md").is_file()
    assert not list(tmp_path.glob(".q.*"))      # no staging left behind


def _tiny_llama_plan():
    """A real knapsack plan over the tiny llama's tensors (the synthetic shapes match it)."""
    shape = Shape(num_layers=2, hidden=64, intermediate=128, n_heads=4, n_kv_heads=2, vocab=256)
    fmts = ["int3_g32", "int4_g32", "int8_g32", "int8_gch", "BF16"]
    return make_plan(make_measurements(shape, fmts, seed=3), "0.88", fmts)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_mixed_plan_reloads(tiny_models, tmp_path, method):
    src_dir = tiny_models["llama"][0]
    plan = _tiny_llama_plan()
    res = _quantize(src_dir, tmp_path / "q", method, plan=plan)
    labels = {a and (a.bits, a.group_size) for a in res.schemes.values()}
    assert len(labels) >= 3, labels              # really mixed (3, 4 and 8 bits)
    diff, _ = _reload_diff(src_dir, res)
    assert diff < 1e-3
    from llm_quantizer.plan import to_compressed_tensors

    assert res.quantization_config == to_compressed_tensors(plan)
    card = (res.path / "README.md").read_text()
    assert "| layer |" in card and "int" in card


def test_mixed_mapping_with_3bit_channel_and_bf16_tied(tiny_models, tmp_path):
    """3-bit group, 8-bit channel, 4-bit and 16-bit linears in one qwen3 (tied embeddings)."""
    src_dir = tiny_models["qwen3"][0]
    plan = {}
    for i in range(2):
        p = f"model.layers.{i}."
        plan.update({p + "self_attn.q_proj.weight": "int3_g32", p + "self_attn.k_proj.weight": "int8_gch",
                     p + "self_attn.v_proj.weight": "int4_g32", p + "self_attn.o_proj.weight": "BF16",
                     p + "mlp.gate_proj.weight": "int3_g32", p + "mlp.up_proj.weight": "int4_g64",
                     p + "mlp.down_proj.weight": "int8_g32"})
    res = _quantize(src_dir, tmp_path / "q", "gptq", plan=plan)
    assert len(res.quantization_config["config_groups"]) == 5
    assert "model.layers.0.self_attn.o_proj" in res.quantization_config["ignore"]
    diff, _ = _reload_diff(src_dir, res)
    assert diff < 1e-3


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_asymmetric_packs_to_the_spec(tiny_models, tmp_path, method):
    """Zero-point checkpoints: compressed-tensors' own decompressor gives our fake weights.
    (transformers >= 5.23 refuses to load them with compressed-tensors >= 0.18; see the backend.)"""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from safetensors.torch import load_file

    res = _quantize(tiny_models["llama"][0], tmp_path / "q", method, default=QuantArgs(4, 32, False))
    sd = load_file(res.path / "model.safetensors")
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=False, strategy="group", group_size=32))
    for module in res.schemes:
        part = {k.rsplit(".", 1)[1]: v for k, v in sd.items() if k.startswith(module + ".weight")}
        assert set(part) == {"weight_packed", "weight_scale", "weight_shape", "weight_zero_point"}
        got = PackedQuantizationCompressor.decompress(part, scheme)["weight"]
        assert torch.equal(got, res.fake_state[module + ".weight"]), module


def test_act_order_true_sequential_reload(tiny_models, tmp_path):
    from llm_quantizer.quant_runner import GPTQOptions

    src_dir = tiny_models["llama"][0]
    src = open_source(src_dir)
    schemes = resolve_schemes(src, None, QuantArgs(4, 32, True))
    res = quantize_int(src, "gptq", schemes, IDS, tmp_path / "q",
                       options=GPTQOptions(act_order=True, true_sequential=True),
                       device="cpu", progress=False, keep_fake=True)
    assert _reload_diff(src_dir, res)[0] < 1e-3


def test_fp32_source_and_rerun_replaces_folder(tmp_path):
    build_tiny("llama", tmp_path / "src", dtype=torch.float32)
    first = _quantize(tmp_path / "src", tmp_path / "q", "rtn")
    (first.path / "stale.txt").write_text("old")
    res = _quantize(tmp_path / "src", tmp_path / "q", "gptq")
    assert not (res.path / "stale.txt").exists()
    assert _reload_diff(tmp_path / "src", res)[0] < 1e-3


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_bfloat16_compute_reloads_and_stays_close_to_float32(tiny_models, tmp_path, arch):
    """GPTQ with the layers run in bfloat16 (Hessians and solve in float32): the checkpoint still
    reloads with its fake-quant logits, and its codes are those of the float32 run up to the
    rounding ties that bfloat16 inputs move (a few %), with the same scale of reconstruction loss."""
    src_dir = tiny_models[arch][0]
    src = open_source(src_dir)
    schemes = resolve_schemes(src, None, QuantArgs(4, 32, True))
    runs = {dt: quantize_int(src, "gptq", schemes, IDS, tmp_path / str(dt), device="cpu", progress=False,
                             keep_fake=True, compute_dtype=dt) for dt in (torch.float32, torch.bfloat16)}
    res = runs[torch.bfloat16]
    assert _reload_diff(src_dir, res)[0] < 1e-3
    f32, b16 = runs[torch.float32].fake_state, res.fake_state
    weights = [k for k in f32 if k.endswith("proj.weight") and "layers." in k]
    assert weights
    same = sum((f32[k] == b16[k]).sum().item() for k in weights) / sum(f32[k].numel() for k in weights)
    assert 0.8 < same < 1.0                     # bfloat16 changed something, but not much
    loss32 = sum(s["loss"] for s in runs[torch.float32].stats.values())
    loss16 = sum(s["loss"] for s in res.stats.values())
    assert 0.95 < loss16 / loss32 < 1.05
