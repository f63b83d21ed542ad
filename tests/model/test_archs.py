import pytest

from llm_quantizer.errors import UnsupportedArchitectureError
from llm_quantizer.model.archs import get_layer_map, supported


def test_supported_families():
    for mt in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"):
        assert mt in supported()


def test_unknown_is_one_line_listing_supported():
    with pytest.raises(UnsupportedArchitectureError) as e:
        get_layer_map("gpt9")
    assert "\n" not in str(e.value) and "llama" in str(e.value)


def test_phi3_fused_split():
    lm = get_layer_map("phi3")
    assert lm.classify("model.layers.2.self_attn.qkv_proj.weight") == (2, "q+k+v")
    assert lm.classify("model.layers.2.mlp.gate_up_proj.weight") == (2, "gate+up")

    class C:
        hidden_size, num_attention_heads, num_key_value_heads, intermediate_size = 64, 4, 2, 128

    assert lm.fused_sizes(C) == {"self_attn.qkv_proj": (64, 32, 32), "mlp.gate_up_proj": (128, 128)}


def test_gguf_names():
    lm = get_layer_map("gemma3_text")
    assert lm.gguf_name("model.layers.5.post_feedforward_layernorm.weight", 18) == "blk.5.post_ffw_norm.weight"
    assert lm.gguf_name("model.embed_tokens.weight", 18) == "token_embd.weight"
    assert get_layer_map("llama").gguf_name("model.layers.0.mlp.down_proj.weight", 2) == "blk.0.ffn_down.weight"
