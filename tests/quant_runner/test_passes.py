"""The passes' math inside the engine: GPTQ / AWQ beat RTN, AWQ folding keeps the function."""
from __future__ import annotations

import pytest
import torch

from llm_quantizer.engine import EngineOptions, LayerwiseEngine, Observer
from llm_quantizer.model import open_source
from llm_quantizer.quant.awq import search_scales
from llm_quantizer.quant.rtn import QuantArgs
from llm_quantizer.quant_runner import awq_groups, quantize_int, resolve_schemes, search_group_scales

IDS = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(2))


def _layer0_outputs(src_dir, state=None):
    """Hidden states after decoder layer 0 (float32 model, optionally with swapped tensors)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.float32).eval()
    if state:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    with torch.no_grad():
        return model(IDS, output_hidden_states=True).hidden_states[1]


def _layer0_error(src_dir, method, args, ids=IDS):
    src = open_source(src_dir)
    schemes = resolve_schemes(src, None, args)
    res = quantize_int(src, method, schemes, ids, src_dir.parent / f"out-{method}", device="cpu", progress=False,
                       keep_fake=True)
    ref = _layer0_outputs(src_dir)
    return (_layer0_outputs(src_dir, res.fake_state) - ref).pow(2).mean().item()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gptq_and_awq_beat_rtn_on_the_same_layer(tiny_models, arch):
    """Layer 0 sees the same (embedding) inputs in every run: its output error is comparable."""
    args = QuantArgs(3, 32, True)
    src_dir = tiny_models[arch][0]
    rtn, gptq, awq = (_layer0_error(src_dir, m, args) for m in ("rtn", "gptq", "awq"))
    assert gptq < 0.9 * rtn, (gptq, rtn)
    assert awq < rtn, (awq, rtn)


def test_awq_8bit_folding_keeps_the_function(tiny_models):
    """Gemma's (1 + w) norms: folded scales must not change the model beyond 8-bit rounding."""
    args = QuantArgs(8, 32, True)
    src_dir = tiny_models["gemma3"][0]
    rtn, awq = _layer0_error(src_dir, "rtn", args), _layer0_error(src_dir, "awq", args)
    assert awq < 2 * rtn, (awq, rtn)


def test_mixed_args_search_equals_reference_search():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g) * torch.linspace(0.1, 4, 64)
    ws = [torch.randn(48, 64, generator=g), torch.randn(32, 64, generator=g)]
    args = QuantArgs(3, 32, True)
    ref = search_scales(x, ws, args)
    s, ratio, losses = search_group_scales(x, ws, [args, args], lambda xx, w: torch.cat([xx @ t.T for t in w], -1))
    assert torch.equal(s, ref.scales) and ratio == ref.ratio and losses == ref.losses


class _Groups(Observer):
    name = "test-groups"

    def __init__(self):
        self.groups = []

    def layer_end(self, ctx):
        if ctx.index == 0:
            self.groups = [(g.prev, g.linears, g.block) for g in awq_groups(ctx)]


@pytest.mark.parametrize("arch,expected", [
    ("llama", [(("norm", "input_layernorm"), ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], None),
               (("norm", "post_attention_layernorm"), ["mlp.gate_proj", "mlp.up_proj"], "mlp"),
               (("linear", "mlp.up_proj"), ["mlp.down_proj"], None)]),
    ("gemma3", [(("norm", "input_layernorm"), ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], None),
                (("norm", "pre_feedforward_layernorm"), ["mlp.gate_proj", "mlp.up_proj"], "mlp"),
                (("linear", "mlp.up_proj"), ["mlp.down_proj"], None)]),
    ("phi3", [(("norm", "input_layernorm"), ["self_attn.qkv_proj"], None),
              (("norm", "post_attention_layernorm"), ["mlp.gate_up_proj"], "mlp")]),
])
def test_awq_groups_from_the_layer_map(tiny_models, arch, expected):
    """v -> o is skipped under grouped-query attention (tiny models: 4 heads, 2 kv heads)."""
    opts = EngineOptions(device="cpu", progress=False, run_head=False)
    eng = LayerwiseEngine(open_source(tiny_models[arch][0]), opts)
    (obs,) = eng.run(IDS[:1], [_Groups()])
    assert obs.groups == expected


def test_awq_v_to_o_fold_without_gqa(tmp_path):
    import transformers as tf

    from conftest import TINY

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(**{**TINY, "num_key_value_heads": 4}, tie_word_embeddings=False)
    tf.AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "mha")
    eng = LayerwiseEngine(open_source(tmp_path / "mha"), EngineOptions(device="cpu", progress=False, run_head=False))
    (obs,) = eng.run(IDS[:1], [_Groups()])
    assert (("linear", "self_attn.v_proj"), ["self_attn.o_proj"], None) in obs.groups
    args = QuantArgs(8, 32, True)
    assert _layer0_error(tmp_path / "mha", "awq", args) < 2 * _layer0_error(tmp_path / "mha", "rtn", args)


def test_true_sequential_rehessian_reruns_the_layer(tiny_models, tmp_path):
    """Re-running the cached layer calls reproduces the observed Hessians exactly (same inputs,
    nothing quantized yet), and the stages come in forward order."""
    from llm_quantizer.quant_runner import GPTQOptions, GPTQPass
    from llm_quantizer.quant_runner.ct_writer import CompressedTensorsWriter

    seen = {}

    class Check(GPTQPass):
        def __call__(self, ctx):
            if ctx.index == 0:
                seen["order"] = list(self._order)
                seen["pairs"] = [(self._acc[o].H.clone(), self._rehessian(ctx, o).H) for o in self._order]
            return super().__call__(ctx)

    src = open_source(tiny_models["qwen3"][0])
    schemes = resolve_schemes(src, None, QuantArgs(4, 32, True))
    writer = CompressedTensorsWriter(tmp_path / "q")
    p = Check(schemes, writer, lambda prefix: [n for n in src.tensors if n.startswith(prefix)],
              GPTQOptions(true_sequential=True))
    LayerwiseEngine(src, EngineOptions(device="cpu", progress=False, run_head=False)).run(IDS, [p], transform=p)
    writer.abort()
    assert seen["order"] == ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"]
    for observed, rerun in seen["pairs"]:
        torch.testing.assert_close(rerun, observed, rtol=1e-5, atol=1e-6)
