import json

import numpy as np
import pytest
import torch

from llm_quantizer.errors import ConfigError
from llm_quantizer.model import open_source
from llm_quantizer.validate import (BaseLogprobs, HFRuntime, compute_base, eval_windows, evaluate, summarize,
                                    validate)

from .helpers import EVAL_TEXT, build_model, perturbed_copy, write_eval

CTX = 32
GRID = [{}, {"repeat_penalty": 1.3}, {"temperature": 0.8, "min_p": 0.1}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    build_model("llama", root / "orig", vocab_size=320)
    perturbed_copy(root / "orig", root / "noisy")
    return root


def _rt(path):
    return HFRuntime.from_pretrained(path)


def test_eval_windows_follow_llama_perplexity():
    class Tok:                                        # a tokenizer that adds BOS
        bos_token_id = 7

        def __call__(self, text, add_special_tokens=True):
            ids = [ord(c) % 50 + 10 for c in text]
            return {"input_ids": ([7] if add_special_tokens else []) + ids}
    ew = eval_windows(Tok(), "abcdefghij" * 10, ctx=16)
    assert ew.ids.shape == (101 // 16, 16) and (ew.ids[:, 0] == 7).all()
    assert ew.ids[0, 1].item() == ord("a") % 50 + 10      # BOS in front, then the text
    assert ew.ids[1, 1].item() == Tok()("abcdefghij" * 10, add_special_tokens=False)["input_ids"][16]
    assert ew.first == 8 and ew.scored_per_window == 7
    assert eval_windows(Tok(), "abcdefghij" * 10, ctx=16, score="all").first == 0
    with pytest.raises(ConfigError):
        eval_windows(Tok(), "abc", ctx=16)


def _dense(ref_logits, q_logits, first):
    p = torch.log_softmax(ref_logits[first:-1].double(), -1)
    q = torch.log_softmax(q_logits[first:-1].double(), -1)
    return (p.exp() * (p - q)).sum(-1)


def test_kld_and_ppl_match_dense_torch(models):
    tok = open_source(models / "orig").tokenizer()
    ew = eval_windows(tok, EVAL_TEXT, ctx=CTX, max_tokens=4 * CTX)
    orig, noisy = _rt(models / "orig"), _rt(models / "noisy")
    vocab = orig.logits([1, 2]).shape[-1]
    exact = compute_base(orig, ew, k=vocab, floor=None)
    t = evaluate(noisy, exact)
    dense, nll_q, nll_p = [], [], []
    for ids in ew.ids:
        lo, lq = orig.logits(ids.tolist()), noisy.logits(ids.tolist())
        dense.append(_dense(lo, lq, ew.first))
        tgt = ids[ew.first + 1:, None]
        nll_q.append(-torch.log_softmax(lq[ew.first:-1].double(), -1).gather(1, tgt)[:, 0])
        nll_p.append(-torch.log_softmax(lo[ew.first:-1].double(), -1).gather(1, tgt)[:, 0])
    dense = torch.cat(dense).numpy()
    assert np.allclose(t["kld"], dense, atol=1e-5, rtol=1e-4)
    st = summarize(t)
    assert st["ppl"] == pytest.approx(float(torch.cat(nll_q).mean().exp()), rel=1e-5)
    assert st["ppl_base"] == pytest.approx(float(torch.cat(nll_p).mean().exp()), rel=1e-5)
    assert st["kld_mean"] > 1e-3 and st["same_top_pct"] < 100
    assert st["kld_median"] == pytest.approx(float(np.median(dense)), rel=1e-4)
    top8 = evaluate(noisy, compute_base(orig, ew, k=8, floor=None))   # lumped tail: a lower bound
    assert (top8["kld"] <= dense + 1e-6).all() and top8["kld"].mean() > 0
    assert np.array_equal(top8["same_top"], t["same_top"]) and np.allclose(top8["nll"], t["nll"])
    floored = compute_base(orig, ew, k=4, floor=-6.0, max_kept=50)
    lo = floored.offsets[1:] - floored.offsets[:-1]
    assert lo.min() >= 4 and lo.max() <= 50 and floored.kept_mean > 4
    f = evaluate(noisy, floored)["kld"]
    assert (f <= dense + 1e-6).all() and (f >= top8["kld"] - 1e-9).mean() > 0.9


def test_base_file_round_trip(models, tmp_path):
    tok = open_source(models / "orig").tokenizer()
    ew = eval_windows(tok, EVAL_TEXT, ctx=CTX, max_tokens=2 * CTX)
    base = compute_base(_rt(models / "orig"), ew, k=16, floor=-7.0)
    back = BaseLogprobs.load(base.save(tmp_path / "b.safetensors"))
    assert back.matches(ew, {"k": 16, "floor": -7.0}) and not back.matches(ew, {"k": 32})
    for name in ("offsets", "tok", "logp", "rest_logp", "target_logp"):
        assert torch.equal(getattr(back, name), getattr(base, name))
    assert back.meta == base.meta


def test_original_against_itself_and_files(models, tmp_path):
    ev = write_eval(tmp_path)
    rep = validate(models / "orig", [models / "orig", models / "noisy"], [ev], tmp_path / "out", ctx=CTX,
                   max_eval_tokens=4 * CTX, max_new_tokens=12, prompts=["Hello there", "The water"], grid=GRID)
    same, noisy = rep["artifacts"]
    assert same["kld_mean"] == 0.0 and same["kld_max"] == 0.0 and same["same_top_pct"] == 100.0
    assert same["ppl"] == pytest.approx(rep["original"]["ppl"], rel=1e-6)
    assert noisy["kld_mean"] > 0
    assert same["generations"][0]["original"] == same["generations"][0]["quantized"]
    assert same["repetition"]["before_rate"] == rep["original"]["repetition_rate"]
    v = tmp_path / "out" / "validation"
    for f in ("validation.json", "validation.png", "kld_base.safetensors", "orig/generation_config.json",
              "orig/Modelfile", "noisy/Modelfile"):
        assert (v / f).is_file(), f
    assert json.loads((v / "validation.json").read_text())["artifacts"][1]["label"] == "noisy"
    assert not (tmp_path / "out" / "quantization_plan" / "prevent_repetition.sh").exists()   # no GGUF
    assert [r["bytes"] for r in rep["comparison"]] == sorted(r["bytes"] for r in rep["comparison"])
    gc = json.loads((v / "orig" / "generation_config.json").read_text())
    assert "do_sample" in gc and gc.get("eos_token_id") is not None
    mtime = (v / "kld_base.safetensors").stat().st_mtime_ns
    validate(models / "orig", [models / "noisy"], [ev], tmp_path / "out", ctx=CTX, max_eval_tokens=4 * CTX,
             generations=False)
    assert (v / "kld_base.safetensors").stat().st_mtime_ns == mtime                      # computed once


def test_eval_file_that_is_calibration_is_refused(models, tmp_path):
    ev = write_eval(tmp_path)
    with pytest.raises(ConfigError, match="calibration"):
        validate(models / "orig", [models / "noisy"], [ev], tmp_path / "o", calibration_files=[str(ev)], ctx=CTX)
