from __future__ import annotations

import json
import struct
import time

import pytest

import llm_quantizer.model.hf_dir as hf_dir
from conftest import TINY_ARCHS
from llm_quantizer import analyze


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_analyze_tiny(tiny_models, arch, tmp_path):
    path, n_params = tiny_models[arch]
    res = analyze(path, tmp_path / "out")
    t = res.report["totals"]
    assert res.num_layers == 2 and t["params"] == n_params
    assert t["embedding_params"] + t["decoder_params"] + 64 == n_params   # + final norm
    assert sum(L["params"] for L in res.report["layers"]) == t["decoder_params"]
    data = json.loads(res.json_path.read_text())
    assert data["totals"]["bytes"] == 2 * n_params    # bf16
    assert res.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_sparse_shard(path, tensors: dict[str, list[int]]):
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)     # sparse: no data blocks are written


def _llama70b_dir(root):
    h, inter, kv, vocab, layers = 8192, 28672, 1024, 128256, 80
    per_layer = {"self_attn.q_proj.weight": [h, h], "self_attn.k_proj.weight": [kv, h],
                 "self_attn.v_proj.weight": [kv, h], "self_attn.o_proj.weight": [h, h],
                 "mlp.gate_proj.weight": [inter, h], "mlp.up_proj.weight": [inter, h],
                 "mlp.down_proj.weight": [h, inter], "input_layernorm.weight": [h],
                 "post_attention_layernorm.weight": [h]}
    shards = [{"model.embed_tokens.weight": [vocab, h]}]
    for i in range(layers):
        if i % 3 == 0:
            shards.append({})
        shards[-1].update({f"model.layers.{i}.{k}": v for k, v in per_layer.items()})
    shards.append({"model.norm.weight": [h], "lm_head.weight": [vocab, h]})
    weight_map = {}
    for j, sh in enumerate(shards):
        name = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_sparse_shard(root / name, sh)
        weight_map.update({k: name for k in sh})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": h,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 64,
           "num_key_value_heads": 8, "vocab_size": vocab, "torch_dtype": "bfloat16"}
    (root / "config.json").write_text(json.dumps(cfg))
    return len(shards)


def test_70b_sparse_headers_only(tmp_path, monkeypatch):
    n_shards = _llama70b_dir(tmp_path)
    read_bytes: dict[str, int] = {}
    real_open = open

    class Counting:
        def __init__(self, f, name):
            self.f, self.name = f, name

        def read(self, n=-1):
            data = self.f.read(n)
            read_bytes[self.name] = read_bytes.get(self.name, 0) + len(data)
            return data

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(hf_dir, "open", lambda p, mode="r", *a, **k: Counting(real_open(p, mode, *a, **k), str(p)),
                        raising=False)
    t0 = time.perf_counter()
    res = analyze(tmp_path, tmp_path / "out", plot=False)
    elapsed = time.perf_counter() - t0
    assert res.num_layers == 80
    assert res.total_params == 70_553_706_496            # Llama-3-70B
    assert elapsed < 2.0, elapsed
    assert len(read_bytes) == n_shards and max(read_bytes.values()) < 2**20


@pytest.mark.slow
@pytest.mark.parametrize("name,layers", [("smollm2-135m", 30), ("gemma3-270m", 18)])
def test_examples_exact_counts(name, layers, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from llm_quantizer.model import open_source

    src = open_source(name)
    res = analyze(src, tmp_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(src.config)
    assert res.num_layers == layers
    assert res.total_params == sum(p.numel() for p in model.parameters())
