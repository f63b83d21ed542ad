"""Scheme resolution from plans, the streaming checkpoint writer (shards, atomicity), the card."""
from __future__ import annotations

import json

import pytest
import torch

from llm_quantizer.errors import ConfigError
from llm_quantizer.model import open_source
from llm_quantizer.quant.rtn import QuantArgs, quantize_rtn
from llm_quantizer.quant_runner import CompressedTensorsWriter, QuantizedLinear, ct_config, quantize_int, \
    resolve_schemes
from llm_quantizer.quant_runner.card import per_layer_table


def test_resolve_from_mapping_and_defaults(tiny_llama):
    src = open_source(tiny_llama)
    s = resolve_schemes(src, {"model.layers.0.mlp.down_proj.weight": "int8_gch",
                              "model.layers.1.self_attn.q_proj.weight": "BF16"}, QuantArgs(4, 32))
    assert s["model.layers.0.mlp.down_proj"] == QuantArgs(8, -1, True)
    assert s["model.layers.1.self_attn.q_proj"] is None
    assert s["model.layers.1.mlp.up_proj"] == QuantArgs(4, 32)
    assert len(s) == 14


@pytest.mark.parametrize("plan,default,msg", [
    (None, QuantArgs(4, 128), "not divisible by group size 128"),
    ({"model.layers.0.mlp.up_proj.weight": "Q4_K"}, None, "GGUF type"),
    ({"model.norm.weight": "int4_g32"}, QuantArgs(4, 32), "only linears, the embedding and the lm_head"),
    ({"model.layers.0.mlp.up_proj.weight": "BF16"}, None, "nothing to quantize"),
    ({"model.layers.9.mlp.up_proj.weight": "int4_g32"}, None, "is not in model"),
    ({"schema_version": 1, "family": "gguf"}, None, "plan is malformed"),
])
def test_resolve_errors_are_one_line(tiny_llama, plan, default, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve_schemes(open_source(tiny_llama), plan, default)


def test_ct_config_groups_and_ignore(tiny_llama):
    s = resolve_schemes(open_source(tiny_llama), {"model.layers.0.mlp.down_proj.weight": "int8_gch",
                                                  "model.layers.1.self_attn.q_proj.weight": "BF16"}, QuantArgs(4, 32))
    cfg = ct_config(s)
    weights = sorted((g["weights"]["num_bits"], g["weights"]["strategy"]) for g in cfg["config_groups"].values())
    assert weights == [(4, "group"), (8, "channel")]
    assert cfg["ignore"] == ["lm_head", "model.layers.1.self_attn.q_proj"]
    from compressed_tensors.quantization import QuantizationConfig

    QuantizationConfig.model_validate(cfg)          # compressed-tensors accepts it


def _linear(out=8, inp=64, bits=4):
    w = torch.randn(out, inp)
    args = QuantArgs(bits, 32, True)
    return QuantizedLinear(args, *quantize_rtn(w, args))


def test_writer_shards_and_index(tmp_path):
    w = CompressedTensorsWriter(tmp_path / "m", max_shard_bytes=200)
    for i in range(3):
        w.add_layer(f"l.{i}.", {f"l.{i}.norm.weight": torch.ones(64)}, {f"l.{i}.proj": _linear()})
    w.finish({"model_type": "x"})
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                     "model-00003-of-00003.safetensors", "model.safetensors.index.json"]
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["l.2.proj.weight_packed"] == "model-00003-of-00003.safetensors"
    assert index["weight_map"]["l.0.norm.weight"] == "model-00001-of-00003.safetensors"


def test_writer_abort_leaves_old_folder_untouched(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    w = CompressedTensorsWriter(tmp_path / "m")
    w.add_tensors({"a": torch.ones(2)})

    def boom(folder):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        w.finish({}, boom)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert (tmp_path / "m" / "config.json").read_text() == "{}"
    with pytest.raises(ValueError, match="written twice"):
        w2 = CompressedTensorsWriter(tmp_path / "n")
        w2.add_tensors({"a": torch.ones(2)})
        w2.add_tensors({"a": torch.ones(2)})


def test_sharded_checkpoint_loads(tiny_llama, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    import llm_quantizer.quant_runner.run as run

    class Small(CompressedTensorsWriter):
        def __init__(self, final_dir):
            super().__init__(final_dir, max_shard_bytes=20_000)

    monkeypatch.setattr(run, "CompressedTensorsWriter", Small)
    src = open_source(tiny_llama)
    ids = torch.randint(0, 256, (2, 16))
    res = quantize_int(src, "rtn", resolve_schemes(src, None, QuantArgs(4, 32)), None, tmp_path / "q",
                       device="cpu", progress=False, keep_fake=True)
    assert (res.path / "model.safetensors.index.json").is_file()
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).eval()
    ref.load_state_dict(res.fake_state, strict=False)
    got = AutoModelForCausalLM.from_pretrained(res.path).eval()
    with torch.no_grad():
        assert (got(ids).logits.float() - ref(ids).logits.float()).abs().max() < 1e-3


def test_card_lists_bits_per_layer(tiny_llama):
    src = open_source(tiny_llama)
    s = resolve_schemes(src, {"model.layers.1.mlp.down_proj.weight": "int8_g32"}, QuantArgs(3, 32))
    table = per_layer_table(src, s).splitlines()
    assert table[0] == "| layer | q | k | v | o | gate | up | down |"
    assert table[2].startswith("| 0 | int3_g32") and table[3].endswith("| int8_g32 |")
