"""The MAQ drop-in on a tiny llama with a real tokenizer and a local dataset."""
from __future__ import annotations

import json

import pytest
import torch

from gguf_writer.tiny import build_model, corpus
from llm_quantizer.errors import BudgetError, CalibrationError
from llm_quantizer.maq.allocate import allocate
from llm_quantizer.maq.facade import device_total_bytes
from llm_quantizer.model.memory import InMemorySource


@pytest.fixture()
def tiny(tmp_path):
    from transformers import AutoTokenizer, GPTQConfig

    model = build_model("llama", tmp_path / "m", scale=1.0)
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    (tmp_path / "data.txt").write_text("\n\n".join(corpus(200, seed=5)), encoding="utf-8")
    return model, tok, tmp_path, GPTQConfig(bits=4, group_size=32, dataset="wikitext2")


def test_allocation_follows_metric_order(tiny):
    model, tok, _, _ = tiny
    src = InMemorySource(model, tok)
    full = allocate(src, {0: 0.1, 1: 0.9}, 10**12, group_size=32)
    assert full.bits == {0: 8, 1: 8}
    tight = allocate(src, {0: 0.9, 1: 0.1}, full.total_bytes - 1, group_size=32)
    assert tight.order == [1, 0] and tight.bits == {0: 8, 1: 4}      # the less important layer goes first
    rev = allocate(src, {0: 0.9, 1: 0.1}, full.total_bytes - 1, group_size=32, reverse=True)
    assert rev.bits == {0: 4, 1: 8}
    with pytest.raises(BudgetError, match="use_pruning"):
        allocate(src, {0: 0.9, 1: 0.1}, 1000, group_size=32)


def test_maq_readme_flow_saves_loadable_model(tiny):
    from transformers import AutoModelForCausalLM

    from maq import MaqQuantizationConfig, MaqQuantizer

    model, tok, tmp, gptq = tiny
    src = InMemorySource(model, tok)
    full = allocate(src, {0: 0.5, 1: 0.6}, 10**12, group_size=32).total_bytes
    limit = (full - 1) / device_total_bytes(model)          # a share of device memory, as MAQ
    cfg = MaqQuantizationConfig(memory_limit=limit, tokenizer=tok, dataset=str(tmp / "data.txt"),
                                quantization_config=gptq, use_pruning=True, n_samples=4, max_seq_len=32)
    q = MaqQuantizer(cfg, metric="bi")
    q.quantize_model(model)
    assert q.metric == "bi" and sorted(q.allocation.bits.values()) == [4, 8]
    least = min(q.scores, key=q.scores.get)
    assert q.allocation.bits[least] == 4
    out = q.save_model(model, tmp / "saved")
    saved = json.loads((out / "config.json").read_text())
    assert saved["maq"]["layer_bits"] and saved["maq"]["metric"] == "bi" and saved["maq"]["pruned_layers"] == []
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    assert size <= limit * device_total_bytes(model) + 4096
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, 300, (1, 16))
    # the saved model is exactly the evaluated one: every weight equal after reload
    got = dict(reloaded.named_parameters())
    for name, p in model.named_parameters():
        if name in got:                      # quantized linears reload as packed modules
            assert torch.equal(got[name], p), name
    with torch.no_grad():   # (bf16 kernels differ by an ulp between the two module types)
        assert (reloaded(ids).logits.float() - model(ids).logits.float()).abs().max() < 2e-2
    assert reloaded.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == 20


def test_pruning_drops_a_layer_and_says_so(tiny):
    from maq import MaqQuantizationConfig, MaqQuantizer

    model, tok, tmp, gptq = tiny
    src = InMemorySource(model, tok)
    two_bit = allocate(src, {0: 0.5, 1: 0.6}, 10**12, group_size=32, ladder=(2,)).total_bytes
    cfg = MaqQuantizationConfig(memory_limit=(two_bit - 1) / device_total_bytes(model), tokenizer=tok,
                                dataset=str(tmp / "data.txt"), quantization_config=gptq, use_pruning=True,
                                n_samples=4, max_seq_len=32)
    q = MaqQuantizer(cfg, metric="lim")
    q.quantize_model(model)
    assert len(q.allocation.pruned) == 1 and model.config.num_hidden_layers == 1
    saved = json.loads((q.save_model(model, tmp / "pruned") / "config.json").read_text())
    assert saved["maq"]["pruned_layers"] == q.allocation.pruned and saved["num_hidden_layers"] == 1


def test_hub_dataset_is_a_clear_offline_error(tiny):
    from maq import MaqQuantizationConfig, MaqQuantizer

    model, tok, _, gptq = tiny
    cfg = MaqQuantizationConfig(memory_limit=0.5, tokenizer=tok, dataset="pileval", quantization_config=gptq)
    with pytest.raises(CalibrationError, match="offline"):
        MaqQuantizer(cfg).quantize_model(model)
