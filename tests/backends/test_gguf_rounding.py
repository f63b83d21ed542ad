"""gguf backend with --rounding gptq: llama.cpp's types, our error-feedback bytes, lower KLD."""
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp")
from gguf import GGUFReader  # noqa: E402

from llm_quantizer.backends import get_backend  # noqa: E402
from llm_quantizer.backends.gguf_feedback import gguf_tensor_table, patch_tensors  # noqa: E402
from llm_quantizer.config import RunConfig  # noqa: E402
from llm_quantizer.kquants import get_codec  # noqa: E402
from llm_quantizer.model import open_source  # noqa: E402

from gguf_writer.tiny import build_model, corpus  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rnd") / "tiny-llama"
    build_model("llama", d, vocab_size=320, hidden_size=128, intermediate_size=256, head_dim=32,
                num_attention_heads=4, num_key_value_heads=2)
    return d


def _ids(src, seed, n, L=64):
    tok = src.tokenizer()
    ids = tok(" ".join(corpus(400, seed=seed)))["input_ids"]
    return torch.tensor(ids[: n * L]).reshape(n, L)


def _cfg(rounding):
    return RunConfig().with_overrides({"gguf.llamacpp_type": "q4_0", "gguf.rounding": rounding, "device": "cpu"})


def _kld(ref_path, path, windows):
    from llm_quantizer.validate.runtime import LlamaCppRuntime

    out = []
    for p in (ref_path, path):
        rt = LlamaCppRuntime(p, n_ctx=128, n_threads=2)
        out.append(torch.cat([torch.log_softmax(rt.logits(w.tolist()).double(), -1) for w in windows]))
        rt.close()
    lp, lq = out
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def test_gptq_rounding_same_types_and_lower_kld(tiny, tmp_path):
    src = open_source(tiny)
    cal = {"input_ids": _ids(src, 0, 16)}
    near = get_backend("gguf").quantize(src, None, cal, tmp_path / "near", _cfg("nearest"))
    fb = get_backend("gguf").quantize(src, None, cal, tmp_path / "fb", _cfg("gptq"))
    t_near, t_fb = gguf_tensor_table(near.path), gguf_tensor_table(fb.path)
    assert {k: v[:2] for k, v in t_near.items()} == {k: v[:2] for k, v in t_fb.items()}
    assert near.path.stat().st_size == fb.path.stat().st_size
    redone = fb.info["feedback"]["tensors"]
    assert len(redone) == 2 * 7 and all(v["type"] == "Q4_0" for v in redone.values())
    inter = next((tmp_path / "near" / "quantized_model" / "intermediate").glob("*-f16.gguf"))
    windows = _ids(src, 7, 4)
    k_near, k_fb = _kld(inter, near.path, windows), _kld(inter, fb.path, windows)
    assert k_fb < k_near, (k_fb, k_near)


def test_patch_with_nearest_bytes_reproduces_llamacpp_file(tiny, tmp_path):
    """Our codecs on the F16 intermediate's tensors, patched into llama.cpp's file, change nothing."""
    src = open_source(tiny)
    art = get_backend("gguf").quantize(src, None, None, tmp_path, _cfg("nearest"))
    inter = next((tmp_path / "quantized_model" / "intermediate").glob("*-f16.gguf"))
    r = GGUFReader(inter)
    table = gguf_tensor_table(art.path)
    raw = {}
    for t in r.tensors:
        qt, shape, _, _ = table[t.name]
        if qt in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL") and len(shape) == 2:
            w = torch.from_numpy(np.asarray(t.data, dtype=np.float32).reshape(shape))
            raw[t.name] = get_codec(qt).encode(w)
    assert raw
    out = patch_tensors(art.path, tmp_path / "patched.gguf", raw, table)
    assert out.read_bytes() == art.path.read_bytes()


def test_row_permutation_matches_writer(tiny):
    from llm_quantizer.backends.gguf_feedback import _row_perm
    from llm_quantizer.gguf_writer.tensors import permute_qk

    src = open_source(tiny)
    w = src.load("model.layers.0.self_attn.k_proj.weight").float()
    perm = _row_perm(src, "blk.0.attn_k.weight", w.shape[0])
    assert torch.equal(w[perm], permute_qk(w, 2))


def test_first_token_weight_counts_each_sequence_start_that_many_times():
    from llm_quantizer.backends.gguf_feedback import weight_first_tokens

    x = torch.randn(3 * 8, 5, dtype=torch.float64)
    xw = weight_first_tokens(x, 8, 4.0)
    first = x.reshape(3, 8, 5)[:, 0]
    assert torch.allclose(xw.T @ xw, x.T @ x + 3 * first.T @ first)
    assert weight_first_tokens(x, 8, 1.0) is x and weight_first_tokens(x, 7, 4.0) is x
