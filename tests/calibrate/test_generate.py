import pytest
import torch

from llm_quantizer.calibrate import (
    SEED_PROMPTS, ResponseFilter, build_calibration, generate_documents, hf_generate_fn)
from llm_quantizer.calibrate.generate import render_prompt
from llm_quantizer.errors import CalibrationError

from .helpers import byte_tokenizer

PLANTED = "loop " * 12


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=260, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread, busy machines alike
    yield LlamaForCausalLM(cfg).eval()
    torch.set_num_threads(threads)


def _planting(tok, generate_fn):
    """The first batch answers with a repetitive loop and a copy of another answer."""
    calls = []

    def fn(prompt_ids, *args):
        outs = generate_fn(prompt_ids, *args)
        if not calls:
            outs[0] = tok(PLANTED, add_special_tokens=False)["input_ids"]
            outs[1] = list(outs[2])
        calls.append(len(prompt_ids))
        return outs
    return fn


def test_generation_filters_planted_samples(tiny_llama):
    tok = byte_tokenizer(chat=True)
    run = lambda: generate_documents(tok, _planting(tok, hf_generate_fn(tiny_llama)), n_docs=6,
                                     max_new_tokens=32, temperature=1.0, top_p=0.95, seed=0, batch_size=4)
    docs, pairs, stats = run()
    assert len(docs) == len(pairs) == stats["kept"] == 6
    assert stats["repetitive"] >= 1 and stats["duplicate"] >= 1
    assert stats["generated"] == sum(stats[k] for k in ("kept", "short", "duplicate", "repetitive"))
    assert all(PLANTED.strip() not in d for d in docs)
    assert all(p["prompt"] in SEED_PROMPTS and d.startswith("<|user|>") for p, d in zip(pairs, docs))
    assert all(d.endswith(p["response"]) for p, d in zip(pairs, docs))
    assert docs.sources[0]["generated"] and docs.sources[0]["seed"] == 0
    assert run().docs.texts == docs.texts  # deterministic for a seed
    calib = build_calibration(docs, tok, 2, 32, seed=0)
    assert calib.input_ids.shape == (2, 32)


def test_prompt_rendering_without_chat_template():
    tok = byte_tokenizer(bos=True)
    p = render_prompt(tok, "Hi")
    assert p.text == "Hi\n\n" and p.ids[0] == tok.bos_token_id
    assert render_prompt(byte_tokenizer(chat=True), "Hi").text == "<|user|>Hi\n<|assistant|>"


def test_nothing_usable_is_an_error():
    tok = byte_tokenizer()
    loop = lambda prompt_ids, *a: [tok("ab " * 20, add_special_tokens=False)["input_ids"]] * len(prompt_ids)
    with pytest.raises(CalibrationError, match="no usable calibration text.*repetitive 8"):
        generate_documents(tok, loop, n_docs=2, max_attempts=8)


def test_response_filter_rules():
    f = ResponseFilter(min_tokens=3, near_dup=0.5)
    assert f.check([1, 2], "ab") == "short"
    assert f.check(list(range(10, 30)), "one") is None
    assert f.check(list(range(40, 60)), "ONE ") == "duplicate"                      # exact text
    assert f.check(list(range(10, 28)) + [90, 91], "two") == "duplicate"            # near: Jaccard 16/20
    assert f.check([5, 6, 7] * 6, "three") == "repetitive"
    assert f.check(list(range(100, 120)), "four") is None
    assert f.counts == {"generated": 6, "kept": 2, "short": 1, "duplicate": 2, "repetitive": 1}


def test_seed_prompts_are_diverse():
    assert len(SEED_PROMPTS) >= 40 and len(set(SEED_PROMPTS)) == len(SEED_PROMPTS)
    assert sum(any(ord(ch) > 0x36F for ch in p) for p in SEED_PROMPTS) >= 5  # non-Latin scripts
