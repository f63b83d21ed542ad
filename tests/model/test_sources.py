from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import TINY_ARCHS, build_tiny
from llm_quantizer.errors import ModelSourceError, UnsupportedArchitectureError
from llm_quantizer.model import open_source


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_hf_dir_counts_equal_transformers(tiny_models, arch):
    path, n_params = tiny_models[arch]
    src = open_source(path)
    assert src.num_layers == 2
    assert sum(t.numel for t in src.tensors.values()) == n_params


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_tensor_is_classified(tiny_models, arch):
    src = open_source(tiny_models[arch][0])
    kinds = {src.layer_map.classify(n)[1] for n in src.tensors}
    assert "other" not in kinds
    assert "embed" in kinds and "norm" in kinds
    assert all(src.gguf_name(n) for n in src.tensors), "every tensor has a GGUF name"


def test_load_matches_state_dict(tmp_path):
    model = build_tiny("qwen3", tmp_path / "m", dtype=torch.float16)
    src = open_source(tmp_path / "m")
    sd = model.state_dict()
    for name in src.tensors:
        assert torch.equal(src.load(name), sd[name])
    layer = src.load_layer(1)
    assert set(layer) == {k[len("model.layers.1."):] for k in sd if k.startswith("model.layers.1.")}


def test_sharded_dir(tmp_path):
    model = build_tiny("llama", tmp_path / "m", dtype=torch.float32, shard_size="100KB")
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    src = open_source(tmp_path / "m")
    assert sum(t.numel for t in src.tensors.values()) == sum(p.numel() for p in model.parameters())
    assert len({t.file for t in src.tensors.values()}) > 1


def test_missing_shard_is_one_line(tmp_path):
    build_tiny("llama", tmp_path / "m", shard_size="100KB")
    shards = sorted((tmp_path / "m").glob("model-*.safetensors"))
    shards[-1].unlink()
    with pytest.raises(ModelSourceError, match="missing"):
        open_source(tmp_path / "m").tensors


def test_unknown_architecture(tmp_path, tiny_llama):
    d = tmp_path / "weird"
    shutil.copytree(tiny_llama, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "rwkv9000"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="supported: .*llama"):
        open_source(d).layer_map


def test_offline_hub_id_is_one_line():
    with pytest.raises(ModelSourceError, match="Hugging Face Hub"):
        open_source("some-org/some-model-that-is-not-here")


def test_gguf_source_roundtrip(tmp_path):
    """A tiny llama written to GGUF the way llama.cpp's converter does (q/k permuted) reads back."""
    import gguf

    model = build_tiny("llama", tmp_path / "hf", dtype=torch.float32)
    cfg = model.config
    w = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    src_hf = open_source(tmp_path / "hf")
    for name, t in model.state_dict().items():
        a = t.numpy()
        heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
        for key, h in heads.items():
            if key in name:
                a = a.reshape(h, 2, a.shape[0] // h // 2, a.shape[1]).swapaxes(1, 2).reshape(a.shape)
        w.add_tensor(src_hf.gguf_name(name), np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    src = open_source(tmp_path / "tiny.gguf")

    class _Cfg:  # the GGUF has no tokenizer, so give the permutation its head counts directly
        num_attention_heads = cfg.num_attention_heads
        num_key_value_heads = cfg.num_key_value_heads

    src.__dict__["config"] = _Cfg()
    assert src.model_type == "llama" and src.num_layers == 2
    for name, t in model.state_dict().items():
        assert torch.equal(src.load(name), t), name


def test_gguf_bad_magic(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(ModelSourceError, match="bad magic"):
        open_source(p)


@pytest.mark.slow
def test_smollm2_weights_equal_transformers_gguf_loader():
    """Our lazy GGUF reader gives the same tensors as transformers' own GGUF loader."""
    from transformers import AutoModelForCausalLM

    src = open_source("smollm2-135m")
    ref = AutoModelForCausalLM.from_pretrained(str(src.path.parent), gguf_file=src.path.name,
                                               dtype=torch.float32).state_dict()
    for name in src.tensors:
        assert torch.equal(src.load(name), ref[name].float()), name
